"""The client against real skopeo and a real registry (CNCF distribution) on 127.0.0.1.

Three registries run for the whole session (see tests/support/registry.py): plain HTTP,
HTTPS with a CA of its own, and HTTPS with htpasswd basic auth. Images are pushed
with ``skopeo copy --preserve-digests`` so the registry stores the very manifest
the suite built, and every byte pulled back can be compared with what was built.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy import (
    AsyncImageProxy,
    ImageNotFoundError,
    ImageProxy,
    ImageProxyConfig,
    ProxyTooOldError,
    RequestError,
)
from containers_image_proxy.oci import MEDIA_TYPE_IMAGE_MANIFEST
from tests.support.images import BuiltImage, MultiPlatformImage
from tests.support.registry import Registry, RegistryImage, RegistryIndex

pytestmark = pytest.mark.usefixtures("no_leaks")

Observe = Callable[[str], None]

INSECURE = ImageProxyConfig(insecure_skip_tls_verification=True)
UNAUTHORIZED = r"(?i)unauthorized|authentication required"
UNKNOWN_AUTHORITY = r"(?i)x509|certificate signed by unknown authority|unknown authority"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tls_image(tls_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return tls_registry.push_image(oci_image, "test/image", "latest")


@pytest.fixture(scope="module")
def auth_image(auth_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return auth_registry.push_image(oci_image, "private/image", "v1")


@pytest.fixture(scope="module")
def registry_index(plain_registry: Registry, oci_index_image: MultiPlatformImage) -> RegistryIndex:
    return plain_registry.push_index_image(oci_index_image, "test/multi", "multi")


# --------------------------------------------------------------------------- helpers


def _secrets(registry: Registry) -> list[bytes]:
    """The password and the base64 user:password token an auth file would hold."""
    assert registry.username is not None and registry.password is not None
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode())
    return [registry.password.encode(), token]


def _auth_json(registry: Registry) -> bytes:
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    return json.dumps({"auths": {registry.host: {"auth": token}}}).encode()


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _same_config(raw: bytes, image: BuiltImage) -> bool:
    """Whether GetFullConfig's re-encoding (it drops empty objects) says what was built."""
    return bool(_without_empty(json.loads(raw)) == _without_empty(image.config_json))


def _check_pulled(proxy: ImageProxy, ref: str, image: BuiltImage) -> None:
    """Manifest digest and bytes, config and every layer come out of ``ref`` as built."""
    with proxy.open_image(ref) as img:
        digest, raw = proxy.fetch_manifest_raw_oci(img)
        assert digest == image.manifest_digest
        # An OCI manifest is handed over untouched.
        assert raw == image.manifest
        _, manifest = proxy.fetch_manifest(img)
        assert manifest.media_type in (None, MEDIA_TYPE_IMAGE_MANIFEST)
        assert str(manifest.config.digest) == image.config_digest
        # GetFullConfig re-encodes the configuration; the blob itself is byte-exact.
        assert _same_config(proxy.fetch_config_raw(img), image)
        with proxy.get_descriptor(img, manifest.config) as blob:
            assert blob.read() == image.config
        assert [str(layer.digest) for layer in manifest.layers] == image.layer_digests
        stored = {digest: data for digest, _, _, data in image.layers}
        for layer in manifest.layers:
            with proxy.get_descriptor(img, layer) as blob:
                assert blob.size == layer.size
                data = blob.read()
                assert blob.read() == b""
            assert data == stored[str(layer.digest)]
            assert hashlib.sha256(data).hexdigest() == layer.digest.encoded


async def _acheck_pulled(proxy: AsyncImageProxy, ref: str, image: BuiltImage) -> None:
    """The asyncio twin of :func:`_check_pulled`."""
    async with await proxy.open_image(ref) as img:
        digest, raw = await proxy.fetch_manifest_raw_oci(img)
        assert digest == image.manifest_digest
        assert raw == image.manifest
        _, manifest = await proxy.fetch_manifest(img)
        assert _same_config(await proxy.fetch_config_raw(img), image)
        async with await proxy.get_descriptor(img, manifest.config) as blob:
            assert await blob.read() == image.config
        assert [str(layer.digest) for layer in manifest.layers] == image.layer_digests
        stored = {digest: data for digest, _, _, data in image.layers}
        for layer in manifest.layers:
            async with await proxy.get_descriptor(img, layer) as blob:
                data = await blob.read()
            assert data == stored[str(layer.digest)]


def _proc_secrets_absent(pid: int, secrets: list[bytes]) -> tuple[bytes, bytes]:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    for secret in secrets:
        assert secret not in cmdline
        assert secret not in environ
    return cmdline, environ


def _error_text(error: BaseException) -> str:
    parts = [str(error), repr(error), *(str(a) for a in error.args)]
    parts.append(getattr(error, "message", ""))
    cause = error.__cause__ or error.__context__
    if cause is not None:
        parts.append(repr(cause))
    return "\n".join(parts)


def _skopeo_records(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    """Wait (briefly) for skopeo's stderr line containing ``needle`` to be logged."""
    deadline = time.monotonic() + 5
    while True:
        records = [r for r in caplog.records if r.name == "containers_image_proxy.skopeo"]
        if any(needle in r.getMessage() for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


# --------------------------------------------------------------------------- plain registry


def test_push_keeps_the_manifest(plain_registry: Registry, registry_image: RegistryImage) -> None:
    image = registry_image.image
    body, media_type, digest = plain_registry.get_manifest("test/image", "latest")
    assert body == image.manifest
    assert media_type == MEDIA_TYPE_IMAGE_MANIFEST
    assert digest == image.manifest_digest
    assert registry_image.digest_ref == f"docker://{plain_registry.host}/test/image@{digest}"
    # Uncompressed layers stay uncompressed (skopeo would gzip them without
    # --preserve-digests, and the manifest digest would change).
    assert "application/vnd.oci.image.layer.v1.tar" in {media for _, _, media, _ in image.layers}


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_plain_registry(registry_image: RegistryImage, by: str) -> None:
    ref = registry_image.ref if by == "tag" else registry_image.digest_ref
    with ImageProxy(INSECURE) as proxy:
        _check_pulled(proxy, ref, registry_image.image)


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_plain_registry_async(registry_image: RegistryImage, by: str) -> None:
    ref = registry_image.ref if by == "tag" else registry_image.digest_ref
    async with AsyncImageProxy(INSECURE) as proxy:
        await _acheck_pulled(proxy, ref, registry_image.image)


def test_plain_registry_needs_insecure(registry_image: RegistryImage) -> None:
    with ImageProxy() as proxy, pytest.raises(RequestError, match="HTTP response to HTTPS"):
        proxy.open_image(registry_image.ref)


# --------------------------------------------------------------------------- missing images


@pytest.mark.reliability("bad input", "tag missing from a registry")
def test_missing_tag(
    plain_registry: Registry, registry_image: RegistryImage, observe: Observe
) -> None:
    with ImageProxy(INSECURE) as proxy:
        for ref in (plain_registry.ref("test/image", "nope"), plain_registry.ref("no/repo", "x")):
            start = time.monotonic()
            with pytest.raises(ImageNotFoundError, match="manifest unknown") as info:
                proxy.open_image(ref)
            elapsed = time.monotonic() - start
            observe(f"ImageNotFoundError after {elapsed:.2f}s: {info.value.message}")
        # The proxy is still usable.
        with proxy.open_image(registry_image.ref) as img:
            assert proxy.fetch_manifest(img)[0] == registry_image.image.manifest_digest


def test_missing_tag_optional(plain_registry: Registry, observe: Observe) -> None:
    ref = plain_registry.ref("test/image", "nope")
    with ImageProxy(INSECURE) as proxy:
        if proxy.supports("OpenImageOptional"):
            assert proxy.open_image_optional(ref) is None
        else:
            with pytest.raises(ProxyTooOldError, match=r"0\.2\.4") as info:
                proxy.open_image_optional(ref)
            assert info.value.method == "OpenImageOptional"
            observe(f"protocol {proxy.protocol_version}: {info.value}")


async def test_missing_tag_optional_async(plain_registry: Registry) -> None:
    ref = plain_registry.ref("test/image", "nope")
    async with AsyncImageProxy(INSECURE) as proxy:
        if proxy.supports("OpenImageOptional"):
            assert await proxy.open_image_optional(ref) is None
        else:
            with pytest.raises(ProxyTooOldError):
                await proxy.open_image_optional(ref)
        with pytest.raises(ImageNotFoundError):
            await proxy.open_image(ref)


# --------------------------------------------------------------------------- manifest lists


@pytest.mark.parametrize(("arch", "key"), [("amd64", "linux/amd64"), ("arm64", "linux/arm64/v8")])
@pytest.mark.parametrize("by", ["tag", "digest"])
def test_index_platform_override(
    registry_index: RegistryIndex, arch: str, key: str, by: str
) -> None:
    wanted = registry_index.index.images[key]
    ref = registry_index.ref if by == "tag" else registry_index.digest_ref
    config = ImageProxyConfig(
        insecure_skip_tls_verification=True, override_os="linux", override_arch=arch
    )
    with ImageProxy(config) as proxy, proxy.open_image(ref) as img:
        digest, manifest = proxy.fetch_manifest(img)
        # The platform manifest's digest, not the index's.
        assert digest == wanted.manifest_digest != registry_index.index.index_digest
        assert [str(layer.digest) for layer in manifest.layers] == wanted.layer_digests
        assert proxy.fetch_config(img).architecture == arch
        stored = {digest: data for digest, _, _, data in wanted.layers}
        for layer in manifest.layers:
            with proxy.get_descriptor(img, layer) as blob:
                assert blob.read() == stored[str(layer.digest)]


async def test_index_platform_override_async(registry_index: RegistryIndex) -> None:
    config = ImageProxyConfig(insecure_skip_tls_verification=True, override_arch="arm64")
    async with AsyncImageProxy(config) as proxy:
        await _acheck_pulled(
            proxy, registry_index.digest_ref, registry_index.index.images["linux/arm64/v8"]
        )


# --------------------------------------------------------------------------- TLS


@pytest.mark.reliability("security", "registry certificate signed by an unknown CA")
def test_tls_unknown_authority(tls_image: RegistryImage, observe: Observe) -> None:
    with ImageProxy() as proxy:
        start = time.monotonic()
        with pytest.raises(RequestError, match=UNKNOWN_AUTHORITY) as info:
            proxy.open_image(tls_image.ref)
        assert not isinstance(info.value, ImageNotFoundError)
        observe(f"RequestError after {time.monotonic() - start:.2f}s: {info.value.message}")


def test_tls_with_certificate_directory(tls_registry: Registry, tls_image: RegistryImage) -> None:
    assert tls_registry.cert_dir is not None
    assert sorted(p.name for p in tls_registry.cert_dir.iterdir()) == ["ca.crt"]
    config = ImageProxyConfig(certificate_directory=tls_registry.cert_dir)
    with ImageProxy(config) as proxy:
        _check_pulled(proxy, tls_image.ref, tls_image.image)


async def test_tls_with_certificate_directory_async(
    tls_registry: Registry, tls_image: RegistryImage
) -> None:
    config = ImageProxyConfig(certificate_directory=str(tls_registry.cert_dir))
    async with AsyncImageProxy(config) as proxy:
        await _acheck_pulled(proxy, tls_image.digest_ref, tls_image.image)


@pytest.mark.reliability("security", "TLS verification switched off on purpose")
def test_tls_insecure_skip_verification(tls_image: RegistryImage, observe: Observe) -> None:
    with ImageProxy(INSECURE) as proxy:
        _check_pulled(proxy, tls_image.ref, tls_image.image)
    observe("insecure_skip_tls_verification=True pulls from an untrusted certificate")


# --------------------------------------------------------------------------- authentication


def _auth_config(
    kind: str, registry: Registry, tmp_path: Path, stack: list[Any]
) -> ImageProxyConfig:
    common: dict[str, Any] = {"certificate_directory": registry.cert_dir}
    if kind == "authfile":
        path = tmp_path / "auth.json"
        path.write_bytes(_auth_json(registry))
        return ImageProxyConfig(authfile=path, **common)
    if kind == "auth_data bytes":
        return ImageProxyConfig(auth_data=_auth_json(registry), **common)
    if kind == "auth_data file":
        path = tmp_path / "auth.json"
        path.write_bytes(_auth_json(registry))
        f = open(path, "rb")  # noqa: SIM115 - closed by the test
        stack.append(f)
        return ImageProxyConfig(auth_data=f, **common)
    assert kind == "username+password"
    return ImageProxyConfig(username=registry.username, password=registry.password, **common)


@pytest.fixture
def files() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for f in opened:
        f.close()


@pytest.mark.reliability("security", "each way of passing registry credentials")
@pytest.mark.parametrize(
    "kind", ["authfile", "auth_data bytes", "auth_data file", "username+password"]
)
def test_auth_paths(
    kind: str,
    auth_registry: Registry,
    auth_image: RegistryImage,
    tmp_path: Path,
    files: list[Any],
    observe: Observe,
) -> None:
    config = _auth_config(kind, auth_registry, tmp_path, files)
    with ImageProxy(config) as proxy:
        _check_pulled(proxy, auth_image.ref, auth_image.image)
        _check_pulled(proxy, auth_image.digest_ref, auth_image.image)
        cmdline, _ = _proc_secrets_absent(proxy.pid, _secrets(auth_registry))
    args = cmdline.count(b"\0")
    observe(
        f"{kind}: pulled by tag and digest; secret absent from the child's argv "
        f"({args} args) and environment"
    )


async def test_auth_username_password_async(
    auth_registry: Registry, auth_image: RegistryImage
) -> None:
    config = ImageProxyConfig(
        username=auth_registry.username,
        password=auth_registry.password,
        certificate_directory=auth_registry.cert_dir,
    )
    async with AsyncImageProxy(config) as proxy:
        await _acheck_pulled(proxy, auth_image.digest_ref, auth_image.image)
        _proc_secrets_absent(proxy.pid, _secrets(auth_registry))


def test_credentials_follow_the_registry(
    auth_registry: Registry,
    auth_image: RegistryImage,
    registry_image: RegistryImage,
) -> None:
    """The private auth file is rewritten per image; open images keep their access."""
    config = ImageProxyConfig(
        username=auth_registry.username,
        password=auth_registry.password,
        insecure_skip_tls_verification=True,
    )
    with ImageProxy(config) as proxy:
        with proxy.open_image(auth_image.ref) as private:
            _, manifest = proxy.fetch_manifest(private)
            # Opening an image elsewhere rewrites the auth file for that host.
            _check_pulled(proxy, registry_image.ref, registry_image.image)
            stored = {digest: data for digest, _, _, data in auth_image.image.layers}
            for layer in manifest.layers:
                with proxy.get_descriptor(private, layer) as blob:
                    assert blob.read() == stored[str(layer.digest)]
        _check_pulled(proxy, auth_image.ref, auth_image.image)


@pytest.mark.reliability("security", "anonymous access to a registry that requires auth")
def test_anonymous_is_unauthorized(
    auth_registry: Registry, auth_image: RegistryImage, observe: Observe
) -> None:
    config = ImageProxyConfig(auth_anonymous=True, certificate_directory=auth_registry.cert_dir)
    with ImageProxy(config) as proxy:
        start = time.monotonic()
        with pytest.raises(RequestError, match=UNAUTHORIZED) as info:
            proxy.open_image(auth_image.ref)
        elapsed = time.monotonic() - start
        assert not isinstance(info.value, ImageNotFoundError)
        assert not info.value.retryable
        text = _error_text(info.value)
        for secret in _secrets(auth_registry):
            assert secret.decode() not in text
    observe(f"RequestError after {elapsed:.2f}s: {info.value.message}")


@pytest.mark.reliability("security", "wrong registry password, with debug logging on")
@pytest.mark.parametrize("kind", ["username+password", "auth_data bytes"])
def test_wrong_password(
    kind: str,
    auth_registry: Registry,
    auth_image: RegistryImage,
    caplog: pytest.LogCaptureFixture,
    observe: Observe,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-" + auth_registry.password[::-1] if auth_registry.password else "x"
    token = base64.b64encode(f"{auth_registry.username}:{wrong}".encode()).decode()
    common: dict[str, Any] = {"certificate_directory": auth_registry.cert_dir, "debug": True}
    if kind == "username+password":
        config = ImageProxyConfig(username=auth_registry.username, password=wrong, **common)
    else:
        auths = {"auths": {auth_registry.host: {"auth": token}}}
        config = ImageProxyConfig(auth_data=json.dumps(auths).encode(), **common)
    with ImageProxy(config) as proxy:
        start = time.monotonic()
        with pytest.raises(RequestError, match=UNAUTHORIZED) as info:
            proxy.open_image(auth_image.ref)
        elapsed = time.monotonic() - start
        assert not isinstance(info.value, ImageNotFoundError)
        _proc_secrets_absent(proxy.pid, [wrong.encode(), token.encode()])
    secrets = [wrong, token, *(s.decode() for s in _secrets(auth_registry))]
    text = _error_text(info.value)
    records = _skopeo_records(caplog, "unauthorized")
    assert records, "debug=True should send skopeo's stderr to the log"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in text
        assert secret not in logged
    observe(
        f"{kind}: RequestError after {elapsed:.2f}s: {info.value.message}; "
        f"password in neither the error nor {len(caplog.records)} debug log records"
    )


@pytest.mark.reliability("security", "registry password with debug logging on")
async def test_password_not_logged_on_success(
    auth_registry: Registry,
    auth_image: RegistryImage,
    caplog: pytest.LogCaptureFixture,
    observe: Observe,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = ImageProxyConfig(
        username=auth_registry.username,
        password=auth_registry.password,
        certificate_directory=auth_registry.cert_dir,
        debug=True,
    )
    async with AsyncImageProxy(config) as proxy:
        await _acheck_pulled(proxy, auth_image.ref, auth_image.image)
    records = _skopeo_records(caplog, "GET https://")
    assert records
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in _secrets(auth_registry):
        assert secret.decode() not in logged
    observe(f"password absent from {len(caplog.records)} log records of a debug pull")


@pytest.mark.reliability("security", "password kept out of the child's argv and environment")
def test_password_absent_from_proc(
    auth_registry: Registry, auth_image: RegistryImage, observe: Observe
) -> None:
    assert auth_registry.username is not None
    config = ImageProxyConfig(
        username=auth_registry.username,
        password=auth_registry.password,
        certificate_directory=auth_registry.cert_dir,
    )
    with ImageProxy(config) as proxy:
        pid = proxy.pid
        _proc_secrets_absent(pid, _secrets(auth_registry))
        with proxy.open_image(auth_image.ref) as img:
            proxy.fetch_manifest(img)
            # Alive, authenticated, image open: still nowhere to be seen.
            cmdline, environ = _proc_secrets_absent(pid, _secrets(auth_registry))
            assert auth_registry.username.encode() not in cmdline
    observe(
        f"checked /proc/{pid}/cmdline ({len(cmdline)} bytes) and environ "
        f"({len(environ)} bytes) before and after an authenticated pull"
    )


# --------------------------------------------------------------------------- unusual credentials

ODD_PASSWORD = 'p:ä"ß w0rd\\{}'


@pytest.fixture(scope="module")
def odd_password_image(
    tmp_path_factory: pytest.TempPathFactory,
    registry_binary: str,
    skopeo: str,
    oci_image: BuiltImage,
) -> Iterator[RegistryImage]:
    root = tmp_path_factory.mktemp("registry-odd-password")
    with Registry(
        root, tls=True, auth=True, binary=registry_binary, skopeo=skopeo, password=ODD_PASSWORD
    ) as registry:
        yield registry.push_image(oci_image, "odd/image", "latest")


@pytest.mark.reliability("bad input", "password with a colon, quotes, backslash, non-ASCII")
def test_unusual_password(odd_password_image: RegistryImage, observe: Observe) -> None:
    registry = odd_password_image.registry
    config = ImageProxyConfig(
        username=registry.username,
        password=ODD_PASSWORD,
        certificate_directory=registry.cert_dir,
    )
    with ImageProxy(config) as proxy:
        _check_pulled(proxy, odd_password_image.ref, odd_password_image.image)
        _proc_secrets_absent(proxy.pid, _secrets(registry))
    observe(f"username/password with {ODD_PASSWORD!r} authenticates")


@pytest.mark.reliability("bad input", "malformed or missing auth file holding a secret")
@pytest.mark.parametrize(
    "kind", ["not JSON", "bad base64", "no colon", "authfile missing", "authfile is a directory"]
)
def test_malformed_credentials(
    kind: str,
    auth_registry: Registry,
    auth_image: RegistryImage,
    tmp_path: Path,
    observe: Observe,
) -> None:
    secret = "S3CRET-" + "x" * 20
    common: dict[str, Any] = {"certificate_directory": auth_registry.cert_dir}
    host = auth_registry.host
    if kind == "not JSON":
        config = ImageProxyConfig(auth_data=f"{secret}:{secret}".encode(), **common)
    elif kind == "bad base64":
        data = {"auths": {host: {"auth": f"!{secret}!"}}}
        config = ImageProxyConfig(auth_data=json.dumps(data).encode(), **common)
    elif kind == "no colon":
        data = {"auths": {host: {"auth": base64.b64encode(secret.encode()).decode()}}}
        config = ImageProxyConfig(auth_data=json.dumps(data).encode(), **common)
    elif kind == "authfile missing":
        config = ImageProxyConfig(authfile=tmp_path / "missing.json", **common)
    else:
        (tmp_path / "auth.json").mkdir()
        config = ImageProxyConfig(authfile=tmp_path / "auth.json", **common)
    with ImageProxy(config) as proxy:
        with pytest.raises(RequestError) as info:
            proxy.open_image(auth_image.ref)
        # A broken auth file must not pass for a missing image.
        assert not isinstance(info.value, ImageNotFoundError)
        assert secret not in _error_text(info.value)
        # The proxy survives the failure.
        with proxy.open_image(auth_image.image.ref) as img:
            proxy.fetch_manifest(img)
    observe(f"{kind}: {type(info.value).__name__}: {info.value.message.strip()}")


def test_auth_data_file_config_reused(
    auth_registry: Registry, auth_image: RegistryImage, tmp_path: Path, files: list[Any]
) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(_auth_json(auth_registry))
    f = open(path, "rb")  # noqa: SIM115 - closed by the fixture
    files.append(f)
    config = ImageProxyConfig(auth_data=f, certificate_directory=auth_registry.cert_dir)
    for _ in range(2):
        with ImageProxy(config) as proxy, proxy.open_image(auth_image.ref) as img:
            assert proxy.fetch_manifest(img)[0] == auth_image.image.manifest_digest
