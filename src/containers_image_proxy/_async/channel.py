"""The connection to the proxy: its socket, the lock that orders requests, pipe reads.

One request and its reply travel at a time, in order (docs/protocol.md). A
:class:`AsyncChannel` sends requests, receives replies with the descriptors they
carry, reads a piped reply to its end, and remembers the failure that broke it so
that every later use raises that failure at once. Protocol decisions are
``_protocol``'s; this module only sends, receives, reads pipes and waits.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from .. import _protocol as proto
from .._async_backend import AsyncBackend as Backend
from .._backends import ALSO_READY
from .._fd import CHUNK_SIZE, close_all, prepare_pipe
from .._process import ChildProcess
from ..errors import (
    BusyError,
    ImageProxyError,
    ProtocolError,
    ProxyExitedError,
    RequestError,
    StallTimeoutError,
)

__all__ = ["AsyncChannel", "AsyncChannelLock", "drain", "read_to_end"]

#: Seconds to wait for a proxy that broke the connection to exit (for its status).
_EXIT_WAIT = 5.0
#: Bytes read from a piped reply at a time: a pipe's default capacity, so that a
#: read never asks for (and allocates) far more than the pipe can hold.
_PIPED_READ = 64 * 1024


async def _read_chunk(fd: int, timeout: float | None, what: str) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK_SIZE)
        except BlockingIOError:
            pass
        if not await Backend.wait_readable(fd, timeout):
            raise StallTimeoutError(f"{what}: no data arrived for {timeout} seconds")


async def read_to_end(fd: int, timeout: float | None, what: str) -> bytes:
    """Read the pipe ``fd`` to its end; ``what`` names it in a stall's error."""
    chunks: list[bytes] = []
    while chunk := await _read_chunk(fd, timeout, what):
        chunks.append(chunk)
    return b"".join(chunks)


async def drain(fd: int, timeout: float | None, what: str) -> int:
    """Read ``fd`` to its end, discarding the data; how many bytes there were."""
    extra = 0
    while chunk := await _read_chunk(fd, timeout, what):
        extra += len(chunk)
    return extra


class AsyncChannelLock:
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
        """Return whether someone holds the lock."""
        return self._lock.locked()

    def _check(self, owner: object) -> None:
        if owner is not None and owner == self._owner and self._holder:
            raise BusyError(
                f"the proxy waits for the rest of {self._holder} (its FinishPipe is out):"
                " read that blob to its end or close it before anything else in this"
                " thread or task"
            )

    async def acquire(self, holder: str = "") -> None:
        """Take the lock for ``holder`` (a blob, named in :class:`BusyError`), waiting."""
        # Who holds the lock matters only while a blob does: only then is it asked.
        if self._holder:
            self._check(Backend.current_owner())
        await self._lock.acquire()
        self._owner = Backend.current_owner() if holder else None
        self._holder = holder

    async def try_acquire(self, holder: str = "") -> bool:
        """Take the lock if it is free, without waiting; whether it was taken."""
        owner = Backend.current_owner()
        if not await Backend.try_acquire(self._lock):
            return False
        self._owner, self._holder = owner, holder
        return True

    def release(self) -> None:
        """Give the lock up."""
        self._owner, self._holder = None, ""
        self._lock.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class AsyncChannel:
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
        self.lock = AsyncChannelLock()
        self.failure: ImageProxyError | None = None
        #: Requests sent whose replies have not been received yet. Above zero when
        #: a caller gave up waiting (a cancelled task, an interrupt): the replies
        #: still come, in order, and are discarded before the next request.
        self.unanswered = 0

    def check(self) -> None:
        """Raise the failure that broke the channel, if one did."""
        if self.failure is not None:
            raise self.failure

    def break_with(self, failure: ImageProxyError) -> ImageProxyError:
        """Mark the channel broken by ``failure`` (the first one stays); return it."""
        if self.failure is None:
            self.failure = failure
        return failure

    async def died(self, method: str) -> ImageProxyError:
        """Return the proxy's exit, as an error: the channel broke during ``method``."""
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
        close_all(reply.fds)

    async def receive(
        self, method: str, timeout: float | None = None, label: str = "", *, arrived: bool = False
    ) -> proto.Reply:
        """Receive the reply to ``method``; ``label`` names the operation in errors.

        ``arrived``: a wait found the socket readable, so the reply is taken at once.
        """
        self.check()
        try:
            packet = Backend.recv_now(self.sock) if arrived else None
            if packet is None:
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
        """Send a request and receive its reply, holding the lock."""
        async with self.lock:
            await self.send(method, args)
            return await self.receive(method)

    async def finish_reply(self, method: str, *, arrived: bool = False) -> RequestError | None:
        """Receive FinishPipe's reply; the transfer's error (named after ``method``) or None.

        ``arrived``: a wait found the socket readable, so the reply is taken at once.
        """
        try:
            await self.receive("FinishPipe", self.stall, label=method, arrived=arrived)
        except RequestError as exc:
            return proto.request_error(method, exc.message, exc.code)
        return None

    async def read_piped(self, method: str, reply: proto.Reply) -> bytes:
        """Send FinishPipe, read the pipe to its end and take FinishPipe's reply.

        The caller holds the lock. The data may exceed the pipe's buffer, so the pipe
        is read while the reply is awaited (docs/protocol.md rules 2 and 3); both are
        awaited together: the proxy closes the pipe before it replies, so the reply
        usually comes with the data complete and one wake-up serves both.
        """
        (pipe,) = reply.fds
        with pipe:
            prepare_pipe(pipe)
            await self.send_finish(reply.pipeid, method)
            try:
                data, error = await self._read_with_reply(pipe.fileno(), method)
            except StallTimeoutError as exc:
                raise self.break_with(exc) from None
        if error is not None:
            raise error
        return data

    async def _read_with_reply(self, fd: int, method: str) -> tuple[bytes, RequestError | None]:
        """Read the pipe ``fd`` to its end and FinishPipe's reply, in whichever order they come."""
        chunks: list[bytes] = []
        answered = False
        error: RequestError | None = None
        while True:
            try:
                chunk = os.read(fd, _PIPED_READ)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break
            if chunk is not None:
                chunks.append(chunk)
                if len(chunk) == _PIPED_READ:
                    continue  # a full read: more may be there already
            # The pipe is empty for now (a short read empties a pipe).
            ready = await Backend.wait_readable(
                fd, self.stall, also=None if answered else self.sock.fileno()
            )
            if not ready:
                raise StallTimeoutError(f"{method}: no data arrived for {self.stall} seconds")
            if ready & ALSO_READY:
                answered = True
                error = await self.finish_reply(method, arrived=True)
        if not answered:
            error = await self.finish_reply(method)
        return b"".join(chunks), error
