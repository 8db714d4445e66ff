"""Symlinks and hardlinks of a layer, made without ever going through a symlink.

A symlink's target is stored as it is (it is never followed here). A hardlink's
target is a path in the tree, walked like any entry's path; it must exist, and
must not be a directory.
"""

from __future__ import annotations

import os
import stat
import tarfile

from .._fd import OwnedFd
from ..errors import LayerFormatError
from .dirfd import DirTree, split_path
from .limits import check_length

__all__ = ["make_hardlink", "make_symlink"]


def _check_target(member: tarfile.TarInfo, max_length: int) -> None:
    target = member.linkname
    if not target:
        raise LayerFormatError(f"{member.name!r}: a link with an empty target")
    if "\0" in target:
        raise LayerFormatError(f"{member.name!r}: a link target with a NUL byte")
    check_length(target, max_length, f"{member.name!r}: link target", member.name)


def make_symlink(
    tree: DirTree, max_length: int, member: tarfile.TarInfo, parent: int, base: str, key: str
) -> None:
    """Make the symlink ``member`` as ``base`` in ``parent``, replacing what is there.

    Raises:
        LayerFormatError: an empty target, or one with a NUL byte.
        LimitExceededError: a target longer than ``max_length`` bytes.
    """
    _check_target(member, max_length)
    tree.replace(parent, base, key, os.symlink, member.linkname, base)


def _missing(member: tarfile.TarInfo) -> LayerFormatError:
    return LayerFormatError(
        f"{member.name!r}: hardlink target {member.linkname!r} does not exist", entry=member.name
    )


def make_hardlink(
    tree: DirTree, max_length: int, member: tarfile.TarInfo, parts: list[str], key: str
) -> None:
    """Make the hardlink ``member`` at ``parts``, replacing what is there.

    Raises:
        LayerFormatError: a target that is missing, the root or a directory.
        UnsafeLayerError: a target reached through a symlink, or with ``..``.
        LimitExceededError: a target longer than ``max_length`` bytes.
    """
    name = member.name
    _check_target(member, max_length)
    target = split_path(member.linkname, max_length, "hardlink target")
    if not target:
        raise LayerFormatError(f"{name!r}: a hardlink to the root", entry=name)
    if target == parts:
        return  # a link to itself: the file is already there
    try:
        # A copy: opening the link's parent below may close the cached descriptor.
        source = OwnedFd(os.dup(tree.open_dir(target[:-1], create=False, entry=name)))
    except (FileNotFoundError, NotADirectoryError):
        raise _missing(member) from None
    with source:
        try:
            found = os.stat(target[-1], dir_fd=source.fileno(), follow_symlinks=False)
        except FileNotFoundError:
            raise _missing(member) from None
        if stat.S_ISDIR(found.st_mode):
            raise LayerFormatError(
                f"{name!r}: hardlink to the directory {member.linkname!r}", entry=name
            )
        parent = tree.parent(parts, name)

        def link() -> None:
            os.link(
                target[-1], parts[-1], src_dir_fd=source.fileno(), dst_dir_fd=parent,
                follow_symlinks=False,
            )  # fmt: skip

        try:
            link()
        except FileExistsError:
            there = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if (there.st_dev, there.st_ino) != (found.st_dev, found.st_ino):
                tree.remove(parent, parts[-1], key)
                link()
