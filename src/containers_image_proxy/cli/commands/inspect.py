"""``inspect REF``: what ``skopeo inspect`` prints, with its ``--raw`` and ``--config``."""

from __future__ import annotations

import argparse
import json

from ... import ImageProxy
from ..._inspect import (
    InspectedImage,
    TemplateError,
    check_template,
    go_json,
    inspect_table,
    is_json_format,
    manifest_converted,
    raw_config_note,
    raw_manifest_note,
    render_template,
    skopeo_inspect,
)
from ...config import ImageProxyConfig
from ...oci import Digest, decode_manifest
from ..options import BoolFlag
from ..output import note, write_stdout
from ..status import EXIT_OK, EXIT_USAGE, CliError
from . import Command

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--format",
        metavar="FORMAT",
        help="json (the default), table (a human-readable layout), or a template of"
        " {{.Field}} such as '{{.Digest}}'",
    )
    parser.add_argument(
        "--json", dest="format", action="store_const", const="json", help="--format json"
    )
    parser.add_argument("--raw", action=BoolFlag, default=False, help="the manifest as returned")
    parser.add_argument(
        "--config", action=BoolFlag, default=False, help="the image configuration instead"
    )
    parser.add_argument(
        "-n",
        "--no-tags",
        action=BoolFlag,
        default=False,
        help="accepted for skopeo's sake: repository tags are never listed",
    )


def _output_format(args: argparse.Namespace) -> str:
    """Check the options before anything starts; returns the output format."""
    text: str | None = args.format
    if args.raw and text is not None:
        raise CliError("--raw does not take --format (as in skopeo)", EXIT_USAGE)
    if text is None or is_json_format(text):
        return "json"
    if args.config:
        raise CliError("--config prints JSON: --format takes only json with it", EXIT_USAGE)
    if text.strip() == "table":
        return "table"
    try:
        check_template(text)
    except TemplateError as exc:
        raise CliError(f"--format: {exc}", EXIT_USAGE) from None
    return text


def _print_config(
    args: argparse.Namespace, digest: Digest, full: bytes, original: bytes | None
) -> int:
    if not args.raw:
        write_stdout(go_json(json.loads(full)))
        return EXIT_OK
    if original is None:
        note(raw_config_note(args.reference, digest, Digest.from_bytes(full)))
    write_stdout(full if original is None else original)
    return EXIT_OK


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``inspect REF [--format F] [--raw] [--config]``: what ``skopeo inspect`` prints."""
    output = _output_format(args)
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        digest, raw = proxy.fetch_manifest_raw_oci(image)
        converted = manifest_converted(digest, raw)
        if args.raw and not args.config:
            if converted:
                note(raw_manifest_note(args.reference, digest, Digest.from_bytes(raw)))
            write_stdout(raw)
            return EXIT_OK
        full_config = proxy.fetch_config_raw(image)
        original_config = None
        if not converted and (args.raw or not args.config):
            # The configuration blob as stored: GetFullConfig re-serialises it.
            with proxy.get_descriptor(image, decode_manifest(raw).config) as blob:
                original_config = blob.readall()
    if args.config:
        return _print_config(args, digest, full_config, original_config)
    inspected = InspectedImage(args.reference, digest, raw, full_config, original_config)
    report = skopeo_inspect(inspected)
    if output == "json":
        write_stdout(go_json(report))
    elif output == "table":
        write_stdout(inspect_table(inspected, report))
    else:
        write_stdout(render_template(output, report))
    return EXIT_OK


COMMAND = Command(
    name="inspect",
    summary="show an image as skopeo inspect does",
    description="Print what `skopeo inspect` prints: the same JSON keys and values (RepoTags"
    " stays empty). --raw prints the manifest, --config the configuration, --raw --config"
    " its bytes; for a Docker schema 2 source, which the proxy converts, standard error"
    " says so. docs/cli.md lists every difference from skopeo.",
    run=run,
    add_arguments=_add_arguments,
)
