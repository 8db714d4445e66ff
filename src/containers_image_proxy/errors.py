"""Every exception of containers_image_proxy, in one family.

Each derives from :class:`ImageProxyError`, so a single ``except ImageProxyError``
catches them all. Subclasses tell what went wrong and carry what a caller needs to
react: the method that failed, the proxy's own message and error code, the exit
status of a dead proxy, the versions involved. ``retryable`` says whether trying the
same operation again may succeed. The proxy's refusals are sorted into these types
in one place (the protocol core), so callers tell them apart without reading text.
A second base class in parentheses keeps the error catchable as a built-in one::

    ImageProxyError
    ├── ConfigurationError (ValueError)        options that are invalid or exclude each other
    │   └── UnsupportedOptionError             the installed skopeo lacks an option asked for
    ├── SpawnError (OSError)                   the skopeo command could not be started
    ├── ProtocolError                          the proxy broke the protocol
    ├── InvalidDigestError (ValueError)        a malformed or unsupported digest
    ├── InvalidDocumentError (ValueError)      a manifest, index or configuration failed validation
    ├── TemplateError (ValueError)             an inspect template this package cannot fill
    ├── ProxyTooOldError                       the proxy's protocol lacks what was asked for
    │   ├── PolicyNotEnforcedError             a signature policy applies, the proxy would ignore it
    │   └── LayerUnavailableError              a stored layer this proxy cannot serve
    ├── RequestError                           the proxy refused or failed a request
    │   ├── ImageNotFoundError
    │   ├── PolicyRejectedError                the signature policy refused the image
    │   ├── AuthenticationError                credentials missing, refused or denied
    │   ├── InvalidReferenceError (ValueError)
    │   ├── CertificateError                   TLS verification failed
    │   ├── AccessDeniedError                  the proxy lacks privileges on a file or store
    │   └── BlobVerificationError              (also a VerificationError) the proxy's check failed
    ├── VerificationError                      data did not match its digest or size
    ├── ProxyExitedError                       skopeo exited while it was still needed
    │   └── ProxyFailedError                   skopeo failed its shutdown
    ├── StallTimeoutError (TimeoutError)       a pipe stayed silent too long
    ├── ClosedError (ValueError)               use after close, or with another proxy
    ├── BusyError (RuntimeError)               two readers at once, or a wait that never ends
    ├── LayoutError (OSError)                  the destination cannot hold an OCI layout
    └── UnpackError                            a layer could not be applied to a root filesystem
        ├── LayerFormatError (ValueError)      not what the layer claims to be
        │   ├── CompressionMismatchError       compressed otherwise than its media type says
        │   └── TarTrailerError                data after the tar's end-of-archive marker
        ├── UnsafeLayerError                   an entry would reach outside the destination
        └── LimitExceededError                 a layer went past an UnpackLimits field
"""

from __future__ import annotations


class ImageProxyError(Exception):
    """Base class of every error raised by containers_image_proxy."""

    retryable: bool = False


class ConfigurationError(ImageProxyError, ValueError):
    """The configuration is invalid, e.g. two options that exclude each other."""


class UnsupportedOptionError(ConfigurationError):
    """The installed skopeo does not accept an option that the configuration asks for.

    skopeo refuses an unknown option at start, before it speaks the protocol; this
    error replaces the bare "proxy exited" that would follow. ``option`` is skopeo's
    flag (``"--decryption-key"``), ``field`` the :class:`ImageProxyConfig` field that
    produced it (``"decryption_keys"``) and ``stderr`` what skopeo said.
    """

    def __init__(self, option: str, field: str, stderr: str, advice: str = "") -> None:
        text = (
            f"the installed skopeo does not accept {option}, which the configuration's"
            f" {field} asks for: {advice or 'remove it, or use a skopeo that has it'}"
        )
        super().__init__(text)
        self.option = option
        self.field = field
        self.stderr = stderr


class SpawnError(ImageProxyError, OSError):
    """The skopeo command could not be started."""

    def __init__(self, command: str, error: OSError) -> None:
        super().__init__(error.errno, f"cannot start {command!r}: {error.strerror or error}")
        self.command = command
        self.error = error

    def __str__(self) -> str:
        return str(self.args[1])


class ProtocolError(ImageProxyError):
    """The proxy sent something that breaks the protocol (bad JSON, wrong types, fds)."""


class InvalidDigestError(ImageProxyError, ValueError):
    """A digest string is malformed or uses an unsupported algorithm."""


class InvalidDocumentError(ImageProxyError, ValueError):
    """A JSON document (manifest, index, configuration, layer info) failed validation."""


class ProxyTooOldError(ImageProxyError):
    """The proxy speaks a protocol version older than what was asked for."""

    def __init__(self, required: str, found: str, method: str | None = None) -> None:
        what = f"method {method} needs" if method else "this client needs"
        super().__init__(f"proxy too old: {what} protocol {required}, the proxy speaks {found}")
        self.required = required
        self.found = found
        self.method = method


class PolicyNotEnforcedError(ProxyTooOldError):
    """A signature policy applies to the image, but the proxy would not enforce it.

    Proxies older than protocol 0.2.6 accept ``--policy`` and never consult it, so
    the image is refused before it is opened. ``reference`` is the image, ``source``
    says which policy applies (a file, or ``require_signed``) and ``requirements``
    names the requirement types that would have been ignored.
    """

    def __init__(
        self, required: str, found: str, reference: str, source: str, requirements: str
    ) -> None:
        super().__init__(required, found)
        self.reference = reference
        self.source = source
        self.requirements = requirements
        self.args = (
            f"refusing to open {reference}: {source} sets {requirements} for it, which this"
            f" skopeo's image proxy (protocol {found}) would not enforce; use a skopeo whose"
            f" image proxy speaks protocol {required} or later (skopeo 1.13 or newer), or opt"
            " out of signature checks with insecure_policy (--insecure-policy)",
        )


class LayerUnavailableError(ProxyTooOldError):
    """The source cannot serve a layer under the digest its manifest names.

    ``containers-storage:`` keeps a layer that was stored from a compressed blob only
    uncompressed, while the manifest still names the compressed digest. Only
    GetLayerInfo (protocol 0.2.5, skopeo 1.11 and later) tells the digest the store
    can serve, so an older proxy cannot read such an image. ``digest`` is the layer's
    digest in the manifest, ``reference`` the image.
    """

    def __init__(self, reference: str, digest: str, found: str, message: str) -> None:
        super().__init__("0.2.5", found, "GetLayerInfo")
        self.args = (
            f"layer {digest} of {reference} cannot be read through this skopeo (image proxy"
            f" protocol {found}): the source no longer has the blob the manifest names"
            f" ({message}). Images stored from compressed layers need skopeo 1.11 or later"
            " (protocol 0.2.5), whose GetLayerInfo names the layers the store serves.",
        )
        self.reference = reference
        self.digest = digest


class RequestError(ImageProxyError):
    """The proxy refused or failed a request.

    ``method`` is the protocol method, ``message`` the proxy's own error text and
    ``code`` the proxy's error code (``"EPIPE"``, ``"retryable"``, ``"other"``) when it
    sent one (protocol 0.2.8 and later), else ``None``.
    """

    def __init__(self, method: str, message: str, code: str | None = None) -> None:
        super().__init__(f"{method} failed: {message}")
        self.method = method
        self.message = message
        self.code = code

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """Whether the proxy said that the failure is transient."""
        return self.code == "retryable"


class ImageNotFoundError(RequestError):
    """The image, tag or blob asked for does not exist in the source."""


class PolicyRejectedError(RequestError):
    """The signature policy refused the image (protocol 0.2.6 and later).

    ``message`` is the proxy's reason, e.g. "A signature was required, but no
    signature exists".
    """


class AuthenticationError(RequestError):
    """The registry asked for credentials, or refused the ones given."""


class InvalidReferenceError(RequestError, ValueError):
    """The image reference is malformed, empty or names an unknown transport."""


class CertificateError(RequestError):
    """TLS verification of the registry failed (unknown authority, wrong name, expired)."""


class AccessDeniedError(RequestError):
    """The proxy lacks the privileges a file or store it needs asks for.

    Skopeo reported ``permission denied`` or ``operation not permitted``: e.g. a
    ``containers-storage:`` store owned by root opened by another user, or a
    rootless store used outside its user namespace. Running again as is will not help.
    """


class VerificationError(ImageProxyError):
    """Data did not match what it was promised to be (digest or size)."""


class BlobVerificationError(RequestError, VerificationError):
    """The proxy found that a blob did not match its digest or size."""


class ProxyExitedError(ImageProxyError):
    """The skopeo child process exited while it was still needed.

    ``returncode`` is its exit status (negative for a signal) or ``None`` when it was
    not known in time; ``stderr`` is the tail of what it wrote to standard error.
    """

    def __init__(self, method: str | None, returncode: int | None, stderr: str) -> None:
        during = f" during {method}" if method else ""
        status = describe_status(returncode)
        text = f"skopeo proxy exited unexpectedly{during} ({status})"
        tail = stderr.strip()
        if tail:
            text += f": {tail}"
        super().__init__(text)
        self.method = method
        self.returncode = returncode
        self.stderr = stderr


class ProxyFailedError(ProxyExitedError):
    """The proxy exited with a failure status after it was asked to shut down."""

    def __init__(self, returncode: int | None, stderr: str) -> None:
        super().__init__(None, returncode, stderr)
        status = describe_status(returncode)
        tail = stderr.strip()
        self.args = (f"skopeo proxy failed ({status})" + (f": {tail}" if tail else ""),)


class StallTimeoutError(ImageProxyError, TimeoutError):
    """A pipe delivered no data for longer than the configured stall timeout."""

    retryable = True


class ClosedError(ImageProxyError, ValueError):
    """An object was used after it was closed, or with a proxy it does not belong to."""


class BusyError(ImageProxyError, RuntimeError):
    """A blob stream was read by two threads or tasks at once, or a request was made
    by the thread or task whose blob holds the proxy (it would wait forever)."""


class LayoutError(ImageProxyError, OSError):
    """The destination cannot hold an OCI layout (not a directory, not writable, ...)."""


class TemplateError(ImageProxyError, ValueError):
    """A ``--format`` template of ``inspect`` uses more than the ``{{.Field}}`` actions."""


class UnpackError(ImageProxyError):
    """A layer could not be applied to a root filesystem.

    ``entry`` names the tar entry at fault, when there is one.
    """

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


class LayerFormatError(UnpackError, ValueError):
    """A layer is not what it claims to be: unsupported media type, bad compressed
    data, a malformed tar stream or entry (a bare ``.wh.``, a missing hardlink target).
    """


class CompressionMismatchError(LayerFormatError):
    """A layer's bytes are compressed differently from what its media type says.

    ``declared`` is the compression its media type names, ``detected`` the one its
    first bytes show (``"none"``, ``"gzip"``, ``"zstd"`` or ``"unknown"``).
    """

    def __init__(self, message: str, *, declared: str, detected: str) -> None:
        super().__init__(message)
        self.declared = declared
        self.detected = detected


class TarTrailerError(LayerFormatError):
    """A layer's tar goes on after an end-of-archive block.

    Either a zero block is followed by something other than a second zero block (Go's
    archive/tar, and so umoci, refuse this), or a valid tar header follows the two
    end blocks. Readers that skip zero blocks (``tar --ignore-zeros``) would extract
    entries that a reader stopping at the end marker hides, so the layer is refused.
    ``offset`` is where the unexpected data starts in the decompressed tar.
    """

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class UnsafeLayerError(UnpackError):
    """A tar entry would reach outside the destination, or through a symlink.

    Raised for ``..`` components, for paths (or hardlink targets) that go through a
    symlink planted by an earlier entry or layer, and for a root entry that is not a
    directory.
    """


class LimitExceededError(UnpackError):
    """A layer went past one of the :class:`UnpackLimits`.

    ``limit`` is the name of the field of :class:`UnpackLimits`, ``value`` its value.
    """

    def __init__(self, message: str, *, limit: str, value: int, entry: str | None = None) -> None:
        super().__init__(message, entry=entry)
        self.limit = limit
        self.value = value


def describe_status(returncode: int | None) -> str:
    """Say in words how a process ended: its exit status, or the signal that killed it."""
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
