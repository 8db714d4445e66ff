"""``layers REF [--json]``: one line per layer, or a JSON list."""

from __future__ import annotations

import argparse
from typing import Any

from ... import ImageProxy
from ...config import ImageProxyConfig
from ...oci import ImageManifest
from ..output import print_json, write_stdout
from ..status import EXIT_OK
from . import Command

__all__ = ["COMMAND", "layers_json"]


def layers_json(manifest: ImageManifest) -> list[dict[str, Any]]:
    """What ``layers --json`` prints."""
    return [
        {"digest": str(layer.digest), "size": layer.size, "media_type": layer.media_type}
        for layer in manifest.layers
    ]


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """Print the image's layers."""
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        _, manifest = proxy.fetch_manifest(image)
    if args.json:
        print_json(layers_json(manifest))
    else:
        write_stdout(
            "".join(
                f"{layer.digest} {layer.size} {layer.media_type}\n" for layer in manifest.layers
            )
        )
    return EXIT_OK


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list")


COMMAND = Command(
    name="layers",
    summary="list the image's layers",
    description="Print one line per layer: DIGEST SIZE MEDIA_TYPE (SIZE in bytes).",
    run=run,
    add_arguments=_add_arguments,
)
