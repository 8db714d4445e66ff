"""The reading API every blob stream shares: read, peek, copy, iterate, close.

A stream is read like a file until its end, by one reader at a time. How the
bytes arrive, and how the end is verified, is up to each kind of blob
(:mod:`.blob`); this module only turns its ``_readinto`` (and, where a kind has
one, its ``_read_bytes``, which hands out what the pipe holds without a second
copy) into the public API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Self

from .. import _protocol as proto
from .._async_backend import AsyncStreamBase as StreamBase
from .._fd import CHUNK_SIZE, OwnedFd, close_all, write_all
from ..errors import BusyError, ClosedError
from ..oci import Digest

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["AsyncBlobStream"]

#: Bytes :meth:`AsyncBlobStream.read` and iteration take at a time when not told.
_READ_SIZE = 256 * 1024


class AsyncBlobStream(StreamBase):
    """Common reading API of :class:`AsyncBlob` and :class:`AsyncRawBlob`."""

    @property
    def digest(self) -> Digest:
        """The digest the blob is expected to have."""
        return self._transfer.digest

    @property
    def size(self) -> int | None:
        """The size of the blob in bytes, or ``None`` when the source did not say."""
        return self._transfer.expected

    @property
    def bytes_read(self) -> int:
        """How many bytes were read so far (bytes only peeked at do not count)."""
        return self._transfer.received - len(self._head)

    _transfer: proto.Transfer
    #: The pipe the data comes through.
    _pipe: OwnedFd
    #: Every descriptor the stream holds, closed together.
    _pipes: tuple[OwnedFd, ...] = ()
    _closed = False
    _busy = False
    #: Bytes taken from the pipe by :meth:`peek` and not read yet.
    _head = b""

    @property
    def closed(self) -> bool:
        """Whether the stream was closed."""
        return self._closed

    def __del__(self) -> None:
        # Only the descriptors: never the protocol's close, which may wait on the proxy.
        self._close_pipes()

    def _close_pipes(self) -> None:
        with contextlib.suppress(OSError):
            close_all(self._pipes)

    def _reading(self) -> _Reading:
        """Hold the stream for one read; refuse a closed stream, or a second reader."""
        return _Reading(self)

    async def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read into ``buffer``; 0 at the end (or when ``buffer`` is empty).

        Raises:
            ClosedError: the stream was closed.
            BusyError: another thread or task is reading it.
            ImageProxyError: the transfer or its verification failed (see :meth:`read`).
        """
        with self._reading(), memoryview(buffer) as outer, outer.cast("B") as view:
            if not view:
                return 0
            if self._head:
                count = min(len(view), len(self._head))
                view[:count] = self._head[:count]
                self._head = self._head[count:]
                return count
            return await self._readinto(view)

    async def peek(self, size: int, /) -> bytes:
        """Return the next ``size`` bytes (fewer only at the end), left for the next reads.

        Raises:
            ImageProxyError: as :meth:`read` (a blob shorter than ``size`` ends, and is
                verified, here).
        """
        with self._reading():
            while len(self._head) < size:
                buffer = bytearray(size - len(self._head))
                with memoryview(buffer) as view:
                    count = await self._readinto(view)
                if count == 0:
                    break
                self._head += bytes(buffer[:count])
        return self._head[:size]

    async def _readinto(self, view: memoryview) -> int:
        """Read the next bytes into ``view`` (not empty); 0 at the end."""
        raise NotImplementedError

    async def _read_bytes(self, size: int) -> bytes:
        """Read the next bytes, at most ``size`` (above 0), as a new object; b"" at the end.

        This one reads into a buffer and copies it; kinds that can hand out what the
        pipe holds directly do so instead.
        """
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            count = await self._readinto(view)
        del buffer[count:]
        return bytes(buffer)

    async def _receive(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        """Read what the pipe has, waiting for data; empty at its end.

        At most ``limit`` bytes: into ``into`` (returning the part filled) or, when
        it is None, as new bytes.
        """
        raise NotImplementedError

    async def _finish(self) -> None:
        """End the transfer: check that it is complete and release what it holds."""
        raise NotImplementedError

    async def _read_accounted(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        """Read the next bytes as :meth:`_receive` does, never past the promised size.

        The transfer ends (:meth:`_finish`) with its last byte or the pipe's end.
        """
        remaining = self._transfer.remaining()
        if remaining is not None:
            if remaining <= 0:
                await self._finish()
                return b""
            limit = min(limit, remaining)
        piece = await self._receive(limit, into)
        if not piece:
            await self._finish()
            return b""
        self._transfer.update(piece)
        if len(piece) == remaining:
            await self._finish()
        return piece

    async def copy_to(
        self, out: int | BinaryIO, progress: Callable[[int], object] | None = None
    ) -> int:
        """Write the rest of the blob to ``out`` (a descriptor or a binary file).

        Returns how many bytes were written. ``progress`` is called with the size of
        each piece as it is written (from a worker thread when the asyncio client
        splices a blob). Nothing that fails verification is reported as a success.

        Raises:
            ImageProxyError: as :meth:`read`.
            OSError: writing to ``out`` failed.
        """
        with self._reading():
            if isinstance(out, int):
                fd = out
            else:
                out.flush()
                fd = out.fileno()
            head, self._head = self._head, b""
            if head:
                write_all(fd, head)
                if progress is not None:
                    progress(len(head))
            return len(head) + await self._copy(fd, progress)

    async def _copy(self, fd: int, progress: Callable[[int], object] | None) -> int:
        buffer = bytearray(CHUNK_SIZE)
        total = 0
        with memoryview(buffer) as view:
            while count := await self._readinto(view):
                write_all(fd, view[:count])
                total += count
                if progress is not None:
                    progress(count)
        return total

    async def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes (all that is left when negative); b"" at the end.

        Raises:
            ClosedError: the stream was closed.
            BusyError: another thread or task is reading it.
            RequestError: the proxy reported that the transfer failed.
            VerificationError: the data does not have the promised size or digest.
            StallTimeoutError: no data arrived for the configured stall timeout.
        """
        if size is None or size < 0:
            return await self.readall()
        with self._reading():
            if size == 0:
                return b""
            if self._head:
                chunk, self._head = self._head[:size], self._head[size:]
                return chunk
            return await self._read_bytes(size)

    async def readall(self) -> bytes:
        """Read everything that is left.

        Raises:
            ImageProxyError: as :meth:`read`.
        """
        remaining = self._transfer.remaining()
        if remaining is not None:
            remaining += len(self._head)
        chunks: list[bytes] = []
        if remaining is not None and remaining > 0:
            buffer = bytearray(remaining)
            with memoryview(buffer) as view:
                filled = 0
                while filled < remaining and (count := await self.readinto(view[filled:])):
                    filled += count
            del buffer[filled:]
            if await self.readinto(bytearray(1)) == 0:
                return bytes(buffer)
            chunks.append(bytes(buffer))
        while chunk := await self.read(_READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(_READ_SIZE)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Close the stream, before or after its end; raises nothing for an early close."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ClosedError(f"blob {self.digest} is closed")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Reading:
    """The context of one read of a stream (a class: a generator costs more per read)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: AsyncBlobStream) -> None:
        self._stream = stream

    def __enter__(self) -> None:
        stream = self._stream
        if stream._closed:
            raise ClosedError(f"blob {stream.digest} is closed")
        if stream._busy:
            raise BusyError(f"blob {stream.digest} is already being read by someone else")
        stream._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._stream._busy = False
