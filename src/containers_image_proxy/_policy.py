"""containers-policy.json(5) without any I/O: which requirements apply to a reference.

skopeo's image proxy enforces the signature policy at OpenImage only from protocol
0.2.6. For older proxies the client must know, before it opens an image, whether a
policy would have had anything to enforce for that image. This module answers that
question the way containers/image does:

* :func:`decode_policy` (from ``_policy_document``) decodes a policy file into typed
  structures, as strictly as containers/image;
* :func:`requirements_for` finds the requirements that apply to a reference: the
  transport's section, the most specific scope first (the reference's own identity,
  then its namespaces, then the transport's ``""``), and ``default`` as fallback.

Identities and namespaces per transport follow containers-policy.json(5):

========================  ==========================================================
``docker:``               ``HOST[:PORT]/PATH:TAG`` or ``...@DIGEST``; then the
                          repository, each parent namespace, the host, and
                          ``*.DOMAIN`` wildcards of the host (without its port)
``docker-daemon:``        as ``docker:`` for named references; an image ID has
                          only the ``""`` scope
``oci:``, ``oci-archive:``  the absolute, symlink-free path, then its parents
``dir:``, ``sif:``        the absolute, symlink-free path, then its parents
``containers-storage:``   ``[DRIVER@ROOT]NAME:TAG@ID``, then shorter forms, the
                          store ``[DRIVER@ROOT]`` and ``[ROOT]``
``docker-archive:``,      only the ``""`` scope
``tarball:``
========================  ==========================================================

Where the identity cannot be known without I/O (the store of a
``containers-storage:`` reference that does not name it) or the reference cannot be
parsed, every scope that might apply is returned: the answer errs on the side of
finding a requirement. Paths are resolved by a function the caller passes in.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable

from ._policy_document import (
    ACCEPT_ANYTHING,
    Policy,
    Requirement,
    decode_policy,
    requirement_type,
)
from ._reference import DockerName, is_digest, is_image_id, parse_docker_name

__all__ = [
    "ACCEPT_ANYTHING",
    "Policy",
    "Requirement",
    "ScopeMatch",
    "decode_policy",
    "enforced_types",
    "requirements_for",
]

# --------------------------------------------------------------------------
# Docker references (parsed in _reference)
# --------------------------------------------------------------------------


def _docker_namespaces(name: DockerName) -> list[str]:
    """Return the repository, its parent namespaces, the host, then ``*.`` wildcard domains."""
    namespaces = []
    current = name.name
    while True:
        namespaces.append(current)
        slash = current.rfind("/")
        if slash == -1:
            break
        current = current[:slash]
    colon = current.find(":")
    host = current[:colon] if colon != -1 else current
    while (dot := host.find(".")) != -1:
        host = host[dot + 1 :]
        namespaces.append(f"*.{host}")
    return namespaces


# --------------------------------------------------------------------------
# Identities per transport
# --------------------------------------------------------------------------

#: A reference's policy identity and the namespaces searched after it, in order.
Identity = tuple[str, list[str]]
#: Turns a path into an absolute, symlink-free one (None when that fails).
Resolver = Callable[[str], str | None]


def _tagged_docker(text: str, *, both_allowed: bool = False) -> DockerName | None:
    name = parse_docker_name(text)
    if name is None:
        return None
    if name.tag is not None and name.digest is not None and not both_allowed:
        return None
    if name.tag is None and name.digest is None:
        name = dataclasses.replace(name, tag="latest")
    return name


def _docker_identity(name: DockerName) -> Identity:
    return str(name), _docker_namespaces(name)


def _path_identity(path: str | None, *, include_self: bool) -> list[Identity] | None:
    if path is None:
        return None
    namespaces = []
    current = path
    if include_self:
        while (slash := current.rfind("/")) != -1 and current != "/":
            namespaces.append(current)
            current = current[:slash]
    else:
        while (slash := current.rfind("/")) > 0:
            current = current[:slash]
            namespaces.append(current)
    return [(path, namespaces)]


def _storage_identities(rest: str, scopes: Iterable[str]) -> list[Identity] | None:
    """Return the identities of a ``containers-storage:`` reference, for each store it may be in.

    The store is only known when the reference names both driver and root; else
    every store that a scope names is a candidate, and so is any other store.
    """
    driver = root = None
    image = rest
    if rest.startswith("["):
        close = rest.find("]")
        if close < 1:
            return None
        spec, image = rest[1:close], rest[close + 1 :]
        first, at, second = spec.partition("@")
        driver, spec = (first, second) if at else (None, first)
        root = spec.partition(":")[0].partition("+")[0] or None
    interpretations = _storage_images(image)
    if interpretations is None:
        return None
    stores: set[tuple[str | None, str | None]] = {(driver, root)}
    if driver is None or root is None:
        for scope in scopes:
            if scope.startswith("[") and "]" in scope:
                first, at, second = scope[1 : scope.index("]")].partition("@")
                candidate = (first, second) if at else (None, first)
                if (driver is None or candidate[0] in (None, driver)) and root in (
                    None,
                    candidate[1],
                ):
                    stores.add(candidate)
    identities = []
    for store_driver, store_root in sorted(stores, key=repr):
        for named, image_id in interpretations:
            identities.append(_storage_identity(store_driver, store_root, named, image_id))
    return identities


def _storage_images(image: str) -> list[tuple[DockerName | None, str | None]] | None:
    """Return the (name, image ID) readings of the image part of a storage reference."""
    if not image:
        return None
    image_id = None
    name_part = image
    at = image.rfind("@")
    if at != -1:
        possible = image[at + 1 :]
        if not is_digest(possible):
            if not is_image_id(possible):
                return None  # a short ID: only the store knows the image
            image_id, name_part = possible, image[:at]
    if image_id is None and is_image_id(name_part):
        return [(None, name_part)]
    if image_id is None and len(name_part) >= 3 and re.fullmatch(r"[0-9a-f]+", name_part):
        return None  # perhaps a short ID: only the store knows which image it names
    if not name_part:
        return [(None, image_id)]
    named = _tagged_docker(name_part, both_allowed=True)
    return None if named is None else [(named, image_id)]


def _storage_identity(
    driver: str | None, root: str | None, named: DockerName | None, image_id: str | None
) -> Identity:
    # An unknown driver or root cannot equal any scope's: "?" never matches one.
    store = f"[{driver or '?'}@{root or '?'}]"
    identity = store + (str(named) if named is not None else "")
    if image_id is not None:
        identity += f"@{image_id}"
    namespaces = []
    if named is not None:
        if image_id is not None:
            namespaces.append(store + str(named))
        if named.tag is not None and named.digest is not None:
            namespaces.append(f"{store}{named.name}:{named.tag}")
        components = named.name.split("/")
        while components:
            namespaces.append(store + "/".join(components))
            components.pop()
    namespaces += [store, f"[{root or '?'}]"]
    return identity, namespaces


def _identities(
    transport: str, rest: str, scopes: Iterable[str], resolve: Resolver
) -> list[Identity] | None:
    """Return every identity the reference may have; None when it cannot be told."""
    if transport == "docker":
        if not rest.startswith("//"):
            return None
        name = _tagged_docker(rest[2:])
        return None if name is None else [_docker_identity(name)]
    if transport == "docker-daemon":
        if is_digest(rest):
            return [("", [])]
        name = parse_docker_name(rest)
        if name is None or (name.tag is None and name.digest is None):
            return None
        return None if name.tag and name.digest else [_docker_identity(name)]
    if transport in ("oci", "oci-archive"):
        return _path_identity(resolve(rest.partition(":")[0]), include_self=True)
    if transport in ("dir", "sif"):
        return _path_identity(resolve(rest), include_self=False)
    if transport in ("docker-archive", "tarball"):
        return [("", [])]
    if transport == "containers-storage":
        return _storage_identities(rest, scopes)
    return None


# --------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScopeMatch:
    """The requirements one section of the policy gives a reference.

    ``scope`` is the matching scope of ``transport`` (``""`` for the transport's
    default), or None for the global ``default``.
    """

    transport: str
    scope: str | None
    requirements: tuple[Requirement, ...]

    def describe(self) -> str:
        """Return where in the policy file the requirements are, e.g. ``transports.docker["x"]``."""
        if self.scope is None:
            return "default"
        return f"transports.{self.transport}[{json.dumps(self.scope)}]"


def _lookup(policy: Policy, transport: str, identity: Identity) -> ScopeMatch:
    scopes = policy.transports[transport]
    own, namespaces = identity
    for scope in (own, *namespaces):
        if scope in scopes:
            return ScopeMatch(transport, scope, scopes[scope])
    if "" in scopes:
        return ScopeMatch(transport, "", scopes[""])
    return ScopeMatch(transport, None, policy.default)


def requirements_for(policy: Policy, reference: str, resolve: Resolver) -> list[ScopeMatch]:
    """Return the policy sections that apply to ``reference`` (``transport:rest``).

    One section when the reference's identity is known, as containers/image would
    choose it; several when it cannot be known without the image's store, or the
    reference cannot be parsed: then every section that might apply.
    """
    transport, colon, rest = reference.partition(":")
    scopes = policy.transports.get(transport) if colon else None
    if scopes is None:
        return [ScopeMatch(transport, None, policy.default)]
    identities = _identities(transport, rest, scopes, resolve)
    if identities is None:
        matches = [ScopeMatch(transport, scope, reqs) for scope, reqs in scopes.items()]
        if "" not in scopes:
            matches.append(ScopeMatch(transport, None, policy.default))
        return matches
    found: list[ScopeMatch] = []
    for identity in identities:
        match = _lookup(policy, transport, identity)
        if match not in found:
            found.append(match)
    return found


def enforced_types(matches: Iterable[ScopeMatch]) -> list[str]:
    """Return the requirement types in ``matches`` that do more than accept anything."""
    types: list[str] = []
    for match in matches:
        for requirement in match.requirements:
            kind = requirement_type(requirement)
            if kind != ACCEPT_ANYTHING and kind not in types:
                types.append(kind)
    return types
