"""containers-policy.json(5) without any I/O: typed decoding and scope matching.

skopeo's image proxy enforces the signature policy at OpenImage only from protocol
0.2.6. For older proxies the client must know, before it opens an image, whether a
policy would have had anything to enforce for that image. This module answers that
question the way containers/image does:

* :func:`decode_policy` decodes a policy file into typed structures, as strictly as
  containers/image (unknown fields, duplicated keys, an empty requirement list,
  a missing ``default`` or an invalid scope make the whole file invalid);
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
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ._reference import DockerName, is_digest, is_image_id, parse_docker_name
from .errors import ConfigurationError

__all__ = [
    "ACCEPT_ANYTHING",
    "Policy",
    "Requirement",
    "ScopeMatch",
    "decode_policy",
    "enforced_types",
    "requirements_for",
]

#: The one requirement type that accepts an image without looking at it.
ACCEPT_ANYTHING = "insecureAcceptAnything"

# --------------------------------------------------------------------------
# Typed structures
# --------------------------------------------------------------------------


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Policy objects: unknown fields are an error, as containers/image has it."""


class _Identity(_Strict, frozen=True, tag_field="type"):
    """What identity a signature must claim (``signedIdentity``)."""


class MatchExact(_Identity, frozen=True, tag="matchExact"):
    """The signature's identity equals the image's."""


class MatchRepoDigestOrExact(_Identity, frozen=True, tag="matchRepoDigestOrExact"):
    """Exact for tags; the same repository for digest references."""


class MatchRepository(_Identity, frozen=True, tag="matchRepository"):
    """The same repository, any tag."""


class ExactReference(_Identity, frozen=True, tag="exactReference"):
    """A fixed identity."""

    docker_reference: str


class ExactRepository(_Identity, frozen=True, tag="exactRepository"):
    """A fixed repository."""

    docker_repository: str


class RemapIdentity(_Identity, frozen=True, tag="remapIdentity"):
    """A prefix of the image's identity is replaced before matching."""

    prefix: str
    signed_prefix: str


IdentityMatch = (
    MatchExact
    | MatchRepoDigestOrExact
    | MatchRepository
    | ExactReference
    | ExactRepository
    | RemapIdentity
)


class _Requirement(_Strict, frozen=True, tag_field="type"):
    """One policy requirement; every requirement of a list must be satisfied."""


class InsecureAcceptAnything(_Requirement, frozen=True, tag="insecureAcceptAnything"):
    """Accepts any image."""


class Reject(_Requirement, frozen=True, tag="reject"):
    """Rejects every image."""


class SignedBy(_Requirement, frozen=True, tag="signedBy"):
    """A GPG "simple signing" signature by one of the given keys."""

    key_type: str
    key_path: str | None = None
    key_paths: list[str] | None = None
    key_data: bytes | None = None
    signed_identity: IdentityMatch | None = None


class SignedBaseLayer(_Requirement, frozen=True, tag="signedBaseLayer"):
    """A signed base layer (accepted by the format, not implemented by containers/image)."""

    base_layer_identity: IdentityMatch


class Fulcio(_Strict, frozen=True):
    """Fulcio-issued certificates for sigstore signatures."""

    ca_path: str | None = None
    ca_data: bytes | None = None
    oidc_issuer: str | None = None
    subject_email: str | None = None


class Pki(_Strict, frozen=True):
    """Certificates from a private PKI for sigstore signatures."""

    ca_roots_path: str | None = None
    ca_roots_data: bytes | None = None
    ca_intermediates_path: str | None = None
    ca_intermediates_data: bytes | None = None
    subject_email: str | None = None
    subject_hostname: str | None = None


class SigstoreSigned(_Requirement, frozen=True, tag="sigstoreSigned"):
    """A sigstore signature by a key, a Fulcio certificate or a PKI certificate."""

    key_path: str | None = None
    key_paths: list[str] | None = None
    key_data: bytes | None = None
    key_datas: list[bytes] | None = None
    fulcio: Fulcio | None = None
    pki: Pki | None = None
    rekor_public_key_path: str | None = None
    rekor_public_key_paths: list[str] | None = None
    rekor_public_key_data: bytes | None = None
    rekor_public_key_datas: list[bytes] | None = None
    signed_identity: IdentityMatch | None = None


Requirement = InsecureAcceptAnything | Reject | SignedBy | SignedBaseLayer | SigstoreSigned

#: Scope -> requirements, for one transport.
TransportScopes = dict[str, tuple[Requirement, ...]]


class Policy(_Strict, frozen=True):
    """A decoded policy file: the global ``default`` and per-transport scopes."""

    default: tuple[Requirement, ...]
    transports: dict[str, TransportScopes] = msgspec.field(default_factory=dict)


_DECODER = msgspec.json.Decoder(Policy)


def requirement_type(requirement: Requirement) -> str:
    """The ``type`` a requirement has in the policy file."""
    tag = type(requirement).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# --------------------------------------------------------------------------
# Decoding and validation
# --------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicated key {key!r}")
        seen[key] = value
    return seen


def decode_policy(data: bytes, source: str) -> Policy:
    """Decode and validate a policy file; ``source`` names it in errors.

    Raises :class:`ConfigurationError` naming ``source`` for anything that
    containers/image would refuse.
    """
    try:
        # Duplicated keys could hide a requirement; msgspec would keep the last one.
        json.loads(data, object_pairs_hook=_reject_duplicates)
        policy = _DECODER.decode(data)
        _validate(policy)
    except (ValueError, msgspec.DecodeError, RecursionError) as exc:
        raise ConfigurationError(f"invalid signature policy {source}: {exc}") from None
    return policy


def _exactly_one(what: str, fields: dict[str, object], *, optional: bool = False) -> None:
    given = [name for name, value in fields.items() if value is not None]
    if len(given) > 1 or (not optional and not given):
        wanted = "at most one" if optional else "exactly one"
        raise ValueError(f"{what} needs {wanted} of {', '.join(fields)}, got {given or 'none'}")


def _validate_requirement(requirement: Requirement) -> None:
    if isinstance(requirement, SignedBy):
        if requirement.key_type != "GPGKeys":
            raise ValueError(f"signedBy: unknown keyType {requirement.key_type!r}")
        _exactly_one(
            "signedBy",
            {
                "keyPath": requirement.key_path,
                "keyPaths": requirement.key_paths,
                "keyData": requirement.key_data,
            },
        )
    elif isinstance(requirement, SigstoreSigned):
        _exactly_one(
            "sigstoreSigned",
            {
                "keyPath": requirement.key_path,
                "keyPaths": requirement.key_paths,
                "keyData": requirement.key_data,
                "keyDatas": requirement.key_datas,
                "fulcio": requirement.fulcio,
                "pki": requirement.pki,
            },
        )
        _exactly_one(
            "sigstoreSigned",
            {
                "rekorPublicKeyPath": requirement.rekor_public_key_path,
                "rekorPublicKeyPaths": requirement.rekor_public_key_paths,
                "rekorPublicKeyData": requirement.rekor_public_key_data,
                "rekorPublicKeyDatas": requirement.rekor_public_key_datas,
            },
            optional=True,
        )


def _validate_list(where: str, requirements: tuple[Requirement, ...]) -> None:
    if not requirements:
        raise ValueError(f"{where}: the list of requirements must not be empty")
    for requirement in requirements:
        try:
            _validate_requirement(requirement)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def _validate(policy: Policy) -> None:
    _validate_list("default", policy.default)
    for transport, scopes in policy.transports.items():
        for scope, requirements in scopes.items():
            where = f"transports.{transport}[{scope!r}]"
            if scope:
                problem = _scope_problem(transport, scope)
                if problem:
                    raise ValueError(f"{where}: invalid scope: {problem}")
            _validate_list(where, requirements)


def _path_scope_problem(scope: str) -> str | None:
    if not scope.startswith("/"):
        return "must be an absolute path"
    if scope == "/":
        return 'use the transport default scope "" instead of "/"'
    if posixpath.normpath(scope) != scope or scope.startswith("//"):
        return f"not in canonical form (perhaps {posixpath.normpath(scope)})"
    return None


_ONLY_DEFAULT = 'only the default "" scope is supported'


def _scope_problem(transport: str, scope: str) -> str | None:
    """Why ``scope`` is not valid for ``transport`` (None when it is, or is unknown)."""
    if transport in ("dir", "sif", "oci", "oci-archive"):
        return _path_scope_problem(scope)
    if transport in ("docker-archive", "tarball"):
        return _ONLY_DEFAULT
    if transport == "docker-daemon":
        return "an image ID cannot be a namespace" if is_digest(scope) else None
    if transport == "containers-storage":
        return _storage_scope_problem(scope)
    return None


def _storage_scope_problem(scope: str) -> str | None:
    if not scope.startswith("["):
        return "must start with a [store] specification"
    close = scope.find("]")
    if close < 1:
        return "the [store] specification does not end"
    spec, image = scope[1:close], scope[close + 1 :]
    driver, at, root = spec.partition("@")
    if at and not (driver and root):
        return "the store must be [DRIVER@ROOT] or [ROOT]"
    if not posixpath.isabs(root if at else spec):
        return "the store's root must be an absolute path"
    fields = image.split("@", 2)
    if len(fields) == 2 and not (is_image_id(fields[1]) or is_digest(fields[1])):
        return f"{fields[1]!r} is neither a digest nor an image ID"
    if len(fields) == 3 and not (is_digest(fields[1]) and is_image_id(fields[2])):
        return "expected NAME@DIGEST@ID"
    return None


# --------------------------------------------------------------------------
# Docker references (parsed in _reference)
# --------------------------------------------------------------------------


def _docker_namespaces(name: DockerName) -> list[str]:
    """The repository, its parent namespaces, the host, then ``*.`` wildcard domains."""
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
    """Identities of a ``containers-storage:`` reference, for each store it may be in.

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
    """The (name, image ID) readings of the image part of a storage reference."""
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
    """Every identity the reference may have; None when it cannot be told."""
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
        """Where in the policy file the requirements are, e.g. ``transports.docker["x"]``."""
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
    """The policy sections that apply to ``reference`` (``transport:rest``).

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
    """The requirement types in ``matches`` that do more than accept anything."""
    types: list[str] = []
    for match in matches:
        for requirement in match.requirements:
            kind = requirement_type(requirement)
            if kind != ACCEPT_ANYTHING and kind not in types:
                types.append(kind)
    return types
