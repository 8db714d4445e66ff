"""What a tar header says about an entry's attributes, and the one place that sets them.

Files get theirs through their open descriptor; symlinks and device nodes through
their name in the parent's descriptor, never following a symlink; directories get
theirs when the writer closes, deepest first (see :meth:`.dirfd.DirTree.finish`).
"""

from __future__ import annotations

import errno
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LayerFormatError

__all__ = ["AttributeSetter", "Attributes", "attributes"]

_NS = 1_000_000_000
_XATTR = "SCHILY.xattr."
#: Errors of setxattr that mean "this filesystem or this user cannot", not "broken".
_XATTR_REFUSED = frozenset(
    {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ERANGE}
)


@dataclass(slots=True)
class Attributes:
    """An entry's permission bits, owner, times (in nanoseconds) and xattrs."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: dict[str, bytes]


def _pax_time(value: str | None, fallback: float) -> int:
    if value:
        sign = -1 if value.startswith("-") else 1
        whole, _, fraction = value.lstrip("+-").partition(".")
        if whole.isdigit() and (not fraction or fraction.isdigit()):
            return sign * (int(whole) * _NS + int((fraction + "000000000")[:9]))
    return int(fallback * _NS) if isinstance(fallback, float) else int(fallback) * _NS


def attributes(member: tarfile.TarInfo) -> Attributes:
    """Return the attributes the header of ``member`` gives (PAX times and xattrs too)."""
    pax = member.pax_headers
    xattrs: dict[str, bytes] = {}
    if pax:
        mtime = _pax_time(pax.get("mtime"), member.mtime)
        atime = _pax_time(pax.get("atime"), member.mtime) if "atime" in pax else mtime
        for key, value in pax.items():
            if key.startswith(_XATTR):
                xattrs[key[len(_XATTR) :]] = value.encode("utf-8", "surrogateescape")
    else:
        mtime = atime = int(member.mtime) * _NS
    return Attributes(member.mode & 0o7777, member.uid, member.gid, atime, mtime, xattrs)


class AttributeSetter:
    """The one setter of owner (unless ``owner`` is false: rootless), xattrs, mode and times.

    An xattr the filesystem or the user cannot set is skipped, with a message to
    ``warn``; any other failure raises.
    """

    __slots__ = ("_owner", "_warn")

    def __init__(self, *, owner: bool, warn: Callable[[str], None]) -> None:
        self._owner = owner
        self._warn = warn

    def set(
        self, attrs: Attributes, fd: int, name: str | None, *, key: str, chmod: bool = True
    ) -> None:
        """Give ``attrs`` to ``name`` in the directory ``fd``, or to ``fd`` itself when
        ``name`` is None. A symlink ``name`` is changed itself, never followed; its
        mode is left alone (``chmod`` false), Linux has none to set.

        Raises:
            LayerFormatError: a value out of range (a time past 2**63 ns, an id past 2**32).
            OSError: what the system refused, but for xattrs it cannot take.
        """
        try:
            if name is None:
                self._set_on(fd, attrs, key)
            else:
                self._set_at(fd, name, attrs, key, chmod)
        except OverflowError:
            raise LayerFormatError(f"{key!r}: attributes out of range", entry=key) from None

    # The two ways to address an entry, in the same order. The descriptor's is the
    # hot path (every file): its calls take no keyword arguments, which cost.

    def _set_on(self, fd: int, attrs: Attributes, key: str) -> None:
        if self._owner:
            os.fchown(fd, attrs.uid, attrs.gid)
        if attrs.xattrs:
            self._set_xattrs(fd, attrs.xattrs, key)
        os.fchmod(fd, attrs.mode)
        os.utime(fd, ns=(attrs.atime_ns, attrs.mtime_ns))

    def _set_at(self, parent: int, name: str, attrs: Attributes, key: str, chmod: bool) -> None:
        if self._owner:
            os.chown(name, attrs.uid, attrs.gid, dir_fd=parent, follow_symlinks=False)
        if attrs.xattrs:
            self._set_xattrs(f"/proc/self/fd/{parent}/{name}", attrs.xattrs, key)
        if chmod:
            os.chmod(name, attrs.mode, dir_fd=parent)  # a node: nothing to follow
        os.utime(name, ns=(attrs.atime_ns, attrs.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _set_xattrs(self, path: int | str, xattrs: dict[str, bytes], key: str) -> None:
        for name, value in xattrs.items():
            try:
                os.setxattr(path, name, value, follow_symlinks=isinstance(path, int))
            except OSError as exc:
                if exc.errno not in _XATTR_REFUSED:
                    raise
                self._warn(f"{key!r}: xattr {name} not set ({exc.strerror})")
