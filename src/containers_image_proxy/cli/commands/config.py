"""``config REF``: the image's configuration, as the proxy returns it."""

from __future__ import annotations

import argparse

from ... import ImageProxy
from ...config import ImageProxyConfig
from ..output import write_stdout
from ..status import EXIT_OK
from . import Command

__all__ = ["COMMAND"]


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """Print the image configuration bytes."""
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        raw = proxy.fetch_config_raw(image)
    write_stdout(raw)
    return EXIT_OK


COMMAND = Command(
    name="config",
    summary="print the image's configuration",
    description="Print the image configuration JSON, exactly as the proxy returns it.",
    run=run,
)
