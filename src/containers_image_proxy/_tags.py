"""The tag a pulled image gets in its layout, and skopeo's ``oci:DIR[:TAG]`` destinations.

A pull always tags what it stores: the tag asked for, else the tag the reference
names, else the image's own tag (the ``RepoTags`` of a ``docker-archive``, the
``org.opencontainers.image.ref.name`` of the only image of an OCI layout or
archive), else ``latest``.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Literal

__all__ = ["TagOrigin", "default_tag", "image_tag", "parse_destination", "resolve_tag"]

#: Where the tag of a pull came from: the caller (argument or ``oci:DIR:TAG``
#: destination), the source reference, the image's own metadata, or the default.
TagOrigin = Literal["given", "reference", "image", "default"]

DEFAULT_TAG = "latest"
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")
_REF_NAME = "org.opencontainers.image.ref.name"
#: The largest index.json or manifest.json read from an archive or layout.
_MAX_METADATA = 16 << 20


def _name_tag(name: str) -> str | None:
    """The tag of an image name: ``example.com/x:1`` gives ``1``; a bare tag itself."""
    if _TAG.fullmatch(name):
        return name
    last = name.rsplit("/", 1)[-1].split("@", 1)[0]
    if ":" in last:
        tag = last.rsplit(":", 1)[1]
        return tag if _TAG.fullmatch(tag) else None
    return None


def default_tag(reference: str) -> str | None:
    """The tag a reference names (``docker://x/y:TAG``, ``oci:DIR:TAG``), if any.

    Registry-like names without a tag (``docker://``, ``containers-storage:``,
    ``docker-daemon:``) mean ``latest``, as they do to skopeo.
    """
    transport, _, rest = reference.partition(":")
    if transport in ("docker", "containers-storage", "docker-daemon"):
        name = rest.removeprefix("//")
        if transport == "containers-storage" and name.startswith("["):
            name = name.partition("]")[2]
        name = name.split("@", 1)[0]
        if not name or (transport != "docker" and _IMAGE_ID.fullmatch(name)):
            return None
        last = name.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else DEFAULT_TAG
    if transport in ("oci", "oci-archive"):
        match = re.fullmatch(r"[^:]*:([A-Za-z0-9._-]+)", rest)
        return match.group(1) if match else None
    if transport == "docker-archive":
        tail = rest.split(":", 1)[1] if ":" in rest else ""
        if not tail or tail.startswith("@"):
            return None
        return _name_tag(tail) or DEFAULT_TAG
    return None


def _read_limited(stream: Any) -> Any:
    data = stream.read(_MAX_METADATA + 1)
    if len(data) > _MAX_METADATA:
        raise ValueError("metadata file too large")
    return json.loads(data)


def _archive_json(path: str, name: str) -> Any:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.removeprefix("./") == name:
                stream = tar.extractfile(member)
                if stream is None:
                    return None
                with stream:
                    return _read_limited(stream)
    return None


def _pick(entries: list[Any], selector: str) -> Any:
    """The entry ``@N`` names, or the only one."""
    if selector.startswith("@"):
        index = int(selector[1:])
        return entries[index] if 0 <= index < len(entries) else None
    return entries[0] if len(entries) == 1 else None


def image_tag(reference: str) -> str | None:
    """The tag an OCI layout, OCI archive or docker archive gives its image, if any.

    Reads the layout's or archive's ``index.json`` / ``manifest.json``; a reference
    of any other transport, or metadata that cannot be read, gives None.
    """
    transport, _, rest = reference.partition(":")
    if transport not in ("oci", "oci-archive", "docker-archive"):
        return None
    path, _, selector = rest.partition(":")
    if selector and not selector.startswith("@"):
        return _name_tag(selector)
    try:
        if transport == "docker-archive":
            entries = _archive_json(path, "manifest.json")
            entry = _pick(entries, selector) if isinstance(entries, list) else None
            tags = entry.get("RepoTags") if isinstance(entry, dict) else None
            return _name_tag(tags[0]) if isinstance(tags, list) and tags else None
        if transport == "oci":
            with open(Path(path) / "index.json", "rb") as f:
                index = _read_limited(f)
        else:
            index = _archive_json(path, "index.json")
        entries = index.get("manifests") if isinstance(index, dict) else None
        entry = _pick(entries, selector) if isinstance(entries, list) else None
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        name = annotations.get(_REF_NAME) if isinstance(annotations, dict) else None
        return _name_tag(name) if isinstance(name, str) else None
    except (OSError, ValueError, tarfile.TarError):
        return None


def resolve_tag(reference: str, tag: str | None) -> tuple[str, TagOrigin]:
    """The tag a pull of ``reference`` stores its image under, and where it came from.

    Reads local archive metadata (see :func:`image_tag`): call it off the event loop.
    """
    if tag is not None:
        return tag, "given"
    named = default_tag(reference)
    if named is not None:
        return named, "reference"
    own = image_tag(reference)
    if own is not None:
        return own, "image"
    return DEFAULT_TAG, "default"


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
