"""The image-proxy protocol without any I/O.

This module turns calls into request packets and received packets (with their file
descriptors) into results or typed errors. It knows which protocol version brings
which method, what each reply must carry, how blob transfers are accounted and
verified, and what a raw blob's error pipe means. The blocking and asyncio shells
only move bytes; every decision about the protocol is taken here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, NamedTuple

import msgspec

from ._fd import OwnedFd, close_all
from ._reference import is_storage, storage_image_id
from .errors import (
    AccessDeniedError,
    AuthenticationError,
    BlobVerificationError,
    CertificateError,
    ImageNotFoundError,
    InvalidReferenceError,
    PolicyRejectedError,
    ProtocolError,
    ProxyExitedError,
    ProxyTooOldError,
    RequestError,
    StallTimeoutError,
    UnsupportedOptionError,
    VerificationError,
)
from .oci import Digest

#: Largest packet either side sends (skopeo's limit).
MAX_MSG_SIZE = 32 * 1024
#: Largest integer the server accepts in a request (JSON numbers are doubles in Go).
MAX_JSON_INT = 2**53 - 1
#: File descriptors a reply may carry at most.
MAX_FDS = 2


class ProtocolVersion(NamedTuple):
    """A protocol version as returned by Initialize, comparable as a tuple."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: object) -> ProtocolVersion:
        """Parse ``"0.2.8"``; raise :class:`ProtocolError` for anything else."""
        if isinstance(text, str):
            match = re.fullmatch(r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:[-+][0-9A-Za-z.+-]*)?", text)
            if match:
                return cls(*(int(part) for part in match.groups()))
        raise ProtocolError(f"Initialize returned an invalid protocol version: {text!r}")

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


#: The oldest protocol this client accepts (GetFullConfig).
MIN_VERSION = ProtocolVersion(0, 2, 3)

#: The first version whose OpenImage enforces the signature policy.
POLICY_VERSION = ProtocolVersion(0, 2, 6)

#: Methods that arrived after the oldest accepted version, with the version that added them.
METHOD_VERSIONS: dict[str, ProtocolVersion] = {
    "OpenImageOptional": ProtocolVersion(0, 2, 4),
    "GetLayerInfo": ProtocolVersion(0, 2, 5),
    "GetLayerInfoPiped": ProtocolVersion(0, 2, 7),
    "GetRawBlob": ProtocolVersion(0, 2, 8),
}

#: Number of descriptors each method's successful reply carries.
METHOD_FDS: dict[str, int] = {
    "GetManifest": 1,
    "GetFullConfig": 1,
    "GetConfig": 1,
    "GetBlob": 1,
    "GetLayerInfoPiped": 1,
    "GetRawBlob": 2,
}

#: Error codes defined by protocol 0.2.8.
ERROR_CODES = frozenset({"EPIPE", "retryable", "other"})


def check_version(version: ProtocolVersion) -> None:
    """Refuse a proxy older than :data:`MIN_VERSION`."""
    if version < MIN_VERSION:
        raise ProxyTooOldError(str(MIN_VERSION), str(version))


def supports(method: str, version: ProtocolVersion) -> bool:
    """Return whether a proxy speaking ``version`` has ``method``."""
    return version >= METHOD_VERSIONS.get(method, MIN_VERSION)


def enforces_policy(version: ProtocolVersion) -> bool:
    """Return whether a proxy speaking ``version`` checks the signature policy at OpenImage."""
    return version >= POLICY_VERSION


def require(method: str, version: ProtocolVersion) -> None:
    """Raise :class:`ProxyTooOldError` if ``version`` lacks ``method``."""
    if not supports(method, version):
        raise ProxyTooOldError(str(METHOD_VERSIONS.get(method, MIN_VERSION)), str(version), method)


#: Encodes requests whose every argument is an int or ASCII text (nearly all of them).
_REQUEST_ENCODER = msgspec.json.Encoder()


def encode_request(method: str, args: Sequence[object] = ()) -> bytes:
    """Encode one request packet (compact ASCII JSON)."""
    plain = method.isascii()
    for arg in args:
        if isinstance(arg, int) and not -MAX_JSON_INT <= arg <= MAX_JSON_INT:
            raise ValueError(f"{method}: integer argument {arg} is out of the protocol's range")
        kind = type(arg)
        if kind is str:
            plain = plain and str(arg).isascii()
        elif kind is not int and kind is not bool:
            plain = False
    request = {"method": method, "args": list(args)}
    if plain:
        data = _REQUEST_ENCODER.encode(request)
    else:
        # json escapes text beyond ASCII and refuses what is not JSON, as it must.
        data = json.dumps(request, separators=(",", ":")).encode()
    if len(data) > MAX_MSG_SIZE:
        raise ValueError(
            f"{method}: request of {len(data)} bytes exceeds the {MAX_MSG_SIZE}-byte packet limit"
        )
    return data


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A successful reply: its value, pipe id and the descriptors it carried.

    The receiver owns ``fds`` and must close them.
    """

    value: Any
    pipeid: int
    fds: tuple[OwnedFd, ...]


# The proxy reports failures as text (and, from 0.2.8, a coarse code). The kinds a
# caller must tell apart are recognised here and nowhere else; each pattern is
# checked against real messages of skopeo 1.9.3, of a current skopeo and of the
# distribution registry (tests/integration/test_error_classes.py).
_VERIFICATION = re.compile(r"corrupted blob|expected \d+ bytes in blob|digest mismatch", re.I)
#: Refusals by the signature policy (OpenImage, protocol 0.2.6+). Fetching a
#: signature ("reading signature from ...") is transport, not policy.
_POLICY = re.compile(
    r"rejected by policy|signature was required|no signature verification policy"
    r"|(?<!reading )(?<!fetching )\bsignatures?\b|key not found for key id"
    r"|no public keys imported|openpgp: |docker reference match attempted",
    re.IGNORECASE,
)
_INVALID_REFERENCE = re.compile(
    r"invalid reference|invalid image name|unknown transport|(?:^|: )invalid image "
    r"|does not start with //|both a tag and (?:a )?digest|invalid repository name"
    r"|isn't of the form|is an empty reference|has neither a tag nor a digest"
    r"|reference does not include a tag|invalid source index|reserved for \(non-shortened\)"
    r"|does not look like an image id",
    re.IGNORECASE,
)
_CERTIFICATE = re.compile(r"\bx509: |tls: failed to verify", re.IGNORECASE)
_AUTHENTICATION = re.compile(
    r"unauthori[sz]ed|authentication required|(?<!permission )\bdenied\b"
    r"|\bstatus(?:code)?:? 40[13]\b|invalid username/password|incorrect username or password",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"manifest unknown|name unknown|blob unknown|unknown blob|not found|no such file"
    r"|does not exist|no such image|reference does not exist|no descriptor found"
    r"|does not resolve to an image ID|image not known|layer not known",
    re.IGNORECASE,
)
_ACCESS_DENIED = re.compile(r"permission denied|operation not permitted", re.IGNORECASE)
_BROKEN_PIPE = re.compile(r"broken pipe|EPIPE", re.IGNORECASE)
_OPEN_METHODS = frozenset({"OpenImage", "OpenImageOptional"})

#: (pattern, error class, only for the methods that open an image), in order.
_CLASSES: tuple[tuple[re.Pattern[str], type[RequestError], bool], ...] = (
    (_VERIFICATION, BlobVerificationError, False),
    (_POLICY, PolicyRejectedError, True),
    (_INVALID_REFERENCE, InvalidReferenceError, True),
    (_CERTIFICATE, CertificateError, False),
    (_AUTHENTICATION, AuthenticationError, False),
    (_ACCESS_DENIED, AccessDeniedError, False),
)


def request_error(method: str, message: str, code: str | None) -> RequestError:
    """Build the most specific error for a failure the proxy reported.

    The error keeps the proxy's own ``message`` and ``code``.
    """
    for pattern, kind, open_only in _CLASSES:
        if (not open_only or method in _OPEN_METHODS) and pattern.search(message):
            return kind(method, message, code)
    if _NOT_FOUND.search(message) and code != "retryable":
        return ImageNotFoundError(method, message, code)
    return RequestError(method, message, code)


_UNKNOWN_FLAG = re.compile(r"unknown flag: (--[A-Za-z0-9][A-Za-z0-9._-]*)")


def startup_error(
    error: ProxyExitedError, flags: Mapping[str, tuple[str, str]]
) -> UnsupportedOptionError | None:
    """Return the option skopeo refused at start, when ``error`` says it exited for that.

    ``flags`` maps each option given to skopeo to the configuration field that asked
    for it and what to do without it. None when the exit had another cause.
    """
    if error.method != "Initialize":
        return None
    match = _UNKNOWN_FLAG.search(error.stderr)
    if match is None or match[1] not in flags:
        return None
    field, advice = flags[match[1]]
    return UnsupportedOptionError(match[1], field, error.stderr.strip(), advice)


#: The variable that names the storage.conf of containers-storage (inherited by skopeo).
STORAGE_CONF_ENV = "CONTAINERS_STORAGE_CONF"
_STORAGE_HINT = (
    "this process lacks the privileges the store needs: run as the store's owner, and for"
    " a rootless store inside its user namespace (skopeo_cmd=['podman', 'unshare', 'skopeo'])"
)


def is_storage_missing(reference: str, error: RequestError) -> bool:
    """Return whether ``error`` says the ``containers-storage:`` image ``reference`` is missing.

    OpenImageOptional answers None then; skopeo reports some of these as failures.
    """
    return is_storage(reference) and isinstance(error, ImageNotFoundError)


def open_error(
    reference: str, error: RequestError, storage_conf: str | None = None
) -> RequestError:
    """Return the error to raise when OpenImage of ``reference`` failed with ``error``.

    For ``containers-storage:`` references, an image ID that the store lacks (skopeo
    then fails to parse the ID as a name) becomes :class:`ImageNotFoundError`, a
    denied access says what the store needs, and a missing ``storage_conf`` (the
    child's ``CONTAINERS_STORAGE_CONF``) is not taken for a missing image.
    """
    if not is_storage(reference):
        return error
    if storage_conf and f"{storage_conf}: no such file" in error.message:
        message = f"{error.message} ({STORAGE_CONF_ENV} names a file that does not exist)"
        return RequestError(error.method, message, error.code)
    image_id = storage_image_id(reference)
    if image_id is not None and "64-byte hexadecimal" in error.message:
        message = f"no image with ID {image_id} in the store ({error.message})"
        return ImageNotFoundError(error.method, message, error.code)
    if isinstance(error, AccessDeniedError):
        return AccessDeniedError(error.method, f"{error.message} ({_STORAGE_HINT})", error.code)
    return error


def is_broken_pipe(error: RequestError) -> bool:
    """Return whether ``error`` reports that the client closed a pipe before its end."""
    return error.code == "EPIPE" or (
        error.code is None and bool(_BROKEN_PIPE.search(error.message))
    )


# What containers/image says when the network or the server failed for now (skopeo
# 1.9.3 gives no error code): a reset or cut connection, a timeout, an HTTP 5xx or 429.
_TRANSIENT = re.compile(
    r"connection reset|unexpected EOF|: EOF\b|^EOF$|connection refused|i/o timeout"
    r"|TLS handshake timeout|timeout awaiting response headers|server closed idle connection"
    r"|(?:status|HTTP)[^0-9\n]{0,30}\b(?:5[0-9]{2}|429)\b"
    r"|\b(?:5[0-9]{2}|429)\b\W{0,3}(?:Internal Server Error|Bad Gateway|Service Unavailable"
    r"|Gateway Time-?out|Too Many Requests)",
    re.IGNORECASE,
)


def is_transient(error: BaseException) -> bool:
    """Return whether trying the same transfer again may succeed.

    True for what the proxy marks ``retryable`` (protocol 0.2.8), for a stall, and
    for a failure whose message names a cut connection, a timeout or an HTTP 5xx or
    429. Never for a verification failure (the data was wrong, not missing), for an
    early close the client made itself, or for a proxy that died.
    """
    if isinstance(error, VerificationError):
        return False
    if isinstance(error, RequestError):
        if error.code == "retryable":
            return True
        if is_broken_pipe(error) or isinstance(error, ImageNotFoundError):
            return False
        return bool(_TRANSIENT.search(error.message))
    return isinstance(error, StallTimeoutError)


class Silence(enum.Enum):
    """What to do when a blob's pipe stayed silent for as long as :class:`PipeWatch` said."""

    #: Send FinishPipe now to learn whether the source died (docs/protocol.md rule 9).
    PROBE = "probe"
    #: Give up: the stall timeout passed.
    STALL = "stall"
    #: Nothing yet: wait again.
    WAIT = "wait"


#: Seconds between tries to send a probe while another request holds the proxy.
PROBE_RETRY = 0.5


class PipeWatch:
    """When a silent blob pipe is probed with FinishPipe, and when it has stalled.

    A source that fails mid-blob leaves the pipe open and silent until FinishPipe
    (rules 1 and 9), so after ``probe_interval`` seconds without data FinishPipe is
    sent while the pipe is still read: an error reply means the source died and ends
    the blob at once; no reply means it is only slow, and the reply comes when the
    data is complete. ``stall`` seconds without data end the blob in any case. No
    probe is sent when ``probe_interval`` is None or not shorter than ``stall``, nor
    once FinishPipe is out (``probing``).
    """

    __slots__ = ("_next_probe", "probing", "stall", "transfer")

    def __init__(
        self,
        transfer: Transfer,
        probe_interval: float | None,
        stall: float | None,
        *,
        probing: bool = False,
    ) -> None:
        self.transfer = transfer
        self.stall = stall
        self.probing = probing
        if probe_interval is not None and stall is not None and probe_interval >= stall:
            probe_interval = None
        self._next_probe = probe_interval

    def timeout(self) -> float | None:
        """Return the seconds to wait for data before :meth:`silence` has something to decide."""
        idle = self.transfer.idle()
        limits = [] if self.stall is None else [self.stall - idle]
        if not self.probing and self._next_probe is not None:
            limits.append(self._next_probe - idle)
        return max(0.0, min(limits)) if limits else None

    def silence(self) -> Silence:
        """Return what the silence so far calls for."""
        idle = self.transfer.idle()
        if self.stall is not None and idle >= self.stall:
            return Silence.STALL
        if not self.probing and self._next_probe is not None and idle >= self._next_probe:
            return Silence.PROBE
        return Silence.WAIT

    def probe_sent(self) -> None:
        """FinishPipe is out: only the stall timeout is left."""
        self.probing = True

    def probe_deferred(self) -> None:
        """Try the probe again a little later: the proxy is busy with another request."""
        self._next_probe = self.transfer.idle() + PROBE_RETRY


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def decode_reply(
    method: str, data: bytes, fds: Sequence[OwnedFd], truncated: bool = False
) -> Reply:
    """Validate one reply packet to ``method`` and the descriptors that came with it.

    On any error every descriptor in ``fds`` is closed before raising, so nothing
    leaks; on success their ownership passes to the returned :class:`Reply`.

    Raises:
        ProtocolError: the reply breaks the protocol.
        RequestError: the proxy reported a failure (the most specific subclass).
    """
    try:
        return _decode_reply(method, data, fds, truncated)
    except BaseException:
        close_all(fds)
        raise


class _WireReply(msgspec.Struct):
    """A reply packet as it travels; decoding checks every field's type."""

    success: bool
    value: Any = None
    pipeid: Annotated[int, msgspec.Meta(ge=0, lt=2**32)] = 0
    error: str = ""
    error_code: str | None = None


_REPLY_DECODER = msgspec.json.Decoder(_WireReply)


def _decode_reply(method: str, data: bytes, fds: Sequence[OwnedFd], truncated: bool) -> Reply:
    if truncated or len(data) > MAX_MSG_SIZE:
        raise ProtocolError(f"reply to {method} exceeds the {MAX_MSG_SIZE}-byte packet limit")
    try:
        wire = _REPLY_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"reply to {method} is invalid: {exc}") from None
    success, error, code, pipeid = wire.success, wire.error, wire.error_code, wire.pipeid
    if not success:
        if code and code not in ERROR_CODES:
            raise ProtocolError(f"reply to {method} has an unknown error_code {code!r}: {error}")
        if fds:
            raise ProtocolError(f"failed reply to {method} carried {len(fds)} descriptor(s)")
        raise request_error(method, error or "unspecified error", code or None)
    expected = METHOD_FDS.get(method, 0)
    if len(fds) != expected:
        raise ProtocolError(
            f"reply to {method} carried {len(fds)} descriptor(s), expected {expected}"
        )
    if expected == 1 and pipeid == 0:
        raise ProtocolError(f"reply to {method} carried a descriptor but no pipeid")
    if expected != 1 and pipeid != 0:
        raise ProtocolError(f"reply to {method} has pipeid {pipeid} but no pipe descriptor")
    return Reply(wire.value, pipeid, tuple(fds))


def _expect_int(method: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolError(f"reply to {method} has an invalid value: {value!r}")
    return value


def image_handle(method: str, value: object, *, optional: bool = False) -> int:
    """Return the image handle in a reply to OpenImage (or 0 for a missing optional image)."""
    return _expect_int(method, value, 0 if optional else 1)


def blob_size(method: str, value: object) -> int:
    """Return the blob size in a reply to GetBlob or GetRawBlob; -1 means unknown."""
    return _expect_int(method, value, -1)


def manifest_digest(value: object) -> Digest:
    """Return the digest of the original manifest in a reply to GetManifest."""
    if not isinstance(value, str):
        raise ProtocolError(f"reply to GetManifest has an invalid digest: {value!r}")
    try:
        return Digest(value)
    except ValueError as exc:
        raise ProtocolError(f"reply to GetManifest has an invalid digest: {exc}") from None


def check_size_argument(size: object) -> int:
    """Validate a blob size given by the caller."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"blob size must be an int, got {type(size).__name__}")
    if not 0 <= size <= MAX_JSON_INT:
        raise ValueError(f"blob size {size} is out of range (0 to {MAX_JSON_INT})")
    return size


def raw_blob_error(data: bytes) -> RequestError | None:
    """Decode what a GetRawBlob worker wrote to its error pipe; empty means success."""
    if not data:
        return None
    obj = _load_json(data, "GetRawBlob error pipe")
    if not isinstance(obj, dict):
        raise ProtocolError(f"GetRawBlob error pipe carried a non-object: {data[:200]!r}")
    code, message = obj.get("code"), obj.get("message")
    if not isinstance(code, str) or code not in ERROR_CODES or not isinstance(message, str):
        raise ProtocolError(f"GetRawBlob error pipe carried an invalid error: {data[:200]!r}")
    return request_error("GetRawBlob", message, code)


class Transfer:
    """Accounting of one blob transfer: how much is due, what arrived, whether it is whole.

    ``expected`` is the promised size or ``None`` when the proxy did not know it.
    With ``verify`` the digest is computed while the data streams (GetRawBlob, where
    the proxy checks nothing); for GetBlob the proxy checks size and digest itself.
    """

    __slots__ = ("_hasher", "digest", "expected", "last_data", "received")

    def __init__(self, digest: Digest, expected: int | None, *, verify: bool) -> None:
        self.digest = digest
        self.expected = expected
        self.received = 0
        self.last_data = time.monotonic()
        self._hasher: Any = digest.hasher() if verify else None

    def remaining(self) -> int | None:
        """Return the bytes still due, or ``None`` when the size is unknown."""
        return None if self.expected is None else self.expected - self.received

    def update(self, chunk: bytes | memoryview) -> None:
        """Account for ``chunk``, which just arrived."""
        self.received += len(chunk)
        self.last_data = time.monotonic()
        if self._hasher is not None:
            self._hasher.update(chunk)

    def advance(self, count: int) -> None:
        """Account for ``count`` bytes that went past without being seen (spliced)."""
        if self._hasher is not None:
            raise ValueError("a verified transfer must see its data")
        self.received += count
        self.last_data = time.monotonic()

    def idle(self) -> float:
        """Return the seconds since data last arrived (or since the transfer began)."""
        return time.monotonic() - self.last_data

    def check_complete(self, extra: int = 0) -> None:
        """Raise :class:`VerificationError` unless exactly the promised data arrived."""
        if extra:
            raise VerificationError(
                f"blob {self.digest}: the proxy sent {extra} byte(s) more than the "
                f"{self.expected} promised"
            )
        if self.expected is not None and self.received != self.expected:
            raise VerificationError(
                f"blob {self.digest}: stream ended after {self.received} of {self.expected} bytes"
            )
        if self._hasher is not None:
            actual = f"{self.digest.algorithm}:{self._hasher.hexdigest()}"
            if actual != self.digest:
                raise VerificationError(
                    f"blob {self.digest}: digest mismatch, the data hashes to {actual}"
                )
