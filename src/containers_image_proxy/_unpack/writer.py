"""Applying layer tar streams to a directory, every operation anchored at a descriptor.

Paths are walked one component at a time from the destination's descriptor, never
through a symlink (see :mod:`.dirfd`). Files are created with ``O_CREAT | O_EXCL |
O_NOFOLLOW`` after whatever was there is unlinked, so nothing is ever written
through an existing inode. ``tarfile`` only parses the headers (see :mod:`.tar`);
files, directories, links (:mod:`.links`) and nodes are made here.

Semantics follow the OCI image-spec layer rules: whiteouts ``.wh.NAME`` and opaque
markers ``.wh..wh..opq`` hide what lower layers put there (never what the same layer
adds, wherever the marker sits in the tar; see :mod:`.whiteouts`), a directory
entry over a directory changes its attributes only, any other entry replaces what
was there. Directory attributes are applied at the end, deepest first, so that
their mtimes survive the creation of their children and read-only directories can
still be filled.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from pathlib import Path
from typing import NoReturn, Protocol, Self, cast, runtime_checkable

from ..errors import ClosedError, LayerFormatError, UnsafeLayerError
from ..oci import Descriptor, Digest
from .attrs import Attributes, AttributeSetter, attributes
from .compression import Compression, Readable
from .dirfd import DirTree, split_path
from .limits import Budget, UnpackLimits
from .links import make_hardlink, make_symlink
from .results import LayerResult
from .tar import LayerTar, TarSource, open_tar
from .whiteouts import WHITEOUT as _WHITEOUT
from .whiteouts import Touched, apply_whiteout, is_whiteout

__all__ = ["RootfsWriter"]

_log = logging.getLogger("containers_image_proxy")

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODES = {
    tarfile.FIFOTYPE: ("fifo", stat.S_IFIFO),
    tarfile.CHRTYPE: ("character device", stat.S_IFCHR),
    tarfile.BLKTYPE: ("block device", stat.S_IFBLK),
}


def _entry_failed(exc: OSError, member: tarfile.TarInfo) -> NoReturn:
    """Raise what the system refused for ``member``, as a layer error where the layer
    is at fault (a name too long, too many links)."""
    if exc.errno in (errno.ENAMETOOLONG, errno.EMLINK):
        raise LayerFormatError(f"{member.name!r}: {exc.strerror}", entry=member.name) from None
    exc.add_note(f"while applying the tar entry {member.name!r}")
    raise exc


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
        self._budget = Budget(self.limits)
        self._attrs = AttributeSetter(owner=not self.rootless, warn=self._warn)
        self._touched = Touched()
        self.dest.mkdir(parents=True, exist_ok=True)
        self._tree = DirTree(self.dest, writable=self.rootless)

    @property
    def entries(self) -> int:
        """Return the tar entries read over all layers so far."""
        return self._budget.entries

    @property
    def bytes(self) -> int:
        """Return the decompressed bytes read over all layers so far."""
        return self._budget.bytes

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Apply directory attributes (deepest first) and release the descriptors.

        Raises:
            LayerFormatError: a directory's attributes are out of range.
            OSError: the system refused to set them.
        """
        if self._tree.closed:
            return
        try:
            self._tree.finish(self._set_directory)
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the descriptors without finishing directory attributes."""
        self._tree.close()

    def _warn(self, message: str) -> None:
        _log.warning("unpack %s: %s", self.dest, message)
        self.warnings.append(message)

    def apply(self, stream: Readable, *, descriptor: Descriptor | None = None) -> LayerResult:
        """Apply one layer, given as a readable stream of its (decompressed) tar.

        A :class:`LayerStream` is read to its end and verified before this returns.
        ``descriptor`` is only recorded in the result.

        Raises:
            ClosedError: the writer is closed.
            LayerFormatError: a malformed tar or entry.
            UnsafeLayerError: an entry that would escape ``dest`` or go through a
                symlink, or a non-directory root entry.
            LimitExceededError: one of the :class:`UnpackLimits`.
            VerificationError: (from a LayerStream) digest or diff_id mismatch.
        """
        if self._tree.closed:
            raise ClosedError(f"the writer for {self.dest} is closed")
        source = TarSource(stream, self._budget.charge)
        self._touched = Touched()
        entries = 0
        tar = open_tar(source, max_header=self.limits.max_header_bytes)
        if tar is not None:
            with tar:
                for member in tar.entries():
                    entries += 1
                    self._budget.count_entry(member.name)
                    try:
                        self._entry(tar, member)
                    except OSError as exc:
                        _entry_failed(exc, member)
        self._touched = Touched()
        if isinstance(stream, _Verifying):
            stream.finish()
            return LayerResult(
                descriptor, stream.diff_id, stream.compression, entries, stream.bytes_read
            )
        source.skip_to_end()
        return LayerResult(descriptor, None, "none", entries, source.count)

    def _entry(self, tar: LayerTar, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = split_path(name, self.limits.max_path_length)
        if _WHITEOUT in name and is_whiteout(parts, name):
            apply_whiteout(self._tree, self._touched, parts, name)
            return
        if not parts:
            if not member.isdir():
                raise UnsafeLayerError(f"the root entry {name!r} is not a directory", entry=name)
            self._tree.defer("", attributes(member))
            return
        key = "/".join(parts)
        base = parts[-1]
        self._touched.mark(parts)
        parent = self._tree.parent(parts, name)
        if member.isreg():
            self._file(tar, member, parent, base, key)
        elif member.isdir():
            self._directory(member, parent, base, key)
        elif member.issym():
            make_symlink(self._tree, self.limits.max_path_length, member, parent, base, key)
            self._attrs.set(attributes(member), parent, base, key=key, chmod=False)
        elif member.islnk():
            make_hardlink(self._tree, self.limits.max_path_length, member, parts, key)
        elif member.type in _NODES:
            self._node(member, parent, base, key)
        else:
            self._warn(f"{name!r}: skipped an entry of unknown tar type {member.type!r}")

    def _file(
        self, tar: LayerTar, member: tarfile.TarInfo, parent: int, base: str, key: str
    ) -> None:
        # The hot path (every file): the calls of DirTree.replace, made here without
        # its indirection, and a plain number closed below rather than an OwnedFd.
        try:
            fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            self._tree.remove(parent, base, key)
            fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            if member.issparse():
                self._copy_sparse(tar, member, fd)
            elif member.size and tar.source.copy_to(fd, member.size) != member.size:
                raise LayerFormatError(f"{member.name!r}: the tar ends inside the file")
            self._attrs.set(attributes(member), fd, None, key=key)
        finally:
            os.close(fd)

    def _copy_sparse(self, tar: LayerTar, member: tarfile.TarInfo, fd: int) -> None:
        sparse = cast("list[tuple[int, int]]", member.sparse or [])
        if sum(length for _, length in sparse) > tar.stored_size(member):
            raise LayerFormatError(f"{member.name!r}: a sparse map larger than its data")
        self._budget.charge(member.size)
        for offset, length in sparse:
            if offset < 0 or length < 0 or offset + length > member.size:
                raise LayerFormatError(f"{member.name!r}: a sparse map outside the file")
            os.lseek(fd, offset, os.SEEK_SET)
            if tar.source.copy_to(fd, length) != length:
                raise LayerFormatError(f"{member.name!r}: the tar ends inside the file")
        os.ftruncate(fd, member.size)

    def _directory(self, member: tarfile.TarInfo, parent: int, base: str, key: str) -> None:
        try:
            os.mkdir(base, 0o755, dir_fd=parent)
        except FileExistsError:
            mode = os.stat(base, dir_fd=parent, follow_symlinks=False).st_mode
            if not stat.S_ISDIR(mode):
                self._tree.remove(parent, base, key)
                os.mkdir(base, 0o755, dir_fd=parent)
        self._tree.defer(key, attributes(member))

    def _node(self, member: tarfile.TarInfo, parent: int, base: str, key: str) -> None:
        kind, make = _NODES[member.type]
        if self.rootless and make != stat.S_IFIFO:
            self._warn(f"{member.name!r}: skipped a {kind} (not running as root)")
            return
        device = os.makedev(member.devmajor, member.devminor) if make != stat.S_IFIFO else 0
        self._tree.replace(parent, base, key, os.mknod, base, 0o600 | make, device)
        self._attrs.set(attributes(member), parent, base, key=key)

    def _set_directory(self, fd: int, key: str, attrs: Attributes) -> None:
        self._attrs.set(attrs, fd, None, key=key)
