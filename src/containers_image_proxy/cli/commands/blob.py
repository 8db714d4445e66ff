"""``blob REF DIGEST [-o FILE]``: one blob of the image, verified by the proxy."""

from __future__ import annotations

import argparse
import sys

from ... import ImageProxy
from ...config import ImageProxyConfig
from ...errors import ImageProxyError
from ...events import BlobFinished, BlobStarted, PullStarted, blob_progress
from ...oci import Descriptor, Digest, ImageManifest
from ..options import digest_argument
from ..output import atomic_output, isatty, output_error
from ..progress import progress_display
from ..status import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError
from . import Command

__all__ = ["COMMAND"]


def _find_blob(manifest: ImageManifest, digest: Digest) -> Descriptor | None:
    for descriptor in (manifest.config, *manifest.layers):
        if descriptor.digest == digest:
            return descriptor
    return None


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """Write the blob to a file (atomically) or to standard output."""
    to_stdout = args.output in (None, "-")
    if to_stdout and isatty(sys.stdout):
        raise CliError("refusing to write a blob to a terminal: use -o FILE", EXIT_USAGE)
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        _, manifest = proxy.fetch_manifest(image)
        descriptor = _find_blob(manifest, args.digest)
        if descriptor is None:
            raise CliError(
                f"blob {args.digest} is not in the manifest of {args.reference}", EXIT_NOT_FOUND
            )
        if to_stdout:
            with proxy.get_descriptor(image, descriptor) as blob:
                try:
                    sys.stdout.flush()
                    blob.copy_to(sys.stdout.buffer)
                except ImageProxyError:
                    raise
                except OSError as exc:
                    raise output_error("to standard output", exc) from exc
            return EXIT_OK
        with (
            atomic_output(args.output) as out,
            progress_display(args) as progress,
            proxy.get_descriptor(image, descriptor) as blob,
        ):
            if progress is not None:
                progress(PullStarted(args.reference, (descriptor,)))
                progress(BlobStarted(descriptor))
            blob.copy_to(out, blob_progress(descriptor, progress))
            if progress is not None:
                progress(BlobFinished(descriptor, skipped=False))
    return EXIT_OK


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("digest", metavar="DIGEST", type=digest_argument, help="blob digest")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )


COMMAND = Command(
    name="blob",
    summary="write one blob (the config or a layer) of the image",
    description="Stream a blob named by the image's manifest (its config or a layer) to FILE"
    " (written atomically) or to standard output. The proxy verifies its digest and size.",
    run=run,
    arguments=" DIGEST [-o FILE]",
    add_arguments=_add_arguments,
)
