"""The translation of an :class:`ImageProxyConfig` into skopeo's command line (pure).

:func:`build_command` turns the options into a :class:`ChildCommand`: the argv, the
private files to hand over by descriptor, and whether to log skopeo's stderr. It
touches nothing on the system, so the translation is checked on its own.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from .config import ImageProxyConfig

__all__ = [
    "AUTH_FD",
    "DEBUG_ENV",
    "OPTION_FIELDS",
    "ChildCommand",
    "auth_file_contents",
    "build_command",
]

#: Environment variable that turns debug output on, whatever the config says.
DEBUG_ENV = "CONTAINERS_IMAGE_PROXY_DEBUG"

#: Descriptor number under which the child receives a private auth file.
AUTH_FD = 100

_AUTH_PATH = f"/proc/self/fd/{AUTH_FD}"


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


#: Each option skopeo may be given: the field that asks for it, and what to do when
#: the installed skopeo lacks it (see :class:`UnsupportedOptionError`).
OPTION_FIELDS: Mapping[str, tuple[str, str]] = {
    "--debug": ("debug", ""),
    "--policy": ("policy", ""),
    "--insecure-policy": ("insecure_policy", ""),
    "--require-signed": (
        "require_signed",
        "it needs a newer skopeo (its image proxy must also speak protocol 0.2.6 or later"
        " to enforce signatures); or require signatures in the policy file instead",
    ),
    "--registries.d": ("registries_d", ""),
    "--override-os": ("override_os", ""),
    "--override-arch": ("override_arch", ""),
    "--override-variant": ("override_variant", ""),
    "--tmpdir": ("tmpdir", ""),
    "--user-agent-prefix": ("user_agent_prefix", "it needs skopeo 1.21 or newer; remove it"),
    "--tls-details": ("tls_details", "it needs a newer skopeo; remove it"),
    "--authfile": ("authfile, auth_data or username", ""),
    "--no-creds": ("auth_anonymous", ""),
    "--cert-dir": ("certificate_directory", ""),
    "--decryption-key": (
        "decryption_keys",
        "no skopeo's image proxy accepts it yet (skopeo copy does), so encrypted images"
        " cannot be read through the proxy; remove decryption_keys",
    ),
    "--tls-verify": ("insecure_skip_tls_verification", ""),
    "--shared-blob-dir": ("shared_blob_dir", ""),
    "--daemon-host": ("daemon_host", ""),
}


def _flag(argv: list[str], name: str, value: object) -> None:
    if value is not None:
        argv += [name, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]


def _global_options(argv: list[str], config: ImageProxyConfig, debug: bool) -> None:
    """Append the options that precede the subcommand."""
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


def _auth_options(
    argv: list[str], config: ImageProxyConfig
) -> tuple[dict[int, bytes | BinaryIO], tuple[str, str] | None]:
    """Append the authentication options; the private files and credentials they need."""
    if config.authfile is not None:
        _flag(argv, "--authfile", config.authfile)
    elif config.auth_data is not None:
        argv += ["--authfile", _AUTH_PATH]
        return {AUTH_FD: config.auth_data}, None
    elif config.username is not None and config.password is not None:
        argv += ["--authfile", _AUTH_PATH]
        return {AUTH_FD: b'{"auths": {}}'}, (config.username, config.password)
    elif config.auth_anonymous:
        argv.append("--no-creds")
    return {}, None


def build_command(
    config: ImageProxyConfig | None = None, environ: Mapping[str, str] | None = None
) -> ChildCommand:
    """Translate ``config`` into the child's command line and private files.

    Pure: nothing is spawned, opened or read. ``environ`` defaults to ``os.environ``
    and is consulted only for ``CONTAINERS_IMAGE_PROXY_DEBUG``.

    Raises:
        ConfigurationError: a value is invalid, or options exclude each other.
    """
    # config.py re-exports this module's names, so it is imported here, not above.
    from .config import ImageProxyConfig, validate

    config = config or ImageProxyConfig()
    environ = os.environ if environ is None else environ
    validate(config)
    debug = config.debug or DEBUG_ENV in environ
    argv = list(config.skopeo_cmd) if config.skopeo_cmd is not None else ["skopeo"]
    _global_options(argv, config, debug)
    argv.append("experimental-image-proxy")
    fds, credentials = _auth_options(argv, config)
    _flag(argv, "--cert-dir", config.certificate_directory)
    for key in config.decryption_keys or ():
        _flag(argv, "--decryption-key", key)
    if config.insecure_skip_tls_verification:
        argv.append("--tls-verify=false")
    _flag(argv, "--shared-blob-dir", config.shared_blob_dir)
    _flag(argv, "--daemon-host", config.daemon_host)
    return ChildCommand(argv=tuple(argv), fds=fds, debug=debug, credentials=credentials)


def auth_file_contents(host: str, username: str, password: str) -> bytes:
    """Return a containers-auth.json document with credentials for ``host``."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": token}}}).encode()
