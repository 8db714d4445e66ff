"""containers-policy.json(5) decoded: typed structures, as strict as containers/image.

:func:`decode_policy` refuses what containers/image would refuse: unknown fields,
duplicated keys, an empty requirement list, a missing ``default``, a requirement
without exactly one key source, or a scope that is not valid for its transport.
Which requirements apply to a reference is ``_policy``'s business.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import msgspec

from ._reference import is_digest, is_image_id
from .errors import ConfigurationError

__all__ = [
    "ACCEPT_ANYTHING",
    "InsecureAcceptAnything",
    "Policy",
    "Reject",
    "Requirement",
    "SignedBaseLayer",
    "SignedBy",
    "SigstoreSigned",
    "decode_policy",
    "requirement_type",
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
    """Return the ``type`` a requirement has in the policy file."""
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

    Raises:
        ConfigurationError: naming ``source``, for anything containers/image refuses.
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
