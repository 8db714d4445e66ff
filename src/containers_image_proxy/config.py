"""What the user asks of the proxy, and its translation into skopeo's command line.

:class:`ImageProxyConfig` holds the options; :func:`build_command` turns them into a
:class:`ChildCommand` (argv plus the private files to hand over by descriptor)
without touching the system, so the translation can be checked on its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from .errors import ConfigurationError

__all__ = [
    "AUTH_FD",
    "DEBUG_ENV",
    "ChildCommand",
    "ImageProxyConfig",
    "build_command",
]

#: Environment variable that turns debug output on, whatever the config says.
DEBUG_ENV = "CONTAINERS_IMAGE_PROXY_DEBUG"

#: Descriptor number under which the child receives a private auth file.
AUTH_FD = 100

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


@dataclasses.dataclass(frozen=True)
class ChildCommand:
    """How to start the child: argv, private files by descriptor, and stderr handling.

    ``fds`` maps a descriptor number in the child to the bytes or binary file whose
    contents the child must find there, in a private file without a name on disk.
    ``credentials`` is set when the private auth file must be filled from a user
    name and password (per registry, before each image is opened).
    """

    argv: tuple[str, ...]
    fds: Mapping[int, bytes | BinaryIO]
    debug: bool
    credentials: tuple[str, str] | None = None


def _flag(argv: list[str], name: str, value: object) -> None:
    if value is not None:
        argv += [name, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]


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
    if config.skopeo_cmd is not None and (
        isinstance(config.skopeo_cmd, str) or len(config.skopeo_cmd) == 0
    ):
        raise ConfigurationError("skopeo_cmd must be a non-empty list of arguments")
    if config.stall_timeout is not None and not 0 < config.stall_timeout <= _MAX_TIMEOUT:
        raise ConfigurationError(
            f"stall_timeout must be between 0 and {_MAX_TIMEOUT} seconds (or None),"
            f" got {config.stall_timeout}"
        )
    _check_retry_options(config)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


def build_command(
    config: ImageProxyConfig | None = None, environ: Mapping[str, str] | None = None
) -> ChildCommand:
    """Translate ``config`` into the child's command line and private files.

    Pure: nothing is spawned, opened or read. ``environ`` defaults to ``os.environ``
    and is consulted only for ``CONTAINERS_IMAGE_PROXY_DEBUG``.
    Raises :class:`ConfigurationError` for options that exclude each other.
    """
    config = config or ImageProxyConfig()
    environ = os.environ if environ is None else environ
    _check_conflicts(config)
    debug = config.debug or DEBUG_ENV in environ

    argv = list(config.skopeo_cmd) if config.skopeo_cmd is not None else ["skopeo"]
    # Global options precede the subcommand.
    if debug:
        argv.append("--debug")
    _flag(argv, "--policy", config.policy)
    if config.insecure_policy:
        argv.append("--insecure-policy")
    if config.require_signed:
        argv.append("--require-signed")
    _flag(argv, "--registries.d", config.registries_d)
    _flag(argv, "--override-os", config.override_os)
    _flag(argv, "--override-arch", config.override_arch)
    _flag(argv, "--override-variant", config.override_variant)
    _flag(argv, "--tmpdir", config.tmpdir)
    _flag(argv, "--user-agent-prefix", config.user_agent_prefix)
    _flag(argv, "--tls-details", config.tls_details)

    argv.append("experimental-image-proxy")
    fds: dict[int, bytes | BinaryIO] = {}
    credentials = None
    if config.authfile is not None:
        _flag(argv, "--authfile", config.authfile)
    elif config.auth_data is not None:
        fds[AUTH_FD] = config.auth_data
        argv += ["--authfile", f"/proc/self/fd/{AUTH_FD}"]
    elif config.username is not None and config.password is not None:
        fds[AUTH_FD] = b'{"auths": {}}'
        credentials = (config.username, config.password)
        argv += ["--authfile", f"/proc/self/fd/{AUTH_FD}"]
    elif config.auth_anonymous:
        argv.append("--no-creds")
    _flag(argv, "--cert-dir", config.certificate_directory)
    for key in config.decryption_keys or ():
        _flag(argv, "--decryption-key", key)
    if config.insecure_skip_tls_verification:
        argv.append("--tls-verify=false")
    _flag(argv, "--shared-blob-dir", config.shared_blob_dir)
    _flag(argv, "--daemon-host", config.daemon_host)
    return ChildCommand(argv=tuple(argv), fds=fds, debug=debug, credentials=credentials)
