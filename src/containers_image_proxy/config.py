"""What the user asks of the proxy: :class:`ImageProxyConfig`, checked when it is made.

Its translation into skopeo's command line is :func:`build_command` (in
``_command``, importable from here too), which turns the options into a
:class:`ChildCommand` without touching the system.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence
from typing import BinaryIO

from ._command import AUTH_FD, DEBUG_ENV, OPTION_FIELDS, ChildCommand, build_command
from .errors import ConfigurationError

__all__ = [
    "AUTH_FD",
    "DEBUG_ENV",
    "OPTION_FIELDS",
    "ChildCommand",
    "ImageProxyConfig",
    "build_command",
    "validate",
]

StrPath = str | os.PathLike[str]

# poll(2) takes milliseconds in a C int.
_MAX_TIMEOUT = 2_000_000.0
_MAX_RETRIES = 100
_MAX_RETRY_DELAY = 3600.0


@dataclasses.dataclass
class ImageProxyConfig:
    """Options for the skopeo image proxy.

    Every field defaults to skopeo's own default. Secrets (``auth_data``,
    ``username`` and ``password``) never reach the child's command line or
    environment: they travel in a private, unlinked file passed by descriptor.

    Every field's type and value is checked when the configuration is made, and
    options that exclude each other are refused then: :class:`ConfigurationError`
    names the field. A string where a flag belongs (``"false"``) is an error, never
    a true value. Paths are ``str`` or :class:`os.PathLike`.
    """

    #: Path of a containers-auth.json file (``--authfile``).
    authfile: StrPath | None = None
    #: Contents of an auth file, as bytes or an open binary file; copied into a private file.
    auth_data: bytes | BinaryIO | None = None
    #: Access registries anonymously (``--no-creds``).
    auth_anonymous: bool = False
    #: Directory with ``*.crt``, ``*.cert`` and ``*.key`` files for registries (``--cert-dir``).
    certificate_directory: StrPath | None = None
    #: Keys to decrypt encrypted images (``--decryption-key``, repeated).
    decryption_keys: Sequence[str] | None = None
    #: Skip TLS verification (``--tls-verify=false``). Verification is on otherwise.
    insecure_skip_tls_verification: bool | None = None
    #: Ask skopeo for debug output (also on when ``CONTAINERS_IMAGE_PROXY_DEBUG`` is set).
    #: The output goes to the ``containers_image_proxy.skopeo`` logger at DEBUG level.
    debug: bool = False
    #: Command that runs skopeo, e.g. ``["systemd-run", "-Pq", "--", "skopeo"]``.
    skopeo_cmd: Sequence[str] | None = None
    #: Registry user name; with ``password`` turned into a private auth file.
    username: str | None = None
    #: Registry password; see ``username``.
    password: str | None = None
    #: Path of a signature policy file (``--policy``).
    policy: StrPath | None = None
    #: Run without any signature policy check (``--insecure-policy``).
    insecure_policy: bool = False
    #: Directory with registries.d configuration (``--registries.d``).
    registries_d: StrPath | None = None
    #: Operating system used to choose from a manifest list (``--override-os``).
    override_os: str | None = None
    #: Architecture used to choose from a manifest list (``--override-arch``).
    override_arch: str | None = None
    #: Architecture variant used to choose from a manifest list (``--override-variant``).
    override_variant: str | None = None
    #: Directory for skopeo's temporary files (``--tmpdir``).
    tmpdir: StrPath | None = None
    #: Directory to share blobs across OCI repositories (``--shared-blob-dir``).
    shared_blob_dir: StrPath | None = None
    #: Docker daemon host, for ``docker-daemon:`` references (``--daemon-host``).
    daemon_host: str | None = None
    #: Prefix of the User-Agent header (``--user-agent-prefix``, newer skopeo only).
    user_agent_prefix: str | None = None
    #: Refuse images without a valid signature (``--require-signed``, newer skopeo only).
    require_signed: bool = False
    #: Path of a TLS details file (``--tls-details``, newer skopeo only).
    tls_details: StrPath | None = None
    #: Seconds a pipe may deliver no data before :class:`StallTimeoutError`; None waits forever.
    stall_timeout: float | None = 300.0
    #: Seconds a blob may deliver no data before the proxy is asked (FinishPipe) whether
    #: its source failed, so that a dead source is reported in seconds rather than after
    #: ``stall_timeout``; None never asks. Once asked, the proxy serves nothing else
    #: until that blob's data ends: a source that stays silent ties it up until
    #: ``stall_timeout``, after which that proxy is no longer usable.
    probe_interval: float | None = 3.0
    #: Times ``pull``, ``unpack`` and ``stream_layers`` retry a blob whose transfer
    #: failed for a reason that may pass (a cut connection, an HTTP 5xx, a stall).
    retry_times: int = 3
    #: Seconds between those retries; None: 1 s, then doubling up to 30 s.
    retry_delay: float | None = None

    def __post_init__(self) -> None:
        validate(self)


_PATH_FIELDS = (
    "authfile",
    "certificate_directory",
    "policy",
    "registries_d",
    "tmpdir",
    "shared_blob_dir",
    "tls_details",
)
_TEXT_FIELDS = (
    "username",
    "password",
    "override_os",
    "override_arch",
    "override_variant",
    "daemon_host",
    "user_agent_prefix",
)
_FLAG_FIELDS = ("auth_anonymous", "debug", "insecure_policy", "require_signed")


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_text(field: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{field} must be a str, got {_type_name(value)}")
    if not value and not allow_empty:
        raise ConfigurationError(f"{field} must not be empty")
    if "\0" in value:
        raise ConfigurationError(f"{field} must not contain a NUL character")
    return value


def _check_path(field: str, value: object) -> None:
    if not isinstance(value, str | os.PathLike):
        raise ConfigurationError(
            f"{field} must be a path (str or os.PathLike), got {_type_name(value)}"
        )
    path = os.fspath(value)
    if not isinstance(path, str):
        raise ConfigurationError(f"{field} must be a str path, got {_type_name(path)}")
    _check_text(field, path)


def _check_strings(field: str, value: object) -> None:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigurationError(f"{field} must be a list of str, got {_type_name(value)}")
    for item in value:
        _check_text(f"{field} item", item)


def _check_types(config: ImageProxyConfig) -> None:
    for field in _FLAG_FIELDS:
        value = getattr(config, field)
        if not isinstance(value, bool):
            raise ConfigurationError(f"{field} must be a bool, got {_type_name(value)} {value!r}")
    tls = config.insecure_skip_tls_verification
    if tls is not None and not isinstance(tls, bool):
        raise ConfigurationError(
            f"insecure_skip_tls_verification must be a bool or None, got {_type_name(tls)} {tls!r}"
        )
    for field in _PATH_FIELDS:
        value = getattr(config, field)
        if value is not None:
            _check_path(field, value)
    for field in _TEXT_FIELDS:
        value = getattr(config, field)
        if value is not None:
            _check_text(field, value, allow_empty=field == "password")
    if config.username is not None and ":" in config.username:
        raise ConfigurationError("username must not contain ':'")
    data = config.auth_data
    if data is not None and (
        isinstance(data, io.TextIOBase)
        or (not isinstance(data, bytes) and not hasattr(data, "read"))
    ):
        raise ConfigurationError(
            f"auth_data must be bytes or a binary file, got {_type_name(data)}"
        )
    if config.decryption_keys is not None:
        _check_strings("decryption_keys", config.decryption_keys)
    if config.skopeo_cmd is not None:
        _check_strings("skopeo_cmd", config.skopeo_cmd)
        if len(config.skopeo_cmd) == 0:
            raise ConfigurationError("skopeo_cmd must be a non-empty list of arguments")
    timeout = config.stall_timeout
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or not 0 < timeout <= _MAX_TIMEOUT
    ):
        raise ConfigurationError(
            f"stall_timeout must be between 0 and {_MAX_TIMEOUT} seconds (or None), got {timeout!r}"
        )


def _check_conflicts(config: ImageProxyConfig) -> None:
    auth_choices = {
        "authfile": config.authfile is not None,
        "auth_data": config.auth_data is not None,
        "auth_anonymous": config.auth_anonymous,
        "username/password": config.username is not None or config.password is not None,
    }
    chosen = [name for name, on in auth_choices.items() if on]
    if len(chosen) > 1:
        raise ConfigurationError(f"conflicting authentication options: {chosen[0]} and {chosen[1]}")
    if (config.username is None) != (config.password is None):
        missing = "password" if config.password is None else "username"
        raise ConfigurationError(f"username and password go together: {missing} is missing")
    if config.policy is not None and config.insecure_policy:
        raise ConfigurationError("conflicting options: policy and insecure_policy")
    if config.require_signed and config.insecure_policy:
        raise ConfigurationError("conflicting options: require_signed and insecure_policy")
    if config.override_variant is not None and config.override_arch is None:
        raise ConfigurationError("override_variant needs override_arch")


def validate(config: ImageProxyConfig) -> None:
    """Check every field's type and value, and options that exclude each other.

    Runs when a configuration is made, and again before a proxy starts (the fields
    may have been changed in between).

    Raises:
        ConfigurationError: a field is invalid, or options exclude each other.
    """
    _check_types(config)
    _check_retry_options(config)
    _check_conflicts(config)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _check_retry_options(config: ImageProxyConfig) -> None:
    probe = config.probe_interval
    if probe is not None and (not _is_number(probe) or not 0 < probe <= _MAX_TIMEOUT):
        raise ConfigurationError(
            f"probe_interval must be between 0 and {_MAX_TIMEOUT} seconds (or None), got {probe}"
        )
    times = config.retry_times
    if isinstance(times, bool) or not isinstance(times, int) or not 0 <= times <= _MAX_RETRIES:
        raise ConfigurationError(
            f"retry_times must be a whole number from 0 to {_MAX_RETRIES}, got {times!r}"
        )
    delay = config.retry_delay
    if delay is not None and (not _is_number(delay) or not 0 <= delay <= _MAX_RETRY_DELAY):
        raise ConfigurationError(
            f"retry_delay must be between 0 and {_MAX_RETRY_DELAY} seconds (or None), got {delay}"
        )
