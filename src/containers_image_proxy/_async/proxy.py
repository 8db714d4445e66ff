"""AsyncImageProxy: the asyncio client of skopeo's image proxy.

``_async/proxy.py`` is the single source of the client's I/O logic:
``_sync/proxy.py`` is generated from it by ``tools/gen_sync.py`` (``await``
removed, ``Async`` names replaced) and a check fails when the two drift apart.
Protocol decisions live in ``_protocol``; this module only sends, receives, reads
pipes and waits.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import termios
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

from .. import _protocol as proto
from .._backends import AsyncBackend as Backend
from .._backends import AsyncStreamBase as StreamBase
from .._backends import SyncBackend, prepare_pipe
from .._image import OpenedImage
from .._process import ChildProcess, socket_pair
from .._trust import PolicyGuard
from ..config import OPTION_FIELDS, ImageProxyConfig, build_command
from ..errors import (
    BusyError,
    ClosedError,
    ImageProxyError,
    InvalidReferenceError,
    ProtocolError,
    ProxyExitedError,
    ProxyFailedError,
    RequestError,
    StallTimeoutError,
    VerificationError,
)
from ..oci import (
    ConvertedLayerInfo,
    Descriptor,
    Digest,
    ImageConfiguration,
    ImageManifest,
    convert_layer_info,
    decode_config,
    decode_layer_info,
    decode_manifest,
    parse_digest,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["AsyncBlob", "AsyncImageProxy", "AsyncRawBlob"]

_log = logging.getLogger("containers_image_proxy")

_CHUNK = 256 * 1024
_COPY_CHUNK = 1 << 20
_STOP_CHECK = 0.25
_IDLE_STALLED = 1.0
_EXIT_WAIT = 5.0
_SHUTDOWN_WAIT = 5.0
_KILL_GRACE = 2.0


async def _read_chunk(fd: int, size: int, timeout: float | None, what: str) -> bytes:
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            pass
        if not await Backend.wait_readable(fd, timeout):
            raise StallTimeoutError(f"{what}: no data arrived for {timeout} seconds")


async def _read_to_end(fd: int, timeout: float | None, what: str) -> bytes:
    chunks = []
    while chunk := await _read_chunk(fd, 1 << 20, timeout, what):
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(fd: int, timeout: float | None, what: str) -> int:
    """Read ``fd`` to its end, discarding the data; how many bytes there were."""
    extra = 0
    while chunk := await _read_chunk(fd, 1 << 20, timeout, what):
        extra += len(chunk)
    return extra


def _looks_stalled(fd: int, transfer: proto.Transfer) -> bool:
    """Whether a pipe is empty and has seen no data for a while."""
    try:
        pending = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return pending == b"\0\0\0\0" and transfer.idle() > _IDLE_STALLED


def _readable_now(fd: int) -> bool:
    """Whether ``fd`` has something to read (or its end) right now; never waits."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _wait_step(timeout: float | None) -> float:
    """One wait of the splice thread: short, so that it sees a stop request soon."""
    return _STOP_CHECK if timeout is None else min(_STOP_CHECK, timeout)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class _AsyncChannelLock:
    """The channel's lock, knowing which thread or task holds it.

    A blob whose FinishPipe is out holds it until its data ends (docs/protocol.md rule
    2). Should the same thread or task then wait for the lock (another request,
    another blob's end), it would wait forever: it raises :class:`BusyError`.
    """

    def __init__(self) -> None:
        self._lock = Backend.Lock()
        self._owner: object = None
        self._holder = ""

    def locked(self) -> bool:
        return self._lock.locked()

    def _check(self, owner: object) -> None:
        if owner is not None and owner == self._owner and self._holder:
            raise BusyError(
                f"the proxy waits for the rest of {self._holder} (its FinishPipe is out):"
                " read that blob to its end or close it before anything else in this"
                " thread or task"
            )

    async def acquire(self, holder: str = "") -> None:
        owner = Backend.current_owner()
        self._check(owner)
        await self._lock.acquire()
        self._owner, self._holder = owner, holder

    async def try_acquire(self, holder: str = "") -> bool:
        owner = Backend.current_owner()
        if not await Backend.try_acquire(self._lock):
            return False
        self._owner, self._holder = owner, holder
        return True

    def release(self) -> None:
        self._owner, self._holder = None, ""
        self._lock.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _AsyncChannel:
    """The socket to the proxy: one request and its reply at a time, in order."""

    def __init__(
        self,
        sock: socket.socket,
        child: ChildProcess,
        stall: float | None,
        probe: float | None = None,
    ) -> None:
        self.sock = sock
        self.child = child
        self.stall = stall
        #: Seconds of silence on a blob pipe before FinishPipe is sent as a probe.
        self.probe = probe
        self.lock = _AsyncChannelLock()
        self.failure: ImageProxyError | None = None
        #: Requests sent whose replies have not been received yet. Above zero when
        #: a caller gave up waiting (a cancelled task, an interrupt): the replies
        #: still come, in order, and are discarded before the next request.
        self.unanswered = 0

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def break_with(self, failure: ImageProxyError) -> ImageProxyError:
        if self.failure is None:
            self.failure = failure
        return failure

    async def died(self, method: str) -> ImageProxyError:
        returncode = await Backend.run_blocking(self.child.wait, _EXIT_WAIT)
        tail = await Backend.run_blocking(self.child.stderr_tail, 1.0)
        return self.break_with(ProxyExitedError(method, returncode, tail))

    async def send(self, method: str, args: Sequence[object] = (), label: str = "") -> None:
        """Send a request; ``label`` names the operation in errors (default: ``method``)."""
        self.check()
        data = proto.encode_request(method, args)
        while self.unanswered:
            await self.discard_reply(label or method)
        try:
            await Backend.send(self.sock, data)
        except OSError:
            raise await self.died(label or method) from None
        self.unanswered += 1

    async def discard_reply(self, label: str) -> None:
        """Receive and drop the reply to a request whose caller gave up on it."""
        try:
            reply = await self.receive("(abandoned request)", self.stall, label=label)
        except (RequestError, ProtocolError):
            return
        proto.close_fds(reply.fds)

    async def receive(
        self, method: str, timeout: float | None = None, label: str = ""
    ) -> proto.Reply:
        """Receive the reply to ``method``; ``label`` names the operation in errors."""
        self.check()
        try:
            packet = await Backend.recv(self.sock, timeout)
        except OSError:
            raise await self.died(label or method) from None
        if packet is None:
            raise self.break_with(
                StallTimeoutError(f"no reply to {label or method} within {timeout} seconds")
            )
        data, fds, truncated = packet
        if not data and not fds:
            raise await self.died(label or method)
        self.unanswered -= 1
        return proto.decode_reply(method, data, fds, truncated)

    async def send_finish(self, pipeid: int, method: str) -> None:
        """Send FinishPipe for a pipe of ``method``."""
        await self.send("FinishPipe", [pipeid], label=method)

    async def call(self, method: str, args: Sequence[object] = ()) -> proto.Reply:
        async with self.lock:
            await self.send(method, args)
            return await self.receive(method)

    async def finish_reply(self, method: str) -> RequestError | None:
        """Receive FinishPipe's reply; the transfer's error (named after ``method``) or None."""
        try:
            await self.receive("FinishPipe", self.stall, label=method)
        except RequestError as exc:
            return proto.request_error(method, exc.message, exc.code)
        return None

    async def _read_pipe_to_end(self, fd: int, method: str) -> bytes:
        # Waits on the pipe and the socket together: the reply to FinishPipe comes
        # right after the pipe's end, so one wake-up usually serves both.
        chunks: list[bytes] = []
        also: int | None = self.sock.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                if not await Backend.wait_readable(fd, self.stall, also=also):
                    raise StallTimeoutError(
                        f"{method}: no data arrived for {self.stall} seconds"
                    ) from None
                also = None  # after one shared wake-up, the pipe alone (never a busy loop)
                continue
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def read_piped(self, method: str, reply: proto.Reply) -> bytes:
        """Send FinishPipe, read the pipe to its end, then take the reply (docs/protocol.md rule 3).

        The caller holds the lock.
        """
        (fd,) = reply.fds
        try:
            prepare_pipe(fd)
            await self.send_finish(reply.pipeid, method)
            try:
                data = await self._read_pipe_to_end(fd, method)
                error = await self.finish_reply(method)
            except StallTimeoutError as exc:
                raise self.break_with(exc) from None
        finally:
            os.close(fd)
        if error is not None:
            raise error
        return data


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
    _fds: tuple[int, ...] | None = None
    _closed = False
    _busy = False
    #: Bytes taken from the pipe by :meth:`peek` and not read yet.
    _head = b""

    @property
    def closed(self) -> bool:
        """Whether the stream was closed."""
        return self._closed

    def __del__(self) -> None:
        self._close_fds()

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, None
        if fds is not None:
            proto.close_fds(fds)

    async def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read into ``buffer``; 0 at the end. Raises the transfer's errors at the end."""
        if self._closed:
            raise ClosedError(f"blob {self.digest} is closed")
        if self._busy:
            raise BusyError(f"blob {self.digest} is already being read by someone else")
        self._busy = True
        try:
            with memoryview(buffer) as outer, outer.cast("B") as view:
                if self._head:
                    count = min(len(view), len(self._head))
                    view[:count] = self._head[:count]
                    self._head = self._head[count:]
                    return count
                return await self._readinto(view)
        finally:
            self._busy = False

    async def peek(self, size: int, /) -> bytes:
        """The next ``size`` bytes (fewer only at the end), left for the next reads.

        Errors are raised as by :meth:`read` (a blob shorter than ``size`` ends, and is
        verified, here).
        """
        if self._closed:
            raise ClosedError(f"blob {self.digest} is closed")
        if self._busy:
            raise BusyError(f"blob {self.digest} is already being read by someone else")
        self._busy = True
        try:
            while len(self._head) < size:
                buffer = bytearray(size - len(self._head))
                with memoryview(buffer) as view:
                    count = await self._readinto(view)
                if count == 0:
                    break
                self._head += bytes(buffer[:count])
        finally:
            self._busy = False
        return self._head[:size]

    async def _readinto(self, view: memoryview) -> int:
        raise NotImplementedError

    async def copy_to(
        self, out: int | BinaryIO, progress: Callable[[int], object] | None = None
    ) -> int:
        """Write the rest of the blob to ``out`` (a descriptor or a binary file).

        Returns how many bytes were written. ``progress`` is called with the size of
        each piece as it is written (from a worker thread when the asyncio client
        splices a blob). Errors are raised as by :meth:`read`; nothing that fails
        verification is reported as a success.
        """
        if self._closed:
            raise ClosedError(f"blob {self.digest} is closed")
        if self._busy:
            raise BusyError(f"blob {self.digest} is already being read by someone else")
        if isinstance(out, int):
            fd = out
        else:
            out.flush()
            fd = out.fileno()
        self._busy = True
        try:
            head, self._head = self._head, b""
            if head:
                _write_all(fd, memoryview(head))
                if progress is not None:
                    progress(len(head))
            return len(head) + await self._copy(fd, progress)
        finally:
            self._busy = False

    async def _copy(self, fd: int, progress: Callable[[int], object] | None) -> int:
        buffer = bytearray(_COPY_CHUNK)
        total = 0
        with memoryview(buffer) as view:
            while count := await self._readinto(view):
                _write_all(fd, view[:count])
                total += count
                if progress is not None:
                    progress(count)
        return total

    async def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes (all that is left when negative); b"" at the end."""
        if size is None or size < 0:
            return await self.readall()
        buffer = bytearray(size)
        count = await self.readinto(buffer)
        del buffer[count:]
        return bytes(buffer)

    async def readall(self) -> bytes:
        """Read everything that is left."""
        remaining = self._transfer.remaining()
        if remaining is not None:
            remaining += len(self._head)
        if remaining is not None and remaining > 0:
            buffer = bytearray(remaining)
            view = memoryview(buffer)
            filled = 0
            while filled < remaining:
                count = await self.readinto(view[filled:])
                if count == 0:
                    break
                filled += count
            view.release()
            del buffer[filled:]
            if await self.readinto(bytearray(1)) == 0:
                return bytes(buffer)
            chunks = [bytes(buffer)]
        else:
            chunks = []
        while chunk := await self.read(_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(_CHUNK)
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncBlob(AsyncBlobStream):
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
        channel: _AsyncChannel,
        fd: int,
        pipeid: int,
        transfer: proto.Transfer,
        known_size: bool,
    ) -> None:
        self._channel = channel
        self._fds = (fd,)
        self._pipeid = pipeid
        self._transfer = transfer
        self._known = known_size
        self._finished = False
        #: This blob holds the channel's lock: its FinishPipe is out, unanswered.
        self._holding = False
        #: FinishPipe's reply came (success, or the error already raised).
        self._answered = False
        self._watch = proto.PipeWatch(transfer, channel.probe, channel.stall)

    async def _readinto(self, view: memoryview) -> int:
        if self._fds is None:
            return 0
        if not self._known:
            return await self._read_unknown(view)
        remaining = self._transfer.remaining()
        assert remaining is not None
        if remaining <= 0:
            await self._finish()
            return 0
        count = await self._receive(view[:remaining])
        if count == 0:
            await self._finish()
            return 0
        self._transfer.update(view[:count])
        if count == remaining:
            await self._finish()
        return count

    async def _receive(self, view: memoryview) -> int:
        """Read what the pipe has, waiting for it; probe a silent source.

        See docs/protocol.md rule 9.
        """
        assert self._fds is not None
        (fd,) = self._fds
        channel = self._channel
        while True:
            try:
                return os.readv(fd, [view])
            except BlockingIOError:
                pass
            # While FinishPipe is out, its reply is awaited together with the data.
            waiting_reply = self._holding and not self._answered
            also = channel.sock.fileno() if waiting_reply else None
            if await Backend.wait_readable(fd, self._watch.timeout(), also=also):
                if waiting_reply and _readable_now(channel.sock.fileno()):
                    await self._take_reply()
                continue
            silence = self._watch.silence()
            if silence is proto.Silence.STALL:
                raise self._stalled()
            if silence is proto.Silence.PROBE:
                await self._probe()

    async def _probe(self) -> None:
        # Only when the proxy is free: waiting for the lock would stop this reader.
        if not await self._channel.lock.try_acquire(f"blob {self.digest}"):
            self._watch.probe_deferred()
            return
        self._holding = True
        try:
            await self._channel.send_finish(self._pipeid, "GetBlob")
        except BaseException:
            self._release()
            raise
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
            self._close_fds()
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
        if not self._known or self._fds is None or self._transfer.received or self._holding:
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
        assert self._fds is not None
        (source,) = self._fds
        total = 0
        watch = self._watch
        while (remaining := self._transfer.remaining() or 0) > 0 and not stop.is_set():
            try:
                count = os.splice(source, fd, remaining)
            except BlockingIOError:
                while not SyncBackend.wait_readable(source, _wait_step(watch.timeout())):
                    if stop.is_set():
                        return total
                    silence = watch.silence()
                    if silence is proto.Silence.STALL:
                        raise StallTimeoutError(
                            f"blob {self.digest}: no data arrived for {watch.stall} seconds"
                        ) from None
                    if silence is proto.Silence.PROBE:
                        return total
                continue
            except OSError as exc:
                if total == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS):
                    return -1
                raise
            if count == 0:
                break
            self._transfer.advance(count)
            total += count
            if progress is not None:
                progress(count)
        return total

    async def _read_unknown(self, view: memoryview) -> int:
        # docs/protocol.md rule 3 for a blob of unknown size: FinishPipe goes out
        # first and its reply comes after the end of the data, so the proxy is held
        # until then; a reply that comes earlier reports a failed source.
        if not self._holding and not self._answered:
            await self._channel.lock.acquire(f"blob {self.digest}")
            self._holding = True
            try:
                await self._channel.send_finish(self._pipeid, "GetBlob")
            except BaseException:
                self._release()
                raise
            self._watch.probe_sent()
        count = await self._receive(view)
        if count:
            self._transfer.update(view[:count])
            return count
        await self._finish()
        return 0

    def _abandon(self) -> None:
        # A stalled source would block FinishPipe, and the proxy with it, until the
        # source moves again: give the pipe up without it.
        self._finished = True
        self._release()
        self._close_fds()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._channel.lock.release()

    async def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        what = f"blob {self.digest}"
        channel = self._channel
        error: RequestError | None = None
        try:
            if not self._holding and not self._answered:
                await channel.lock.acquire()
                self._holding = True
                await channel.send_finish(self._pipeid, "GetBlob")
            assert self._fds is not None
            try:
                extra = await _drain(self._fds[0], channel.stall, what)
                if not self._answered:
                    self._answered = True
                    error = await channel.finish_reply("GetBlob")
            except StallTimeoutError as exc:
                raise channel.break_with(exc) from None
        finally:
            self._release()
            self._close_fds()
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
            self._close_fds()
            return
        self._finished = True
        stalled = self._fds is not None and _looks_stalled(self._fds[0], self._transfer)
        # Closing our end first makes the worker's next write fail at once (EPIPE).
        self._close_fds()
        channel = self._channel
        if stalled and not self._holding:
            # FinishPipe would wait for a source that sends nothing (docs/protocol.md rule
            # 8) and hold the proxy with it: give the pipe up without it.
            _log.debug("blob %s closed while its source was stalled", self.digest)
            return
        try:
            if not self._holding:
                await channel.lock.acquire()
                self._holding = True
                # Its reply is collected before the next request goes out (see
                # _AsyncChannel.unanswered), so closing never waits for the worker.
                await channel.send_finish(self._pipeid, "GetBlob")
        except ImageProxyError as exc:
            _log.debug("closing blob %s early: %s", self.digest, exc)
        finally:
            self._release()


class AsyncRawBlob(AsyncBlobStream):
    """A blob streaming from GetRawBlob (protocol 0.2.8): verified here, not by the proxy.

    Digest and size are checked while the data streams unless ``verify=False`` was
    given; the proxy's own error (with its code, see ``RequestError.retryable``)
    arrives through a second pipe and is raised as soon as it comes, or by the read
    that reaches the end.
    """

    def __init__(self, fds: tuple[int, int], transfer: proto.Transfer, stall: float | None) -> None:
        self._fds = fds
        self._transfer = transfer
        self._stall = stall
        #: What the error pipe said, once read to its end (b"" for success).
        self._error_data: bytes | None = None

    async def _readinto(self, view: memoryview) -> int:
        if self._fds is None:
            return 0
        remaining = self._transfer.remaining()
        if remaining is not None and remaining <= 0:
            await self._complete()
            return 0
        target = view if remaining is None else view[:remaining]
        count = await self._receive(target)
        if count == 0:
            await self._complete()
            return 0
        self._transfer.update(target[:count])
        if count == remaining:
            await self._complete()
        return count

    async def _receive(self, view: memoryview) -> int:
        # The error pipe is watched with the data: a failed source is reported there
        # (and both pipes closed) by the worker, whatever the data pipe still holds.
        assert self._fds is not None
        data_fd, error_fd = self._fds
        what = f"blob {self.digest}"
        while True:
            try:
                return os.readv(data_fd, [view])
            except BlockingIOError:
                pass
            also = error_fd if self._error_data is None else None
            timeout = None if self._stall is None else max(0.0, self._stall - self._transfer.idle())
            if not await Backend.wait_readable(data_fd, timeout, also=also):
                if self._stall is not None and self._transfer.idle() >= self._stall:
                    raise StallTimeoutError(f"{what}: no data arrived for {self._stall} seconds")
                continue
            if also is not None and _readable_now(error_fd):
                self._error_data = await _read_to_end(error_fd, self._stall, what)
                error = proto.raw_blob_error(self._error_data)
                if error is not None:
                    self._close_fds()
                    raise error

    async def _complete(self) -> None:
        assert self._fds is not None
        data_fd, error_fd = self._fds
        what = f"blob {self.digest}"
        try:
            extra = await _drain(data_fd, self._stall, what)
            if self._error_data is None:
                self._error_data = await _read_to_end(error_fd, self._stall, what)
            error = proto.raw_blob_error(self._error_data)
        finally:
            self._close_fds()
        if error is not None:
            raise error
        self._transfer.check_complete(extra)

    async def aclose(self) -> None:
        """Close the stream, before or after its end; raises nothing for an early close."""
        self._closed = True
        self._close_fds()


class AsyncImageProxy:
    """A skopeo image proxy child process and the connection to it.

    ``async with AsyncImageProxy(config) as proxy:`` starts skopeo, checks its
    protocol version and shuts it down at the end. One proxy may serve many tasks
    at once; requests are answered in order while blobs stream in parallel.
    """

    def __init__(self, config: ImageProxyConfig | None = None) -> None:
        self.config = config or ImageProxyConfig()
        self._command = build_command(self.config)
        self._channel: _AsyncChannel | None = None
        self._child: ChildProcess | None = None
        self._version = proto.ProtocolVersion(0, 0, 0)
        self._closed = False
        self._images: weakref.WeakSet[OpenedImage] = weakref.WeakSet()
        self._policy_guard: PolicyGuard | None = None
        #: The child's CONTAINERS_STORAGE_CONF (it inherits this process's environment).
        self._storage_conf: str | None = None

    @property
    def protocol_version(self) -> str:
        """The protocol version the proxy answered to Initialize, e.g. ``"0.2.8"``."""
        self._live()
        return str(self._version)

    @property
    def pid(self) -> int:
        """The process id of the skopeo child."""
        self._live()
        assert self._child is not None
        return self._child.pid

    def supports(self, method: str) -> bool:
        """Whether the running proxy has protocol ``method`` (e.g. ``"GetRawBlob"``)."""
        self._live()
        return proto.supports(method, self._version)

    def _spawn(self) -> tuple[socket.socket, ChildProcess]:
        ours, theirs = socket_pair()
        try:
            with theirs:
                child = ChildProcess(self._command, theirs)
        except BaseException:
            ours.close()
            raise
        Backend.prepare_socket(ours)
        return ours, child

    async def open(self) -> AsyncImageProxy:
        """Start skopeo and initialize the protocol; returns the proxy itself."""
        if self._closed:
            raise ClosedError("this proxy was closed; create a new one")
        if self._channel is not None:
            return self
        self._storage_conf = os.environ.get(proto.STORAGE_CONF_ENV)
        sock, child = await Backend.run_blocking(self._spawn)
        channel = _AsyncChannel(sock, child, self.config.stall_timeout, self.config.probe_interval)
        try:
            reply = await channel.call("Initialize")
            version = proto.ProtocolVersion.parse(reply.value)
            proto.check_version(version)
        except BaseException as exc:
            await Backend.run_blocking(child.stop, 1.0)
            sock.close()
            child.close_private_files()
            if isinstance(exc, ProxyExitedError):
                unsupported = proto.startup_error(exc, OPTION_FIELDS)
                if unsupported is not None:
                    raise unsupported from exc
            raise
        _log.debug("skopeo pid=%d speaks protocol %s", child.pid, version)
        self._version = version
        self._channel = channel
        self._child = child
        return self

    async def __aenter__(self) -> AsyncImageProxy:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.finalize()
            return
        if issubclass(exc_type, KeyboardInterrupt):
            # Interrupted: no orderly shutdown, which could wait on a busy proxy.
            await Backend.run_blocking(self._kill)
        try:
            await self.finalize()
        except ImageProxyError as error:
            _log.debug("closing the proxy after an error: %s", error)

    def _usable(self) -> bool:
        """Whether the proxy is open and can still serve requests."""
        return self._channel is not None and self._channel.failure is None

    def _kill(self) -> None:
        """Stop skopeo now (an interrupt, an aborted pull); blocks until it is gone.

        Nothing more is sent to it: what is waiting on it fails soon, with the
        proxy's exit. Safe from any thread; :meth:`finalize` still releases the rest.
        """
        channel = self._channel
        if channel is None:
            return
        channel.break_with(ClosedError("the proxy was stopped"))
        channel.child.stop(_KILL_GRACE)

    def _live(self) -> _AsyncChannel:
        if self._channel is None:
            if self._closed:
                raise ClosedError("the proxy is closed")
            raise ClosedError("the proxy is not open: use it as a context manager or call open()")
        return self._channel

    def _handle(self, image: OpenedImage) -> int:
        if not isinstance(image, OpenedImage):
            raise TypeError(f"expected an OpenedImage, got {type(image).__name__}")
        self._live()
        if image._proxy is not self:
            raise ClosedError(f"{image!r} belongs to another proxy")
        if image._closed:
            raise ClosedError(f"image {image.reference!r} was closed")
        return image._handle

    async def _open(self, method: str, reference: str) -> OpenedImage | None:
        if not isinstance(reference, str):
            raise TypeError(f"image reference must be a str, got {type(reference).__name__}")
        if not reference:
            raise InvalidReferenceError(method, "image reference is empty")
        channel = self._live()
        proto.require(method, self._version)
        optional = method == "OpenImageOptional"
        if not proto.enforces_policy(self._version):
            # Fail closed: this proxy would open the image whatever the policy says.
            if self._policy_guard is None:
                self._policy_guard = await Backend.run_blocking(PolicyGuard, self.config)
            await Backend.run_blocking(self._policy_guard.check, reference, str(self._version))
        child = self._child
        assert child is not None
        async with channel.lock:
            credentials = child.credentials
            host = proto.registry_host(reference)
            if credentials is not None and host is not None:
                child.set_registry_auth(proto.auth_file_contents(host, *credentials))
            await channel.send(method, [reference])
            try:
                reply = await channel.receive(method)
            except RequestError as exc:
                failure = proto.open_error(reference, exc, self._storage_conf)
                if optional and proto.is_storage_missing(reference, failure):
                    return None
                raise failure from None
        handle = proto.image_handle(method, reply.value, optional=optional)
        if handle == 0:
            return None
        image = OpenedImage(self, handle, reference)
        self._images.add(image)
        return image

    async def open_image(self, reference: str) -> OpenedImage:
        """Open an image, e.g. ``"docker://quay.io/fedora/fedora:latest"`` or ``"oci:DIR:TAG"``."""
        image = await self._open("OpenImage", reference)
        assert image is not None
        return image

    async def open_image_optional(self, reference: str) -> OpenedImage | None:
        """Open an image, or return None if it does not exist (protocol 0.2.4+)."""
        return await self._open("OpenImageOptional", reference)

    async def close_image(self, image: OpenedImage) -> None:
        """Close an image; closing it twice is harmless."""
        if isinstance(image, OpenedImage) and image._closed and image._proxy is self:
            return
        handle = self._handle(image)
        image._closed = True
        self._images.discard(image)
        await self._live().call("CloseImage", [handle])

    async def _fetch_piped(self, method: str, image: OpenedImage) -> tuple[Any, bytes]:
        handle = self._handle(image)
        proto.require(method, self._version)
        channel = self._live()
        async with channel.lock:
            await channel.send(method, [handle])
            reply = await channel.receive(method)
            return reply.value, await channel.read_piped(method, reply)

    async def fetch_manifest_raw_oci(self, image: OpenedImage) -> tuple[Digest, bytes]:
        """The manifest converted to OCI, and the digest of the original manifest."""
        value, data = await self._fetch_piped("GetManifest", image)
        return proto.manifest_digest(value), data

    async def fetch_manifest(self, image: OpenedImage) -> tuple[Digest, ImageManifest]:
        """The manifest, decoded, and the digest of the original manifest."""
        digest, data = await self.fetch_manifest_raw_oci(image)
        return digest, decode_manifest(data)

    async def fetch_config_raw(self, image: OpenedImage) -> bytes:
        """The full image configuration as OCI JSON bytes."""
        return (await self._fetch_piped("GetFullConfig", image))[1]

    async def fetch_config(self, image: OpenedImage) -> ImageConfiguration:
        """The full image configuration, decoded."""
        return decode_config(await self.fetch_config_raw(image))

    async def get_blob(self, image: OpenedImage, digest: Digest | str, size: int) -> AsyncBlob:
        """Stream a blob; the proxy checks that it has ``size`` bytes and ``digest``.

        A ``size`` that differs from the source's raises :class:`VerificationError`.
        """
        handle = self._handle(image)
        digest = parse_digest(digest)
        size = proto.check_size_argument(size)
        channel = self._live()
        reply = await channel.call("GetBlob", [handle, str(digest), size])
        (fd,) = reply.fds
        try:
            prepare_pipe(fd, large=True)
            actual = proto.blob_size("GetBlob", reply.value)
        except BaseException:
            os.close(fd)
            raise
        blob = AsyncBlob(
            channel,
            fd,
            reply.pipeid,
            proto.Transfer(digest, size, verify=False),
            known_size=actual != -1,
        )
        if actual not in (-1, size):
            await blob.aclose()
            raise VerificationError(
                f"blob {digest}: asked for {size} bytes, the source has {actual}"
            )
        return blob

    async def get_descriptor(self, image: OpenedImage, descriptor: Descriptor) -> AsyncBlob:
        """Stream the blob a descriptor names; see :meth:`get_blob`."""
        return await self.get_blob(image, descriptor.digest, descriptor.size)

    async def get_raw_blob(
        self,
        image: OpenedImage,
        digest: Digest | str,
        *,
        size: int | None = None,
        verify: bool = True,
    ) -> AsyncRawBlob:
        """Stream a blob without the proxy's checks (protocol 0.2.8+).

        Digest and size are verified here while the data streams, unless ``verify``
        is false. ``size``, when given, must match what the source reports.
        """
        handle = self._handle(image)
        digest = parse_digest(digest)
        if size is not None:
            size = proto.check_size_argument(size)
        proto.require("GetRawBlob", self._version)
        reply = await self._live().call("GetRawBlob", [handle, str(digest)])
        data_fd, error_fd = reply.fds
        try:
            prepare_pipe(data_fd, large=True)
            prepare_pipe(error_fd)
            actual = proto.blob_size("GetRawBlob", reply.value)
            if size is not None and actual not in (-1, size):
                raise VerificationError(
                    f"blob {digest}: asked for {size} bytes, the source has {actual}"
                )
        except BaseException:
            proto.close_fds(reply.fds)
            raise
        expected = actual if actual != -1 else size
        transfer = proto.Transfer(digest, expected if verify else None, verify=verify)
        return AsyncRawBlob((data_fd, error_fd), transfer, self.config.stall_timeout)

    async def get_layer_info(self, image: OpenedImage) -> list[ConvertedLayerInfo] | None:
        """Layer digests, sizes and media types as the proxy would deliver them.

        Piped on protocol 0.2.7+, inline on 0.2.5 and 0.2.6; None on older proxies.
        """
        if proto.supports("GetLayerInfoPiped", self._version):
            return decode_layer_info((await self._fetch_piped("GetLayerInfoPiped", image))[1])
        if not proto.supports("GetLayerInfo", self._version):
            self._handle(image)
            return None
        reply = await self._live().call("GetLayerInfo", [self._handle(image)])
        return convert_layer_info(reply.value)

    async def finalize(self) -> None:
        """Shut the proxy down and wait for skopeo to exit; raise if it failed.

        Calling it again, or on a proxy that never opened, does nothing.
        """
        channel, self._channel = self._channel, None
        self._closed = True
        for image in list(self._images):
            image._closed = True
        if channel is None:
            return
        channel.break_with(ClosedError("the proxy is closed"))
        child = channel.child
        try:
            try:
                await Backend.send(channel.sock, proto.encode_request("Shutdown"))
            except OSError:
                pass
            returncode = await Backend.run_blocking(child.wait, _SHUTDOWN_WAIT)
            if returncode is None:
                # Busy with a request that does not end (a stalled registry): the
                # proxy cannot read Shutdown, so it is stopped; that is not its failure.
                _log.warning("skopeo pid=%d did not shut down; terminating it", child.pid)
                await Backend.run_blocking(child.stop, 1.0)
                return
        finally:
            channel.sock.close()
            child.close_private_files()
        if returncode != 0:
            raise ProxyFailedError(returncode, await Backend.run_blocking(child.stderr_tail, 1.0))
        _log.debug("skopeo pid=%d exited", child.pid)

    async def aclose(self) -> None:
        """Same as :meth:`finalize`."""
        await self.finalize()

    def __del__(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            # Without its socket the proxy exits on its own; the reaper thread waits for it.
            channel.sock.close()

    def __repr__(self) -> str:
        if self._channel is None:
            return f"<{type(self).__name__} {'closed' if self._closed else 'not open'}>"
        return f"<{type(self).__name__} pid={self.pid} protocol={self._version}>"
