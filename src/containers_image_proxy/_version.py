"""The package's version, and what ``containers-image-proxy --version`` reports."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

__all__ = [
    "DISTRIBUTION",
    "UNKNOWN_VERSION",
    "VersionAction",
    "package_version",
    "skopeo_version",
    "version_report",
]

#: The distribution (wheel) name whose metadata holds the version.
DISTRIBUTION: Final = "containers-image-proxy"
#: The version reported when the package runs without being installed.
UNKNOWN_VERSION: Final = "0+unknown"

#: Seconds allowed for ``skopeo --version`` and for starting the proxy.
_TIMEOUT: Final = 30.0


def package_version() -> str:
    """The installed package's version, or ``0+unknown`` when it is not installed."""
    # Imported here: importlib.metadata costs ~10 ms, which only --version needs.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def skopeo_version(skopeo: str) -> str:
    """What ``skopeo --version`` says, without its ``skopeo version`` prefix.

    Raises :class:`OSError` when it cannot be run and :class:`RuntimeError` when it
    fails.
    """
    proc = subprocess.run(
        [skopeo, "--version"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=_TIMEOUT,
        check=False,
    )
    text = " ".join(proc.stdout.decode(errors="replace").split())
    if proc.returncode != 0 or not text:
        error = " ".join(proc.stderr.decode(errors="replace").split())
        raise RuntimeError(error or f"exit status {proc.returncode}")
    return text.removeprefix("skopeo version ")


def _protocol_version(skopeo: str) -> str:
    from ._sync.proxy import ImageProxy
    from .config import ImageProxyConfig

    with ImageProxy(ImageProxyConfig(skopeo_cmd=[skopeo])) as proxy:
        return proxy.protocol_version


def version_report(skopeo: str | None = None) -> str:
    """The lines ``--version`` prints: this package's version, skopeo's, the protocol's.

    ``skopeo`` names the binary (default: ``skopeo`` on ``PATH``). The proxy is
    started once to learn the protocol version it speaks. A missing or failing
    skopeo is reported on its line; the package version is always there.
    """
    lines = [f"{DISTRIBUTION} {package_version()}"]
    name = skopeo or "skopeo"
    path = shutil.which(name)
    if path is None:
        lines.append(f"skopeo: {name} not found (install skopeo, or name it with --skopeo PATH)")
        return "\n".join(lines) + "\n"
    try:
        lines.append(f"skopeo: {path}, version {skopeo_version(path)}")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        lines.append(f"skopeo: {path}, version unknown ({exc})")
    from .errors import ImageProxyError

    try:
        lines.append(f"image proxy protocol: {_protocol_version(path)}")
    except ImageProxyError as exc:
        lines.append(f"image proxy protocol: unknown ({' '.join(str(exc).split())})")
    return "\n".join(lines) + "\n"


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_report` (for ``--skopeo`` if given before) and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the versions of this program, skopeo and its proxy")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        skopeo = getattr(namespace, "skopeo", None)
        sys.stdout.write(version_report(skopeo if isinstance(skopeo, str) else None))
        sys.stdout.flush()
        parser.exit(0)
