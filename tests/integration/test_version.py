"""``__version__`` and ``containers-image-proxy --version``."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import containers_image_proxy
from containers_image_proxy import ImageProxy, ImageProxyConfig, _version

pytestmark = pytest.mark.usefixtures("no_leaks")

CLI = [sys.executable, "-m", "containers_image_proxy"]


def run_version(*options: str) -> list[str]:
    proc = subprocess.run(
        [*CLI, *options, "--version"], capture_output=True, stdin=subprocess.DEVNULL, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    return proc.stdout.decode().splitlines()


def skopeo_says(skopeo: str) -> str:
    out = subprocess.run([skopeo, "--version"], capture_output=True, check=True, timeout=30)
    return out.stdout.decode().strip().removeprefix("skopeo version ")


def protocol_of(skopeo: str) -> str:
    with ImageProxy(ImageProxyConfig(skopeo_cmd=[skopeo])) as proxy:
        return proxy.protocol_version


def test_dunder_version_is_the_metadata_s() -> None:
    assert containers_image_proxy.__version__ == version("containers-image-proxy")
    assert "__version__" in containers_image_proxy.__all__


def test_version_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert _version.package_version() == "0+unknown"


def test_version_reports_skopeo_and_protocol(skopeo: str) -> None:
    path = shutil.which(skopeo)
    assert path is not None
    assert run_version() == [
        f"containers-image-proxy {version('containers-image-proxy')}",
        f"skopeo: {path}, version {skopeo_says(path)}",
        f"image proxy protocol: {protocol_of(path)}",
    ]


def test_version_of_the_skopeo_named_before_it() -> None:
    upstream = os.environ.get("CIP_TEST_SKOPEO_UPSTREAM")
    if not upstream:
        pytest.skip("CIP_TEST_SKOPEO_UPSTREAM is not set: no second skopeo to name")
    lines = run_version("--skopeo", upstream)
    assert lines[1:] == [
        f"skopeo: {upstream}, version {skopeo_says(upstream)}",
        f"image proxy protocol: {protocol_of(upstream)}",
    ]
    assert protocol_of(upstream) != protocol_of("skopeo")  # a different skopeo was asked


def test_version_without_skopeo(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-skopeo"
    lines = run_version("--skopeo", str(missing))
    assert lines == [
        f"containers-image-proxy {version('containers-image-proxy')}",
        f"skopeo: {missing} not found (install skopeo, or name it with --skopeo PATH)",
    ]


def test_version_with_a_broken_skopeo(tmp_path: Path) -> None:
    broken = tmp_path / "skopeo"
    broken.write_text("#!/bin/sh\necho 'cannot run here' >&2\nexit 3\n")
    broken.chmod(0o755)
    lines = run_version("--skopeo", str(broken))
    assert lines[0] == f"containers-image-proxy {version('containers-image-proxy')}"
    assert lines[1] == f"skopeo: {broken}, version unknown (cannot run here)"
    assert lines[2].startswith("image proxy protocol: unknown (")
    assert len(lines) == 3
