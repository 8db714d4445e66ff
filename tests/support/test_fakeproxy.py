"""Tests of tests/support/fakeproxy.py itself, spoken to over a raw SOCK_SEQPACKET socket."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKE = Path(__file__).with_name("fakeproxy.py")
TIMEOUT = 10.0
MAX_MSG = 32 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


# --------------------------------------------------------------------------- a tiny layout


@dataclass
class Blob:
    data: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Layout:
    path: Path
    layer: Blob  # of the amd64 image, tagged "latest"
    config: Blob
    manifest: Blob
    arm64_manifest: Blob  # the arm64 image, reachable only through the index
    index: Blob  # an image index (amd64 + arm64), tagged "multi"

    def ref(self, tag: str = "latest") -> str:
        return f"oci:{self.path}:{tag}"


def _put(root: Path, data: bytes) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return Blob(data, f"sha256:{digest}")


def _image(root: Path, arch: str, payload: bytes) -> tuple[Blob, Blob, Blob]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = _put(root, buf.getvalue())
    config = _put(
        root,
        json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Env": ["PATH=/bin"], "Labels": {"b": "2", "a": "<1>"}},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
                "history": [{"created_by": "test"}],
            },
            indent=2,
        ).encode(),
    )
    manifest = _put(
        root,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config.digest,
                    "size": config.size,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer.digest,
                        "size": layer.size,
                    }
                ],
            },
            indent=1,
        ).encode(),
    )
    return layer, config, manifest


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    root = tmp_path_factory.mktemp("oci")
    (root / "blobs" / "sha256").mkdir(parents=True)
    # 200 KiB: more than a pipe buffer, so writers really block on the reader.
    layer, config, manifest = _image(root, "amd64", os.urandom(200 * 1024))
    _, _, arm64_manifest = _image(root, "arm64", b"arm64")
    index = _put(
        root,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": m.digest,
                        "size": m.size,
                        "platform": {"os": "linux", "architecture": arch},
                    }
                    for m, arch in ((manifest, "amd64"), (arm64_manifest, "arm64"))
                ],
            }
        ).encode(),
    )
    top = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mtype,
                "digest": blob.digest,
                "size": blob.size,
                "annotations": {REF_NAME: tag},
            }
            for blob, mtype, tag in (
                (manifest, OCI_MANIFEST, "latest"),
                (index, OCI_INDEX, "multi"),
            )
        ],
    }
    (root / "index.json").write_text(json.dumps(top))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return Layout(root, layer, config, manifest, arm64_manifest, index)


# --------------------------------------------------------------------------- raw client


class Proxy:
    """One proxy child on a socketpair, spoken to packet by packet."""

    def __init__(
        self,
        *args: str,
        protocol: str = "0.2.8",
        program: list[str] | None = None,
        proxy_args: tuple[str, ...] = (),
    ) -> None:
        cmd = program or [sys.executable, str(FAKE), "--protocol", protocol]
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [*cmd, *args, "experimental-image-proxy", *proxy_args],
                stdin=child.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            child.close()
        self.sock.settimeout(TIMEOUT)
        self.open_fds: set[int] = set()
        self.stderr = b""

    def send(self, method: str, *args: Any) -> None:
        self.sock.send(json.dumps({"method": method, "args": list(args)}).encode())

    def recv_raw(self, bufsize: int = 64 * 1024) -> tuple[bytes, list[int], int]:
        data, fds, flags, _ = socket.recv_fds(self.sock, bufsize, 2)
        self.open_fds.update(fds)
        return data, fds, flags

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        data, fds, _ = self.recv_raw()
        assert data, "unexpected end of file on the socket"
        return json.loads(data), fds

    def call(self, method: str, *args: Any) -> tuple[dict[str, Any], list[int]]:
        self.send(method, *args)
        return self.recv()

    def ok(self, method: str, *args: Any) -> Any:
        reply, fds = self.call(method, *args)
        assert reply["success"], reply
        assert not fds
        return reply["value"]

    def close_fd(self, fd: int) -> None:
        self.open_fds.discard(fd)
        os.close(fd)

    def read_all(self, fd: int) -> bytes:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        self.close_fd(fd)
        return b"".join(chunks)

    def read_exactly(self, fd: int, size: int) -> bytes:
        chunks, left = [], size
        while left and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def fetch(self, method: str, *args: Any) -> tuple[Any, bytes, dict[str, Any]]:
        """Call a piped method per docs/protocol.md rule 3; return value, data, FinishPipe reply."""
        reply, fds = self.call(method, *args)
        assert reply["success"], reply
        assert len(fds) == 1 and reply["pipeid"] > 0
        self.send("FinishPipe", reply["pipeid"])
        data = self.read_all(fds[0])
        finish, more = self.recv()
        assert not more
        return reply["value"], data, finish

    def wait_exit(self) -> int:
        """Wait for the child to exit on its own; return its status."""
        rc: int = self.proc.wait(timeout=TIMEOUT)
        assert self.proc.stderr is not None
        self.stderr += self.proc.stderr.read()
        return rc

    def close(self) -> None:
        for fd in list(self.open_fds):
            self.close_fd(fd)
        self.sock.close()
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.stderr += self.proc.stderr.read()
        self.proc.stderr.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    before = _open_fds()
    yield
    leaked = {fd for fd in _open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {leaked}"


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("version", ["0.2.3", "0.2.5", "0.2.8"])
def test_initialize_returns_protocol(version: str) -> None:
    with Proxy(protocol=version) as proxy:
        reply, _ = proxy.call("GetManifest", 1)
        assert reply["error"] == "client error: must invoke Initialize"
        assert proxy.ok("Initialize") == version
        reply, _ = proxy.call("Initialize")
        assert not reply["success"]
        assert reply["error"] == "already initialized"


def test_open_image_optional_needs_024(layout: Layout) -> None:
    with Proxy(protocol="0.2.3") as proxy:
        proxy.ok("Initialize")
        reply, _ = proxy.call("OpenImageOptional", layout.ref())
        assert reply == {
            "success": False,
            "value": None,
            "pipeid": 0,
            "error": "unknown method: OpenImageOptional",
        }
    with Proxy(protocol="0.2.4") as proxy:
        proxy.ok("Initialize")
        assert proxy.ok("OpenImageOptional", layout.ref()) == 1
        assert proxy.ok("OpenImageOptional", layout.ref("nosuchtag")) == 0
        reply, _ = proxy.call("OpenImageOptional", f"oci:{layout.path}/missing:latest")
        assert not reply["success"]
        assert "index.json: no such file or directory" in reply["error"]
        reply, _ = proxy.call("OpenImage", layout.ref("nosuchtag"))
        assert reply["error"] == 'no descriptor found for reference "nosuchtag"'


def test_get_manifest_rule3(layout: Layout) -> None:
    with Proxy() as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref())
        digest, data, finish = proxy.fetch("GetManifest", handle)
        assert digest == layout.manifest.digest
        assert data == layout.manifest.data
        assert finish == {
            "success": True,
            "value": None,
            "pipeid": 0,
            "error_code": "",
            "error": "",
        }
        _, config, _ = proxy.fetch("GetFullConfig", handle)
        assert json.loads(config) == json.loads(layout.config.data)
        assert b"\\u003c1\\u003e" in config  # Go's encoding/json escapes HTML characters
        layers = proxy.ok("GetLayerInfo", handle)
        assert layers == [
            {
                "digest": layout.layer.digest,
                "size": layout.layer.size,
                "media_type": "application/vnd.oci.image.layer.v1.tar",
            }
        ]
        _, piped, _ = proxy.fetch("GetLayerInfoPiped", handle)
        assert json.loads(piped) == layers


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "sha256:manifest-amd64"),
        (("--override-arch", "arm64"), "sha256:manifest-arm64"),
        (("--override-arch", "arm64", "--manifest-digest", "index"), "sha256:index"),
    ],
)
def test_index_resolution(layout: Layout, args: tuple[str, ...], expected: str) -> None:
    digests = {
        "sha256:manifest-amd64": layout.manifest.digest,
        "sha256:manifest-arm64": layout.arm64_manifest.digest,
        "sha256:index": layout.index.digest,
    }
    with Proxy("--override-arch", "amd64", *args) as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref("multi"))
        digest, data, finish = proxy.fetch("GetManifest", handle)
        assert finish["success"]
        assert digest == digests[expected]
        arm = "arm64" in args
        assert data == (layout.arm64_manifest if arm else layout.manifest).data


def test_get_blob_then_finish_pipe(layout: Layout) -> None:
    with Proxy() as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref())
        blob = layout.layer
        # docs/protocol.md rule 4: read exactly `size` bytes, FinishPipe, then drain to EOF.
        reply, (fd,) = proxy.call("GetBlob", handle, blob.digest, blob.size)
        assert reply["success"] and reply["value"] == blob.size and reply["pipeid"] > 0
        assert proxy.read_exactly(fd, blob.size) == blob.data
        proxy.send("FinishPipe", reply["pipeid"])
        assert proxy.read_all(fd) == b""
        finish, _ = proxy.recv()
        assert finish["success"], finish
        # A wrong size is reported by FinishPipe only; the reply carries the true size.
        value, data, finish = proxy.fetch("GetBlob", handle, blob.digest, 5)
        assert value == blob.size and data == blob.data
        assert finish["error"] == f"expected 5 bytes in blob, got {blob.size}"
        assert finish["error_code"] == "other"
        reply, fds = proxy.call("GetBlob", handle, "sha256:" + "0" * 64, 1)
        assert not reply["success"] and not fds
        assert "no such file or directory" in reply["error"]


def test_get_blob_broken_pipe(layout: Layout) -> None:
    with Proxy() as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref())
        reply, (fd,) = proxy.call("GetBlob", handle, layout.layer.digest, layout.layer.size)
        proxy.close_fd(fd)
        finish, _ = proxy.call("FinishPipe", reply["pipeid"])
        assert finish["error_code"] == "EPIPE"
        assert finish["error"] == "write |1: broken pipe"


def test_get_blob_extra_bytes(layout: Layout) -> None:
    with Proxy("--blob-extra-bytes", "3") as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref())
        _, data, finish = proxy.fetch("GetBlob", handle, layout.layer.digest, layout.layer.size)
        assert data == layout.layer.data + b"\0\0\0"
        assert finish["error"] == f"corrupted blob, expecting {layout.layer.digest}"


def test_get_raw_blob(layout: Layout) -> None:
    with Proxy() as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref())
        reply, fds = proxy.call("GetRawBlob", handle, layout.layer.digest)
        assert reply["success"] and reply["value"] == layout.layer.size
        assert reply["pipeid"] == 0 and len(fds) == 2
        assert proxy.read_all(fds[0]) == layout.layer.data
        assert proxy.read_all(fds[1]) == b""


def test_get_raw_blob_retryable_error(layout: Layout) -> None:
    with Proxy("--raw-blob-error", "retryable") as proxy:
        proxy.ok("Initialize")
        handle = proxy.ok("OpenImage", layout.ref())
        reply, (data_fd, err_fd) = proxy.call("GetRawBlob", handle, layout.layer.digest)
        assert reply["success"]
        data = proxy.read_all(data_fd)
        assert len(data) < layout.layer.size and layout.layer.data.startswith(data)
        error = json.loads(proxy.read_all(err_fd))
        assert error["code"] == "retryable"
        assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize("version", ["0.2.3", "0.2.7", "0.2.8"])
def test_error_code_only_at_028(layout: Layout, version: str) -> None:
    with Proxy(protocol=version) as proxy:
        ok, _ = proxy.call("Initialize")
        failed, _ = proxy.call("OpenImage", "nosuchtransport:x")
        unknown, _ = proxy.call("NoSuchMethod")
        assert ok["success"] and not failed["success"] and not unknown["success"]
        assert unknown["error"] == "unknown method: NoSuchMethod"
        for reply in (ok, failed, unknown):
            assert ("error_code" in reply) == (version == "0.2.8")
        if version == "0.2.8":
            assert list(failed) == ["success", "value", "pipeid", "error_code", "error"]
            assert (ok["error_code"], failed["error_code"]) == ("", "other")


def test_die_on(layout: Layout) -> None:
    with Proxy("--die-on", "OpenImage") as proxy:
        proxy.ok("Initialize")
        proxy.send("OpenImage", layout.ref())
        data, fds, _ = proxy.recv_raw()
        assert (data, fds) == (b"", [])
        assert proxy.wait_exit() == 3
        assert b"fake proxy dying" in proxy.stderr


def test_shutdown_and_log(layout: Layout, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    with Proxy("--log", str(log)) as proxy:
        proxy.ok("Initialize")
        proxy.ok("OpenImage", layout.ref())
        proxy.send("Shutdown")
        data, _, _ = proxy.recv_raw()
        assert data == b""  # no reply: the server exits
        assert proxy.wait_exit() == 0
    lines = log.read_text().splitlines()
    assert lines == ["Initialize []", f"OpenImage {json.dumps([layout.ref()])}", "Shutdown []"]


def test_skopeo_options_accepted_unknown_refused() -> None:
    global_opts = ("--debug", "--insecure-policy", "--override-os", "linux", "--tmpdir=/tmp")
    proxy_opts = ("--tls-verify=false", "--authfile", "/dev/null", "--sockfd", "0", "--no-creds")
    with Proxy(*global_opts, proxy_args=proxy_opts) as proxy:
        assert proxy.ok("Initialize") == "0.2.8"
    assert b"level=debug" in proxy.stderr
    # A proxy option before the subcommand is an unknown flag there, as in skopeo.
    result = subprocess.run(
        [sys.executable, str(FAKE), "--authfile", "x", "experimental-image-proxy"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert b"unknown flag: --authfile" in result.stderr


@pytest.mark.parametrize(
    "kind", ["notjson", "two-fds", "fd-without-pipeid", "pipeid-without-fd", "oversize"]
)
def test_bad_reply(layout: Layout, kind: str) -> None:
    with Proxy("--bad-reply", kind) as proxy:
        proxy.ok("Initialize")
        proxy.send("OpenImage", layout.ref())
        data, fds, flags = proxy.recv_raw(MAX_MSG)
        for fd in fds:
            proxy.close_fd(fd)
        if kind == "notjson":
            with pytest.raises(ValueError):
                json.loads(data)
        elif kind == "oversize":
            assert flags & socket.MSG_TRUNC
        else:
            reply = json.loads(data)
            assert len(fds) == {"two-fds": 2, "fd-without-pipeid": 1}.get(kind, 0)
            assert (reply["pipeid"] != 0) == (kind == "pipeid-without-fd")
        # Only the first OpenImage is spoiled.
        assert proxy.ok("OpenImage", layout.ref()) == 2


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_same_replies_as_installed_skopeo(layout: Layout) -> None:
    """At 0.2.3 the fake must answer like the installed skopeo (pipe ids aside)."""
    version = subprocess.run(
        ["skopeo", "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    ).stdout
    if "1.9.3" not in version:
        pytest.skip(f"messages were checked against skopeo 1.9.3, not {version.strip()}")

    def session(proxy: Proxy) -> list[Any]:
        out: list[Any] = []

        def call(method: str, *args: Any) -> dict[str, Any]:
            reply, fds = proxy.call(method, *args)
            for fd in fds:
                proxy.send("FinishPipe", reply["pipeid"])
                data = proxy.read_all(fd)
                finish, _ = proxy.recv()
                out.append(data)
                out.append(finish)
            out.append({**reply, "pipeid": bool(reply["pipeid"])})
            return reply

        call("OpenImage", layout.ref())
        call("Initialize")
        for ref in (layout.ref("nope"), f"oci:{layout.path}", "nosuch:x", "noref"):
            call("OpenImage", ref)
        call("OpenImage", layout.ref("multi"))
        for method in ("GetManifest", "GetFullConfig", "GetConfig", "GetLayerInfo"):
            call(method, 1)
        call("GetBlob", 1, layout.layer.digest, layout.layer.size)
        call("GetBlob", 1, layout.layer.digest, 7)
        call("GetBlob", 1, "sha256:abc", 7)
        call("GetManifest", "1")
        call("CloseImage", 1)
        call("CloseImage", 1)
        call("FinishPipe", 77)
        return out

    with Proxy("--insecure-policy", "--override-arch", "arm64", program=["skopeo"]) as real:
        expected = session(real)
    with Proxy("--insecure-policy", "--override-arch", "arm64", protocol="0.2.3") as fake:
        assert session(fake) == expected
