"""``manifest REF``: the image's OCI manifest, as the proxy returns it."""

from __future__ import annotations

import argparse

from ... import ImageProxy
from ...config import ImageProxyConfig
from ..output import write_stdout
from ..status import EXIT_OK
from . import Command

__all__ = ["COMMAND"]


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """Print the OCI manifest bytes."""
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        _, raw = proxy.fetch_manifest_raw_oci(image)
    write_stdout(raw)
    return EXIT_OK


COMMAND = Command(
    name="manifest",
    summary="print the image's OCI manifest",
    description="Print the image's manifest as OCI JSON, exactly as the proxy returns it.",
    run=run,
)
