"""OCI whiteouts: ``.wh.NAME`` hides ``NAME``, ``.wh..wh..opq`` what a directory held.

Both hide what lower layers put there, never what the same layer adds, wherever
the marker sits in the tar: the writer marks every path a layer writes
(:class:`Touched`), and what is marked stays.
"""

from __future__ import annotations

import logging
import os
import stat

from .._fd import OwnedFd
from ..errors import LayerFormatError, UnsafeLayerError
from .dirfd import DIR_FLAGS, DirTree

__all__ = ["WHITEOUT", "Touched", "apply_whiteout", "is_whiteout"]

_log = logging.getLogger("containers_image_proxy")

#: The prefix of a whiteout's name.
WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


class Touched:
    """The paths one layer wrote, and the directories above them."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def mark(self, parts: list[str]) -> None:
        """Mark the path ``parts`` and the directories above it."""
        keys = self._keys
        for end in range(len(parts), 0, -1):
            key = "/".join(parts[:end])
            if key in keys:
                return
            keys.add(key)


def is_whiteout(parts: list[str], entry: str) -> bool:
    """Tell whether the entry at ``parts`` is a whiteout or an opaque marker.

    Raises:
        LayerFormatError: a whiteout is used as a directory (``.wh.x/y``).
    """
    for part in parts[:-1]:
        if part.startswith(WHITEOUT):
            raise LayerFormatError(f"{entry!r}: a whiteout used as a directory", entry=entry)
    return bool(parts) and parts[-1].startswith(WHITEOUT)


def apply_whiteout(tree: DirTree, touched: Touched, parts: list[str], entry: str) -> None:
    """Hide, in ``tree``, what lower layers have where the whiteout ``parts`` points.

    Raises:
        LayerFormatError: a whiteout that names nothing, or an opaque marker in a
            non-directory.
        UnsafeLayerError: a whiteout of ``.`` or ``..``, or one reached through a symlink.
    """
    base = parts[-1]
    if base == _OPAQUE:
        above = parts[:-1]
        touched.mark(above)
        tree.remove_under(tree.parent(parts, entry), "/".join(above), touched)
        return
    if base.startswith(WHITEOUT + WHITEOUT):
        _log.debug("unpack %s: ignoring whiteout metadata %r", tree.dest, entry)
        return
    target = base[len(WHITEOUT) :]
    if not target:
        raise LayerFormatError(f"{entry!r}: a whiteout that names nothing", entry=entry)
    if target in (".", ".."):
        raise UnsafeLayerError(f"{entry!r}: a whiteout of {target!r}", entry=entry)
    try:
        fd = tree.open_dir(parts[:-1], create=False, entry=entry)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there to hide
    key = "/".join([*parts[:-1], target])
    if key not in touched:
        tree.remove(fd, target, key)
        return
    # The layer also writes this path: hide only what lower layers had under it.
    try:
        mode = os.stat(target, dir_fd=fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        with OwnedFd(os.open(target, DIR_FLAGS, dir_fd=fd)) as sub:
            tree.remove_under(sub.fileno(), key, touched)
