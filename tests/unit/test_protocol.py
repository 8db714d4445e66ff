"""Tests of the sans-I/O protocol core, without any child process.

Replies are fed to ``decode_reply`` with real descriptors (read ends of ``os.pipe()``)
so that ownership can be checked: on every error the descriptors must be closed, on
success they must still be open and belong to the caller.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from containers_image_proxy import _protocol as proto
from containers_image_proxy._command import auth_file_contents
from containers_image_proxy._fd import OwnedFd, close_all
from containers_image_proxy._protocol import (
    ERROR_CODES,
    MAX_FDS,
    MAX_JSON_INT,
    MAX_MSG_SIZE,
    METHOD_FDS,
    METHOD_VERSIONS,
    MIN_VERSION,
    ProtocolVersion,
    Reply,
    Transfer,
    blob_size,
    check_size_argument,
    check_version,
    decode_reply,
    encode_request,
    image_handle,
    is_broken_pipe,
    manifest_digest,
    raw_blob_error,
    request_error,
    require,
    supports,
)
from containers_image_proxy._reference import registry_host
from containers_image_proxy.errors import (
    BlobVerificationError,
    ImageNotFoundError,
    ImageProxyError,
    ProtocolError,
    ProxyTooOldError,
    RequestError,
    VerificationError,
)
from containers_image_proxy.oci import Digest

DIGEST = Digest("sha256:" + "a" * 64)

# --------------------------------------------------------------------------
# Descriptor helpers
# --------------------------------------------------------------------------


def is_open(fd: OwnedFd) -> bool:
    if fd.closed:
        return False
    try:
        os.fstat(fd.fileno())
    except OSError:
        return False
    return True


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_fds(count: int) -> list[OwnedFd]:
    """``count`` read ends of pipes whose write ends are already closed."""
    fds = []
    for _ in range(count):
        read_end, write_end = os.pipe()
        os.close(write_end)
        fds.append(OwnedFd(read_end))
    return fds


@pytest.fixture
def fds_factory() -> Iterator[Any]:
    """Make pipe read ends; whatever is still open at teardown is closed."""
    made: list[OwnedFd] = []

    def factory(count: int) -> list[OwnedFd]:
        fds = make_fds(count)
        made.extend(fds)
        return fds

    yield factory
    close_all(made)


def reply_bytes(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def ok(value: Any = None, pipeid: int = 0) -> bytes:
    """A successful reply shaped like skopeo's (every field present)."""
    return reply_bytes(success=True, value=value, pipeid=pipeid, error="")


def failed(error: str, code: str | None = None) -> bytes:
    fields: dict[str, Any] = {"success": False, "value": None, "pipeid": 0, "error": error}
    if code is not None:
        fields["error_code"] = code
    return reply_bytes(**fields)


def assert_closed(fds: list[OwnedFd]) -> None:
    for fd in fds:
        assert not is_open(fd), f"descriptor {fd} was left open"


def assert_protocol_error(
    method: str, data: bytes, fds: list[OwnedFd], truncated: bool = False
) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_reply(method, data, fds, truncated)
    assert_closed(fds)
    assert method in str(info.value)
    return info.value


def assert_request_error(method: str, data: bytes, fds: list[OwnedFd]) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_reply(method, data, fds)
    assert_closed(fds)
    return info.value


# --------------------------------------------------------------------------
# ProtocolVersion
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.2.3", (0, 2, 3)),
        ("0.2.8", (0, 2, 8)),
        ("0.2.10", (0, 2, 10)),
        ("1.0.0", (1, 0, 0)),
        ("10.20.30", (10, 20, 30)),
        ("0.2.8-dev", (0, 2, 8)),
        ("0.2.8-rc.1", (0, 2, 8)),
        ("0.3.0+git.abc123", (0, 3, 0)),
    ],
)
def test_version_parse(text: str, expected: tuple[int, int, int]) -> None:
    version = ProtocolVersion.parse(text)
    assert version == expected
    assert isinstance(version, ProtocolVersion)
    assert (version.major, version.minor, version.patch) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0.2",
        "0.2.8.1",
        "v0.2.8",
        " 0.2.8",
        "0.2.8 ",
        "0.2.8\n",
        "0.2.x",
        "0..8",
        "0.2.8dev",
        "-0.2.8",
        None,
        28,
        0.28,
        b"0.2.8",
        ["0.2.8"],
        {"version": "0.2.8"},
    ],
)
def test_version_parse_invalid(text: object) -> None:
    with pytest.raises(ProtocolError, match="invalid protocol version"):
        ProtocolVersion.parse(text)


def test_version_str() -> None:
    assert str(ProtocolVersion(0, 2, 8)) == "0.2.8"
    assert str(ProtocolVersion.parse("0.2.8-dev")) == "0.2.8"


def test_version_ordering() -> None:
    versions = ["0.2.3", "0.2.10", "0.2.4", "1.0.0", "0.10.0", "0.2.8", "0.3.0"]
    ordered = sorted(ProtocolVersion.parse(v) for v in versions)
    assert [str(v) for v in ordered] == [
        "0.2.3",
        "0.2.4",
        "0.2.8",
        "0.2.10",
        "0.3.0",
        "0.10.0",
        "1.0.0",
    ]
    assert ProtocolVersion(0, 2, 3) < ProtocolVersion(0, 2, 10)
    assert ProtocolVersion(0, 3, 0) > ProtocolVersion(0, 2, 99)
    assert ProtocolVersion(0, 2, 8) == ProtocolVersion.parse("0.2.8-dev")
    assert ProtocolVersion(0, 2, 3) == MIN_VERSION


@pytest.mark.parametrize("text", ["0.2.2", "0.2.1", "0.1.9", "0.0.0"])
def test_check_version_too_old(text: str) -> None:
    with pytest.raises(ProxyTooOldError) as info:
        check_version(ProtocolVersion.parse(text))
    message = str(info.value)
    assert "0.2.3" in message
    assert text in message
    assert info.value.required == "0.2.3"
    assert info.value.found == text
    assert info.value.method is None
    assert isinstance(info.value, ImageProxyError)


@pytest.mark.parametrize("text", ["0.2.3", "0.2.4", "0.2.8", "0.2.9", "0.3.0", "1.0.0"])
def test_check_version_ok(text: str) -> None:
    check_version(ProtocolVersion.parse(text))


EXPECTED_METHOD_VERSIONS = {
    "OpenImageOptional": "0.2.4",
    "GetLayerInfo": "0.2.5",
    "GetLayerInfoPiped": "0.2.7",
    "GetRawBlob": "0.2.8",
}
ACCEPTED_VERSIONS = [ProtocolVersion(0, 2, patch) for patch in range(3, 9)]
BASE_METHODS = [
    "Initialize",
    "OpenImage",
    "CloseImage",
    "GetManifest",
    "GetFullConfig",
    "GetConfig",
    "GetBlob",
    "FinishPipe",
    "Shutdown",
]


def test_method_versions_table() -> None:
    assert {m: str(v) for m, v in METHOD_VERSIONS.items()} == EXPECTED_METHOD_VERSIONS


@pytest.mark.parametrize("version", ACCEPTED_VERSIONS, ids=str)
@pytest.mark.parametrize("method", sorted(EXPECTED_METHOD_VERSIONS))
def test_supports_and_require(method: str, version: ProtocolVersion) -> None:
    needed = ProtocolVersion.parse(EXPECTED_METHOD_VERSIONS[method])
    if version >= needed:
        assert supports(method, version)
        require(method, version)
    else:
        assert not supports(method, version)
        with pytest.raises(ProxyTooOldError) as info:
            require(method, version)
        message = str(info.value)
        assert method in message
        assert str(needed) in message
        assert str(version) in message
        assert info.value.method == method
        assert info.value.required == str(needed)
        assert info.value.found == str(version)


@pytest.mark.parametrize("version", ACCEPTED_VERSIONS, ids=str)
@pytest.mark.parametrize("method", BASE_METHODS)
def test_base_methods_always_supported(method: str, version: ProtocolVersion) -> None:
    assert supports(method, version)
    require(method, version)


def test_newer_versions_support_everything() -> None:
    for method in EXPECTED_METHOD_VERSIONS:
        assert supports(method, ProtocolVersion(0, 2, 9))
        assert supports(method, ProtocolVersion(1, 0, 0))


def test_require_base_method_below_min_version() -> None:
    with pytest.raises(ProxyTooOldError, match="GetManifest"):
        require("GetManifest", ProtocolVersion(0, 2, 2))


# --------------------------------------------------------------------------
# encode_request
# --------------------------------------------------------------------------


def test_encode_request_shape() -> None:
    data = encode_request("OpenImage", ["docker://quay.io/x:latest"])
    assert isinstance(data, bytes)
    assert json.loads(data) == {"method": "OpenImage", "args": ["docker://quay.io/x:latest"]}


def test_encode_request_no_args() -> None:
    assert json.loads(encode_request("Initialize")) == {"method": "Initialize", "args": []}
    assert json.loads(encode_request("Shutdown", ())) == {"method": "Shutdown", "args": []}


def test_encode_request_mixed_args() -> None:
    data = encode_request("GetBlob", (3, str(DIGEST), 1234))
    assert json.loads(data) == {"method": "GetBlob", "args": [3, str(DIGEST), 1234]}


def test_encode_request_is_compact_and_ascii() -> None:
    data = encode_request("OpenImage", ["oci:/tmp/ümlaut:tag"])
    data.decode("ascii")
    assert json.loads(data)["args"] == ["oci:/tmp/ümlaut:tag"]
    assert b": " not in data
    assert b", " not in data


@pytest.mark.parametrize("value", [0, 1, MAX_JSON_INT, -MAX_JSON_INT, True])
def test_encode_request_int_in_range(value: int) -> None:
    assert json.loads(encode_request("CloseImage", [value]))["args"] == [value]


@pytest.mark.parametrize("value", [MAX_JSON_INT + 1, 2**53, 2**64, -(2**53), -(2**63)])
def test_encode_request_int_out_of_range(value: int) -> None:
    assert MAX_JSON_INT == 2**53 - 1
    with pytest.raises(ValueError, match="GetBlob"):
        encode_request("GetBlob", [1, str(DIGEST), value])


def test_encode_request_size_limit() -> None:
    overhead = len(encode_request("OpenImage", [""]))
    exact = encode_request("OpenImage", ["x" * (MAX_MSG_SIZE - overhead)])
    assert len(exact) == MAX_MSG_SIZE
    with pytest.raises(ValueError, match="OpenImage"):
        encode_request("OpenImage", ["x" * (MAX_MSG_SIZE - overhead + 1)])
    with pytest.raises(ValueError):
        encode_request("OpenImage", ["x" * 100_000])


def test_encode_request_size_limit_counts_escapes() -> None:
    # Each non-ASCII character becomes a 6-byte escape on the wire.
    with pytest.raises(ValueError):
        encode_request("OpenImage", ["é" * 6000])


# --------------------------------------------------------------------------
# decode_reply: successes
# --------------------------------------------------------------------------


def test_constants() -> None:
    assert MAX_MSG_SIZE == 32 * 1024
    assert MAX_FDS == 2
    assert frozenset({"EPIPE", "retryable", "other"}) == ERROR_CODES
    assert METHOD_FDS["GetRawBlob"] == 2
    for method in ("GetManifest", "GetFullConfig", "GetConfig", "GetBlob", "GetLayerInfoPiped"):
        assert METHOD_FDS[method] == 1


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("Initialize", "0.2.8"),
        ("OpenImage", 1),
        ("OpenImageOptional", 0),
        ("CloseImage", None),
        ("FinishPipe", None),
        ("GetLayerInfo", [{"digest": str(DIGEST), "size": 3, "media_type": "x"}]),
        ("SomeFutureMethod", {"a": [1, 2]}),
    ],
)
def test_decode_inline_success(method: str, value: Any) -> None:
    reply = decode_reply(method, ok(value), [])
    assert reply == Reply(value, 0, ())


@pytest.mark.parametrize(
    "method", ["GetManifest", "GetFullConfig", "GetConfig", "GetBlob", "GetLayerInfoPiped"]
)
def test_decode_piped_success(method: str, fds_factory: Any) -> None:
    fds = fds_factory(1)
    reply = decode_reply(method, ok(str(DIGEST), pipeid=7), fds)
    assert reply.value == str(DIGEST)
    assert reply.pipeid == 7
    assert reply.fds == (fds[0],)
    assert isinstance(reply.fds, tuple)
    assert is_open(fds[0])
    close_all(reply.fds)
    assert not is_open(fds[0])


def test_decode_pipeid_max(fds_factory: Any) -> None:
    fds = fds_factory(1)
    reply = decode_reply("GetBlob", ok(10, pipeid=2**32 - 1), fds)
    assert reply.pipeid == 2**32 - 1
    assert is_open(fds[0])


def test_decode_raw_blob_success(fds_factory: Any) -> None:
    fds = fds_factory(2)
    reply = decode_reply("GetRawBlob", ok(1234), fds)
    assert reply == Reply(1234, 0, (fds[0], fds[1]))
    assert all(is_open(fd) for fd in fds)


def test_decode_minimal_success() -> None:
    # Missing optional fields: value None, pipeid 0, error "".
    assert decode_reply("CloseImage", b'{"success": true}', []) == Reply(None, 0, ())


def test_decode_success_ignores_unknown_fields_and_empty_code() -> None:
    data = reply_bytes(success=True, value=5, pipeid=0, error="", error_code="", extra=[1])
    assert decode_reply("OpenImage", data, []) == Reply(5, 0, ())


def test_decode_accepts_whitespace() -> None:
    assert decode_reply("OpenImage", b' \n{"success": true, "value": 2}\n', []).value == 2


def test_decode_reply_exact_size_limit() -> None:
    base = ok("")
    padded = ok("x" * (MAX_MSG_SIZE - len(base)))
    assert len(padded) == MAX_MSG_SIZE
    assert decode_reply("OpenImage", padded, []).value == "x" * (MAX_MSG_SIZE - len(base))


# --------------------------------------------------------------------------
# decode_reply: failures reported by the proxy
# --------------------------------------------------------------------------


def test_decode_failure_fields() -> None:
    error = assert_request_error("OpenImage", failed("something broke", "other"), [])
    assert type(error) is RequestError
    assert error.method == "OpenImage"
    assert error.message == "something broke"
    assert error.code == "other"
    assert error.retryable is False
    assert "OpenImage" in str(error)
    assert "something broke" in str(error)


@pytest.mark.parametrize("code", [None, ""])
def test_decode_failure_without_code(code: str | None) -> None:
    error = assert_request_error("GetBlob", failed("oops", code), [])
    assert error.code is None
    assert error.retryable is False


def test_decode_failure_empty_message() -> None:
    error = assert_request_error("CloseImage", failed(""), [])
    assert error.message == "unspecified error"


def test_decode_failure_missing_error_field() -> None:
    error = assert_request_error("CloseImage", b'{"success": false}', [])
    assert error.message == "unspecified error"
    assert error.code is None


def test_decode_failure_retryable() -> None:
    error = assert_request_error("GetBlob", failed("connection reset", "retryable"), [])
    assert error.retryable is True
    assert error.code == "retryable"


def test_decode_failure_epipe() -> None:
    error = assert_request_error("FinishPipe", failed("write |1: broken pipe", "EPIPE"), [])
    assert error.code == "EPIPE"
    assert is_broken_pipe(error)
    assert not error.retryable


NOT_FOUND_MESSAGES = [
    "reading manifest latest in quay.io/x/y: manifest unknown",
    "initializing source docker://quay.io/nope:latest: name unknown: repository not found",
    "blob unknown to registry",
    "unknown blob",
    "reading manifest nope in docker.io/library/busybox: not found",
    "open /tmp/layout/index.json: no such file or directory",
    "image does not exist",
    "Error: No such image: busybox:nope",
    "reference does not exist",
    "MANIFEST UNKNOWN",
]


@pytest.mark.parametrize("message", NOT_FOUND_MESSAGES)
@pytest.mark.parametrize("code", [None, "other"])
def test_decode_failure_not_found(message: str, code: str | None) -> None:
    error = assert_request_error("OpenImage", failed(message, code), [])
    assert isinstance(error, ImageNotFoundError)
    assert error.message == message
    assert error.code == code


def test_decode_failure_not_found_but_retryable() -> None:
    error = assert_request_error("OpenImage", failed("manifest unknown", "retryable"), [])
    assert type(error) is RequestError
    assert error.retryable


@pytest.mark.parametrize(
    "message",
    [
        "corrupted blob, expecting sha256:abc",
        "Digest did not match: corrupted blob",
        "expected 10 bytes in blob, got 7",
        "digest mismatch",
    ],
)
def test_decode_failure_verification(message: str) -> None:
    error = assert_request_error("FinishPipe", failed(message, "other"), [])
    assert isinstance(error, BlobVerificationError)
    assert isinstance(error, VerificationError)
    assert isinstance(error, RequestError)
    assert error.method == "FinishPipe"


def test_verification_wins_over_not_found() -> None:
    error = request_error("GetBlob", "corrupted blob: blob unknown", None)
    assert isinstance(error, BlobVerificationError)


def test_request_error_plain() -> None:
    error = request_error("GetManifest", "unsupported legacy manifest MIME type", "other")
    assert type(error) is RequestError


# --------------------------------------------------------------------------
# decode_reply: protocol errors (and the descriptors they must close)
# --------------------------------------------------------------------------

MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b'{"success": true', id="truncated-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b"[1, 2]", id="array"),
    pytest.param(b"1", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b'"success"', id="string"),
    pytest.param(b"{}", id="no-success"),
    pytest.param(reply_bytes(success="true"), id="success-str"),
    pytest.param(reply_bytes(success=1), id="success-int"),
    pytest.param(reply_bytes(success=None), id="success-null"),
    pytest.param(reply_bytes(success=True, error=1), id="error-int"),
    pytest.param(reply_bytes(success=False, error=None), id="error-null"),
    pytest.param(reply_bytes(success=False, error=["x"]), id="error-list"),
    pytest.param(reply_bytes(success=False, error="x", error_code=5), id="code-int"),
    pytest.param(reply_bytes(success=True, error_code=["EPIPE"]), id="code-list"),
    pytest.param(reply_bytes(success=False, error="x", error_code="ENOENT"), id="code-unknown"),
    pytest.param(reply_bytes(success=False, error="x", error_code="epipe"), id="code-case"),
    pytest.param(reply_bytes(success=True, pipeid=-1), id="pipeid-negative"),
    pytest.param(reply_bytes(success=True, pipeid=2**32), id="pipeid-2**32"),
    pytest.param(reply_bytes(success=True, pipeid="1"), id="pipeid-str"),
    pytest.param(reply_bytes(success=True, pipeid=1.5), id="pipeid-float"),
    pytest.param(reply_bytes(success=True, pipeid=1.0), id="pipeid-float-integral"),
    pytest.param(reply_bytes(success=True, pipeid=True), id="pipeid-bool"),
    pytest.param(reply_bytes(success=True, pipeid=None), id="pipeid-null"),
    pytest.param(reply_bytes(success=False, error="x", pipeid=-3), id="failed-pipeid-negative"),
]


@pytest.mark.parametrize("data", MALFORMED)
@pytest.mark.parametrize(("method", "nfds"), [("OpenImage", 0), ("GetBlob", 1), ("GetRawBlob", 2)])
def test_decode_malformed(data: bytes, method: str, nfds: int, fds_factory: Any) -> None:
    assert_protocol_error(method, data, fds_factory(nfds))


@pytest.mark.parametrize(
    ("method", "nfds", "pipeid"),
    [("OpenImage", 0, 0), ("GetManifest", 1, 3), ("GetRawBlob", 2, 0)],
)
def test_decode_truncated_flag(method: str, nfds: int, pipeid: int, fds_factory: Any) -> None:
    fds = fds_factory(nfds)
    error = assert_protocol_error(method, ok(1, pipeid), fds, truncated=True)
    assert str(MAX_MSG_SIZE) in str(error)


@pytest.mark.parametrize("nfds", [0, 1])
def test_decode_oversized_packet(nfds: int, fds_factory: Any) -> None:
    data = ok("x" * MAX_MSG_SIZE)
    assert len(data) > MAX_MSG_SIZE
    assert_protocol_error("GetManifest", data, fds_factory(nfds))


@pytest.mark.parametrize("method", ["GetManifest", "GetFullConfig", "GetBlob", "GetLayerInfoPiped"])
def test_decode_fd_without_pipeid(method: str, fds_factory: Any) -> None:
    error = assert_protocol_error(method, ok(None, pipeid=0), fds_factory(1))
    assert "pipeid" in str(error)


@pytest.mark.parametrize("method", ["GetManifest", "GetBlob"])
def test_decode_pipeid_without_fd(method: str) -> None:
    assert_protocol_error(method, ok(None, pipeid=5), [])


@pytest.mark.parametrize("method", ["OpenImage", "FinishPipe", "GetRawBlob"])
def test_decode_pipeid_on_method_without_pipe(method: str, fds_factory: Any) -> None:
    fds = fds_factory(METHOD_FDS.get(method, 0))
    error = assert_protocol_error(method, ok(1, pipeid=5), fds)
    assert "pipeid" in str(error)


@pytest.mark.parametrize(
    ("method", "nfds"),
    [
        ("GetBlob", 2),
        ("GetManifest", 2),
        ("GetBlob", 0),
        ("GetRawBlob", 1),
        ("GetRawBlob", 0),
        ("OpenImage", 1),
        ("OpenImage", 2),
        ("FinishPipe", 1),
        ("Initialize", 2),
    ],
)
def test_decode_wrong_fd_count(method: str, nfds: int, fds_factory: Any) -> None:
    pipeid = 9 if METHOD_FDS.get(method) == 1 else 0
    error = assert_protocol_error(method, ok(1, pipeid), fds_factory(nfds))
    assert "descriptor" in str(error)


@pytest.mark.parametrize("nfds", [1, 2])
@pytest.mark.parametrize("method", ["GetBlob", "GetRawBlob", "OpenImage"])
def test_decode_fds_on_failed_reply(method: str, nfds: int, fds_factory: Any) -> None:
    fds = fds_factory(nfds)
    error = assert_protocol_error(method, failed("manifest unknown", "other"), fds)
    assert not isinstance(error, RequestError)


def test_decode_closes_fds_on_any_exception(
    monkeypatch: pytest.MonkeyPatch, fds_factory: Any
) -> None:
    def boom(*args: object) -> Reply:
        raise KeyboardInterrupt

    monkeypatch.setattr(proto, "_decode_reply", boom)
    fds = fds_factory(2)
    with pytest.raises(KeyboardInterrupt):
        decode_reply("GetRawBlob", ok(1), fds)
    assert_closed(fds)


def test_decode_closes_fds_even_on_unexpected_errors(fds_factory: Any) -> None:
    fds = fds_factory(1)
    with pytest.raises(Exception):  # noqa: B017 - any exception: only the fds matter here
        decode_reply("GetBlob", b'{"success": true, "value": ' + b"1" * 5000 + b"}", fds)
    assert_closed(fds)


def test_decode_huge_number_is_protocol_error(fds_factory: Any) -> None:
    fds = fds_factory(1)
    data = b'{"success": true, "pipeid": 1, "value": ' + b"1" * 5000 + b"}"
    assert len(data) <= MAX_MSG_SIZE
    assert_protocol_error("GetBlob", data, fds)


def test_decode_deep_nesting_is_protocol_error() -> None:
    data = b'{"success": true, "value": ' + b"[" * 15000 + b"]" * 15000 + b"}"
    assert len(data) <= MAX_MSG_SIZE
    assert_protocol_error("OpenImage", data, [])


def test_close_all_closes_each_once(fds_factory: Any) -> None:
    fds = fds_factory(2)
    fds[0].close()
    close_all([fds[0], fds[1], fds[1]])
    assert_closed(fds)


# --------------------------------------------------------------------------
# Reply values
# --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2, 2**40])
def test_image_handle(value: int) -> None:
    assert image_handle("OpenImage", value) == value
    assert image_handle("OpenImageOptional", value, optional=True) == value


def test_image_handle_zero() -> None:
    assert image_handle("OpenImageOptional", 0, optional=True) == 0
    with pytest.raises(ProtocolError, match="OpenImage"):
        image_handle("OpenImage", 0)


@pytest.mark.parametrize("value", [-1, True, False, 1.0, "1", None, [1], {"id": 1}])
@pytest.mark.parametrize("optional", [False, True])
def test_image_handle_invalid(value: object, optional: bool) -> None:
    method = "OpenImageOptional" if optional else "OpenImage"
    with pytest.raises(ProtocolError, match=method):
        image_handle(method, value, optional=optional)


@pytest.mark.parametrize("value", [-1, 0, 1, 2**40, MAX_JSON_INT])
def test_blob_size(value: int) -> None:
    assert blob_size("GetBlob", value) == value


@pytest.mark.parametrize("value", [-2, -(2**40), True, False, 1.5, 10.0, "5", None, [5]])
def test_blob_size_invalid(value: object) -> None:
    with pytest.raises(ProtocolError, match="GetRawBlob"):
        blob_size("GetRawBlob", value)


def test_manifest_digest() -> None:
    digest = manifest_digest(str(DIGEST))
    assert digest == DIGEST
    assert isinstance(digest, Digest)
    sha512 = "sha512:" + "0" * 128
    assert manifest_digest(sha512) == sha512


@pytest.mark.parametrize(
    "value",
    ["", "sha256:abc", "sha256:" + "A" * 64, "md5:" + "a" * 32, "a" * 64, 5, None, [str(DIGEST)]],
)
def test_manifest_digest_invalid(value: object) -> None:
    with pytest.raises(ProtocolError, match="GetManifest"):
        manifest_digest(value)


@pytest.mark.parametrize("size", [0, 1, 4096, MAX_JSON_INT])
def test_check_size_argument(size: int) -> None:
    assert check_size_argument(size) == size


@pytest.mark.parametrize("size", [-1, -(2**60), MAX_JSON_INT + 1, 2**64])
def test_check_size_argument_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        check_size_argument(size)


@pytest.mark.parametrize("size", [True, False, 1.0, 1.5, "10", b"10", None])
def test_check_size_argument_wrong_type(size: object) -> None:
    with pytest.raises(TypeError, match="int"):
        check_size_argument(size)


# --------------------------------------------------------------------------
# raw_blob_error
# --------------------------------------------------------------------------


def test_raw_blob_error_empty() -> None:
    assert raw_blob_error(b"") is None


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_raw_blob_error_codes(code: str) -> None:
    error = raw_blob_error(json.dumps({"code": code, "message": "it failed"}).encode())
    assert isinstance(error, RequestError)
    assert error.method == "GetRawBlob"
    assert error.code == code
    assert error.message == "it failed"
    assert error.retryable is (code == "retryable")
    assert is_broken_pipe(error) is (code == "EPIPE")


def test_raw_blob_error_trailing_newline() -> None:
    error = raw_blob_error(b'{"code": "EPIPE", "message": "write |1: broken pipe"}\n')
    assert error is not None
    assert is_broken_pipe(error)


def test_raw_blob_error_not_found() -> None:
    error = raw_blob_error(b'{"code": "other", "message": "blob unknown to registry"}')
    assert isinstance(error, ImageNotFoundError)


def test_raw_blob_error_verification_message() -> None:
    error = raw_blob_error(b'{"code": "other", "message": "corrupted blob"}')
    assert isinstance(error, BlobVerificationError)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"{",
        b"[]",
        b"null",
        b'"EPIPE"',
        b"{}",
        b'{"code": "other"}',
        b'{"message": "m"}',
        b'{"code": "bogus", "message": "m"}',
        b'{"code": "", "message": "m"}',
        b'{"code": null, "message": "m"}',
        b'{"code": 1, "message": "m"}',
        b'{"code": "other", "message": 5}',
        b'{"code": "other", "message": null}',
        b" ",
    ],
)
def test_raw_blob_error_invalid(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="GetRawBlob"):
        raw_blob_error(data)


@pytest.mark.parametrize("code", ["[]", "{}", '["EPIPE"]'])
def test_raw_blob_error_unhashable_code(code: str) -> None:
    with pytest.raises(ProtocolError):
        raw_blob_error(b'{"code": ' + code.encode() + b', "message": "m"}')


@pytest.mark.parametrize("data", [b"1" * 5000, b"[" * 15000 + b"]" * 15000], ids=["int", "deep"])
def test_raw_blob_error_hostile_json(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        raw_blob_error(data)


# --------------------------------------------------------------------------
# is_broken_pipe
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        ("write |1: broken pipe", "EPIPE", True),
        ("anything at all", "EPIPE", True),
        ("write |1: broken pipe", None, True),
        ("write: Broken Pipe", None, True),
        ("syscall failed: EPIPE", None, True),
        ("write |1: broken pipe", "other", False),
        ("write |1: broken pipe", "retryable", False),
        ("connection reset by peer", None, False),
        ("", None, False),
    ],
)
def test_is_broken_pipe(message: str, code: str | None, expected: bool) -> None:
    assert is_broken_pipe(RequestError("FinishPipe", message, code)) is expected


# --------------------------------------------------------------------------
# Transfer
# --------------------------------------------------------------------------

DATA = b"hello, blob\n" * 10
DATA_DIGEST = Digest.from_bytes(DATA)


def test_digest_from_bytes() -> None:
    assert str(DATA_DIGEST) == "sha256:" + hashlib.sha256(DATA).hexdigest()
    assert isinstance(DATA_DIGEST, Digest)


def test_transfer_remaining() -> None:
    transfer = Transfer(DATA_DIGEST, len(DATA), verify=False)
    assert transfer.remaining() == len(DATA)
    assert transfer.received == 0
    transfer.update(DATA[:10])
    assert transfer.remaining() == len(DATA) - 10
    transfer.update(memoryview(DATA)[10:])
    assert transfer.remaining() == 0
    assert transfer.received == len(DATA)


def test_transfer_remaining_unknown_size() -> None:
    transfer = Transfer(DATA_DIGEST, None, verify=True)
    assert transfer.remaining() is None
    transfer.update(DATA)
    assert transfer.remaining() is None
    assert transfer.received == len(DATA)


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("expected", [len(DATA), None])
def test_transfer_exact(verify: bool, expected: int | None) -> None:
    transfer = Transfer(DATA_DIGEST, expected, verify=verify)
    for start in range(0, len(DATA), 7):
        transfer.update(memoryview(DATA)[start : start + 7])
    transfer.check_complete()
    transfer.check_complete(0)


@pytest.mark.parametrize("verify", [False, True])
def test_transfer_short(verify: bool) -> None:
    transfer = Transfer(DATA_DIGEST, len(DATA), verify=verify)
    transfer.update(DATA[:-1])
    with pytest.raises(VerificationError) as info:
        transfer.check_complete()
    assert str(len(DATA) - 1) in str(info.value)
    assert str(len(DATA)) in str(info.value)
    assert DATA_DIGEST in str(info.value)
    assert isinstance(info.value, ImageProxyError)
    assert not isinstance(info.value, RequestError)


@pytest.mark.parametrize("verify", [False, True])
def test_transfer_extra_bytes(verify: bool) -> None:
    transfer = Transfer(DATA_DIGEST, len(DATA), verify=verify)
    transfer.update(DATA)
    with pytest.raises(VerificationError, match="3 byte"):
        transfer.check_complete(extra=3)


def test_transfer_too_much_counted() -> None:
    transfer = Transfer(DATA_DIGEST, 4, verify=False)
    transfer.update(b"12345")
    assert transfer.remaining() == -1
    with pytest.raises(VerificationError):
        transfer.check_complete()


@pytest.mark.parametrize("expected", [len(DATA), None])
def test_transfer_digest_mismatch(expected: int | None) -> None:
    transfer = Transfer(DATA_DIGEST, expected, verify=True)
    transfer.update(DATA[:-1] + b"X")
    with pytest.raises(VerificationError, match="digest mismatch") as info:
        transfer.check_complete()
    assert Digest.from_bytes(DATA[:-1] + b"X") in str(info.value)


def test_transfer_sha512() -> None:
    digest = Digest("sha512:" + hashlib.sha512(DATA).hexdigest())
    transfer = Transfer(digest, len(DATA), verify=True)
    transfer.update(DATA)
    transfer.check_complete()
    bad = Transfer(digest, len(DATA), verify=True)
    bad.update(DATA.upper())
    with pytest.raises(VerificationError):
        bad.check_complete()


def test_transfer_no_hashing_without_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hasher(self: Digest) -> Any:
        raise AssertionError("hashed although verify=False")

    monkeypatch.setattr(Digest, "hasher", no_hasher)
    transfer = Transfer(DATA_DIGEST, len(DATA), verify=False)
    transfer.update(b"x" * len(DATA))  # wrong content, right size
    transfer.check_complete()


# --------------------------------------------------------------------------
# registry_host and auth_file_contents
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("docker://quay.io/x", "quay.io"),
        ("docker://quay.io/fedora/fedora:latest", "quay.io"),
        ("docker://localhost:5000/x", "localhost:5000"),
        ("docker://localhost/x", "localhost"),
        ("docker://127.0.0.1:5000/ns/img:tag", "127.0.0.1:5000"),
        ("docker://registry.example.com/a/b/c@sha256:" + "a" * 64, "registry.example.com"),
        ("docker://docker.io/library/busybox", "docker.io"),
        ("docker://library/busybox", "docker.io"),
        ("docker://busybox", "docker.io"),
        ("docker://busybox:latest", "docker.io"),
        ("docker://myuser/myimage:1.0", "docker.io"),
    ],
)
def test_registry_host(reference: str, expected: str) -> None:
    assert registry_host(reference) == expected


@pytest.mark.parametrize(
    "reference",
    [
        "oci:/tmp/layout:tag",
        "oci-archive:/tmp/x.tar",
        "docker-archive:/tmp/x.tar",
        "docker-daemon:busybox:latest",
        "containers-storage:quay.io/x",
        "dir:/tmp/x",
        "quay.io/x",
        "",
    ],
)
def test_registry_host_not_docker(reference: str) -> None:
    assert registry_host(reference) is None


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "hunter2"), ("robot$ci", "pa:ss:word"), ("ünïcode", "pässwörd"), ("u", "")],
)
def test_auth_file_contents(username: str, password: str) -> None:
    data = auth_file_contents("quay.io", username, password)
    assert isinstance(data, bytes)
    document = json.loads(data)
    assert list(document) == ["auths"]
    assert list(document["auths"]) == ["quay.io"]
    token = document["auths"]["quay.io"]["auth"]
    decoded = base64.b64decode(token, validate=True)
    assert decoded == f"{username}:{password}".encode()
    user, _, secret = decoded.decode().partition(":")
    assert (user, secret) == (username, password)


def test_auth_file_contents_host_with_port() -> None:
    document = json.loads(auth_file_contents("localhost:5000", "a", "b"))
    assert base64.b64decode(document["auths"]["localhost:5000"]["auth"]) == b"a:b"


# --------------------------------------------------------------------------
# Fuzzing decode_reply
# --------------------------------------------------------------------------

FUZZ_METHODS = [
    "Initialize",
    "OpenImage",
    "OpenImageOptional",
    "CloseImage",
    "GetManifest",
    "GetFullConfig",
    "GetBlob",
    "GetRawBlob",
    "GetLayerInfo",
    "GetLayerInfoPiped",
    "FinishPipe",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

messages = st.sampled_from(
    [
        "",
        "manifest unknown",
        "write |1: broken pipe",
        "corrupted blob",
        "connection reset by peer",
    ]
) | st.text(max_size=40)

reply_dicts = st.fixed_dictionaries(
    {},
    optional={
        "success": st.booleans() | json_values,
        "value": json_values,
        "pipeid": st.sampled_from([0, 1, 7, 2**32 - 1, 2**32, -1]) | json_values,
        "error": messages | json_values,
        "error_code": st.sampled_from(["", "EPIPE", "retryable", "other", "bogus"]) | json_values,
    },
)

packets = (
    st.binary(max_size=200)
    | reply_dicts.map(lambda d: json.dumps(d).encode())
    | st.text(max_size=60).map(str.encode)
)


@st.composite
def arbitrary_cases(draw: st.DrawFn) -> tuple[str, bytes, int]:
    """Any method, any packet, any number of descriptors."""
    return draw(st.sampled_from(FUZZ_METHODS)), draw(packets), draw(st.integers(0, MAX_FDS))


@st.composite
def plausible_cases(draw: st.DrawFn) -> tuple[str, bytes, int]:
    """Well-formed replies whose descriptors usually agree with the method.

    These reach the success path (with 0, 1 and 2 descriptors) often; the
    occasional disagreement exercises the descriptor checks.
    """
    method = draw(st.sampled_from(FUZZ_METHODS))
    expected = METHOD_FDS.get(method, 0)
    nfds = draw(st.sampled_from([expected, expected, expected, 0, 1, 2]))
    pipeid = draw(
        st.sampled_from([1, 42, 2**32 - 1, 0]) if expected == 1 else st.sampled_from([0, 0, 0, 3])
    )
    reply: dict[str, Any] = {
        "success": draw(st.sampled_from([True, True, False])),
        "value": draw(json_values),
        "pipeid": pipeid,
        "error": draw(messages),
    }
    code = draw(st.none() | st.sampled_from(["", "EPIPE", "retryable", "other"]))
    if code is not None:
        reply["error_code"] = code
    return method, json.dumps(reply).encode(), nfds


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    case=arbitrary_cases() | plausible_cases(),
    truncated=st.sampled_from([False, False, False, True]),
)
def test_fuzz_decode_reply(case: tuple[str, bytes, int], truncated: bool) -> None:
    method, data, nfds = case
    before = fd_count()
    fds = make_fds(nfds)
    try:
        reply = decode_reply(method, data, fds, truncated)
    except ImageProxyError as exc:
        event(f"raised {type(exc).__name__}")
        assert_closed(fds)
        assert isinstance(exc, ProtocolError | RequestError)
        if isinstance(exc, RequestError):
            assert nfds == 0
            assert exc.method == method
    else:
        event(f"reply with {len(reply.fds)} fd(s)")
        assert isinstance(reply, Reply)
        assert not truncated
        assert reply.fds == tuple(fds)
        assert len(fds) == METHOD_FDS.get(method, 0)
        assert isinstance(reply.pipeid, int)
        assert 0 <= reply.pipeid < 2**32
        assert (reply.pipeid != 0) == (len(fds) == 1)
        assert all(is_open(fd) for fd in reply.fds)
        close_all(reply.fds)
    assert fd_count() == before


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=100)
    | st.fixed_dictionaries(
        {},
        optional={
            "code": st.sampled_from(["EPIPE", "retryable", "other", "", "bogus"])
            | st.none()
            | st.integers()
            | st.text(max_size=8),
            "message": messages | json_values,
        },
    ).map(lambda d: json.dumps(d).encode())
)
def test_fuzz_raw_blob_error(data: bytes) -> None:
    try:
        error = raw_blob_error(data)
    except ProtocolError:
        return
    if error is not None:
        assert isinstance(error, RequestError)
        assert error.code in ERROR_CODES
        assert error.method == "GetRawBlob"
    else:
        assert data == b""


def test_version_digits_are_ascii() -> None:
    with pytest.raises(ProtocolError):
        ProtocolVersion.parse("\u0660.\u0662.\u0668")


def test_index_docker_io_is_docker_io() -> None:
    assert registry_host("docker://index.docker.io/library/busybox:latest") == "docker.io"
