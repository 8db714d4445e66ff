"""The client against the real skopeo, on images the suite builds.

Written once in ``tests/_async/``; the blocking twin in ``tests/_sync/`` is generated
from it by tools/gen_sync.py, so every test runs against both clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from containers_image_proxy import (
    AsyncImageProxy,
    BlobVerificationError,
    ClosedError,
    ImageNotFoundError,
    ImageProxyConfig,
    InvalidDigestError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    ProxyExitedError,
    ProxyTooOldError,
    RequestError,
    SpawnError,
    UnsupportedOptionError,
    VerificationError,
)
from containers_image_proxy.oci import MEDIA_TYPE_IMAGE_MANIFEST
from tests.support.fakeproxy import fake_skopeo
from tests.support.images import BuiltImage, Layer, MultiPlatformImage, build_oci_layout
from tests.support.resources import child_pids

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
async def proxy(skopeo: str) -> AsyncIterator[AsyncImageProxy]:
    async with AsyncImageProxy() as p:
        yield p


def _layer_bytes(image: BuiltImage) -> dict[str, bytes]:
    return {digest: data for digest, _, _, data in image.layers}


async def _check_image(proxy: AsyncImageProxy, image: BuiltImage) -> None:
    """Manifest digest, manifest, config and every layer come out as stored."""
    async with await proxy.open_image(image.ref) as img:
        digest, manifest = await proxy.fetch_manifest(img)
        assert digest == image.manifest_digest
        assert [str(layer.digest) for layer in manifest.layers] == image.layer_digests
        config = await proxy.fetch_config(img)
        assert [str(d) for d in config.rootfs.diff_ids] == image.diff_ids
        stored = _layer_bytes(image)
        for layer in manifest.layers:
            async with await proxy.get_descriptor(img, layer) as blob:
                assert blob.size == layer.size
                data = await blob.read()
                assert await blob.read() == b""
            assert blob.closed
            assert data == stored[layer.digest]
            assert hashlib.sha256(data).hexdigest() == layer.digest.encoded


async def test_protocol_version(proxy: AsyncImageProxy) -> None:
    assert proxy.protocol_version.startswith("0.2.")
    assert proxy.supports("GetManifest")


async def test_oci_layout(proxy: AsyncImageProxy, oci_image: BuiltImage) -> None:
    await _check_image(proxy, oci_image)
    async with await proxy.open_image(oci_image.ref) as img:
        _, raw = await proxy.fetch_manifest_raw_oci(img)
        assert raw == oci_image.manifest
        config = await proxy.fetch_config(img)
        assert config.config is not None and config.config.labels
        assert config.config.labels == json.loads(oci_image.config)["config"]["Labels"]


async def test_oci_archive(proxy: AsyncImageProxy, oci_archive_image: BuiltImage) -> None:
    await _check_image(proxy, oci_archive_image)


async def test_dir(proxy: AsyncImageProxy, dir_image: BuiltImage) -> None:
    await _check_image(proxy, dir_image)


async def test_docker_archive_is_converted_to_oci(
    proxy: AsyncImageProxy, docker_archive_image: BuiltImage
) -> None:
    async with await proxy.open_image(docker_archive_image.ref) as img:
        digest, raw = await proxy.fetch_manifest_raw_oci(img)
        # The digest is the original Docker manifest's; the bytes are OCI.
        assert digest == docker_archive_image.manifest_digest
        assert raw != docker_archive_image.manifest
        manifest = json.loads(raw)
        assert manifest["mediaType"] == MEDIA_TYPE_IMAGE_MANIFEST
        _, typed = await proxy.fetch_manifest(img)
        stored = _layer_bytes(docker_archive_image)
        for layer in typed.layers:
            async with await proxy.get_descriptor(img, layer) as blob:
                assert await blob.read() == stored[layer.digest]


@pytest.mark.parametrize(("arch", "key"), [("amd64", "linux/amd64"), ("arm64", "linux/arm64/v8")])
async def test_index_platform_override(
    skopeo: str, oci_index_image: MultiPlatformImage, arch: str, key: str
) -> None:
    wanted = oci_index_image.images[key]
    config = ImageProxyConfig(override_arch=arch, override_os="linux")
    async with AsyncImageProxy(config) as proxy, await proxy.open_image(oci_index_image.ref) as img:
        digest, manifest = await proxy.fetch_manifest(img)
        # skopeo answers with the digest of the platform's manifest, not the index's.
        assert digest == wanted.manifest_digest
        assert [str(layer.digest) for layer in manifest.layers] == wanted.layer_digests
        image_config = await proxy.fetch_config(img)
        assert image_config.architecture == arch


async def test_big_config_beyond_pipe_buffer(
    proxy: AsyncImageProxy, big_config_image: BuiltImage
) -> None:
    assert len(big_config_image.config) > 64 * 1024
    async with await proxy.open_image(big_config_image.ref) as img:
        raw = await proxy.fetch_config_raw(img)
        assert len(raw) > 64 * 1024
        assert (
            json.loads(raw)["config"]["Labels"]
            == json.loads(big_config_image.config)["config"]["Labels"]
        )


async def test_many_layers(proxy: AsyncImageProxy, many_layers_image: BuiltImage) -> None:
    async with await proxy.open_image(many_layers_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        assert len(manifest.layers) == len(many_layers_image.layers) == 300
        info = await proxy.get_layer_info(img)
        if proxy.supports("GetLayerInfo"):
            assert info is not None and len(info) == 300
        else:
            assert info is None


async def test_blobs_stream_in_parallel(
    proxy: AsyncImageProxy, big_layers_image: BuiltImage
) -> None:
    """Two blobs larger than a pipe, read in alternation over one proxy."""
    stored = _layer_bytes(big_layers_image)
    async with await proxy.open_image(big_layers_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        first, second = manifest.layers
        a = await proxy.get_descriptor(img, first)
        b = await proxy.get_descriptor(img, second)
        parts: dict[str, list[bytes]] = {first.digest: [], second.digest: []}
        # Interleaved reads: with FinishPipe awaited during the transfer (one blob at a
        # time) the second blob could not start before the first ended.
        active = {a: first, b: second}
        while active:
            for blob, layer in list(active.items()):
                chunk = await blob.read(512 * 1024)
                if chunk:
                    parts[layer.digest].append(chunk)
                else:
                    del active[blob]
                    await blob.aclose()
        assert min(len(p) for p in parts.values()) > 4
        for layer in (first, second):
            assert b"".join(parts[layer.digest]) == stored[layer.digest]
        # The proxy still answers afterwards.
        assert (await proxy.fetch_manifest(img))[1] == manifest


async def test_readinto_and_iteration(proxy: AsyncImageProxy, big_layers_image: BuiltImage) -> None:
    stored = _layer_bytes(big_layers_image)
    async with await proxy.open_image(big_layers_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        buffer = bytearray(100_000)
        got = bytearray()
        async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
            assert blob.digest == layer.digest
            while count := await blob.readinto(buffer):
                got += buffer[:count]
            assert blob.bytes_read == layer.size
        assert got == stored[layer.digest]
        chunks = []
        async with await proxy.get_blob(img, str(layer.digest), layer.size) as blob:
            async for chunk in blob:
                chunks.append(chunk)
        assert b"".join(chunks) == stored[layer.digest]


async def test_empty_reads_leave_the_blob_alone(
    proxy: AsyncImageProxy, big_layers_image: BuiltImage
) -> None:
    stored = _layer_bytes(big_layers_image)
    async with await proxy.open_image(big_layers_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        async with await proxy.get_blob(img, layer.digest, layer.size) as blob:
            assert await blob.read(0) == b""
            assert await blob.readinto(bytearray()) == 0
            head = await blob.read(1000)
            assert await blob.read(0) == b""
            assert await blob.readinto(memoryview(bytearray(10))[:0]) == 0
            rest = await blob.read()
            assert blob.bytes_read == layer.size
        assert head + rest == stored[layer.digest]
        assert (await proxy.fetch_manifest(img))[1] == manifest


async def test_early_close_leaves_proxy_usable(
    proxy: AsyncImageProxy, big_layers_image: BuiltImage
) -> None:
    stored = _layer_bytes(big_layers_image)
    async with await proxy.open_image(big_layers_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        for amount in (0, 1, 1 << 20):
            blob = await proxy.get_descriptor(img, layer)
            if amount:
                assert await blob.read(amount)
            await blob.aclose()  # not an error
            assert blob.closed
            with pytest.raises(ClosedError):
                await blob.read(1)
        async with await proxy.get_descriptor(img, layer) as blob:
            assert await blob.read() == stored[layer.digest]


@pytest.mark.reliability("fault", "a layer blob corrupted on disk")
async def test_corrupted_blob_raises(
    skopeo: str, corrupted_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    async with AsyncImageProxy() as proxy, await proxy.open_image(corrupted_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        bad = manifest.layers[0]
        blob = await proxy.get_descriptor(img, bad)
        with pytest.raises(BlobVerificationError) as info:
            await blob.read()
        assert info.value.method == "GetBlob"
        observe(f"{type(info.value).__name__}: {info.value}; other layers still served")
        await blob.aclose()
        assert isinstance(info.value, VerificationError)
        # Other blobs of the same image still come through.
        good = manifest.layers[1]
        async with await proxy.get_descriptor(img, good) as blob:
            assert await blob.read() == _layer_bytes(corrupted_image)[good.digest]


@pytest.mark.reliability("bad input", "get_blob with a size one byte off")
async def test_wrong_size_is_refused(proxy: AsyncImageProxy, oci_image: BuiltImage) -> None:
    async with await proxy.open_image(oci_image.ref) as img:
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        for size in (layer.size - 1, layer.size + 1):
            with pytest.raises(VerificationError, match=f"asked for {size} bytes"):
                await proxy.get_blob(img, layer.digest, size)
        assert (await proxy.fetch_manifest(img))[1] == manifest


@pytest.mark.reliability("bad input", "malformed digests, negative/huge/float sizes, unknown blob")
async def test_bad_arguments(proxy: AsyncImageProxy, oci_image: BuiltImage) -> None:
    async with await proxy.open_image(oci_image.ref) as img:
        digest = oci_image.layer_digests[0]
        for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "g" * 64, digest.upper()):
            with pytest.raises(InvalidDigestError):
                await proxy.get_blob(img, bad, 1)
        for size in (-1, 2**60):
            with pytest.raises(ValueError, match="out of range"):
                await proxy.get_blob(img, digest, size)
        with pytest.raises(TypeError):
            await proxy.get_blob(img, digest, 1.5)  # type: ignore[arg-type]
        unknown = "sha256:" + "0" * 64
        with pytest.raises(RequestError):
            blob = await proxy.get_blob(img, unknown, 10)
            await blob.read()
        assert (await proxy.fetch_manifest(img))[0] == oci_image.manifest_digest


@pytest.mark.reliability(
    "bad input", "missing tag, missing layout, unknown transport, empty reference"
)
async def test_missing_image(
    proxy: AsyncImageProxy, oci_image: BuiltImage, tmp_path: Path, observe: Callable[[str], None]
) -> None:
    with pytest.raises(ImageNotFoundError) as info:
        await proxy.open_image(f"oci:{oci_image.path}:no-such-tag")
    assert info.value.method == "OpenImage"
    assert "no-such-tag" in str(info.value)
    observe(f"ImageNotFoundError: {info.value}")
    with pytest.raises(RequestError):
        await proxy.open_image(f"oci:{tmp_path}/missing:latest")
    with pytest.raises(RequestError, match="transport"):
        await proxy.open_image("nosuchtransport:foo")
    with pytest.raises(ValueError):
        await proxy.open_image("")
    # Errors leave the proxy usable.
    await _check_image(proxy, oci_image)


async def test_open_image_optional(proxy: AsyncImageProxy, oci_image: BuiltImage) -> None:
    if not proxy.supports("OpenImageOptional"):
        with pytest.raises(ProxyTooOldError, match=r"0\.2\.4"):
            await proxy.open_image_optional(oci_image.ref)
        return
    assert await proxy.open_image_optional(f"oci:{oci_image.path}:no-such-tag") is None
    img = await proxy.open_image_optional(oci_image.ref)
    assert img is not None
    await proxy.close_image(img)


@pytest.mark.reliability("bad input", "a method newer than the proxy")
async def test_methods_newer_than_proxy(proxy: AsyncImageProxy, oci_image: BuiltImage) -> None:
    async with await proxy.open_image(oci_image.ref) as img:
        if not proxy.supports("GetRawBlob"):
            with pytest.raises(ProxyTooOldError, match=r"GetRawBlob needs protocol 0\.2\.8"):
                await proxy.get_raw_blob(img, oci_image.layer_digests[0])
        else:
            async with await proxy.get_raw_blob(img, oci_image.layer_digests[0]) as blob:
                assert await blob.read() == oci_image.layers[0][3]


@pytest.mark.reliability("bad input", "closed image, image of another proxy, use after finalize")
async def test_handles_are_checked(skopeo: str, oci_image: BuiltImage) -> None:
    async with AsyncImageProxy() as proxy, AsyncImageProxy() as other:
        img = await proxy.open_image(oci_image.ref)
        with pytest.raises(ClosedError, match="another proxy"):
            await other.fetch_manifest(img)
        await proxy.close_image(img)
        await proxy.close_image(img)  # twice is harmless
        with pytest.raises(ClosedError, match="was closed"):
            await proxy.fetch_manifest(img)
        img = await proxy.open_image(oci_image.ref)
    assert img.closed
    with pytest.raises(ClosedError, match="proxy is closed"):
        await proxy.fetch_manifest(img)
    with pytest.raises(ClosedError):
        await proxy.open_image(oci_image.ref)
    with pytest.raises(ClosedError, match="not open"):
        await AsyncImageProxy().open_image(oci_image.ref)
    await proxy.finalize()  # again: nothing happens


@pytest.mark.reliability("bad input", "skopeo command that does not exist")
async def test_skopeo_missing(observe: Callable[[str], None]) -> None:
    with pytest.raises(SpawnError, match="no-such-skopeo") as info:
        await AsyncImageProxy(ImageProxyConfig(skopeo_cmd=["no-such-skopeo"])).open()
    assert isinstance(info.value, FileNotFoundError | OSError)
    observe(f"SpawnError: {info.value}")


@pytest.mark.reliability("bad input", "skopeo command that is not executable")
async def test_skopeo_not_executable(tmp_path: Path) -> None:
    path = tmp_path / "skopeo"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(SpawnError, match=re.escape(str(path))):
        await AsyncImageProxy(ImageProxyConfig(skopeo_cmd=[str(path)])).open()


@pytest.mark.reliability("bad input", "an option the installed skopeo lacks")
async def test_unknown_flag_is_surfaced(skopeo: str, observe: Callable[[str], None]) -> None:
    config = ImageProxyConfig(user_agent_prefix="ci-test")
    try:
        async with AsyncImageProxy(config) as proxy:
            assert proxy.protocol_version  # a newer skopeo knows the flag
    except UnsupportedOptionError as exc:
        assert (exc.option, exc.field) == ("--user-agent-prefix", "user_agent_prefix")
        assert "unknown flag: --user-agent-prefix" in exc.stderr
        observe(f"UnsupportedOptionError: {exc}")
        assert isinstance(exc.__cause__, ProxyExitedError)
        assert exc.__cause__.returncode not in (None, 0)


@pytest.mark.reliability("process", "SIGKILL skopeo between requests")
async def test_child_killed_between_requests(
    skopeo: str, oci_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    proxy = await AsyncImageProxy().open()
    img = await proxy.open_image(oci_image.ref)
    os.kill(proxy.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        await proxy.fetch_manifest(img)
    seconds = time.monotonic() - started
    assert seconds < 10
    observe(f"{info.value} after {seconds:.2f}s")
    assert info.value.method == "GetManifest"
    assert info.value.returncode == -signal.SIGKILL
    assert "GetManifest" in str(info.value) and "signal 9" in str(info.value)
    # Later calls fail the same way, at once.
    with pytest.raises(ProxyExitedError):
        await proxy.fetch_config(img)
    with pytest.raises(ProxyExitedError):
        await proxy.finalize()


@pytest.mark.reliability("process", "SIGKILL skopeo during a blob stream")
async def test_child_killed_during_blob(
    skopeo: str, big_layers_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    proxy = await AsyncImageProxy().open()
    img = await proxy.open_image(big_layers_image.ref)
    _, manifest = await proxy.fetch_manifest(img)
    blob = await proxy.get_descriptor(img, manifest.layers[0])
    assert await blob.read(1000)
    os.kill(proxy.pid, signal.SIGKILL)
    with pytest.raises(ProxyExitedError) as info:
        await blob.read()
    assert info.value.method == "GetBlob"
    assert info.value.returncode == -signal.SIGKILL
    observe(str(info.value))
    await blob.aclose()
    with pytest.raises(ProxyExitedError):
        await proxy.finalize()


@pytest.mark.reliability("process", "debug on and 4 MiB flood on skopeo's stderr")
async def test_debug_output_and_stderr_flood(skopeo: str, oci_image: BuiltImage) -> None:
    # 4 MiB on stderr before skopeo starts, then skopeo's own debug output.
    flood = ["sh", "-c", 'head -c 4194304 /dev/zero | tr "\\0" x >&2; exec "$@"', "flood", skopeo]
    async with AsyncImageProxy(ImageProxyConfig(debug=True, skopeo_cmd=flood)) as proxy:
        await _check_image(proxy, oci_image)


@pytest.mark.reliability("security", "auth data absent from the child's argv and environment")
async def test_auth_data_stays_private(skopeo: str, oci_image: BuiltImage) -> None:
    secret = "s3cr3t-token-value"
    auth = json.dumps({"auths": {"registry.invalid": {"auth": secret}}}).encode()
    async with AsyncImageProxy(ImageProxyConfig(auth_data=auth)) as proxy:
        cmdline = Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{proxy.pid}/environ").read_bytes()
        assert secret.encode() not in b"".join(cmdline) and secret.encode() not in environ
        path = cmdline[cmdline.index(b"--authfile") + 1].decode()
        fd = int(path.rsplit("/", 1)[1])
        # The child has the data under that descriptor, in a file with no name on disk.
        assert Path(f"/proc/{proxy.pid}/fd/{fd}").read_bytes() == auth
        assert os.readlink(f"/proc/{proxy.pid}/fd/{fd}").startswith("/memfd:")
        await _check_image(proxy, oci_image)


@pytest.mark.reliability("security", "username/password only in a private auth file")
async def test_credentials_become_a_private_auth_file(skopeo: str) -> None:
    config = ImageProxyConfig(username="alice", password="pa55-w0rd")
    async with AsyncImageProxy(config) as proxy:
        raw = b"".join(Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0"))
        assert b"pa55-w0rd" not in raw and b"alice" not in raw
        with pytest.raises(RequestError):
            # Nothing listens there: the open fails, but the entry has been written.
            await proxy.open_image("docker://127.0.0.1:9/test/image:latest")
        cmdline = Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0")
        fd = cmdline[cmdline.index(b"--authfile") + 1].decode().rsplit("/", 1)[1]
        auths = json.loads(Path(f"/proc/{proxy.pid}/fd/{fd}").read_bytes())["auths"]
        assert list(auths) == ["127.0.0.1:9"]
        assert auths["127.0.0.1:9"]["auth"] == "YWxpY2U6cGE1NS13MHJk"  # alice:pa55-w0rd


@pytest.mark.reliability("bad input", "proxy answering protocol 0.2.2")
async def test_too_old_proxy(no_leaks: None, observe: Callable[[str], None]) -> None:
    config = ImageProxyConfig(skopeo_cmd=fake_skopeo("0.2.2"))
    with pytest.raises(ProxyTooOldError, match=r"0\.2\.3.*0\.2\.2") as info:
        await AsyncImageProxy(config).open()
    observe(str(info.value))


@pytest.mark.reliability("process", "the Python parent is SIGKILLed: skopeo must exit")
@pytest.mark.parametrize("spawn", ["setpriv", "preexec_fn"])
async def test_parent_death_kills_child(
    spawn: str,
    skopeo: str,
    oci_image: BuiltImage,
    tmp_path: Path,
    observe: Callable[[str], None],
) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from containers_image_proxy import ImageProxy, _process\n"
        # Without setpriv the parent-death signal is set by a preexec_fn instead.
        f"if {spawn!r} == 'preexec_fn': _process._SETPRIV = None\n"
        "p = ImageProxy().open()\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    import subprocess

    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "skopeo outlived its parent"
        observe(f"skopeo gone {time.monotonic() - deadline + 10:.2f}s after the parent's SIGKILL")
    finally:
        parent.kill()
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
    assert pid not in child_pids()


async def test_layer_with_unicode_and_many_files(skopeo: str, tmp_path: Path) -> None:
    files = {f"dir/{i}/ünïcode-{i}.txt": f"{i}".encode() * i for i in range(200)}
    image = build_oci_layout(tmp_path / "layout", [Layer(files)])
    async with AsyncImageProxy() as proxy:
        await _check_image(proxy, image)


async def test_signature_policy(skopeo: str, oci_image: BuiltImage, tmp_path: Path) -> None:
    reject = tmp_path / "policy.json"
    reject.write_text(json.dumps({"default": [{"type": "reject"}]}))
    async with AsyncImageProxy(ImageProxyConfig(policy=reject)) as proxy:
        version = tuple(int(part) for part in proxy.protocol_version.split("."))
        if version >= (0, 2, 6):
            with pytest.raises(PolicyRejectedError, match="rejected"):
                await proxy.open_image(oci_image.ref)
        else:
            # Before 0.2.6 the proxy would not enforce the policy: refused before OpenImage.
            with pytest.raises(PolicyNotEnforcedError, match="reject"):
                await proxy.open_image(oci_image.ref)
        policy_arg = Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0")
        assert str(reject).encode() in policy_arg
    async with AsyncImageProxy(ImageProxyConfig(insecure_policy=True)) as proxy:
        await _check_image(proxy, oci_image)


async def test_archive_temporaries_are_removed(
    skopeo: str, oci_archive_image: BuiltImage, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    async with AsyncImageProxy(ImageProxyConfig(tmpdir=tmpdir)) as proxy:
        async with await proxy.open_image(oci_archive_image.ref):
            # The archive is unpacked into the proxy's tmpdir while the image is open.
            assert list(tmpdir.iterdir())
        await _check_image(proxy, oci_archive_image)
        assert not list(tmpdir.iterdir())


async def test_image_options_reach_skopeo(
    skopeo: str, oci_image: BuiltImage, tmp_path: Path
) -> None:
    certs, registries_d, shared = tmp_path / "certs", tmp_path / "registries.d", tmp_path / "b"
    for directory in (certs, registries_d, shared):
        directory.mkdir()
    config = ImageProxyConfig(
        certificate_directory=certs,
        registries_d=registries_d,
        shared_blob_dir=shared,
        auth_anonymous=True,
        insecure_skip_tls_verification=True,
        override_os="linux",
    )
    async with AsyncImageProxy(config) as proxy:
        argv = Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--no-creds" in argv and b"--tls-verify=false" in argv
        assert str(registries_d).encode() in argv
        async with await proxy.open_image(oci_image.ref) as img:
            # With a shared blob directory skopeo looks for the blobs of oci: images there.
            with pytest.raises(ImageNotFoundError, match=str(shared)):
                await proxy.fetch_manifest(img)


async def test_decryption_keys_on_this_skopeo(
    skopeo: str, oci_image: BuiltImage, tmp_path: Path
) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    config = ImageProxyConfig(decryption_keys=[str(key)])
    try:
        async with AsyncImageProxy(config) as proxy:
            # A skopeo that knows the flag reads the key when an image is opened.
            with pytest.raises(RequestError):
                await proxy.open_image(oci_image.ref)
    except UnsupportedOptionError as exc:
        # No image proxy here has --decryption-key: a clear error names the field.
        assert (exc.option, exc.field) == ("--decryption-key", "decryption_keys")
        assert "unknown flag: --decryption-key" in exc.stderr
        assert "decryption_keys" in str(exc) and "encrypted images" in str(exc)


async def test_manifest_beyond_pipe_buffer(skopeo: str, tmp_path: Path) -> None:
    note = "n" * (100 * 1024)
    image = build_oci_layout(
        tmp_path / "layout", [Layer({"a": b"a"})], extra_annotations={"note": note}
    )
    assert len(image.manifest) > 64 * 1024
    async with AsyncImageProxy() as proxy, await proxy.open_image(image.ref) as img:
        digest, raw = await proxy.fetch_manifest_raw_oci(img)
        assert digest == image.manifest_digest
        assert raw == image.manifest
        _, manifest = await proxy.fetch_manifest(img)
        assert manifest.annotations is not None and manifest.annotations["note"] == note


async def test_auth_data_from_a_file_object(
    skopeo: str, oci_image: BuiltImage, tmp_path: Path
) -> None:
    auth = json.dumps({"auths": {"registry.invalid": {"auth": "dTpw"}}}).encode()
    path = tmp_path / "auth.json"
    path.write_bytes(auth)
    with path.open("rb") as source:
        async with AsyncImageProxy(ImageProxyConfig(auth_data=source)) as proxy:
            cmdline = Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0")
            fd = cmdline[cmdline.index(b"--authfile") + 1].decode().rsplit("/", 1)[1]
            assert Path(f"/proc/{proxy.pid}/fd/{fd}").read_bytes() == auth
            await _check_image(proxy, oci_image)
