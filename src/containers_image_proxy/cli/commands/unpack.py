"""``unpack REF DIR``: the image as a root filesystem directory."""

from __future__ import annotations

import argparse
from typing import Any

from rich.filesize import decimal as human_size

from ... import LayerResult, UnpackResult, unpack
from ...config import ImageProxyConfig
from ...events import BlobRetrying
from ..output import PROG, print_json, summary
from ..progress import UnpackDisplay, retried, retries_json, retry_line, unpack_display
from ..status import EXIT_OK
from . import Command

__all__ = ["COMMAND", "unpack_result_json"]


def unpack_result_json(result: UnpackResult) -> dict[str, Any]:
    """What ``unpack --json`` prints."""
    return {
        "reference": result.reference,
        "dest": str(result.dest),
        "manifest_digest": str(result.manifest_digest),
        "rootless": result.rootless,
        "entries": result.entries,
        "bytes": result.bytes,
        "warnings": list(result.warnings),
        "retries": retries_json(result.retries),
        "layers": [
            {
                "digest": str(layer.descriptor.digest) if layer.descriptor else None,
                "diff_id": str(layer.diff_id) if layer.diff_id else None,
                "compression": layer.compression,
                "entries": layer.entries,
                "bytes": layer.bytes,
            }
            for layer in result.layers
        ],
    }


class _Report:
    """What unpack shows as it goes: bars in the display, else lines on standard error."""

    def __init__(self, args: argparse.Namespace, display: UnpackDisplay | None) -> None:
        self._args = args
        self._display = display
        self._done = 0

    def layer(self, layer: LayerResult) -> None:
        self._done += 1
        digest = layer.descriptor.digest.encoded[:12] if layer.descriptor else "-"
        line = (
            f"layer {self._done}: {digest} {layer.compression}, {layer.entries} entries,"
            f" {human_size(layer.bytes)}"
        )
        if self._display is not None:
            self._display.finished(layer.descriptor, line)
        else:
            summary(self._args, line)

    def retrying(self, event: BlobRetrying) -> None:
        if self._display is not None:
            self._display.retrying(event)
        else:
            summary(self._args, f"{PROG}: {retry_line(event)}")


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """Unpack the image, with a line per layer and a summary on standard error."""
    with unpack_display(args) as display:
        report = _Report(args, display)
        result = unpack(
            args.reference,
            args.dest,
            config=config,
            progress=report.layer,
            on_retry=report.retrying,
            on_bytes=display.read if display is not None else None,
        )
    summary(
        args,
        f"Unpacked {result.manifest_digest} into {result.dest}: {len(result.layers)} layers,"
        f" {result.entries} entries, {human_size(result.bytes)}"
        + (f", {len(result.warnings)} warnings" if result.warnings else "")
        + retried(result.retries),
    )
    if args.json:
        print_json(unpack_result_json(result))
    return EXIT_OK


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DIR", help="root filesystem directory to create")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


COMMAND = Command(
    name="unpack",
    summary="unpack the image into a root filesystem directory",
    description="Stream every layer into DIR (missing or empty), applying whiteouts, verifying"
    " each layer against its diff_id and refusing entries that would escape DIR. Layers"
    " stream straight from the proxy. A bar per layer (on a terminal, or with --progress)"
    " shows the compressed bytes read and the entries applied; a line per finished layer"
    " and a summary go to standard error.",
    run=run,
    arguments=" DIR",
    add_arguments=_add_arguments,
)
