"""The command line when the network fails or the user interrupts it.

Interrupts are sent as a user sends them: the command runs on a pseudo-terminal
as the foreground process group, and ^C is typed into the terminal (written to
the master side), so the line discipline signals the whole foreground group.
skopeo runs in a process group of its own, so only the client is interrupted: it
cleans up, stops skopeo, prints ``interrupted`` and exits 130 (SIGTERM: 143).
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from containers_image_proxy import ImageProxy, _process, cli
from containers_image_proxy.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED
from tests.support.images import BIG_LAYER_FILES, BuiltImage, run_skopeo
from tests.support.registry import RegistryImage
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

Observe = Callable[[str], None]

MID_BLOB = 1_000_000
#: A wrapper that runs the command, optionally without setpriv (the preexec_fn spawn).
RUNNER = (
    "import sys\n"
    "from containers_image_proxy import _process, cli\n"
    "if sys.argv[1] == 'preexec_fn':\n"
    "    _process._SETPRIV = None\n"
    "raise SystemExit(cli.main(sys.argv[2:]))\n"
)


def _env(marker: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CONTAINERS_IMAGE_PROXY_DEBUG", "FORCE_COLOR", "NO_COLOR")
    }
    # Inherited by skopeo: tells its processes in /proc from any other skopeo.
    env["CIP_TEST_MARKER"] = marker
    env["TERM"] = "xterm-256color"
    return env


def _skopeos_with(marker: str) -> list[int]:
    """Live skopeo processes whose environment holds ``marker``."""
    found = []
    needle = f"CIP_TEST_MARKER={marker}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            command = Path(f"/proc/{name}/comm").read_text().strip()
        except OSError:
            continue
        if command == "skopeo" and needle in environ.split(b"\0"):
            found.append(int(name))
    return found


class Terminal:
    """A command running on a new pseudo-terminal, as its foreground process group."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self._output: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            select.select([self.fd], [], [], 1)
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the terminal's other side is gone
                return
            if not chunk:
                return
            self._output.append(chunk)

    def type(self, text: bytes) -> None:
        """Type ``text`` on the terminal's keyboard."""
        os.write(self.fd, text)

    def wait(self, timeout: float) -> tuple[int, bytes]:
        """The exit status (as a shell gives it) and everything it printed."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"still running after {timeout}s: {self.output()!r}")
            time.sleep(0.05)
        self._reader.join(5)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status), self.output()

    def output(self) -> bytes:
        return b"".join(self._output)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _command(spawn: str, *args: str | Path) -> list[str]:
    return [sys.executable, "-c", RUNNER, spawn, *map(str, args)]


def _check_layout(dest: Path, image: RegistryImage) -> None:
    for path in (dest / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    inspected = json.loads(run_skopeo("inspect", f"oci:{dest}:latest").stdout)
    assert inspected["Layers"] == image.image.layer_digests


def _no_temporaries(dest: Path) -> None:
    blobs = dest / "blobs" / "sha256"
    left = [p.name for p in blobs.iterdir() if p.name.startswith(".")] if blobs.exists() else []
    assert left == [], f"temporary blobs left behind: {left}"


# --------------------------------------------------------------------------- interrupts


@pytest.mark.reliability("process", "Ctrl-C in a terminal during pull")
@pytest.mark.parametrize("spawn", ["setpriv", "preexec_fn"])
def test_ctrl_c_during_pull(
    relay: Relay,
    big_registry_image: RegistryImage,
    tmp_path: Path,
    spawn: str,
    observe: Observe,
) -> None:
    marker = uuid.uuid4().hex
    dest = tmp_path / "layout"
    relay.set_faults(bandwidth=1 << 20)  # the layers take about 6 s
    term = Terminal(
        _command(spawn, "--tls-verify=false", "pull", relay.image_ref(big_registry_image), dest),
        _env(marker),
    )
    _wait_for(lambda: relay.bytes_down > 1_500_000, 30, "the layers to stream")
    skopeos = _skopeos_with(marker)
    assert skopeos, "no skopeo found while pulling"
    start = time.monotonic()
    term.type(b"\x03")
    status, output = term.wait(30)
    stopped = time.monotonic() - start
    text = output.decode(errors="replace")
    assert status == EXIT_INTERRUPTED, text
    assert "containers-image-proxy: interrupted" in text
    assert "Traceback" not in text and "exited unexpectedly" not in text
    assert _skopeos_with(marker) == []
    assert stopped < 10
    _no_temporaries(dest)
    assert not (dest / "index.json").exists()  # the pull did not finish

    # The next run takes up what is there.
    relay.set_faults()
    again = subprocess.run(
        _command(
            spawn, "--tls-verify=false", "pull", "--json", relay.image_ref(big_registry_image), dest
        ),
        capture_output=True,
        env=_env(marker),
        timeout=120,
    )
    assert again.returncode == EXIT_OK, again.stderr.decode()
    result = json.loads(again.stdout)
    assert result["skipped"], "nothing of the interrupted pull was kept"
    _check_layout(dest, big_registry_image)
    observe(
        f"{spawn}: exit {status} {stopped:.2f}s after ^C, 'interrupted', no traceback,"
        f" skopeo pid(s) {skopeos} gone, no temporary blob; the next pull skipped"
        f" {len(result['skipped'])} blob(s) and fetched {len(result['fetched'])}"
    )


@pytest.mark.reliability("process", "Ctrl-C in a terminal during unpack")
def test_ctrl_c_during_unpack(
    relay: Relay, big_registry_image: RegistryImage, tmp_path: Path, observe: Observe
) -> None:
    marker = uuid.uuid4().hex
    dest = tmp_path / "rootfs"
    relay.set_faults(bandwidth=1 << 20)
    term = Terminal(
        _command(
            "setpriv", "--tls-verify=false", "unpack", relay.image_ref(big_registry_image), dest
        ),
        _env(marker),
    )
    _wait_for(lambda: (dest / "big" / "a.bin").exists(), 30, "the first layer to unpack")
    term.type(b"\x03")
    status, output = term.wait(30)
    text = output.decode(errors="replace")
    assert status == EXIT_INTERRUPTED, text
    assert "containers-image-proxy: interrupted" in text
    assert "Traceback" not in text
    assert _skopeos_with(marker) == []
    assert not dest.exists()  # created by this run: removed, as on any failure

    relay.set_faults()
    again = subprocess.run(
        _command(
            "setpriv", "--tls-verify=false", "unpack", relay.image_ref(big_registry_image), dest
        ),
        capture_output=True,
        env=_env(marker),
        timeout=120,
    )
    assert again.returncode == EXIT_OK, again.stderr.decode()
    for name, data in BIG_LAYER_FILES.items():
        assert (dest / name).read_bytes() == data
    observe(f"exit {status}, 'interrupted', no traceback, rootfs removed; the next run unpacked")


@pytest.mark.reliability("process", "SIGTERM during pull")
def test_sigterm_during_pull(
    relay: Relay, big_registry_image: RegistryImage, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    dest = tmp_path / "layout"
    relay.set_faults(bandwidth=1 << 20)
    with subprocess.Popen(
        _command(
            "setpriv", "--tls-verify=false", "pull", relay.image_ref(big_registry_image), dest
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(marker),
    ) as proc:
        _wait_for(lambda: relay.bytes_down > 1_500_000, 30, "the layers to stream")
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    text = err.decode(errors="replace")
    assert proc.returncode == EXIT_TERMINATED, text
    assert "containers-image-proxy: interrupted" in text
    assert "Traceback" not in text
    assert _skopeos_with(marker) == []
    _no_temporaries(dest)


PROGRAM = (
    "import sys, time\n"
    "from containers_image_proxy import ImageProxy, _process\n"
    "if sys.argv[1] == 'preexec_fn':\n"
    "    _process._SETPRIV = None\n"
    "with ImageProxy() as proxy:\n"
    "    print('ready', flush=True)\n"
    "    try:\n"
    "        time.sleep(60)\n"
    "    except KeyboardInterrupt:\n"
    "        print('caught', flush=True)\n"
    "    with proxy.open_image(sys.argv[2]) as image:\n"
    "        print('digest', proxy.fetch_manifest(image)[0], flush=True)\n"
)


@pytest.mark.reliability("process", "Ctrl-C caught by a program: its proxy keeps working")
@pytest.mark.parametrize("spawn", ["setpriv", "preexec_fn"])
def test_ctrl_c_caught_by_a_program(
    spawn: str, skopeo: str, oci_image: BuiltImage, observe: Observe
) -> None:
    # An interactive program (a shell, a notebook) that catches ^C goes on with its
    # proxy: the terminal's SIGINT must not have reached skopeo.
    term = Terminal([sys.executable, "-c", PROGRAM, spawn, oci_image.ref], _env(uuid.uuid4().hex))
    _wait_for(lambda: b"ready" in term.output(), 30, "the proxy to start")
    term.type(b"\x03")
    status, output = term.wait(30)
    text = output.decode(errors="replace")
    assert status == EXIT_OK, text
    assert "caught" in text
    assert f"digest {oci_image.manifest_digest}" in text
    observe(f"{spawn}: after ^C the same proxy answered GetManifest")


@pytest.mark.parametrize("spawn", ["setpriv", "preexec_fn"])
def test_skopeo_has_its_own_process_group(
    spawn: str, skopeo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if spawn == "preexec_fn":
        monkeypatch.setattr(_process, "_SETPRIV", None)
    with ImageProxy() as proxy:
        assert os.getpgid(proxy.pid) == proxy.pid
        assert os.getpgid(proxy.pid) != os.getpgid(0)
        # Still the same session: skopeo is not detached from its user's terminal.
        assert os.getsid(proxy.pid) == os.getsid(0)


# --------------------------------------------------------------------------- network options


@pytest.mark.reliability("fault", "CLI pull: layer connections reset mid-blob")
def test_pull_retries_from_the_command_line(
    relay: Relay, big_registry_image: RegistryImage, tmp_path: Path, observe: Observe
) -> None:
    relay.set_faults(cut_after=MID_BLOB, max_cuts=2)
    dest = tmp_path / "layout"
    proc = subprocess.run(
        [
            *_command("setpriv", "--tls-verify=false", "pull", "--json"),
            "--retry-times",
            "2",
            "--retry-delay",
            "100ms",
            relay.image_ref(big_registry_image),
            dest,
        ],
        capture_output=True,
        env=_env(uuid.uuid4().hex),
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_OK, err
    retries = json.loads(proc.stdout)["retries"]
    assert len(retries) == 2
    assert [r["attempt"] for r in retries] in ([1, 2], [1, 1])
    assert all("connection reset by peer" in r["error"] for r in retries)
    assert err.count("retrying ") == 2 and "in 0.1s after:" in err
    assert ", 2 retries" in err
    _check_layout(dest, big_registry_image)
    observe(err.strip().splitlines()[-1])


def test_pull_without_retries_from_the_command_line(
    relay: Relay, big_registry_image: RegistryImage, tmp_path: Path
) -> None:
    relay.set_faults(cut_after=MID_BLOB, max_cuts=1)
    start = time.monotonic()
    proc = subprocess.run(
        [
            *_command("setpriv", "--tls-verify=false", "--retry-times", "0", "pull"),
            "--stall-timeout",
            "60",
            relay.image_ref(big_registry_image),
            tmp_path / "layout",
        ],
        capture_output=True,
        env=_env(uuid.uuid4().hex),
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_ERROR, err
    assert "connection reset by peer" in err and "retrying" not in err
    assert time.monotonic() - start < 30  # the probe, not the 60 s stall timeout


def test_network_options_reach_the_configuration() -> None:
    args = cli.parse_args(
        [
            "--stall-timeout",
            "2m",
            "--probe-interval",
            "500ms",
            "pull",
            "--retry-times",
            "5",
            "--retry-delay",
            "2s",
            "oci:x",
            "dest",
        ]
    )
    config = cli.make_config(args, None)
    assert (config.stall_timeout, config.probe_interval) == (120, 0.5)
    assert (config.retry_times, config.retry_delay) == (5, 2)
    off = cli.make_config(
        cli.parse_args(["--stall-timeout", "0", "--probe-interval", "0", "layers", "oci:x"]),
        None,
    )
    assert (off.stall_timeout, off.probe_interval) == (None, None)
    default = cli.make_config(cli.parse_args(["layers", "oci:x"]), None)
    assert (default.stall_timeout, default.probe_interval, default.retry_times) == (300, 3, 3)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2", 2.0), ("2.5", 2.5), ("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1", "1d", "2 s s", "abc"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(Exception, match="duration"):
        cli.parse_duration(text)


def test_bad_network_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--retry-times", "-1", "layers", "oci:x"]) == 2
    assert "--retry-times: must be at least 0" in capsys.readouterr().err
    assert cli.main(["--probe-interval", "soon", "layers", "oci:x"]) == 2
    assert "expected a duration" in capsys.readouterr().err
