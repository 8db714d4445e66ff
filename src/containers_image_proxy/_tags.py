"""The tag a pulled image gets in its layout.

A pull always tags what it stores: the tag asked for, else the tag the reference
names, else the image's own tag (the ``RepoTags`` of a ``docker-archive``, the
``org.opencontainers.image.ref.name`` of the only image of an OCI layout or
archive), else ``latest``.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Literal

from ._reference import DEFAULT_TAG, default_tag, name_tag, parse_destination, split_transport
from .oci import ANNOTATION_REF_NAME

# parse_destination is imported from here by the command line.
__all__ = ["TagOrigin", "image_tag", "parse_destination", "resolve_tag"]

#: Where the tag of a pull came from: the caller (argument or ``oci:DIR:TAG``
#: destination), the source reference, the image's own metadata, or the default.
TagOrigin = Literal["given", "reference", "image", "default"]

#: The largest index.json or manifest.json read from an archive or layout.
_MAX_METADATA = 16 << 20


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
    """Return the entry ``@N`` names, or the only one."""
    if selector.startswith("@"):
        index = int(selector[1:])
        return entries[index] if 0 <= index < len(entries) else None
    return entries[0] if len(entries) == 1 else None


def image_tag(reference: str) -> str | None:
    """Return the tag an OCI layout, OCI archive or docker archive gives its image, if any.

    Reads the layout's or archive's ``index.json`` / ``manifest.json``; a reference
    of any other transport, or metadata that cannot be read, gives None.
    """
    transport, rest = split_transport(reference) or ("", "")
    if transport not in ("oci", "oci-archive", "docker-archive"):
        return None
    path, _, selector = rest.partition(":")
    if selector and not selector.startswith("@"):
        return name_tag(selector)
    try:
        if transport == "docker-archive":
            entries = _archive_json(path, "manifest.json")
            entry = _pick(entries, selector) if isinstance(entries, list) else None
            tags = entry.get("RepoTags") if isinstance(entry, dict) else None
            return name_tag(tags[0]) if isinstance(tags, list) and tags else None
        if transport == "oci":
            with open(Path(path) / "index.json", "rb") as f:
                index = _read_limited(f)
        else:
            index = _archive_json(path, "index.json")
        entries = index.get("manifests") if isinstance(index, dict) else None
        entry = _pick(entries, selector) if isinstance(entries, list) else None
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        name = annotations.get(ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
        return name_tag(name) if isinstance(name, str) else None
    except (OSError, ValueError, tarfile.TarError):
        return None


def resolve_tag(reference: str, tag: str | None) -> tuple[str, TagOrigin]:
    """Return the tag a pull of ``reference`` stores its image under, and where it came from.

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
