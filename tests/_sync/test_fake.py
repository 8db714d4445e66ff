# Generated from tests/_async/test_fake.py by tools/gen_sync.py.
# Edit the source, not this file.
"""Protocol 0.2.4 to 0.2.8 behaviour through the fake proxy (tests/support/fakeproxy.py).

The installed skopeo may speak only 0.2.3; the fake follows docs/protocol.md at each
version. Whatever the real skopeo can run is tested against it in test_proxy.py.
Written once in ``tests/_async/``; the blocking twin in ``tests/_sync/`` is generated
from it by tools/gen_sync.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from containers_image_proxy import (
    BlobVerificationError,
    ImageNotFoundError,
    ImageProxy,
    ImageProxyConfig,
    ProtocolError,
    ProxyExitedError,
    ProxyTooOldError,
    RequestError,
    StallTimeoutError,
    VerificationError,
)
from tests.support.fakeproxy import fake_skopeo
from tests.support.images import BuiltImage

pytestmark = pytest.mark.usefixtures("no_leaks")

VERSIONS = ["0.2.3", "0.2.4", "0.2.5", "0.2.6", "0.2.7", "0.2.8"]


def fake(version: str, *options: str, stall_timeout: float | None = 30.0) -> ImageProxy:
    config = ImageProxyConfig(
        skopeo_cmd=fake_skopeo(version, *options), stall_timeout=stall_timeout
    )
    return ImageProxy(config)


def sent_methods(log: Path) -> list[str]:
    return [line.split(" ", 1)[0] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("version", VERSIONS)
def test_open_image_optional(version: str, oci_image: BuiltImage, tmp_path: Path) -> None:
    log = tmp_path / "log"
    missing = f"oci:{oci_image.path}:no-such-tag"
    with fake(version, "--log", str(log)) as proxy:
        assert proxy.protocol_version == version
        if version == "0.2.3":
            with pytest.raises(ProxyTooOldError, match=r"OpenImageOptional needs protocol 0\.2\.4"):
                proxy.open_image_optional(missing)
            assert "OpenImageOptional" not in sent_methods(log)
            return
        assert proxy.open_image_optional(missing) is None
        image = proxy.open_image_optional(oci_image.ref)
        assert image is not None
        assert (proxy.fetch_manifest(image))[0] == oci_image.manifest_digest
        proxy.close_image(image)
        with pytest.raises(RequestError):
            proxy.open_image_optional(f"oci:{tmp_path}/no-layout:latest")


@pytest.mark.parametrize("version", VERSIONS)
def test_layer_info(version: str, oci_image: BuiltImage, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with fake(version, "--log", str(log)) as proxy:
        with proxy.open_image(oci_image.ref) as img:
            info = proxy.get_layer_info(img)
    methods = sent_methods(log)
    if version < "0.2.5":
        assert info is None
        assert not {"GetLayerInfo", "GetLayerInfoPiped"} & set(methods)
        return
    assert info is not None
    assert [(str(i.digest), i.size, i.media_type) for i in info] == [
        (digest, size, media_type) for digest, size, media_type, _ in oci_image.layers
    ]
    if version < "0.2.7":
        assert "GetLayerInfo" in methods and "GetLayerInfoPiped" not in methods
    else:
        assert "GetLayerInfoPiped" in methods and "GetLayerInfo" not in methods


@pytest.mark.reliability("bad input", "inline layer info beyond the 32 KiB packet")
@pytest.mark.parametrize("version", ["0.2.6", "0.2.7"])
def test_layer_info_of_many_layers(version: str, many_layers_image: BuiltImage) -> None:
    expected = [(d, size, media_type) for d, size, media_type, _ in many_layers_image.layers]
    with fake(version) as proxy, proxy.open_image(many_layers_image.ref) as img:
        if version == "0.2.6":
            # Inline, 300 layers overflow the 32 KiB packet: a clear error, no hang.
            with pytest.raises(ProtocolError, match="32768-byte packet limit"):
                proxy.get_layer_info(img)
            return
        info = proxy.get_layer_info(img)
        assert info is not None
        assert [(str(i.digest), i.size, i.media_type) for i in info] == expected


def test_raw_blob(big_layers_image: BuiltImage) -> None:
    digest, size, _, data = big_layers_image.layers[0]
    with fake("0.2.8") as proxy, proxy.open_image(big_layers_image.ref) as img:
        with proxy.get_raw_blob(img, digest) as blob:
            assert blob.size == size
            assert blob.read() == data
        with proxy.get_raw_blob(img, digest, size=size) as blob:
            assert blob.read(10) == data[:10]
        # Closed early: not an error, and the proxy goes on.
        with proxy.get_raw_blob(img, digest) as blob:
            chunks = [chunk for chunk in blob]
        assert b"".join(chunks) == data
        with pytest.raises(VerificationError, match="asked for 5 bytes"):
            proxy.get_raw_blob(img, digest, size=5)


@pytest.mark.reliability("bad input", "GetRawBlob on a proxy older than 0.2.8")
@pytest.mark.parametrize("version", ["0.2.3", "0.2.7"])
def test_raw_blob_needs_028(version: str, oci_image: BuiltImage, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with fake(version, "--log", str(log)) as proxy:
        with proxy.open_image(oci_image.ref) as img:
            with pytest.raises(ProxyTooOldError) as info:
                proxy.get_raw_blob(img, oci_image.layer_digests[0])
    assert info.value.required == "0.2.8" and info.value.found == version
    assert "GetRawBlob" not in sent_methods(log)


@pytest.mark.reliability("fault", "GetRawBlob error pipe reports retryable / other")
@pytest.mark.parametrize(("code", "retryable"), [("retryable", True), ("other", False)])
def test_raw_blob_errors(code: str, retryable: bool, big_layers_image: BuiltImage) -> None:
    digest = big_layers_image.layer_digests[0]
    with fake("0.2.8", "--raw-blob-error", code) as proxy:
        with proxy.open_image(big_layers_image.ref) as img:
            blob = proxy.get_raw_blob(img, digest)
            with pytest.raises(RequestError) as info:
                blob.read()
            blob.close()
            assert info.value.code == code
            assert info.value.retryable is retryable
            assert info.value.method == "GetRawBlob"
            # The proxy is still usable.
            assert (proxy.fetch_manifest(img))[1].layers


@pytest.mark.reliability("fault", "GetRawBlob data longer than the blob")
def test_raw_blob_is_verified_here(big_layers_image: BuiltImage) -> None:
    digest, _, _, data = big_layers_image.layers[0]
    with fake("0.2.8", "--raw-blob-extra-bytes", "7") as proxy:
        with proxy.open_image(big_layers_image.ref) as img:
            blob = proxy.get_raw_blob(img, digest)
            with pytest.raises(VerificationError, match="7 byte"):
                blob.read()
            blob.close()
            # The caller may opt out of verification.
            with proxy.get_raw_blob(img, digest, verify=False) as blob:
                got = blob.read()
            assert got[: len(data)] == data and len(got) == len(data) + 7


def test_error_codes_in_replies(oci_image: BuiltImage) -> None:
    missing = f"oci:{oci_image.path}:no-such-tag"
    for version, code in (("0.2.8", "other"), ("0.2.7", None)):
        with fake(version) as proxy:
            with pytest.raises(ImageNotFoundError) as info:
                proxy.open_image(missing)
            assert info.value.code == code
            assert not info.value.retryable


@pytest.mark.parametrize("version", ["0.2.3", "0.2.8"])
def test_unknown_size_blob(version: str, big_layers_image: BuiltImage) -> None:
    digest, size, _, data = big_layers_image.layers[0]
    with fake(version, "--unknown-size") as proxy:
        with proxy.open_image(big_layers_image.ref) as img:
            with proxy.get_blob(img, digest, size) as blob:
                assert blob.size == size
                assert blob.read() == data
            # The proxy is free again once the blob has ended.
            assert (proxy.fetch_manifest(img))[1].layers
            if version == "0.2.8":
                with proxy.get_raw_blob(img, digest) as raw:
                    assert raw.size is None
                    assert raw.read() == data


@pytest.mark.reliability("fault", "source yields more bytes than promised")
def test_extra_bytes_from_source(big_layers_image: BuiltImage) -> None:
    digest, size, _, _ = big_layers_image.layers[0]
    with fake("0.2.8", "--blob-extra-bytes", "3") as proxy:
        with proxy.open_image(big_layers_image.ref) as img:
            blob = proxy.get_blob(img, digest, size)
            with pytest.raises(VerificationError):
                blob.read()
            blob.close()
            assert (proxy.fetch_manifest(img))[1].layers


@pytest.mark.reliability("fault", "source stalls mid-blob (GetBlob and GetRawBlob)")
def test_stalled_blob_times_out(
    big_layers_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    digest, size, _, _ = big_layers_image.layers[0]
    with fake("0.2.8", "--stall-blob", stall_timeout=1.0) as proxy:
        with proxy.open_image(big_layers_image.ref) as img:
            blob = proxy.get_blob(img, digest, size)
            started = time.monotonic()
            with pytest.raises(StallTimeoutError, match=r"no data arrived for 1\.0 seconds"):
                blob.read()
            seconds = time.monotonic() - started
            assert seconds < 5
            observe(f"StallTimeoutError after {seconds:.1f}s (timeout 1s); next request OK")
            blob.close()
            # Other requests still work.
            assert (proxy.fetch_manifest(img))[1].layers
            raw = proxy.get_raw_blob(img, digest)
            with pytest.raises(StallTimeoutError):
                raw.read()
            raw.close()
            assert (proxy.fetch_manifest(img))[1].layers


@pytest.mark.reliability("process", "proxy exits while a request is outstanding")
def test_proxy_dies_during_request(oci_image: BuiltImage, observe: Callable[[str], None]) -> None:
    proxy = fake("0.2.8", "--die-on", "GetManifest").open()
    img = proxy.open_image(oci_image.ref)
    started = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        proxy.fetch_manifest(img)
    assert time.monotonic() - started < 10
    assert info.value.method == "GetManifest"
    assert info.value.returncode == 3
    assert "fake proxy dying" in info.value.stderr
    observe(str(info.value))
    assert "GetManifest" in str(info.value) and "exit status 3" in str(info.value)
    with pytest.raises(ProxyExitedError):
        proxy.finalize()


@pytest.mark.parametrize(
    "kind",
    [
        "notjson",
        "not-object",
        "missing-field",
        "wrong-type",
        "fd-without-pipeid",
        "pipeid-without-fd",
        "two-fds",
        "oversize",
        "unknown-error-code",
        "zero-handle",
    ],
)
@pytest.mark.reliability("bad input", "malformed reply from the proxy")
def test_malformed_replies(
    kind: str, oci_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    with fake("0.2.8", "--bad-reply", kind) as proxy:
        with pytest.raises(ProtocolError, match="OpenImage") as info:
            proxy.open_image(oci_image.ref)
        observe(f"ProtocolError: {info.value}; next request OK")
        # One bad reply does not desynchronize the connection.
        with proxy.open_image(oci_image.ref) as img:
            assert (proxy.fetch_manifest(img))[0] == oci_image.manifest_digest


def test_corruption_reported_by_finish_pipe(corrupted_image: BuiltImage) -> None:
    with fake("0.2.8") as proxy, proxy.open_image(corrupted_image.ref) as img:
        digest, size, _, _ = corrupted_image.layers[0]
        blob = proxy.get_blob(img, digest, size)
        with pytest.raises(BlobVerificationError, match="corrupted blob"):
            blob.read()
        blob.close()
