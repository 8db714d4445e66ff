"""Image references without any I/O: transports, Docker names, registry hosts, tags.

A reference is ``TRANSPORT:REST`` (``docker://quay.io/x:1``, ``oci:DIR:TAG``,
``containers-storage:[STORE]NAME``, ...). Everything this package reads out of one
is read here: the transport, the Docker name expanded as ``docker pull`` expands
it, the registry host an auth file keys credentials by, the tag a reference names,
the image ID of a storage reference, and skopeo's ``oci:DIR[:TAG]`` destinations.
Which policy scopes a reference falls under is ``_policy``'s business.
"""

from __future__ import annotations

import dataclasses
import os
import re

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "STORAGE",
    "DockerName",
    "default_tag",
    "docker_reference_name",
    "is_digest",
    "is_image_id",
    "is_storage",
    "name_tag",
    "parse_destination",
    "parse_docker_name",
    "registry_host",
    "split_domain",
    "split_transport",
    "storage_image_id",
    "strip_store",
]

#: The registry of Docker names without one (``busybox``).
DEFAULT_DOMAIN = "docker.io"
#: The tag of a registry-like name without one, as skopeo has it.
DEFAULT_TAG = "latest"
#: The transport of the local containers-storage store.
STORAGE = "containers-storage"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOCKER_TAG = r"[\w][\w.-]{0,127}"
_DOCKER_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAMED = re.compile(
    rf"({_HOST}(?::[0-9]+)?)/({_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::({_DOCKER_TAG}))?(?:@({_DOCKER_DIGEST}))?",
    re.ASCII,
)
_MAX_NAME = 255
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")
_DIGEST_VALUE = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_ID_LIKE = re.compile(r"[0-9a-f]{3,64}")
_DIGEST_LIKE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")


def split_transport(reference: str) -> tuple[str, str] | None:
    """Return ``(transport, rest)`` of ``transport:rest``; None without a colon."""
    transport, colon, rest = reference.partition(":")
    return (transport, rest) if colon else None


def is_storage(reference: str) -> bool:
    """Return whether ``reference`` names an image of the ``containers-storage:`` transport."""
    return reference.startswith(f"{STORAGE}:")


def is_image_id(text: str) -> bool:
    """Return whether ``text`` is a full image ID (64 lowercase hex digits)."""
    return _IMAGE_ID.fullmatch(text) is not None


def is_digest(text: str) -> bool:
    """Return whether ``text`` is a digest as references carry them (sha256, sha384, sha512)."""
    return _DIGEST_VALUE.fullmatch(text) is not None


def strip_store(rest: str) -> str | None:
    """Return the image part of a storage reference's ``[STORE]IMAGE``; None if ``[`` never ends."""
    if not rest.startswith("["):
        return rest
    close = rest.find("]")
    return None if close == -1 else rest[close + 1 :]


def storage_image_id(reference: str) -> str | None:
    """Return the image ID a ``containers-storage:`` reference consists of (``ID`` or ``@ID``)."""
    if not is_storage(reference):
        return None
    image = strip_store(reference[len(STORAGE) + 1 :])
    if image is None:
        return None
    image = image.removeprefix("@")
    return image if is_image_id(image) else None


# --------------------------------------------------------------------------
# Docker names
# --------------------------------------------------------------------------


def split_domain(name: str) -> tuple[str, str]:
    """Return a Docker name's registry host and the rest, as ``docker pull`` splits them.

    The first component is the host when it looks like one (a dot, a port, or
    ``localhost``); else the host is ``docker.io`` (``index.docker.io`` also is).
    """
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    return (DEFAULT_DOMAIN if domain == "index.docker.io" else domain), remainder


def registry_host(reference: str) -> str | None:
    """Return the registry host of a ``docker://`` reference, as auth files key it."""
    if not reference.startswith("docker://"):
        return None
    return split_domain(reference[len("docker://") :])[0]


@dataclasses.dataclass(frozen=True)
class DockerName:
    """A Docker reference in its fully expanded form: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``domain/path``: the repository."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_docker_name(text: str) -> DockerName | None:
    """Expand a Docker reference as ``docker pull`` does (``busybox`` is
    ``docker.io/library/busybox``); None when it is not a valid reference.
    """
    if is_image_id(text):
        return None
    domain, remainder = split_domain(text)
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = f"library/{remainder}"
    repository = remainder.partition(":")[0]
    if repository.lower() != repository:
        return None
    match = _NAMED.fullmatch(f"{domain}/{remainder}")
    if match is None or len(match[1]) + 1 + len(match[2]) > _MAX_NAME:
        return None
    return DockerName(match[1], match[2], match[3], match[4])


def _repository(text: str) -> str | None:
    name = parse_docker_name(text)
    return None if name is None else name.name


def docker_reference_name(reference: str) -> str | None:
    """Return the repository name ``skopeo inspect`` shows as ``Name``, or None when it has none.

    Only references that carry a Docker reference have one: ``docker://`` (the
    repository, expanded as ``docker.io/library/...``), ``docker-archive:`` with a
    ``NAME:TAG``, ``docker-daemon:`` and ``containers-storage:`` with a name.
    """
    parts = split_transport(reference)
    if parts is None:
        return None
    transport, rest = parts
    if transport == "docker":
        return _repository(rest[2:]) if rest.startswith("//") else None
    if transport == "docker-archive":
        _, colon, name = rest.partition(":")
        if not colon or not name or name.startswith("@"):
            return None
        return _repository(name)
    if transport == "docker-daemon":
        return None if _DIGEST_LIKE.fullmatch(rest) else _repository(rest)
    if transport == STORAGE:
        image = strip_store(rest)
        if image is None:
            return None
        name, at, suffix = image.rpartition("@")
        if at and is_image_id(suffix):
            image = name
        if not image or _ID_LIKE.fullmatch(image):
            return None  # an image ID (or a prefix of one): no name
        return _repository(image)
    return None


# --------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------


def name_tag(name: str) -> str | None:
    """Return the tag of an image name: ``example.com/x:1`` gives ``1``; a bare tag itself."""
    if _TAG.fullmatch(name):
        return name
    last = name.rsplit("/", 1)[-1].split("@", 1)[0]
    if ":" in last:
        tag = last.rsplit(":", 1)[1]
        return tag if _TAG.fullmatch(tag) else None
    return None


def _registry_tag(transport: str, rest: str) -> str | None:
    name = rest.removeprefix("//")
    if transport == STORAGE:
        name = strip_store(name) or ""
    name = name.split("@", 1)[0]
    if not name or (transport != "docker" and is_image_id(name.removeprefix("sha256:"))):
        return None
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else DEFAULT_TAG


def default_tag(reference: str) -> str | None:
    """Return the tag a reference names (``docker://x/y:TAG``, ``oci:DIR:TAG``), if any.

    Registry-like names without a tag (``docker://``, ``containers-storage:``,
    ``docker-daemon:``) mean ``latest``, as they do to skopeo.
    """
    transport, _, rest = reference.partition(":")
    if transport in ("docker", STORAGE, "docker-daemon"):
        return _registry_tag(transport, rest)
    if transport in ("oci", "oci-archive"):
        match = re.fullmatch(r"[^:]*:([A-Za-z0-9._-]+)", rest)
        return match.group(1) if match else None
    if transport == "docker-archive":
        tail = rest.split(":", 1)[1] if ":" in rest else ""
        if not tail or tail.startswith("@"):
            return None
        return name_tag(tail) or DEFAULT_TAG
    return None


def parse_destination(
    dest: str | os.PathLike[str], tag: str | None
) -> tuple[str | os.PathLike[str], str | None]:
    """Split skopeo's ``oci:DIR[:TAG]`` spelling of a destination into DIR and TAG.

    Only a ``str`` that starts with ``oci:`` is parsed (a ``Path`` is always a
    directory); as in skopeo, DIR ends at the first colon.

    Raises:
        ValueError: no directory, or a TAG that contradicts ``tag``.
    """
    if not isinstance(dest, str) or not dest.startswith("oci:"):
        return dest, tag
    directory, _, named = dest[len("oci:") :].partition(":")
    if not directory:
        raise ValueError(f"destination {dest!r} names no directory")
    if named and tag is not None and named != tag:
        raise ValueError(
            f"destination {dest!r} names the tag {named!r}, but the tag {tag!r} was asked for"
        )
    return directory, tag if tag is not None else (named or None)
