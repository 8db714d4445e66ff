"""Blob streams: what ``get_blob`` and ``get_raw_blob`` return.

A blob is read like a file until its end; the protocol's bookkeeping (FinishPipe,
the error pipe, size and digest checks) happens inside the stream, and its errors
surface from the read that reaches the end, or at once when the source fails.
Closing early is allowed and leaves the proxy usable (docs/protocol.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import termios
import threading
from collections.abc import Callable

from .. import _protocol as proto
from .._async_backend import AsyncBackend as Backend
from .._backends import ALSO_READY, poll_readable
from .._fd import OwnedFd, splice
from ..errors import ImageProxyError, RequestError, StallTimeoutError
from .channel import AsyncChannel, drain, read_to_end
from .stream import AsyncBlobStream

__all__ = ["AsyncBlob", "AsyncRawBlob"]

_log = logging.getLogger("containers_image_proxy")

#: Longest wait of the splice thread, so that it sees a stop request soon.
_STOP_CHECK = 0.25
#: Seconds without data after which a pipe closed early counts as stalled.
_IDLE_STALLED = 1.0


def _looks_stalled(fd: int, transfer: proto.Transfer) -> bool:
    """Return whether a pipe is empty and has seen no data for a while."""
    try:
        pending = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return pending == b"\0\0\0\0" and transfer.idle() > _IDLE_STALLED


def _wait_step(timeout: float | None) -> float:
    """Return how long the splice thread waits at once: short, to see a stop request soon."""
    return _STOP_CHECK if timeout is None else min(_STOP_CHECK, timeout)


#: Least a read asks of a pipe whose bytes are handed out as new objects.
_MIN_ASK = 64 * 1024


class _PipeReads:
    """The reads of one pipe, each asking for about as much as arrives.

    Bytes handed out as new objects are allocated at the size asked for, then
    shrunk to what came: asking far more than arrives makes every read map and
    unmap a large buffer. So a read asks for twice what the last one got, from
    64 KiB up to the caller's limit (a pipe that keeps filling doubles it each time).
    """

    __slots__ = ("_ask",)

    def __init__(self) -> None:
        self._ask = _MIN_ASK

    def now(self, fd: int, limit: int, into: memoryview | None) -> bytes | memoryview | None:
        """Read what the pipe ``fd`` holds, at most ``limit`` bytes; None when it holds nothing.

        Into ``into`` (returning the part filled), or as new bytes when it is None.
        """
        try:
            if into is not None:
                target = into[:limit]
                return target[: os.readv(fd, [target])]
            data = os.read(fd, min(limit, self._ask))
        except BlockingIOError:
            return None
        self._ask = max(_MIN_ASK, 2 * len(data))
        return data


class _PipeStream(AsyncBlobStream):
    """A blob stream read from a pipe: both reading paths go through ``_read_piece``,
    which fills ``into`` when given, else hands out what the pipe holds."""

    async def _readinto(self, view: memoryview) -> int:
        return len(await self._read_piece(len(view), view))

    async def _read_bytes(self, size: int) -> bytes:
        return bytes(await self._read_piece(size, None))

    async def _read_piece(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        raise NotImplementedError


class AsyncBlob(_PipeStream):
    """A blob streaming from GetBlob; the proxy verifies its size and digest.

    Read it to the end (the read that reaches the end raises any transfer or
    verification error) or close it early. Several blobs may stream at once.
    When the source goes silent for the configured ``probe_interval``, the blob
    asks the proxy (FinishPipe) whether the source failed: a failure is raised
    at once, with the proxy's error, instead of after the stall timeout. Until the
    data of a blob so asked ends, the proxy serves nothing else; the thread or task
    reading it gets :class:`BusyError` if it makes another request meanwhile.
    """

    def __init__(
        self,
        channel: AsyncChannel,
        pipe: OwnedFd,
        pipeid: int,
        transfer: proto.Transfer,
        known_size: bool,
    ) -> None:
        self._channel = channel
        self._pipe = pipe
        self._pipes = (pipe,)
        self._pipeid = pipeid
        self._transfer = transfer
        self._known = known_size
        self._finished = False
        #: This blob holds the channel's lock: its FinishPipe is out, unanswered.
        self._holding = False
        #: FinishPipe's reply came (success, or the error already raised).
        self._answered = False
        self._watch = proto.PipeWatch(transfer, channel.probe, channel.stall)
        self._reads = _PipeReads()

    async def _read_piece(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        if self._pipe.closed:
            return b""
        if not self._known:
            return await self._read_unknown(limit, into)
        return await self._read_accounted(limit, into)

    async def _receive(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        fd = self._pipe.fileno()
        while (piece := self._reads.now(fd, limit, into)) is None:
            await self._wait_for_data(fd)
        return piece

    async def _wait_for_data(self, fd: int) -> None:
        """Wait for the pipe to be readable; probe a silent source (docs/protocol.md rule 9)."""
        channel = self._channel
        # While FinishPipe is out, its reply is awaited together with the data.
        waiting_reply = self._holding and not self._answered
        also = channel.sock.fileno() if waiting_reply else None
        ready = await Backend.wait_readable(fd, self._watch.timeout(), also=also)
        if ready:
            if ready & ALSO_READY:
                await self._take_reply()
            return
        silence = self._watch.silence()
        if silence is proto.Silence.STALL:
            raise self._stalled()
        if silence is proto.Silence.PROBE:
            await self._probe()

    async def _send_finish(self) -> None:
        """Send FinishPipe under the channel's lock, which the caller took for this blob."""
        self._holding = True
        try:
            await self._channel.send_finish(self._pipeid, "GetBlob")
        except BaseException:
            self._release()
            raise

    async def _probe(self) -> None:
        # Only when the proxy is free: waiting for the lock would stop this reader.
        if not await self._channel.lock.try_acquire(f"blob {self.digest}"):
            self._watch.probe_deferred()
            return
        await self._send_finish()
        self._watch.probe_sent()
        _log.debug(
            "blob %s: no data for %.1f s after %d bytes; FinishPipe sent as a probe",
            self.digest,
            self._transfer.idle(),
            self._transfer.received,
        )

    async def _take_reply(self) -> None:
        """FinishPipe answered before the data ended: raise its error now, if any."""
        self._answered = True
        try:
            error = await self._channel.finish_reply("GetBlob")
        except BaseException:
            self._abandon()
            raise
        self._release()
        if error is not None:
            _log.debug("blob %s: the probe found the source failed: %s", self.digest, error)
            self._finished = True
            self._close_pipes()
            raise error
        # Success: the worker has written everything; the rest is in the pipe.

    def _stalled(self) -> StallTimeoutError:
        stall = self._channel.stall
        message = f"blob {self.digest}: no data arrived for {stall} seconds"
        if self._holding and not self._answered:
            # FinishPipe is out and its reply waits behind the silent source: the
            # proxy serves nothing else until the source moves again.
            error = StallTimeoutError(
                message + " (the proxy is still waiting for that source and is no longer usable)"
            )
            self._channel.break_with(error)
        else:
            error = StallTimeoutError(message)
        self._abandon()
        return error

    async def _copy(self, fd: int, progress: Callable[[int], object] | None) -> int:
        # Known size: splice moves the data from the pipe to ``fd`` inside the kernel,
        # in a worker thread under asyncio (one wake-up per chunk costs too much on a
        # loop). The proxy verifies size and digest, and says so through FinishPipe.
        if not self._known or self._pipe.closed or self._transfer.received or self._holding:
            return await super()._copy(fd, progress)
        try:
            total = await Backend.run_interruptible(self._splice_to, fd, progress)
        except StallTimeoutError:
            self._abandon()
            raise
        if total < 0:  # the destination does not take splice (e.g. O_APPEND)
            return await super()._copy(fd, progress)
        if (self._transfer.remaining() or 0) > 0:
            # The source went silent (or the pipe ended early): the read loop probes
            # it and takes the rest, or raises what went wrong.
            return total + await super()._copy(fd, progress)
        await self._finish()
        return total

    def _splice_to(
        self, fd: int, progress: Callable[[int], object] | None, stop: threading.Event
    ) -> int:
        """Splice the rest of the data into ``fd``, blocking; -1 if ``fd`` refuses splice.

        Returns early when ``stop`` is set (the asyncio caller was cancelled), and
        when the source has been silent long enough to be probed (by the caller).
        """
        watch, source = self._watch, self._pipe

        def wait() -> bool:
            while not poll_readable(source.fileno(), _wait_step(watch.timeout())):
                if stop.is_set():
                    return False
                silence = watch.silence()
                if silence is proto.Silence.STALL:
                    raise StallTimeoutError(
                        f"blob {self.digest}: no data arrived for {watch.stall} seconds"
                    )
                if silence is proto.Silence.PROBE:
                    return False
            return True

        def moved(count: int) -> None:
            self._transfer.advance(count)
            if progress is not None:
                progress(count)

        remaining = self._transfer.remaining() or 0
        return splice(source, fd, remaining, wait=wait, moved=moved, stop=stop)

    async def _read_unknown(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        # docs/protocol.md rule 3 for a blob of unknown size: FinishPipe goes out
        # first and its reply comes after the end of the data, so the proxy is held
        # until then; a reply that comes earlier reports a failed source.
        if not self._holding and not self._answered:
            await self._channel.lock.acquire(f"blob {self.digest}")
            await self._send_finish()
            self._watch.probe_sent()
        piece = await self._receive(limit, into)
        if piece:
            self._transfer.update(piece)
            return piece
        await self._finish()
        return b""

    def _abandon(self) -> None:
        # A stalled source would block FinishPipe, and the proxy with it, until the
        # source moves again: give the pipe up without it.
        self._finished = True
        self._release()
        self._close_pipes()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._channel.lock.release()

    async def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        channel = self._channel
        error: RequestError | None = None
        try:
            if not self._holding and not self._answered:
                await channel.lock.acquire()
                await self._send_finish()
            try:
                extra = await drain(self._pipe.fileno(), channel.stall, f"blob {self.digest}")
                if not self._answered:
                    self._answered = True
                    error = await channel.finish_reply("GetBlob")
            except StallTimeoutError as exc:
                raise channel.break_with(exc) from None
        finally:
            self._release()
            self._close_pipes()
        if error is not None:
            raise error
        if self._known:
            self._transfer.check_complete(extra)
        elif self._transfer.received != self._transfer.expected:
            self._transfer.check_complete()

    async def aclose(self) -> None:
        """Close the stream, before or after its end; raises nothing for an early close."""
        self._closed = True
        if self._finished or self._answered:
            self._finished = True
            self._release()
            self._close_pipes()
            return
        self._finished = True
        stalled = not self._pipe.closed and _looks_stalled(self._pipe.fileno(), self._transfer)
        # Closing our end first makes the worker's next write fail at once (EPIPE).
        self._close_pipes()
        if stalled and not self._holding:
            # FinishPipe would wait for a source that sends nothing (docs/protocol.md rule
            # 8) and hold the proxy with it: give the pipe up without it.
            _log.debug("blob %s closed while its source was stalled", self.digest)
            return
        try:
            if not self._holding:
                await self._channel.lock.acquire()
                # Its reply is collected before the next request goes out (see
                # AsyncChannel.unanswered), so closing never waits for the worker.
                await self._send_finish()
        except ImageProxyError as exc:
            _log.debug("closing blob %s early: %s", self.digest, exc)
        finally:
            self._release()


class AsyncRawBlob(_PipeStream):
    """A blob streaming from GetRawBlob (protocol 0.2.8): verified here, not by the proxy.

    Digest and size are checked while the data streams unless ``verify=False`` was
    given; the proxy's own error (with its code, see ``RequestError.retryable``)
    arrives through a second pipe and is raised as soon as it comes, or by the read
    that reaches the end.
    """

    def __init__(
        self, pipes: tuple[OwnedFd, OwnedFd], transfer: proto.Transfer, stall: float | None
    ) -> None:
        self._pipes = pipes
        self._pipe, self._errors = pipes
        self._transfer = transfer
        self._stall = stall
        #: What the error pipe said, once read to its end (b"" for success).
        self._error_data: bytes | None = None
        self._reads = _PipeReads()

    async def _read_piece(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        if self._pipe.closed:
            return b""
        return await self._read_accounted(limit, into)

    async def _receive(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        # The error pipe is watched with the data: a failed source is reported there
        # (and both pipes closed) by the worker, whatever the data pipe still holds.
        data_fd, error_fd = self._pipe.fileno(), self._errors.fileno()
        what = f"blob {self.digest}"
        while (piece := self._reads.now(data_fd, limit, into)) is None:
            also = error_fd if self._error_data is None else None
            timeout = None if self._stall is None else max(0.0, self._stall - self._transfer.idle())
            ready = await Backend.wait_readable(data_fd, timeout, also=also)
            if not ready:
                if self._stall is not None and self._transfer.idle() >= self._stall:
                    raise StallTimeoutError(f"{what}: no data arrived for {self._stall} seconds")
                continue
            if ready & ALSO_READY:
                self._error_data = await read_to_end(error_fd, self._stall, what)
                error = proto.raw_blob_error(self._error_data)
                if error is not None:
                    self._close_pipes()
                    raise error
        return piece

    async def _finish(self) -> None:
        what = f"blob {self.digest}"
        try:
            extra = await drain(self._pipe.fileno(), self._stall, what)
            if self._error_data is None:
                self._error_data = await read_to_end(self._errors.fileno(), self._stall, what)
            error = proto.raw_blob_error(self._error_data)
        finally:
            self._close_pipes()
        if error is not None:
            raise error
        self._transfer.check_complete(extra)

    async def aclose(self) -> None:
        """Close the stream, before or after its end; raises nothing for an early close."""
        self._closed = True
        self._close_pipes()
