"""``unpack`` shows each layer's progress while its bytes flow, as ``pull`` does.

The display is rich's, on standard error: a bar per layer of the compressed bytes
read, with the tar entries applied so far, then a line per finished layer. It is
drawn on a terminal (a pseudo-terminal here) or with ``--progress``, and never with
``--quiet`` or when standard error is a pipe.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers_image_proxy import Descriptor, LayerResult, unpack
from tests.support.images import BuiltImage
from tests.support.registry import Registry, RegistryImage
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

CLI = [sys.executable, "-m", "containers_image_proxy"]
#: Bytes per second through the relay: the layers take about two seconds to arrive.
BANDWIDTH = 3_000_000


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CONTAINERS_IMAGE_PROXY_DEBUG", "FORCE_COLOR", "NO_COLOR", "TERM")
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def big_image(plain_registry: Registry, big_layers_image: BuiltImage) -> RegistryImage:
    return plain_registry.push_image(big_layers_image, "progress/big", "v1")


@pytest.fixture
def slow_ref(plain_registry: Registry, big_image: RegistryImage) -> Iterator[str]:
    with Relay(plain_registry.host, bandwidth=BANDWIDTH) as relay:
        yield f"docker://{relay.address}/{big_image.repo}:{big_image.tag}"


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        select.select([fd], [], [], 30)
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _on_a_terminal(*args: str | Path) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 140, 0, 0))
    with subprocess.Popen(
        [*CLI, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=cli_env(TERM="xterm-256color"),
    ) as proc:
        os.close(slave)
        try:
            drawn = _read_all(master)
        finally:
            os.close(master)
        return proc.wait(60), drawn.decode(errors="replace")


def _short(digest: str) -> str:
    return digest.split(":")[1][:12]


def test_unpack_draws_bars_while_bytes_flow(
    slow_ref: str, big_layers_image: BuiltImage, tmp_path: Path
) -> None:
    status, drawn = _on_a_terminal("--tls-verify=false", "unpack", slow_ref, tmp_path / "rootfs")
    assert status == 0, drawn
    assert "\x1b[" in drawn and "━" in drawn  # rich's bars, with terminal escapes
    for digest in big_layers_image.layer_digests:
        assert _short(digest) in drawn
    # Bars between empty and full: drawn while the layer was still arriving.
    partial = {int(p) for p in re.findall(r"\b(\d{1,2})%", drawn)} - {0}
    assert partial, drawn
    assert re.search(r"\b\d+ entries", drawn)
    assert "layer 1: " in drawn and "layer 2: " in drawn
    assert "Unpacked " in drawn


def test_unpack_progress_forced_and_quiet(big_layers_image: BuiltImage, tmp_path: Path) -> None:
    ref = big_layers_image.ref
    forced = subprocess.run(
        [*CLI, "--progress", "unpack", ref, tmp_path / "forced"],
        capture_output=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    err = forced.stderr.decode()
    assert forced.returncode == 0, err
    assert "━" in err and re.search(r"\b\d+ entries", err)
    assert "layer 1: " in err and "layer 2: " in err
    plain = subprocess.run(
        [*CLI, "unpack", ref, tmp_path / "plain"], capture_output=True, env=cli_env(), timeout=60
    )
    lines = plain.stderr.decode().splitlines()
    assert plain.returncode == 0 and "\x1b[" not in plain.stderr.decode()
    assert [line.split(":")[0] for line in lines] == ["layer 1", "layer 2", "Unpacked sha256"]
    quiet = subprocess.run(
        [*CLI, "-q", "unpack", ref, tmp_path / "quiet"], capture_output=True, env=cli_env()
    )
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_unpack_reports_bytes_and_entries_as_it_reads(
    big_layers_image: BuiltImage, tmp_path: Path
) -> None:
    """The hook the display draws from: bytes read and entries applied, per layer."""
    calls: list[tuple[Descriptor, int, int]] = []
    finished: list[LayerResult] = []
    result = unpack(
        big_layers_image.ref,
        tmp_path / "rootfs",
        progress=finished.append,
        on_bytes=lambda descriptor, done, entries: calls.append((descriptor, done, entries)),
    )
    assert finished == list(result.layers)
    for layer in result.layers:
        assert layer.descriptor is not None
        mine = [
            (done, entries) for d, done, entries in calls if d.digest == layer.descriptor.digest
        ]
        assert mine[0] == (0, 0)
        assert len(mine) > 2  # several reports while the layer is read
        assert [done for done, _ in mine] == sorted(done for done, _ in mine)
        assert mine[-1] == (layer.descriptor.size, layer.entries)
    # The layers are reported one after the other, in order.
    order = [d.digest for d, _, _ in calls]
    assert order == sorted(
        order, key=[layer.descriptor.digest for layer in result.layers if layer.descriptor].index
    )
