"""A TCP relay that injects network faults between a client and a server.

``Relay(target)`` listens on 127.0.0.1 (a free port) and forwards every accepted
connection to ``target``. It runs its own asyncio loop in a background thread, so
it works the same under blocking and asyncio tests. Faults can be given at
construction and changed at any time with :meth:`Relay.set_faults`; they apply to
new and existing connections:

``latency``
    seconds added to every forwarded chunk, in each direction; order is kept
    (each chunk leaves ``latency`` seconds after it arrived).
``bandwidth``
    bytes per second, per connection and per direction.
``cut_after``
    after that many bytes went downstream (server to client) on a connection,
    both sides are closed abruptly (RST, via ``SO_LINGER`` 0). Exactly that many
    bytes reach the client first.
``stall_after``
    after that many downstream bytes, the connection forwards nothing more in
    either direction, ever, while both sockets stay open (a black hole).
``pause_after``
    after that many downstream bytes, the connection forwards nothing downstream
    while the fault is set; clearing it (``set_faults()``) lets the data flow on
    (a source that is slow, not dead).
``max_cuts``
    ``cut_after`` applies until the relay has cut that many connections; later
    connections are clean (a network that fails a few times, then recovers).

Byte thresholds count from when the connection opened or, for a connection that
already existed, from the last :meth:`~Relay.set_faults` call: ``set_faults(
stall_after=1000)`` stalls every connection 1000 bytes later. A stalled or cut
connection stays so when the fault is removed; new connections are clean.
``cut_times`` holds the ``time.monotonic()`` of every cut.

:meth:`Relay.close` (or leaving the ``with`` block) closes every socket and joins
the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import socket
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from tests.support.registry import RegistryImage

__all__ = ["Faults", "Relay"]

_CHUNK = 64 * 1024
#: Bytes a direction may hold in flight (read but not yet written), per connection.
_BUFFER = 4 << 20
#: How long a cut waits for the bytes before it to leave the socket.
_DRAIN_WAIT = 2.0


@dataclasses.dataclass(frozen=True)
class Faults:
    """The faults a relay applies; the defaults are a clean network."""

    latency: float = 0.0
    bandwidth: float | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    pause_after: int | None = None
    max_cuts: int | None = None

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError(f"latency must be >= 0, got {self.latency}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")
        for name in ("cut_after", "stall_after", "pause_after", "max_cuts"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _unsent(sock: socket.socket) -> int:
    """Bytes still queued in the kernel for ``sock`` (not yet acknowledged)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    value: int = struct.unpack("i", buf)[0]
    return value


class _Pipe:
    """One direction of a connection: chunks read, waiting to be written."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.eof = False
        self.changed = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    def put(self, chunk: bytes) -> None:
        self.chunks.append((time.monotonic(), chunk))
        self.held += len(chunk)
        if self.held >= _BUFFER:
            self.room.clear()
        self.changed.set()

    def take(self) -> tuple[float, bytes]:
        arrived, chunk = self.chunks.popleft()
        self.held -= len(chunk)
        if self.held < _BUFFER:
            self.room.set()
        return arrived, chunk


class _Connection:
    def __init__(self, relay: Relay, client: socket.socket, upstream: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.upstream = upstream
        self.down = 0  # bytes written to the client
        self.up = 0  # bytes written to the server
        self.base = 0  # value of ``down`` from which cut_after/stall_after count
        self.stalled = False
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []
        self.done = 0

    def start(self) -> None:
        to_server, to_client = _Pipe(), _Pipe()
        loop = asyncio.get_running_loop()
        for coro in (
            self._read(self.client, to_server),
            self._write(to_server, self.upstream, downstream=False),
            self._read(self.upstream, to_client),
            self._write(to_client, self.client, downstream=True),
        ):
            task = loop.create_task(coro)
            task.add_done_callback(self.relay._check_task)
            self.tasks.append(task)

    async def _read(self, src: socket.socket, pipe: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await pipe.room.wait()
                chunk = await loop.sock_recv(src, _CHUNK)
                if not chunk:
                    break
                pipe.put(chunk)
        except OSError:
            # A reset (or other error) on one side: pass it on as a reset.
            await self.close(abort=True)
            return
        pipe.eof = True
        pipe.changed.set()

    async def _write(self, pipe: _Pipe, dst: socket.socket, downstream: bool) -> None:
        loop = asyncio.get_running_loop()
        relay = self.relay
        next_send = 0.0  # bandwidth pacing: when the next byte may leave
        try:
            while True:
                while not pipe.chunks:
                    if pipe.eof:
                        if self.stalled:  # a black hole forwards no FIN either
                            await asyncio.Event().wait()
                        await self._finish_direction(dst)
                        return
                    pipe.changed.clear()
                    await pipe.changed.wait()
                arrived, chunk = pipe.chunks[0]
                # Latency: each chunk leaves ``latency`` after it arrived (read live).
                while (delay := arrived + relay.faults.latency - time.monotonic()) > 0:
                    await asyncio.sleep(min(delay, 0.05))
                pipe.take()
                view = memoryview(chunk)
                while view:
                    faults = relay.faults
                    with relay.lock:
                        sent = self.down - self.base
                    if faults.stall_after is not None and sent >= faults.stall_after:
                        self.stalled = True
                    if self.stalled:
                        await asyncio.Event().wait()  # forever (until the relay closes)
                    size = len(view)
                    if downstream and faults.pause_after is not None:
                        if sent >= faults.pause_after:
                            await asyncio.sleep(0.01)  # until the fault is cleared
                            continue
                        size = min(size, faults.pause_after - sent)
                    if downstream:
                        if faults.stall_after is not None:
                            size = min(size, faults.stall_after - sent)
                        if faults.cut_after is not None and not relay._cuts_exhausted():
                            if sent >= faults.cut_after:
                                relay._claimed += 1  # no await since the check above
                                await self.cut()
                                return
                            size = min(size, faults.cut_after - sent)
                    if faults.bandwidth is not None:
                        size = min(size, max(1024, int(faults.bandwidth / 50)))
                        now = time.monotonic()
                        if next_send > now:
                            await asyncio.sleep(next_send - now)
                            continue  # faults may have changed while asleep
                        next_send = max(next_send, now) + size / faults.bandwidth
                    # Counted before sending: a byte the client may have seen is always
                    # in the count (set_faults takes its baselines from it).
                    with relay.lock:
                        if downstream:
                            self.down += size
                            relay.bytes_down += size
                        else:
                            self.up += size
                            relay.bytes_up += size
                    await loop.sock_sendall(dst, view[:size])
                    view = view[size:]
        except OSError:
            await self.close(abort=True)

    async def _finish_direction(self, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        self.done += 1
        if self.done == 2:
            await self.close(abort=False)

    async def cut(self) -> None:
        """Let the bytes already written reach the client, then reset both sides."""
        deadline = time.monotonic() + _DRAIN_WAIT
        while _unsent(self.client) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        with self.relay.lock:
            self.relay.cuts += 1
            self.relay.cut_times.append(time.monotonic())
        await self.close(abort=True)

    async def close(self, abort: bool) -> None:
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        others = [t for t in self.tasks if t is not current]
        for task in others:
            task.cancel()
        # Let the cancelled tasks unregister their sockets before the fds go away.
        await asyncio.gather(*others, return_exceptions=True)
        for sock in (self.client, self.upstream):
            if abort:
                _abort(sock)
            else:
                sock.close()
        self.relay._forget(self)


class Relay:
    """Forward connections from ``127.0.0.1:PORT`` to ``target``, injecting faults."""

    def __init__(
        self,
        target: tuple[str, int] | str,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        cut_after: int | None = None,
        stall_after: int | None = None,
        pause_after: int | None = None,
        max_cuts: int | None = None,
    ) -> None:
        if isinstance(target, str):
            host, _, port = target.rpartition(":")
            target = (host, int(port))
        family, _, _, _, sockaddr = socket.getaddrinfo(
            target[0], target[1], type=socket.SOCK_STREAM
        )[0]
        self.target: tuple[Any, ...] = sockaddr
        self._family = family
        self.faults = Faults(latency, bandwidth, cut_after, stall_after, pause_after, max_cuts)
        self.lock = threading.Lock()
        #: Bytes forwarded client -> server and server -> client, over all connections.
        self.bytes_up = 0
        self.bytes_down = 0
        #: Connections accepted so far, and how many were cut.
        self.connections = 0
        self.cuts = 0
        #: ``time.monotonic()`` of each cut, in order.
        self.cut_times: list[float] = []
        self._claimed = 0
        self._active: set[_Connection] = set()
        self._pending: set[asyncio.Task[None]] = set()
        #: Unexpected exceptions in the relay's own tasks; close() raises the first.
        self.errors: list[BaseException] = []
        self._closed = False

        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(64)
            self._listener.setblocking(False)
            self.port: int = self._listener.getsockname()[1]
            self._loop = asyncio.new_event_loop()
        except BaseException:
            self._listener.close()
            raise
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait()

    # ------------------------------------------------------------------ public API

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, where clients connect."""
        return f"127.0.0.1:{self.port}"

    def image_ref(self, image: RegistryImage) -> str:
        """The ``docker://`` reference of ``image`` (pushed to the target) through the relay."""
        return f"docker://{self.address}/{image.repo}:{image.tag}"

    @property
    def active_connections(self) -> int:
        """Connections currently open (stalled ones included)."""
        with self.lock:
            return len(self._active)

    def set_faults(
        self,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        cut_after: int | None = None,
        stall_after: int | None = None,
        pause_after: int | None = None,
        max_cuts: int | None = None,
    ) -> None:
        """Replace every fault (``set_faults()`` clears them all), live.

        ``cut_after``, ``stall_after`` and ``pause_after`` count, on existing
        connections, from now; ``max_cuts`` counts the cuts made so far too.
        """
        faults = Faults(latency, bandwidth, cut_after, stall_after, pause_after, max_cuts)
        with self.lock:
            for conn in self._active:
                conn.base = conn.down
            self.faults = faults

    def close(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            future.result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
        self._listener.close()
        if self.errors:
            raise RuntimeError(f"the relay failed: {self.errors[0]!r}") from self.errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Relay {self.address} -> {self.target[0]}:{self.target[1]} {self.faults}"
            f" connections={self.connections} up={self.bytes_up} down={self.bytes_down}>"
        )

    # ------------------------------------------------------------------ internals

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._accepting = self._loop.create_task(self._accept())
        self._accepting.add_done_callback(self._check_task)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(self._check_task)

    def _check_task(self, task: asyncio.Task[None]) -> None:
        # A bug in the relay must not pass silently: close() raises it.
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.errors.append(error)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self._listener)
            client.setblocking(False)
            with self.lock:
                self.connections += 1
            self._spawn(self._connect(client))

    async def _connect(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(self._family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        try:
            await loop.sock_connect(upstream, self.target)
        except OSError:
            # The target refuses: so does the relay, with a reset.
            upstream.close()
            _abort(client)
            return
        except BaseException:
            upstream.close()
            client.close()
            raise
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, client, upstream)
        with self.lock:
            self._active.add(conn)
        conn.start()

    def _cuts_exhausted(self) -> bool:
        # Only the relay's loop thread calls this and counts _claimed: a cut is
        # claimed before its connection drains, so two cuts never share one slot.
        limit = self.faults.max_cuts
        return limit is not None and self._claimed >= limit

    def _forget(self, conn: _Connection) -> None:
        with self.lock:
            self._active.discard(conn)

    async def _shutdown(self) -> None:
        self._accepting.cancel()
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(self._accepting, *pending, return_exceptions=True)
        with self.lock:
            connections = list(self._active)
        for conn in connections:
            await conn.close(abort=True)
        # A connection may have been closing itself already: wait for all its tasks.
        await asyncio.gather(*(t for c in connections for t in c.tasks), return_exceptions=True)
