"""The directories of a tree being unpacked, reached only through descriptors.

Paths are split into components (:func:`split_path`) and walked one component at
a time from the root's descriptor with ``O_DIRECTORY | O_NOFOLLOW``: a symlink met
on the way (planted by an earlier entry or layer) stops the entry with
:class:`UnsafeLayerError`, it is never followed. :class:`DirTree` keeps the
descriptors of recently used directories, removes what entries replace, and holds
the attributes directories get at the end. :func:`remove_under` is the one walk
over a directory's contents, for removal; it holds one descriptor at a time.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Container
from pathlib import Path
from typing import TypeVar

from .._fd import OwnedFd
from ..errors import LayerFormatError, UnsafeLayerError
from .attrs import Attributes
from .limits import check_length

__all__ = ["DIR_FLAGS", "DirTree", "discard_tree", "remove_under", "split_path"]

_T = TypeVar("_T")

#: How a directory of the tree is opened: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directory descriptors kept open, the most recently used.
_CACHE_SIZE = 128


def split_path(name: str, max_length: int, what: str = "entry") -> list[str]:
    """Split the tar path ``name`` into its components ("." and empty ones dropped).

    Raises:
        LimitExceededError: a path longer than ``max_length`` bytes.
        LayerFormatError: a NUL byte in the path.
        UnsafeLayerError: a ``..`` component.
    """
    if len(name) * 4 > max_length:  # else short enough whatever its characters
        check_length(name, max_length, f"{what} path", name)
    if "\0" in name:
        raise LayerFormatError(f"{what} path contains a NUL byte: {name!r}", entry=name)
    parts = [part for part in name.split("/") if part and part != "."]
    if ".." in parts:
        raise UnsafeLayerError(f"{what} path {name!r} contains '..'", entry=name)
    return parts


def owner_rwx(fd: int) -> None:
    """Give the owner of the directory ``fd`` read, write and search permission."""
    mode = os.fstat(fd).st_mode
    if mode & 0o700 != 0o700:
        os.fchmod(fd, stat.S_IMODE(mode) | 0o700)


def remove_under(
    directory: int,
    key: str,
    *,
    keep: Container[str] = (),
    forget: Callable[[str], None],
    writable: bool,
) -> None:
    """Remove what the directory ``directory`` (at ``key`` in the tree) holds, but the
    paths in ``keep`` and the directories above them.

    Iterative, holding one descriptor at a time (it climbs back through ``..``), so
    that neither the depth nor the descriptor limit can stop it; symlinks are
    removed, never followed. ``forget`` is called with the key of each directory
    that goes; ``writable`` first gives the owner rwx on each of them (when not root).
    """
    current = OwnedFd(os.dup(directory))
    try:
        # Per directory: its name, its key, names not seen yet, whether it goes too.
        stack: list[tuple[str, str, list[str], bool]] = [
            ("", key, os.listdir(current.fileno()), False)
        ]
        while stack:
            name, dkey, pending, doomed = stack[-1]
            fd = current.fileno()
            if not pending:
                stack.pop()
                if stack:
                    current = _replace(current, os.open("..", DIR_FLAGS, dir_fd=fd))
                    if doomed:
                        os.rmdir(name, dir_fd=current.fileno())
                continue
            child = pending.pop()
            ckey = f"{dkey}/{child}" if dkey else child
            kept = not doomed and ckey in keep
            try:
                mode = os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(mode):
                if not kept:
                    os.unlink(child, dir_fd=fd)
                continue
            if not kept:
                forget(ckey)
            current = _replace(current, os.open(child, DIR_FLAGS, dir_fd=fd))
            if writable and not kept:
                owner_rwx(current.fileno())
            stack.append((child, ckey, os.listdir(current.fileno()), not kept))
    finally:
        current.close()


def _replace(old: OwnedFd, new: int) -> OwnedFd:
    old.close()
    return OwnedFd(new)


def _forget_nothing(key: str) -> None:
    pass


def discard_tree(path: str | os.PathLike[str], *, remove: bool) -> None:
    """Empty the directory ``path`` without following symlinks; remove it too when
    ``remove``. A missing ``path`` is fine."""
    try:
        fd = OwnedFd(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except FileNotFoundError:
        return
    with fd:
        owner_rwx(fd.fileno())
        remove_under(fd.fileno(), "", forget=_forget_nothing, writable=True)
    if remove:
        os.rmdir(path)


class DirTree:
    """The directory ``dest`` and the descriptors of its directories, in use by one writer.

    ``writable`` (when not root) gives the owner rwx on a directory before emptying
    it, so that a read-only directory of a layer can still be removed. The
    descriptors :meth:`open_dir` returns belong to the tree: do not close them, and
    do not keep one across another call (the cache may close it).
    """

    def __init__(self, dest: Path, *, writable: bool) -> None:
        self.dest = dest
        self._writable = writable
        self._root = OwnedFd(os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        self._cache: OrderedDict[str, OwnedFd] = OrderedDict()
        self._deferred: dict[str, Attributes] = {}

    @property
    def closed(self) -> bool:
        """Tell whether the descriptors were released."""
        return self._root.closed

    @property
    def root(self) -> int:
        """Return the descriptor of ``dest``.

        Raises:
            ValueError: the tree is closed.
        """
        return self._root.fileno()

    def close(self) -> None:
        """Release the descriptors (the deferred attributes are dropped)."""
        for fd in self._cache.values():
            fd.close()
        self._cache.clear()
        self._deferred.clear()
        self._root.close()

    def open_dir(self, parts: list[str], *, create: bool, entry: str) -> int:
        """Return a descriptor of the directory at ``parts``, walked without following
        symlinks; missing directories are made (mode 0755) when ``create``.

        Raises:
            FileNotFoundError: a missing directory, unless ``create``.
            UnsafeLayerError: a component is a symlink (``entry`` names the tar entry).
            NotADirectoryError: a component is another non-directory.
        """
        if not parts:
            return self.root
        key = "/".join(parts)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached.fileno()
        start = len(parts) - 1
        fd = self.root
        while start > 0:
            above = self._cache.get("/".join(parts[:start]))
            if above is not None:
                fd = above.fileno()
                break
            start -= 1
        for index in range(start, len(parts)):
            try:
                fd = os.open(parts[index], DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                fd = self._open_missing(fd, parts, index, create, entry, exc)
            self._cache["/".join(parts[: index + 1])] = OwnedFd(fd)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)[1].close()
        return fd

    def _open_missing(
        self, fd: int, parts: list[str], index: int, create: bool, entry: str, exc: OSError
    ) -> int:
        """Handle the failure ``exc`` to open ``parts[index]`` in ``fd``: make the
        directory, or raise what it means."""
        name = parts[index]
        if isinstance(exc, FileNotFoundError) and create:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.fchmod(child, 0o755)  # an implied directory: 0755 whatever the umask
            return child
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise exc
        where = "/".join(parts[: index + 1])
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafeLayerError(
                f"{entry!r} goes through the symlink {where!r}", entry=entry
            ) from None
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", where) from None

    def parent(self, parts: list[str], entry: str) -> int:
        """Return the directory that holds ``parts``, made if missing.

        Raises:
            LayerFormatError: a component is not a directory.
            UnsafeLayerError: a component is a symlink.
        """
        try:
            return self.open_dir(parts[:-1], create=True, entry=entry)
        except NotADirectoryError as exc:
            raise LayerFormatError(
                f"{entry!r}: {exc.filename!r} is not a directory", entry=entry
            ) from None

    def forget(self, key: str) -> None:
        """Drop what is held for the directory ``key``, which is going away."""
        fd = self._cache.pop(key, None)
        if fd is not None:
            fd.close()
        self._deferred.pop(key, None)

    def remove(self, parent: int, name: str, key: str) -> None:
        """Remove whatever ``name`` is in ``parent`` (a symlink itself, never its target)."""
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(mode):
            os.unlink(name, dir_fd=parent)
            return
        self.forget(key)
        with OwnedFd(os.open(name, DIR_FLAGS, dir_fd=parent)) as fd:
            if self._writable:
                owner_rwx(fd.fileno())
            self.remove_under(fd.fileno(), key)
        os.rmdir(name, dir_fd=parent)

    def replace(
        self, parent: int, name: str, key: str, make: Callable[..., _T], *args: object
    ) -> _T:
        """Return ``make(*args, dir_fd=parent)``, which creates ``name`` in ``parent``;
        when something is there already, remove it (see :meth:`remove`) and call
        ``make`` again."""
        try:
            return make(*args, dir_fd=parent)
        except FileExistsError:
            self.remove(parent, name, key)
            return make(*args, dir_fd=parent)

    def remove_under(self, directory: int, key: str, keep: Container[str] = ()) -> None:
        """Remove what ``directory`` (at ``key``) holds but ``keep`` (see :func:`remove_under`)."""
        remove_under(directory, key, keep=keep, forget=self.forget, writable=self._writable)

    def defer(self, key: str, attrs: Attributes) -> None:
        """Keep the attributes of the directory ``key`` for :meth:`finish`."""
        self._deferred[key] = attrs

    def finish(self, apply: Callable[[int, str, Attributes], None]) -> None:
        """Call ``apply`` with each directory's descriptor, key and deferred attributes,
        deepest first, so that their mtimes survive the creation of their children
        and read-only directories could still be filled. A directory no longer there
        is skipped.
        """
        order = sorted(self._deferred, key=lambda k: k.count("/") if k else -1, reverse=True)
        for key in order:
            attrs = self._deferred[key]
            if not key:
                apply(self.root, ".", attrs)
                continue
            parts = key.split("/")
            try:
                parent = self.open_dir(parts[:-1], create=False, entry=key)
                fd = OwnedFd(os.open(parts[-1], DIR_FLAGS, dir_fd=parent))
            except (FileNotFoundError, NotADirectoryError, UnsafeLayerError):
                continue
            with fd:
                apply(fd.fileno(), key, attrs)
        self._deferred.clear()
