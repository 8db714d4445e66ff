"""Errors a caller must tell apart are types, recognised in one place (``_protocol``).

First the classification of real messages, as skopeo 1.9.3, a current skopeo and
the distribution registry wrote them here; then the same failures provoked for real
against both skopeos (the newer one only when ``CIP_TEST_SKOPEO_UPSTREAM`` names it):
a registry that wants credentials, one whose certificate is not trusted, malformed
references, missing images, and options the installed skopeo lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy import (
    AccessDeniedError,
    AuthenticationError,
    BlobVerificationError,
    CertificateError,
    ImageNotFoundError,
    ImageProxy,
    ImageProxyConfig,
    InvalidReferenceError,
    PolicyRejectedError,
    ProxyExitedError,
    RequestError,
    UnsupportedOptionError,
)
from containers_image_proxy import _protocol as proto
from containers_image_proxy.config import OPTION_FIELDS, build_command
from tests.support.images import BuiltImage
from tests.support.registry import Registry, RegistryImage
from tests.support.signing import upstream_skopeo

DIGEST = "sha256:" + "0" * 64

# (method, message as the proxy sent it, expected class). Every message below was
# seen from a real skopeo here; the version is noted where the wording differs.
REAL_MESSAGES: list[tuple[str, str, type[RequestError]]] = [
    # Signature policy (0.2.6+ only: 1.9.3 never refuses).
    ("OpenImage", "A signature was required, but no signature exists", PolicyRejectedError),
    ("OpenImage", "Running image docker://127.0.0.1:47575/test/signed:latest is rejected by"
     " policy.", PolicyRejectedError),
    ("OpenImage", "Key not found for key ID 6ac26ced66e6c9ee in signature", PolicyRejectedError),
    ("OpenImage", "signature error: openpgp: invalid signature: RSA verification failure",
     PolicyRejectedError),
    ("OpenImage", "signature error: openpgp: invalid data: signature subpacket truncated",
     PolicyRejectedError),
    ("OpenImage", "cryptographic signature verification failed: invalid signature when"
     " validating ASN.1 encoded signature", PolicyRejectedError),
    ("OpenImage", "No signature verification policy found for image"
     " docker:127.0.0.1:47575/test/signed:latest", PolicyRejectedError),
    ("OpenImage", "openpgp: unsupported feature: public key type: 22", PolicyRejectedError),
    ("OpenImageOptional", "A signature was required, but no signature exists",
     PolicyRejectedError),
    # Authentication (1.9.3, then current; htpasswd registry, wrong or no password).
    ("OpenImage", "reading manifest latest in 127.0.0.1:40459/test/image: unauthorized:"
     " authentication required", AuthenticationError),
    ("OpenImage", "reading manifest latest in 127.0.0.1:40459/test/image: authentication"
     " required", AuthenticationError),
    ("GetBlob", "fetching blob: denied: requested access to the resource is denied",
     AuthenticationError),
    # TLS verification (1.9.3, then current).
    ("OpenImage", 'pinging container registry 127.0.0.1:51105: Get "https://127.0.0.1:51105/v2/":'
     " x509: certificate signed by unknown authority", CertificateError),
    ("OpenImage", "fetching manifest latest in 127.0.0.1:51105/test/image: pinging container"
     ' registry 127.0.0.1:51105: Get "https://127.0.0.1:51105/v2/": tls: failed to verify'
     " certificate: x509: certificate signed by unknown authority", CertificateError),
    # Malformed references (both versions unless noted).
    ("OpenImage", "invalid reference format", InvalidReferenceError),
    ("OpenImage", "invalid reference format: repository name must be lowercase",
     InvalidReferenceError),
    ("OpenImage", 'Invalid image name "nosuchtransport:foo", unknown transport'
     ' "nosuchtransport"', InvalidReferenceError),
    ("OpenImage", 'Invalid image name "nospace", expected colon-separated transport:reference',
     InvalidReferenceError),
    ("OpenImage", "docker: image reference busybox does not start with //",
     InvalidReferenceError),
    ("OpenImage", "Docker references with both a tag and digest are currently not supported",
     InvalidReferenceError),
    ("OpenImage", "invalid repository name (" + "a" * 64 + "), cannot specify 64-byte"
     " hexadecimal strings", InvalidReferenceError),
    ("OpenImage", "Invalid image Bad Tag", InvalidReferenceError),
    ("OpenImage", 'Invalid source index @x: not an integer: strconv.Atoi: parsing "x": invalid'
     " syntax", InvalidReferenceError),
    ("OpenImage", "docker-archive reference  isn't of the form <path>[:<reference>]",
     InvalidReferenceError),
    ("OpenImage", '"" is an empty reference: invalid reference', InvalidReferenceError),
    ("OpenImage", "docker-daemon: reference busybox has neither a tag nor a digest",
     InvalidReferenceError),
    # Missing images and blobs (registry texts; 1.9.3 repeats the registry's code).
    ("OpenImage", "reading manifest nosuchtag in 127.0.0.1:47575/test/unsigned: manifest"
     " unknown: manifest unknown", ImageNotFoundError),
    ("OpenImage", "reading manifest latest in 127.0.0.1:47575/nosuch/repo: manifest unknown",
     ImageNotFoundError),
    ("OpenImage", "open /tmp/x/nonexist/index.json: no such file or directory",
     ImageNotFoundError),
    ("OpenImage", 'no descriptor found for reference "nosuch"', ImageNotFoundError),
    ("GetBlob", "blob unknown: blob unknown to registry", ImageNotFoundError),
    # Verification.
    ("FinishPipe", f"Digest did not match, expected {DIGEST}, got sha256:1: digest mismatch",
     BlobVerificationError),
]  # fmt: skip


@pytest.mark.parametrize(("method", "message", "kind"), REAL_MESSAGES)
def test_real_messages_are_classified(method: str, message: str, kind: type) -> None:
    for code in (None, "other"):
        error = proto.request_error(method, message, code)
        assert type(error) is kind
        # The proxy's own words and code are kept.
        assert error.message == message and error.code == code and error.method == method
        assert str(error) == f"{method} failed: {message}"


def test_invalid_reference_is_a_value_error() -> None:
    error = proto.request_error("OpenImage", "invalid reference format", None)
    assert isinstance(error, ValueError) and isinstance(error, RequestError)


@pytest.mark.parametrize(
    ("method", "message", "kind"),
    [
        # "not found" in a signature refusal is the policy, not a missing image.
        ("OpenImage", "Key not found for key ID 1 in signature", PolicyRejectedError),
        # Fetching signatures is transport: not a policy decision.
        ("OpenImage", "reading signature from https://x/s: status 500", RequestError),
        # Signature words outside OpenImage are not the policy's.
        ("GetBlob", "signature of the layer", RequestError),
        ("GetManifest", "invalid reference format", RequestError),
        # A local permission error is not a registry's refusal.
        ("OpenImage", "open /srv/layout/index.json: permission denied", AccessDeniedError),
        ("OpenImage", "reading manifest x: StatusCode: 401", AuthenticationError),
        ("OpenImage", "dial tcp 127.0.0.1:1: connect: connection refused", RequestError),
        ("OpenImage", "http: server gave HTTP response to HTTPS client", RequestError),
    ],
)
def test_near_misses(method: str, message: str, kind: type) -> None:
    assert type(proto.request_error(method, message, None)) is kind


def test_retryable_not_found_stays_retryable() -> None:
    error = proto.request_error("GetBlob", "blob unknown: try again", "retryable")
    assert type(error) is RequestError and error.retryable


# --------------------------------------------------------------------------
# An option the installed skopeo lacks
# --------------------------------------------------------------------------


def _exited(stderr: str, method: str | None = "Initialize") -> ProxyExitedError:
    return ProxyExitedError(method, 1, stderr)


def test_unknown_flag_names_the_field() -> None:
    stderr = 'time="2026-01-01T00:00:00Z" level=fatal msg="unknown flag: --decryption-key"\n'
    error = proto.startup_error(_exited(stderr), OPTION_FIELDS)
    assert isinstance(error, UnsupportedOptionError)
    assert (error.option, error.field) == ("--decryption-key", "decryption_keys")
    assert error.stderr == stderr.strip()
    assert "decryption_keys" in str(error) and "--decryption-key" in str(error)


def test_unknown_flag_with_a_value() -> None:
    error = proto.startup_error(_exited("unknown flag: --tls-verify"), OPTION_FIELDS)
    assert error is not None and error.field == "insecure_skip_tls_verification"


@pytest.mark.parametrize(
    "exited",
    [
        _exited("unknown flag: --not-ours"),  # e.g. from a skopeo_cmd wrapper
        _exited("some other failure"),
        _exited("unknown flag: --decryption-key", method="GetBlob"),
    ],
)
def test_other_exits_are_left_alone(exited: ProxyExitedError) -> None:
    assert proto.startup_error(exited, OPTION_FIELDS) is None


def test_every_flag_the_command_uses_has_a_field() -> None:
    config = ImageProxyConfig(
        debug=True, policy="/p", require_signed=True, registries_d="/r", override_os="linux",
        override_arch="arm", override_variant="v7", tmpdir="/t", user_agent_prefix="u",
        tls_details="/d", authfile="/a", certificate_directory="/c", decryption_keys=["k"],
        insecure_skip_tls_verification=True, shared_blob_dir="/s", daemon_host="unix:///x",
    )  # fmt: skip
    flags = {arg.partition("=")[0] for arg in build_command(config, {}).argv if arg[:2] == "--"}
    assert flags <= set(OPTION_FIELDS)
    assert build_command(ImageProxyConfig(auth_anonymous=True), {}).argv[-1] in OPTION_FIELDS


# --------------------------------------------------------------------------
# The same failures, for real, against both skopeos
# --------------------------------------------------------------------------


@pytest.fixture(params=["debian", "upstream"])
def any_skopeo(request: pytest.FixtureRequest, skopeo: str) -> str:
    return skopeo if request.param == "debian" else upstream_skopeo()


def _open_error(config: ImageProxyConfig, reference: str) -> RequestError:
    with ImageProxy(config) as proxy, pytest.raises(RequestError) as info:
        proxy.open_image(reference)
    return info.value


def test_authentication(any_skopeo: str, auth_registry: Registry, oci_image: BuiltImage) -> None:
    image = auth_registry.push_image(oci_image, "private/image", "latest")
    common: dict[str, Any] = {
        "skopeo_cmd": [any_skopeo],
        "certificate_directory": auth_registry.cert_dir,
    }
    for config in (
        ImageProxyConfig(**common),
        ImageProxyConfig(auth_anonymous=True, **common),
        ImageProxyConfig(username="tester", password="wrong password", **common),
        ImageProxyConfig(username="nobody", password="x", **common),
    ):
        error = _open_error(config, image.ref)
        assert type(error) is AuthenticationError, error
        assert "authentication required" in error.message


def test_certificate(any_skopeo: str, tls_registry: Registry, oci_image: BuiltImage) -> None:
    image = tls_registry.push_image(oci_image, "tls/image", "latest")
    error = _open_error(ImageProxyConfig(skopeo_cmd=[any_skopeo]), image.ref)
    assert type(error) is CertificateError, error
    assert "x509: certificate signed by unknown authority" in error.message
    trusted = ImageProxyConfig(skopeo_cmd=[any_skopeo], certificate_directory=tls_registry.cert_dir)
    with ImageProxy(trusted) as proxy, proxy.open_image(image.ref):
        pass


@pytest.mark.parametrize(
    "reference",
    [
        "docker://Example.com/UPPER/x:latest",
        "nosuchtransport:foo",
        "busybox:latest",
        "docker:busybox",
        "docker://exa mple/x",
        "docker://busybox:latest@sha256:" + "a" * 64,
        "docker-archive:",
        "containers-storage:",
    ],
)
def test_invalid_references(any_skopeo: str, reference: str) -> None:
    error = _open_error(ImageProxyConfig(skopeo_cmd=[any_skopeo]), reference)
    assert type(error) is InvalidReferenceError, error
    assert isinstance(error, ValueError)


def test_empty_reference(any_skopeo: str) -> None:
    with ImageProxy(ImageProxyConfig(skopeo_cmd=[any_skopeo])) as proxy:
        with pytest.raises(InvalidReferenceError, match="empty") as info:
            proxy.open_image("")
        assert isinstance(info.value, ValueError) and info.value.method == "OpenImage"
        if proxy.supports("OpenImageOptional"):
            with pytest.raises(InvalidReferenceError, match="empty"):
                proxy.open_image_optional("")


def test_not_found(any_skopeo: str, registry_image: RegistryImage, tmp_path: Path) -> None:
    registry = registry_image.registry
    config = ImageProxyConfig(skopeo_cmd=[any_skopeo], insecure_skip_tls_verification=True)
    for reference in (
        registry.ref(registry_image.repo, "no-such-tag"),
        registry.ref("no/such/repository", "latest"),
        f"oci:{tmp_path / 'missing'}:latest",
    ):
        error = _open_error(config, reference)
        assert type(error) is ImageNotFoundError, error


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"decryption_keys": ["/nonexistent/key.pem"]}, "decryption_keys"),
        ({"require_signed": True}, "require_signed"),
        ({"user_agent_prefix": "test/1"}, "user_agent_prefix"),
        ({"tls_details": "/nonexistent/tls.yaml"}, "tls_details"),
    ],
)
def test_options_the_skopeo_lacks(any_skopeo: str, options: dict[str, object], field: str) -> None:
    config = ImageProxyConfig(skopeo_cmd=[any_skopeo], **options)  # type: ignore[arg-type]
    try:
        with ImageProxy(config):
            pass
    except UnsupportedOptionError as exc:
        assert exc.field == field and f"unknown flag: {exc.option}" in exc.stderr
        assert OPTION_FIELDS[exc.option][0] == field
    except RequestError:
        assert field == "tls_details"  # the newer skopeo reads the file at start
    else:
        assert field != "decryption_keys", "a skopeo accepted --decryption-key: update the docs"
