"""What the command says when it fails: one line in the user's words.

Each kind of failure has one template (:func:`error_message`): the image reference,
what went wrong in plain words with the source's own explanation, and what to try.
The protocol's method names stay out of it; ``--debug`` prints the raw error too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Final

from .. import LayoutError
from .._protocol import is_transient
from ..errors import (
    AccessDeniedError,
    AuthenticationError,
    CertificateError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxyError,
    InvalidReferenceError,
    LayerUnavailableError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    ProtocolError,
    ProxyExitedError,
    ProxyFailedError,
    ProxyTooOldError,
    RequestError,
    SpawnError,
    StallTimeoutError,
    UnpackError,
    UnsupportedOptionError,
    VerificationError,
    describe_status,
)
from .options import PASSWORD_ENV
from .status import CliError

__all__ = ["ErrorContext", "describe", "error_message", "option_words"]

_CREDENTIALS_HOWTO: Final = (
    f"--username USER (its password from --password-stdin, ${PASSWORD_ENV} or the prompt)"
    " or --authfile FILE"
)
_REFERENCE_FORMS: Final = (
    "References look like docker://HOST/NAME:TAG, oci:DIR:TAG, oci-archive:FILE,"
    " docker-archive:FILE, dir:DIR or containers-storage:NAME"
)


@dataclasses.dataclass(frozen=True)
class ErrorContext:
    """What the command line said, for the messages: the image, and how it was read.

    ``credentials`` tells how credentials were given (``"--username USER"``,
    ``"--authfile FILE"``, ``"--no-creds"``) or is None when none were.
    """

    reference: str | None = None
    credentials: str | None = None
    skopeo: str = "skopeo"
    stall_timeout: float | None = 300.0


def _detail(exc: BaseException) -> str:
    """The failure's own words, on one line, without the protocol method's name."""
    text = exc.message if isinstance(exc, RequestError | CliError) else str(exc)
    return " ".join(text.split()).rstrip(".")


def _subject(context: ErrorContext, text: str) -> str:
    return f"{context.reference}: {text}" if context.reference else text


def _not_found(exc: ImageNotFoundError, context: ErrorContext) -> str:
    return _subject(
        context,
        f"not found: {_detail(exc)}. Check the name, the tag or digest and the transport"
        " (for a registry, skopeo list-tags lists its tags)",
    )


def _authentication(exc: AuthenticationError, context: ErrorContext) -> str:
    given = context.credentials
    if given is None:
        problem = "the registry asks for credentials, and none were given on the command line"
        advice = f"Give {_CREDENTIALS_HOWTO}, or log in first (skopeo login)"
    elif given == "--no-creds":
        problem = "the registry asks for credentials, and --no-creds sent none"
        advice = f"Give {_CREDENTIALS_HOWTO} instead of --no-creds"
    else:
        problem = f"the registry refused the credentials given ({given}), or denies them this image"
        advice = "Check the user name and password (or the auth file's entry for this registry)"
    return _subject(context, f"{problem}: {_detail(exc)}. {advice}")


def _certificate(exc: CertificateError, context: ErrorContext) -> str:
    return _subject(
        context,
        f"the registry's TLS certificate could not be verified: {_detail(exc)}. Give the"
        " directory holding its CA certificate with --cert-dir DIR or, for a registry you"
        " trust on a network you trust, turn verification off with --tls-verify=false",
    )


def _invalid_reference(exc: InvalidReferenceError, context: ErrorContext) -> str:
    return _subject(context, f"not a valid image reference: {_detail(exc)}. {_REFERENCE_FORMS}")


def _policy_rejected(exc: PolicyRejectedError, context: ErrorContext) -> str:
    return _subject(
        context,
        f"the signature policy refused the image: {_detail(exc)}. Either sign it with a key"
        " the policy trusts, or fix the policy (--policy FILE, else policy.json;"
        " --registries.d DIR says where signatures are found)",
    )


def _policy_not_enforced(exc: PolicyNotEnforcedError, context: ErrorContext) -> str:
    source = "--require-signed" if exc.source == "require_signed" else exc.source
    return _subject(
        dataclasses.replace(context, reference=exc.reference),
        f"{source} asks for {exc.requirements}, which {context.skopeo} would not enforce"
        f" (its image proxy speaks protocol {exc.found}), so the image was not opened. Use a"
        f" skopeo that enforces it (protocol {exc.required} or later, skopeo 1.13 or newer;"
        " --skopeo PATH), or skip signature checks with --insecure-policy",
    )


def _layer_unavailable(exc: LayerUnavailableError, context: ErrorContext) -> str:
    return _subject(
        dataclasses.replace(context, reference=exc.reference),
        f"layer {exc.digest} cannot be read through {context.skopeo} (image proxy protocol"
        f" {exc.found}): the store no longer has the blob the manifest names. Use skopeo"
        " 1.11 or newer (--skopeo PATH)",
    )


def _too_old(exc: ProxyTooOldError, context: ErrorContext) -> str:
    return _subject(
        context,
        f"{context.skopeo} is too old for this: its image proxy speaks protocol {exc.found},"
        f" {exc.required} is needed. Use a newer skopeo (--skopeo PATH)",
    )


#: Why a skopeo may lack an option the command line passes on.
_MISSING_OPTION: Final = {
    "--require-signed": (
        "it needs a newer skopeo, whose image proxy should also speak protocol 0.2.6 or"
        " later to enforce signatures; or require signatures in the policy file instead"
    ),
    "--decryption-key": (
        "no skopeo's image proxy accepts it yet (skopeo copy does), so encrypted images"
        " cannot be read through it"
    ),
}


def _unsupported(exc: UnsupportedOptionError, context: ErrorContext) -> str:
    why = _MISSING_OPTION.get(exc.option, "it needs a newer skopeo")
    return (
        f"{context.skopeo} does not accept {exc.option} (configuration field {exc.field}):"
        f" {why}. Leave {exc.option} out, or use another skopeo (--skopeo PATH)"
    )


def _access_denied(exc: AccessDeniedError, context: ErrorContext) -> str:
    return _subject(
        context,
        f"permission denied: {_detail(exc)}. Run as the user who owns the image's files or"
        " store (a rootless store: inside its user namespace, e.g. podman unshare)",
    )


def _stalled(exc: StallTimeoutError, context: ErrorContext) -> str:
    waited = f" for {context.stall_timeout:g} seconds" if context.stall_timeout else ""
    return _subject(
        context,
        f"the source stopped sending data: nothing arrived{waited} (--stall-timeout)."
        " Check the network and the registry, then try again; --stall-timeout DURATION"
        " waits longer",
    )


def _request(exc: RequestError, context: ErrorContext) -> str:
    if is_transient(exc):
        return _subject(
            context,
            f"reading the image failed: {_detail(exc)}. This may pass: try again"
            " (--retry-times N retries a failed blob during pull and unpack)",
        )
    return _subject(context, f"reading the image failed: {_detail(exc)}")


def _verification(exc: VerificationError, context: ErrorContext) -> str:
    return _subject(
        context,
        f"data did not match its digest or size: {_detail(exc)}. The source holds damaged"
        " data, or it was altered on the way; nothing unverified was kept",
    )


def _unpack(exc: UnpackError, context: ErrorContext) -> str:
    return _subject(context, f"layer refused: {_detail(exc)}")


def _configuration(exc: ConfigurationError, context: ErrorContext) -> str:
    return f"invalid options: {_detail(exc)}"


def _spawn(exc: SpawnError, context: ErrorContext) -> str:
    return f"{_detail(exc)}. Is skopeo installed? --skopeo PATH names it"


def _exited(exc: ProxyExitedError, context: ErrorContext) -> str:
    tail = " ".join(exc.stderr.split())
    said = f": {tail}" if tail else ""
    if isinstance(exc, ProxyFailedError):
        return f"{context.skopeo} failed as it stopped ({describe_status(exc.returncode)}){said}"
    if exc.method == "Initialize":
        return (
            f"{context.skopeo} exited before its image proxy started"
            f" ({describe_status(exc.returncode)}){said}. Is it skopeo, with its"
            " experimental-image-proxy command? --skopeo PATH names another"
        )
    return _subject(
        context,
        f"{context.skopeo} stopped unexpectedly ({describe_status(exc.returncode)}){said}",
    )


def _protocol(exc: ProtocolError, context: ErrorContext) -> str:
    return (
        f"{context.skopeo}'s image proxy sent something this program cannot read;"
        " --debug shows what it was"
    )


def _os_error(exc: OSError, context: ErrorContext) -> str:
    if exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return _detail(exc)


#: One template per kind of failure, the more specific types first.
_TEMPLATES: Final[tuple[tuple[type[BaseException], Callable[[Any, ErrorContext], str]], ...]] = (
    (CliError, lambda exc, context: _detail(exc)),
    (PolicyNotEnforcedError, _policy_not_enforced),
    (LayerUnavailableError, _layer_unavailable),
    (ProxyTooOldError, _too_old),
    (UnsupportedOptionError, _unsupported),
    (ConfigurationError, _configuration),
    (SpawnError, _spawn),
    (ProxyExitedError, _exited),
    (ProtocolError, _protocol),
    (PolicyRejectedError, _policy_rejected),
    (AuthenticationError, _authentication),
    (CertificateError, _certificate),
    (InvalidReferenceError, _invalid_reference),
    (ImageNotFoundError, _not_found),
    (AccessDeniedError, _access_denied),
    (VerificationError, _verification),
    (StallTimeoutError, _stalled),
    (RequestError, _request),
    (UnpackError, _unpack),
    (LayoutError, lambda exc, context: _detail(exc)),
    (ImageProxyError, lambda exc, context: _detail(exc)),
    (OSError, _os_error),
)


def error_message(exc: BaseException, context: ErrorContext | None = None) -> str:
    """One line describing ``exc`` for standard error, with what to try.

    ``context`` names the image and how it was read; without it the reference is
    left out and credentials count as not given.
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    context = context or ErrorContext()
    for kind, template in _TEMPLATES:
        if isinstance(exc, kind):
            text = template(exc, context)
            break
    else:
        text = _detail(exc)
    return " ".join(text.split()) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """``exc`` in a few words, without advice (retry lines and JSON results use it)."""
    if isinstance(exc, StallTimeoutError | RequestError):
        return _detail(exc) or type(exc).__name__
    return error_message(exc)


#: The command-line spelling of each configuration field a message may name.
_OPTION_OF_FIELD: Final = {
    "username/password": "--username",
    "authfile": "--authfile",
    "auth_anonymous": "--no-creds",
    "username": "--username",
    "certificate_directory": "--cert-dir",
    "decryption_keys": "--decryption-key",
    "insecure_skip_tls_verification": "--tls-verify",
    "debug": "--debug",
    "skopeo_cmd": "--skopeo",
    "policy": "--policy",
    "insecure_policy": "--insecure-policy",
    "require_signed": "--require-signed",
    "registries_d": "--registries.d",
    "override_os": "--override-os",
    "override_arch": "--override-arch",
    "override_variant": "--override-variant",
    "stall_timeout": "--stall-timeout",
    "probe_interval": "--probe-interval",
    "retry_times": "--retry-times",
    "retry_delay": "--retry-delay",
}
_FIELD = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, _OPTION_OF_FIELD)) + r")(?![\w/-])")


def option_words(exc: ConfigurationError) -> str:
    """A configuration error about the command line's options, with their spelling there.

    The configuration names its fields (``insecure_policy``); the command line's user
    typed options (``--insecure-policy``).
    """
    return _FIELD.sub(lambda match: _OPTION_OF_FIELD[match[1]], _detail(exc))
