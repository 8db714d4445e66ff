"""The client's own trust check, for proxies that cannot enforce a signature policy.

From protocol 0.2.6 skopeo checks the signature policy when it opens an image.
Older proxies accept ``--policy`` and never consult it. Against them the client
refuses to open an image that a policy has something to say about (fail closed):
``require_signed``, or requirements other than ``insecureAcceptAnything`` in the
policy file skopeo would load (``ImageProxyConfig.policy``, else the user's
``$HOME/.config/containers/policy.json``, else ``/etc/containers/policy.json``)
for that reference. ``insecure_policy`` turns the check off, as it turns off
skopeo's.

This module reads the files; decoding and scope matching are in ``_policy``.
"""

from __future__ import annotations

import os

from . import _policy
from .config import ImageProxyConfig
from .errors import ConfigurationError, PolicyNotEnforcedError

__all__ = ["SYSTEM_POLICY", "USER_POLICY", "PolicyGuard", "default_policy_path", "resolve_path"]

#: The system-wide policy file.
SYSTEM_POLICY = "/etc/containers/policy.json"
#: The per-user policy file, relative to the home directory.
USER_POLICY = ".config/containers/policy.json"

#: Protocol version from which the proxy enforces the policy itself.
ENFORCING_VERSION = "0.2.6"


def default_policy_path() -> str | None:
    """Return the policy file containers/image loads when none is given (None: no file)."""
    home = os.path.expanduser("~")
    for path in (os.path.join(home, USER_POLICY), SYSTEM_POLICY):
        if os.path.exists(path):
            return path
    return None


def resolve_path(path: str) -> str | None:
    """Return ``path`` made absolute and free of symlinks, as containers/image resolves the
    paths of ``dir:``, ``oci:`` and ``oci-archive:`` references (the last component
    may be missing). None when that fails.
    """
    try:
        if os.path.lexists(path):
            return os.path.realpath(path, strict=True)
        parent, name = os.path.split(path)
        if name in (".", ".."):
            return None
        return os.path.normpath(os.path.join(os.path.realpath(parent or ".", strict=True), name))
    except (OSError, ValueError):
        return None


class PolicyGuard:
    """Decides, per reference, whether a proxy that ignores policies may open it.

    The policy file is read once, when the guard is made; a file that cannot be
    read or decoded raises :class:`ConfigurationError` naming it.
    """

    def __init__(self, config: ImageProxyConfig) -> None:
        self._config = config
        self._policy: _policy.Policy | None = None
        self._path: str | None = None
        if config.insecure_policy or config.require_signed:
            return
        path = os.fspath(config.policy) if config.policy is not None else default_policy_path()
        if path is None:
            return
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read signature policy {path}: {exc.strerror or exc}"
            ) from None
        self._policy = _policy.decode_policy(data, path)
        self._path = path

    def check(self, reference: str, version: str) -> None:
        """Raise :class:`PolicyNotEnforcedError` if a policy applies to ``reference``."""
        config = self._config
        if config.insecure_policy:
            return
        if config.require_signed:
            raise PolicyNotEnforcedError(
                ENFORCING_VERSION, version, reference, "require_signed", "a signature requirement"
            )
        if self._policy is None:
            return
        matches = _policy.requirements_for(self._policy, reference, resolve_path)
        kinds = _policy.enforced_types(matches)
        if kinds:
            where = ", ".join(match.describe() for match in matches)
            raise PolicyNotEnforcedError(
                ENFORCING_VERSION,
                version,
                reference,
                f"the signature policy {self._path} ({where})",
                ("requirements " if len(kinds) > 1 else "the requirement ") + " and ".join(kinds),
            )
