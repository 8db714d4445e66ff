"""File descriptors and files: one owner per descriptor, whole writes, atomic files.

Every raw descriptor the package holds (pipes from the proxy, directory descriptors
of an unpack) belongs to exactly one :class:`OwnedFd`, which forgets the number the
moment it closes it, so a number the kernel has since given to someone else is never
touched. :func:`write_all` and :func:`splice` move data between descriptors;
:func:`atomic_file` is the one way a file appears under its final name: written
beside it, flushed, then renamed over it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CHUNK_SIZE",
    "OwnedFd",
    "atomic_file",
    "close_all",
    "prepare_pipe",
    "splice",
    "write_all",
]

#: Bytes read or written at a time when streaming blobs and files (and the buffer
#: asked for on a pipe that carries a blob).
CHUNK_SIZE = 1 << 20

_F_SETPIPE_SZ = 1031


class OwnedFd:
    """A descriptor with exactly one owner, closed once, forgotten once closed."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = None
        if fd < 0:
            raise ValueError(f"not a file descriptor: {fd}")
        self._fd = fd

    @property
    def closed(self) -> bool:
        """Whether the descriptor was closed (or handed on with :meth:`detach`)."""
        return self._fd is None

    def fileno(self) -> int:
        """Return the descriptor's number.

        Raises:
            ValueError: it was closed.
        """
        if self._fd is None:
            raise ValueError("I/O on a closed file descriptor")
        return self._fd

    def detach(self) -> int:
        """Give the number up without closing it; the caller owns it from now on."""
        fd = self.fileno()
        self._fd = None
        return fd

    def close(self) -> None:
        """Close the descriptor; closing again does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> OwnedFd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A descriptor dropped without close() must not leak.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.close()

    def __repr__(self) -> str:
        return f"OwnedFd({'closed' if self._fd is None else self._fd})"


def close_all(fds: Iterable[OwnedFd]) -> None:
    """Close every descriptor of ``fds``, even when closing one of them fails."""
    error: OSError | None = None
    for fd in fds:
        try:
            fd.close()
        except OSError as exc:
            error = error or exc
    if error is not None:
        raise error


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to the descriptor ``fd`` (a blocking one)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def prepare_pipe(fd: OwnedFd, *, large: bool = False) -> None:
    """Make a received pipe non-blocking and, for bulk data, its buffer larger where allowed."""
    os.set_blocking(fd.fileno(), False)
    if large:
        with contextlib.suppress(OSError):  # beyond the user's limit: the default will do
            fcntl.fcntl(fd.fileno(), _F_SETPIPE_SZ, CHUNK_SIZE)


def splice(
    source: OwnedFd,
    dest: int,
    count: int,
    *,
    wait: Callable[[], bool],
    moved: Callable[[int], object],
    stop: threading.Event,
) -> int:
    """Move up to ``count`` bytes from the pipe ``source`` into ``dest``, inside the kernel.

    Blocking, for a worker thread. ``source`` is non-blocking: whenever it is empty
    ``wait()`` is called, which returns True once there is data again, or False to
    pause the move. ``moved`` is told the size of each piece. Returns the bytes
    moved: fewer than ``count`` when the pipe ended, ``wait`` paused or ``stop`` was
    set; -1 when ``dest`` does not take splice (nothing moved then).

    Raises:
        OSError: reading or writing failed.
    """
    total = 0
    while total < count and not stop.is_set():
        try:
            piece = os.splice(source.fileno(), dest, count - total)
        except BlockingIOError:
            if not wait():
                break
            continue
        except OSError as exc:
            if total == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS):
                return -1
            raise
        if piece == 0:
            break
        total += piece
        moved(piece)
    return total


@contextlib.contextmanager
def atomic_file(
    path: Path, *, mode: int = 0o644, prefix: str | None = None, sync: bool = True
) -> Iterator[BinaryIO]:
    """Return a new file that replaces ``path`` only if the block succeeds.

    It is written in the same directory (under ``prefix``, by default ``.NAME.``),
    flushed to disk when ``sync`` is true, given ``mode`` and renamed over ``path``;
    on any failure it is removed and ``path`` is left as it was.

    Raises:
        OSError: the file could not be created, written or renamed.
    """
    fd, temporary = tempfile.mkstemp(prefix=prefix or f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
