"""Applying layer tar streams to a directory, every operation anchored at a descriptor.

Paths are walked one component at a time from the destination's descriptor with
``O_DIRECTORY | O_NOFOLLOW``: a symlink met on the way (planted by an earlier entry
or layer) stops the entry with :class:`UnsafeLayerError`, it is never followed.
Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` after whatever was there
is unlinked, so nothing is ever written through an existing inode. ``tarfile``
only parses the headers; files, directories, links and nodes are made here.

Semantics follow the OCI image-spec layer rules: whiteouts ``.wh.NAME`` and opaque
markers ``.wh..wh..opq`` hide what lower layers put there (never what the same layer
adds, wherever the marker sits in the tar), a directory entry over a directory
changes its attributes only, any other entry replaces what was there. Directory
attributes are applied at the end, deepest first, so that their mtimes survive the
creation of their children and read-only directories can still be filled.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol, Self, cast, runtime_checkable

from ..errors import ClosedError
from ..oci import Descriptor, Digest
from .compression import check_tar_trailer
from .results import (
    LayerFormatError,
    LayerResult,
    LimitExceededError,
    UnpackLimits,
    UnsafeLayerError,
)

if TYPE_CHECKING:
    from .results import Compression

__all__ = ["RootfsWriter", "discard_tree"]

_log = logging.getLogger("containers_image_proxy")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHE_SIZE = 128
_COPY = 1 << 20
_NS = 1_000_000_000
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_XATTR = "SCHILY.xattr."
_EXTENDED = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
#: How tarfile says that an archive ended well: end-of-archive blocks, or no more data.
_CLEAN_END: tuple[type[Exception], ...] = (
    getattr(tarfile, "EOFHeaderError"),  # noqa: B009 (missing from typeshed)
    getattr(tarfile, "EmptyHeaderError"),  # noqa: B009
)
#: Errors of setxattr that mean "this filesystem or this user cannot", not "broken".
_XATTR_REFUSED = frozenset(
    {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ERANGE}
)


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


#: The numbers of a tar header from mode to checksum (offsets 100 to 156) as tar
#: writers put them: zero-padded octal ending in a NUL, the checksum also as six
#: digits, a NUL and a space.
_PLAIN = re.compile(
    rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0([0-7]{11})\0([0-7]{6}[0-7\0])[\0 ]"
)
#: The device numbers (offsets 329 to 345): zero-padded octal, or all NULs.
_DEVICES = re.compile(rb"(?:\0{8}|([0-7]{7})\0)(?:\0{8}|([0-7]{7})\0)")


def _unsigned_checksum(buf: bytes | bytearray) -> int:
    """The header checksum tar writers compute: the unsigned sum of the block's
    bytes with the checksum field counted as eight spaces."""
    field = sum(buf[148:156])
    if buf.count(0) >= 256:
        # At most 256 non-zero bytes sum to less than adler32's modulus (65521):
        # its low half is then one more than the sum, computed in C.
        return (zlib.adler32(buf) & 0xFFFF) - 1 - field + 256
    return sum(buf) - field + 256


@runtime_checkable
class _Verifying(Protocol):
    """A layer's tar stream that verifies itself at its end: a LayerStream, or the
    unpack pipeline's view of one that a reader thread decompresses."""

    @property
    def compression(self) -> Compression: ...
    @property
    def diff_id(self) -> Digest: ...
    @property
    def bytes_read(self) -> int: ...
    def read(self, size: int, /) -> bytes: ...
    def finish(self) -> None: ...


class _Stopped(Exception):
    """The unpack was cancelled from another thread."""


class _Info(tarfile.TarInfo):
    """TarInfo that bounds extended headers and remembers why the archive ended."""

    max_header = 1 << 20

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        """Parse a header block: tarfile's parse, with a fast path for common headers.

        The fast path takes a block whose numbers are zero-padded octal as tar
        writers put them (see _PLAIN), with a valid unsigned checksum and no old GNU
        sparse map, and gives what tarfile would; anything else goes to tarfile.
        """
        plain = _PLAIN.match(buf, 100) if len(buf) == tarfile.BLOCKSIZE else None
        devices = _DEVICES.match(buf, 329) if plain is not None else None
        if devices is not None and buf[156:157] != tarfile.GNUTYPE_SPARSE:
            assert plain is not None
            mode, uid, gid, size, mtime, chksum = plain.groups()
            if int(chksum.rstrip(b"\0"), 8) == _unsigned_checksum(buf):
                obj = cls()
                obj.name = name = buf[0:100].split(b"\0", 1)[0].decode(encoding, errors)
                obj.mode = int(mode, 8)
                obj.uid = int(uid, 8)
                obj.gid = int(gid, 8)
                obj.size = int(size, 8)
                obj.mtime = int(mtime, 8)
                obj.chksum = int(chksum.rstrip(b"\0"), 8)
                obj.type = kind = cast("bytes", buf[156:157])
                obj.linkname = buf[157:257].split(b"\0", 1)[0].decode(encoding, errors)
                obj.uname = buf[265:297].split(b"\0", 1)[0].decode(encoding, errors)
                obj.gname = buf[297:329].split(b"\0", 1)[0].decode(encoding, errors)
                major, minor = devices.groups()
                obj.devmajor = 0 if major is None else int(major, 8)
                obj.devminor = 0 if minor is None else int(minor, 8)
                prefix = buf[345:500].split(b"\0", 1)[0].decode(encoding, errors)
                if kind == tarfile.AREGTYPE and name.endswith("/"):
                    obj.type = kind = tarfile.DIRTYPE
                if kind == tarfile.DIRTYPE:
                    obj.name = name = name.rstrip("/")
                if prefix and kind not in tarfile.GNU_TYPES:
                    obj.name = prefix + "/" + name
                return obj
        return super().frombuf(buf, encoding, errors)

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        """Read the next header; a header error is noted on the TarFile."""
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.__dict__["_unpack_end"] = exc
            raise

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > self.max_header:
            raise LimitExceededError(
                f"extended tar header of {self.size} bytes (limit {self.max_header})",
                limit="max_header_bytes",
                value=self.max_header,
            )
        result: tarfile.TarInfo = tarfile.TarInfo._proc_member(self, tar)  # type: ignore[attr-defined]
        return result


@dataclass(slots=True)
class _Meta:
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


def _meta(member: tarfile.TarInfo) -> _Meta:
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
    return _Meta(member.mode & 0o7777, member.uid, member.gid, atime, mtime, xattrs)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rmtree(
    parent: int, name: str, key: str, forget: Callable[[str], None], *, writable: bool
) -> None:
    """Remove the directory ``name`` in ``parent`` and everything under it.

    Iterative, holding one descriptor at a time (climbing back through ``..``), so
    that neither depth nor the descriptor limit can stop it; symlinks inside are
    removed, never followed. ``forget`` is called with the key of each directory
    removed; ``writable`` first gives the owner rwx on each directory (when not root).
    """
    forget(key)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        if writable:
            _owner_rwx(fd)
        stack: list[tuple[str, str, list[str]]] = [(name, key, os.listdir(fd))]
        while stack:
            dname, dkey, pending = stack[-1]
            if pending:
                child = pending.pop()
                ckey = f"{dkey}/{child}" if dkey else child
                try:
                    mode = os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(mode):
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = sub
                    if writable:
                        _owner_rwx(fd)
                    forget(ckey)
                    stack.append((child, ckey, os.listdir(fd)))
                else:
                    os.unlink(child, dir_fd=fd)
                continue
            stack.pop()
            if stack:
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                os.rmdir(dname, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _owner_rwx(fd: int) -> None:
    mode = os.fstat(fd).st_mode
    if mode & 0o700 != 0o700:
        os.fchmod(fd, stat.S_IMODE(mode) | 0o700)


def discard_tree(path: str | os.PathLike[str], *, remove: bool) -> None:
    """Empty the directory ``path`` without following symlinks; remove it too when
    ``remove``. A missing ``path`` is fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _owner_rwx(fd)
        for name in os.listdir(fd):
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(mode):
                _rmtree(fd, name, name, lambda _key: None, writable=True)
            else:
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    if remove:
        os.rmdir(path)


class RootfsWriter:
    """Applies layers, in order, to the directory ``dest`` (created if missing).

    A layer-level API for what :func:`unpack` does: open each layer with
    :func:`open_layer` and hand it to :meth:`apply`; :meth:`close` (or the end of a
    ``with`` block without an exception) then sets directory attributes. Entries are
    written as they stream: a layer that fails verification at its end has already
    changed ``dest``, which must then be discarded.

    ``rootless`` (default: not running as root) leaves ownership alone and skips
    device nodes with a warning (fifos need no privilege and are made), as
    ``umoci unpack --rootless`` does. A writer is not thread-safe: one thread at a
    time, and nothing else should change ``dest`` while it works.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        limits: UnpackLimits | None = None,
        rootless: bool | None = None,
    ) -> None:
        self.dest = Path(dest)
        self.limits = limits if limits is not None else UnpackLimits()
        self.rootless = os.geteuid() != 0 if rootless is None else rootless
        #: What was skipped or could not be set, one message each.
        self.warnings: list[str] = []
        #: Tar entries and decompressed bytes read over all layers so far.
        self.entries = 0
        self.bytes = 0
        self._stop: threading.Event | None = None
        self.dest.mkdir(parents=True, exist_ok=True)
        self._root: int | None = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._dirs: dict[str, _Meta] = {}
        self._touched: set[str] = set()
        self._info = type("_Info", (_Info,), {"max_header": self.limits.max_header_bytes})

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Apply directory attributes (deepest first) and release the descriptors."""
        if self._root is None:
            return
        try:
            self._finish_dirs()
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the descriptors without finishing directory attributes."""
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        if self._root is not None:
            os.close(self._root)
            self._root = None

    def _warn(self, message: str) -> None:
        _log.warning("unpack %s: %s", self.dest, message)
        self.warnings.append(message)

    # ------------------------------------------------------------------ layers

    def apply(self, stream: _Readable, *, descriptor: Descriptor | None = None) -> LayerResult:
        """Apply one layer, given as a readable stream of its (decompressed) tar.

        A :class:`LayerStream` is read to its end and verified before this returns.
        ``descriptor`` is only recorded in the result.

        Raises:
            LayerFormatError: a malformed tar or entry.
            UnsafeLayerError: an entry that would escape ``dest`` or go through a
                symlink, or a non-directory root entry.
            LimitExceededError: one of the :class:`UnpackLimits`.
            VerificationError: (from a LayerStream) digest or diff_id mismatch.
        """
        if self._root is None:
            raise ClosedError(f"the writer for {self.dest} is closed")
        source = _Source(stream, self)
        self._touched = set()
        entries = 0
        try:
            # Random-access mode over a forward-only source: tarfile parses the
            # headers, and file data goes from the stream's chunks to the files
            # without passing through tarfile's buffer (see _Source).
            tar = tarfile.TarFile(
                fileobj=cast("IO[bytes]", source),
                mode="r",
                tarinfo=self._info,
                encoding="utf-8",
                errors="surrogateescape",
            )
        except tarfile.ReadError as exc:
            if source.count != 0:
                raise LayerFormatError(f"not a tar stream: {exc}") from None
            tar = None  # an empty blob: an empty layer
        if tar is not None:
            with tar:
                while True:
                    try:
                        member = tar.next()
                    except tarfile.TarError as exc:
                        raise LayerFormatError(f"malformed tar stream: {exc}") from None
                    if member is None:
                        break
                    tar.members.clear()  # type: ignore[attr-defined]
                    entries += 1
                    self.entries += 1
                    limit = self.limits.max_entries
                    if limit is not None and self.entries > limit:
                        raise LimitExceededError(
                            f"more than {limit} tar entries",
                            limit="max_entries",
                            value=limit,
                            entry=member.name,
                        )
                    if self._stop is not None and self._stop.is_set():
                        raise _Stopped
                    try:
                        self._entry(tar, member)
                    except OSError as exc:
                        if exc.errno in (errno.ENAMETOOLONG, errno.EMLINK):
                            raise LayerFormatError(
                                f"{member.name!r}: {exc.strerror}", entry=member.name
                            ) from None
                        exc.add_note(f"while applying the tar entry {member.name!r}")
                        raise
                end = tar.__dict__.get("_unpack_end")
                if end is not None and not isinstance(end, _CLEAN_END):
                    raise LayerFormatError(f"malformed tar header at offset {tar.offset}: {end}")
                if isinstance(end, _CLEAN_END[0]):  # a zero block: what follows it?
                    check_tar_trailer(cast("_Readable", tar.fileobj).read, tar.offset)
        compression: Compression = "none"
        diff_id = None
        if isinstance(stream, _Verifying):
            stream.finish()
            compression = stream.compression
            diff_id = stream.diff_id
            total = stream.bytes_read
        else:
            source.skip_to_end()
            total = source.count
        self._touched = set()
        return LayerResult(descriptor, diff_id, compression, entries, total)

    def _charge(self, count: int) -> None:
        self.bytes += count
        limit = self.limits.max_total_bytes
        if limit is not None and self.bytes > limit:
            raise LimitExceededError(
                f"layers decompress to more than {limit} bytes",
                limit="max_total_bytes",
                value=limit,
            )

    # ------------------------------------------------------------------ paths

    def _split(self, name: str, what: str = "entry") -> list[str]:
        limit = self.limits.max_path_length
        if len(name) * 4 > limit and len(name.encode("utf-8", "surrogateescape")) > limit:
            raise LimitExceededError(
                f"{what} path longer than {limit} bytes: {name[:80]!r}...",
                limit="max_path_length",
                value=limit,
                entry=name,
            )
        if "\0" in name:
            raise LayerFormatError(f"{what} path contains a NUL byte: {name!r}", entry=name)
        parts = [part for part in name.split("/") if part and part != "."]
        if ".." in parts:
            raise UnsafeLayerError(f"{what} path {name!r} contains '..'", entry=name)
        return parts

    def _open_dir(self, parts: list[str], create: bool, entry: str) -> int:
        """A descriptor of the directory at ``parts``, walked without following symlinks.

        The descriptor belongs to the cache: do not close it, and do not keep it across
        another call (the cache may close it). Missing directories are created (mode
        0755) when ``create``, else FileNotFoundError; a component that is a symlink
        raises UnsafeLayerError, one that is another non-directory NotADirectoryError.
        """
        assert self._root is not None
        if not parts:
            return self._root
        key = "/".join(parts)
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd
        start = len(parts) - 1
        fd = self._root
        while start > 0:
            cached = self._cache.get("/".join(parts[:start]))
            if cached is not None:
                fd = cached
                break
            start -= 1
        for index in range(start, len(parts)):
            name = parts[index]
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(child, 0o755)  # an implied directory: 0755 whatever the umask
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = "/".join(parts[: index + 1])
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise UnsafeLayerError(
                        f"{entry!r} goes through the symlink {where!r}", entry=entry
                    ) from None
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", where) from None
            self._cache["/".join(parts[: index + 1])] = child
            if len(self._cache) > _CACHE_SIZE:
                os.close(self._cache.popitem(last=False)[1])
            fd = child
        return fd

    def _parent(self, parts: list[str], entry: str) -> int:
        try:
            return self._open_dir(parts[:-1], True, entry)
        except NotADirectoryError as exc:
            raise LayerFormatError(
                f"{entry!r}: {exc.filename!r} is not a directory", entry=entry
            ) from None

    def _forget(self, key: str) -> None:
        fd = self._cache.pop(key, None)
        if fd is not None:
            os.close(fd)
        self._dirs.pop(key, None)

    def _mark(self, parts: list[str]) -> None:
        touched = self._touched
        for end in range(len(parts), 0, -1):
            key = "/".join(parts[:end])
            if key in touched:
                return
            touched.add(key)

    # ------------------------------------------------------------------ removal

    def _remove(self, parent: int, name: str, key: str) -> None:
        """Remove whatever ``name`` is in ``parent`` (a symlink itself, never its target)."""
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            self._rmtree(parent, name, key)
        else:
            os.unlink(name, dir_fd=parent)

    def _rmtree(self, parent: int, name: str, key: str) -> None:
        _rmtree(parent, name, key, self._forget, writable=self.rootless)

    def _remove_lower(self, directory: int, key: str) -> None:
        """Remove everything under ``directory`` that the current layer did not write."""
        touched = self._touched
        fd = os.dup(directory)
        try:
            stack: list[tuple[str, list[str]]] = [(key, os.listdir(fd))]
            while stack:
                dkey, pending = stack[-1]
                if pending:
                    child = pending.pop()
                    ckey = f"{dkey}/{child}" if dkey else child
                    if ckey not in touched:
                        self._remove(fd, child, ckey)
                        continue
                    mode = os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                        os.close(fd)
                        fd = sub
                        stack.append((ckey, os.listdir(fd)))
                    continue
                stack.pop()
                if stack:
                    up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = up
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ entries

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = self._split(name)
        for part in parts[:-1]:
            if part.startswith(_WHITEOUT):
                raise LayerFormatError(f"{name!r}: a whiteout used as a directory", entry=name)
        if parts and parts[-1].startswith(_WHITEOUT):
            self._whiteout(parts, name)
            return
        if not parts:
            if not member.isdir():
                raise UnsafeLayerError(f"the root entry {name!r} is not a directory", entry=name)
            self._dirs[""] = _meta(member)
            return
        key = "/".join(parts)
        base = parts[-1]
        self._mark(parts)
        parent = self._parent(parts, name)
        if member.isreg():
            self._file(tar, member, parent, base, key)
        elif member.isdir():
            self._directory(member, parent, base, key)
        elif member.issym():
            self._symlink(member, parent, base, key)
        elif member.islnk():
            self._hardlink(member, parts, key)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._node(member, parent, base, key)
        else:
            self._warn(f"{name!r}: skipped an entry of unknown tar type {member.type!r}")

    def _whiteout(self, parts: list[str], entry: str) -> None:
        base = parts[-1]
        above = parts[:-1]
        if base == _OPAQUE:
            self._mark(above)
            try:
                fd = self._open_dir(above, True, entry)
            except NotADirectoryError as exc:
                raise LayerFormatError(
                    f"{entry!r}: {exc.filename!r} is not a directory", entry=entry
                ) from None
            self._remove_lower(fd, "/".join(above))
            return
        if base.startswith(_WHITEOUT + _WHITEOUT):
            _log.debug("unpack %s: ignoring whiteout metadata %r", self.dest, entry)
            return
        target = base[len(_WHITEOUT) :]
        if not target:
            raise LayerFormatError(f"{entry!r}: a whiteout that names nothing", entry=entry)
        if target in (".", ".."):
            raise UnsafeLayerError(f"{entry!r}: a whiteout of {target!r}", entry=entry)
        try:
            fd = self._open_dir(above, False, entry)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing there to hide
        key = "/".join([*above, target])
        if key not in self._touched:
            self._remove(fd, target, key)
            return
        # The layer also writes this path: hide only what lower layers had under it.
        try:
            mode = os.stat(target, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            sub = os.open(target, _DIR_FLAGS, dir_fd=fd)
            try:
                self._remove_lower(sub, key)
            finally:
                os.close(sub)

    def _create(self, parent: int, base: str, key: str) -> int:
        try:
            return os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, base, key)
            return os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent)

    def _file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, base: str, key: str
    ) -> None:
        fd = self._create(parent, base, key)
        try:
            if member.issparse():
                self._copy_sparse(tar, member, fd)
            elif member.size:
                self._copy(tar, member, fd)
            self._set_fd(fd, member, key)
        finally:
            os.close(fd)

    def _copy(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        source = cast("_Source", tar.fileobj)
        if source.copy_to(fd, member.size) != member.size:
            raise LayerFormatError(f"{member.name!r}: the tar ends inside the file")

    def _copy_sparse(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        source = cast("_Source", tar.fileobj)
        sparse = cast("list[tuple[int, int]]", member.sparse or [])
        stored = tar.offset - member.offset_data
        if sum(length for _, length in sparse) > stored:
            raise LayerFormatError(f"{member.name!r}: a sparse map larger than its data")
        self._charge(member.size)
        for offset, length in sparse:
            if offset < 0 or length < 0 or offset + length > member.size:
                raise LayerFormatError(f"{member.name!r}: a sparse map outside the file")
            os.lseek(fd, offset, os.SEEK_SET)
            if source.copy_to(fd, length) != length:
                raise LayerFormatError(f"{member.name!r}: the tar ends inside the file")
        os.ftruncate(fd, member.size)

    def _directory(self, member: tarfile.TarInfo, parent: int, base: str, key: str) -> None:
        try:
            os.mkdir(base, 0o755, dir_fd=parent)
        except FileExistsError:
            mode = os.stat(base, dir_fd=parent, follow_symlinks=False).st_mode
            if not stat.S_ISDIR(mode):
                self._remove(parent, base, key)
                os.mkdir(base, 0o755, dir_fd=parent)
        self._dirs[key] = _meta(member)

    def _symlink(self, member: tarfile.TarInfo, parent: int, base: str, key: str) -> None:
        target = member.linkname
        self._check_link(member, target)
        try:
            os.symlink(target, base, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, base, key)
            os.symlink(target, base, dir_fd=parent)
        self._set_path(parent, base, member, key, chmod=False)

    def _check_link(self, member: tarfile.TarInfo, target: str) -> None:
        if not target:
            raise LayerFormatError(f"{member.name!r}: a link with an empty target")
        if "\0" in target:
            raise LayerFormatError(f"{member.name!r}: a link target with a NUL byte")
        limit = self.limits.max_path_length
        if len(target.encode("utf-8", "surrogateescape")) > limit:
            raise LimitExceededError(
                f"{member.name!r}: link target longer than {limit} bytes",
                limit="max_path_length",
                value=limit,
                entry=member.name,
            )

    def _hardlink(self, member: tarfile.TarInfo, parts: list[str], key: str) -> None:
        name = member.name
        self._check_link(member, member.linkname)
        target = self._split(member.linkname, "hardlink target")
        if not target:
            raise LayerFormatError(f"{name!r}: a hardlink to the root", entry=name)
        if target == parts:
            return  # a link to itself: the file is already there
        try:
            source = os.dup(self._open_dir(target[:-1], False, name))
        except (FileNotFoundError, NotADirectoryError):
            raise LayerFormatError(
                f"{name!r}: hardlink target {member.linkname!r} does not exist", entry=name
            ) from None
        try:
            try:
                found = os.stat(target[-1], dir_fd=source, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerFormatError(
                    f"{name!r}: hardlink target {member.linkname!r} does not exist", entry=name
                ) from None
            if stat.S_ISDIR(found.st_mode):
                raise LayerFormatError(
                    f"{name!r}: hardlink to the directory {member.linkname!r}", entry=name
                )
            parent = self._parent(parts, name)
            try:
                os.link(
                    target[-1], parts[-1], src_dir_fd=source, dst_dir_fd=parent,
                    follow_symlinks=False,
                )  # fmt: skip
            except FileExistsError:
                there = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if (there.st_dev, there.st_ino) == (found.st_dev, found.st_ino):
                    return
                self._remove(parent, parts[-1], key)
                os.link(
                    target[-1], parts[-1], src_dir_fd=source, dst_dir_fd=parent,
                    follow_symlinks=False,
                )  # fmt: skip
        finally:
            os.close(source)

    def _node(self, member: tarfile.TarInfo, parent: int, base: str, key: str) -> None:
        if member.isfifo():
            kind, make = "fifo", stat.S_IFIFO
        elif member.ischr():
            kind, make = "character device", stat.S_IFCHR
        else:
            kind, make = "block device", stat.S_IFBLK
        if self.rootless and make != stat.S_IFIFO:
            self._warn(f"{member.name!r}: skipped a {kind} (not running as root)")
            return
        device = os.makedev(member.devmajor, member.devminor) if make != stat.S_IFIFO else 0
        try:
            os.mknod(base, 0o600 | make, device, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, base, key)
            os.mknod(base, 0o600 | make, device, dir_fd=parent)
        self._set_path(parent, base, member, key, chmod=True)

    # ------------------------------------------------------------------ attributes

    def _set_fd(self, fd: int, member: tarfile.TarInfo, key: str) -> None:
        meta = _meta(member)
        try:
            if not self.rootless:
                os.fchown(fd, meta.uid, meta.gid)
            for name, value in meta.xattrs.items():
                self._setxattr(fd, name, value, key)
            os.fchmod(fd, meta.mode)
            os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
        except OverflowError:
            raise LayerFormatError(f"{key!r}: attributes out of range", entry=key) from None

    def _set_path(
        self, parent: int, base: str, member: tarfile.TarInfo, key: str, *, chmod: bool
    ) -> None:
        meta = _meta(member)
        try:
            if not self.rootless:
                os.chown(base, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
            for name, value in meta.xattrs.items():
                self._setxattr(f"/proc/self/fd/{parent}/{base}", name, value, key)
            if chmod:
                os.chmod(base, meta.mode, dir_fd=parent)
            os.utime(base, ns=(meta.atime_ns, meta.mtime_ns), dir_fd=parent, follow_symlinks=False)
        except OverflowError:
            raise LayerFormatError(f"{key!r}: attributes out of range", entry=key) from None

    def _setxattr(self, target: int | str, name: str, value: bytes, key: str) -> None:
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _XATTR_REFUSED:
                raise
            self._warn(f"{key!r}: xattr {name} not set ({exc.strerror})")

    def _finish_dirs(self) -> None:
        assert self._root is not None
        order = sorted(self._dirs, key=lambda k: k.count("/") if k else -1, reverse=True)
        for key in order:
            meta = self._dirs[key]
            if key:
                parts = key.split("/")
                try:
                    parent = self._open_dir(parts[:-1], False, key)
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
                except (FileNotFoundError, NotADirectoryError, UnsafeLayerError):
                    continue
            else:
                fd = self._root
            try:
                if not self.rootless:
                    os.fchown(fd, meta.uid, meta.gid)
                for name, value in meta.xattrs.items():
                    self._setxattr(fd, name, value, key or ".")
                os.fchmod(fd, meta.mode)
                os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
            except OverflowError:
                raise LayerFormatError(f"{key!r}: attributes out of range", entry=key) from None
            finally:
                if fd != self._root:
                    os.close(fd)
        self._dirs.clear()


class _Source:
    """A layer's tar bytes for tarfile: forward only, and counted.

    tarfile reads headers with :meth:`read` and skips padding with :meth:`seek`
    (forward only); file data goes from the stream's chunks straight to the files
    (:meth:`copy_to`), without the copies of tarfile's own stream buffer. Every chunk
    taken from the stream is counted and charged to the writer's budget.
    """

    def __init__(self, stream: _Readable, writer: RootfsWriter) -> None:
        self._stream = stream
        self._writer = writer
        self._chunk = b""
        self._view = memoryview(b"")
        self._at = 0  # read offset in the chunk
        self._pos = 0  # stream offset of the chunk's read offset
        #: Bytes taken from the stream.
        self.count = 0

    def _more(self) -> bool:
        data = self._stream.read(_COPY)
        if not data:
            return False
        self.count += len(data)
        self._writer._charge(len(data))
        self._chunk = data
        self._view = memoryview(data)
        self._at = 0
        return True

    def tell(self) -> int:
        """The offset in the layer's tar."""
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (fewer only at the end), all that is left when negative."""
        at = self._at
        end = at + size
        if size >= 0 and end <= len(self._chunk):
            self._at = end
            self._pos += size
            return self._chunk[at:end]
        pieces = []
        wanted = size if size >= 0 else 1 << 62
        while wanted:
            available = len(self._chunk) - self._at
            if not available:
                if not self._more():
                    break
                continue
            take = min(available, wanted)
            pieces.append(self._chunk[self._at : self._at + take])
            self._at += take
            self._pos += take
            wanted -= take
        return b"".join(pieces)

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        """Skip forward to ``offset`` (or to the end, if it comes first)."""
        if whence != os.SEEK_SET or offset < self._pos:
            raise tarfile.StreamError("a layer stream cannot seek backwards")
        self._skip(offset - self._pos)
        return self._pos

    def _skip(self, count: int) -> None:
        while count:
            available = len(self._chunk) - self._at
            if not available:
                if not self._more():
                    return
                continue
            take = min(available, count)
            self._at += take
            self._pos += take
            count -= take

    def skip_to_end(self) -> None:
        """Read (and count) whatever is left."""
        self._skip(1 << 62)

    def copy_to(self, fd: int, count: int) -> int:
        """Write the next ``count`` bytes to ``fd``; how many there were (fewer at the end)."""
        copied = 0
        while copied < count:
            available = len(self._chunk) - self._at
            if not available:
                if not self._more():
                    break
                continue
            take = min(available, count - copied)
            _write_all(fd, self._view[self._at : self._at + take])
            self._at += take
            self._pos += take
            copied += take
        return copied
