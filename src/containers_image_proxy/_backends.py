"""The few primitives in which the blocking and asyncio shells differ: the blocking side.

``_async/`` is written against :class:`~._async_backend.AsyncBackend` (in
``_async_backend.py``, which alone imports asyncio); its blocking twin in ``_sync/``
is generated from it and uses :class:`SyncBackend`, whose methods have the same
names and meaning but block the calling thread. The functions outside the class
serve both (:func:`poll_readable` also serves the asyncio code's worker threads).
So a program that uses only the blocking API never imports asyncio.
"""

from __future__ import annotations

import array
import concurrent.futures
import io
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, Union

from ._fd import OwnedFd
from ._protocol import MAX_FDS, MAX_MSG_SIZE

_T = TypeVar("_T")

#: What a callable of the asyncio code returns: something to await.
AsyncResult = Awaitable[_T]
#: What the same callable returns in the blocking code: the value itself.
SyncResult = Union[_T]  # noqa: UP007 (a generic alias of the bare type)

# Plain ints: flag enums cost microseconds per operation on the hot path.
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
_TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_FDS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
_POLLIN = select.POLLIN

#: What :meth:`SyncBackend.wait_readable` (or its asyncio twin) returns when the
#: descriptor is readable, ...
READY = 1
#: ... when the other descriptor (``also``) is; 0 means that the timeout passed.
ALSO_READY = 2


#: One packet from the proxy: its bytes, the descriptors it carried, whether it was cut.
Packet = tuple[bytes, list[OwnedFd], bool]


def receive_packet(sock: socket.socket) -> Packet:
    data, ancillary, flags, _ = sock.recvmsg(MAX_MSG_SIZE + 1, _ANCILLARY, _RECV_FLAGS)
    numbers = array.array("i")
    for level, kind, payload in ancillary:
        if (level, kind) == _FDS:
            numbers.frombytes(payload[: len(payload) - len(payload) % numbers.itemsize])
    return data, [OwnedFd(fd) for fd in numbers], bool(flags & _TRUNCATED)


def which_ready(events: list[tuple[int, int]], fd: int, also: int | None) -> int:
    """Turn poll(2)'s events into :data:`READY` and :data:`ALSO_READY` bits."""
    ready = 0
    for number, _ in events:
        if number == fd:
            ready |= READY
        elif number == also:
            ready |= ALSO_READY
    return ready


def make_poller(fd: int, also: int | None) -> select.poll:
    poller = select.poll()
    poller.register(fd, _POLLIN)
    if also is not None:
        poller.register(also, _POLLIN)
    return poller


def poll_readable(fd: int, timeout: float | None, also: int | None = None) -> int:
    """Block until ``fd`` (or ``also``) is readable or ``timeout`` passes.

    Returns :data:`READY` and/or :data:`ALSO_READY` for the descriptors that are
    readable (or at their end), 0 when the timeout passed.
    """
    events = make_poller(fd, also).poll(None if timeout is None else timeout * 1000)
    return which_ready(events, fd, also)


class SyncBackend:
    """Blocking primitives: threads, locks and poll(2)."""

    Lock = threading.Lock

    @staticmethod
    def wait_readable(fd: int, timeout: float | None, also: int | None = None) -> int:
        """Block until ``fd`` (or ``also``) is readable or ``timeout`` passes.

        Returns :data:`READY` and/or :data:`ALSO_READY`, or 0 when the timeout passed.
        """
        return poll_readable(fd, timeout, also)

    @staticmethod
    def send(sock: socket.socket, data: bytes) -> None:
        """Send one packet."""
        sock.send(data)

    @staticmethod
    def recv(sock: socket.socket, timeout: float | None) -> Packet | None:
        """Receive one packet with its fds; None when ``timeout`` passes first."""
        # The socket stays in blocking mode: no mode switch on the hot path.
        if timeout is not None and not poll_readable(sock.fileno(), timeout):
            return None
        return receive_packet(sock)

    @staticmethod
    def recv_now(sock: socket.socket) -> Packet | None:
        """Receive one packet from a socket that a wait found readable."""
        return receive_packet(sock)

    @staticmethod
    def run_blocking(function: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking call."""
        return function(*args)

    @staticmethod
    def prepare_socket(sock: socket.socket) -> None:
        """Put our end of the socket in the mode this shell expects."""
        sock.setblocking(True)

    @staticmethod
    def run_interruptible(function: Callable[..., _T], *args: Any) -> _T:
        """Call ``function(*args, stop)``; ``stop`` is a threading.Event never set here."""
        return function(*args, threading.Event())

    @staticmethod
    def current_owner() -> object:
        """Return who is running: the current thread."""
        return threading.get_ident()

    @staticmethod
    def try_acquire(lock: threading.Lock) -> bool:
        """Take ``lock`` if it is free, without waiting; whether it was taken."""
        return lock.acquire(blocking=False)

    @staticmethod
    def sleep(seconds: float) -> None:
        """Wait ``seconds``."""
        time.sleep(seconds)

    @staticmethod
    def run_all(
        tasks: list[Callable[[], object]],
        limit: int,
        abort: Callable[[], object] | None = None,
    ) -> None:
        """Run ``tasks``, ``limit`` at a time in threads; raise the first failure.

        At the first failure (or an interrupt of the waiting thread) the tasks not
        started are dropped and ``abort`` is called, which must make the running ones
        end soon (threads cannot be cancelled); they are waited for before raising.
        """
        if limit <= 1 or len(tasks) <= 1:
            for task in tasks:
                task()
            return
        with concurrent.futures.ThreadPoolExecutor(min(limit, len(tasks))) as pool:
            futures = [pool.submit(task) for task in tasks]
            try:
                done, _ = concurrent.futures.wait(
                    futures, return_when=concurrent.futures.FIRST_EXCEPTION
                )
                for future in futures:
                    if future in done:
                        future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                if abort is not None:
                    abort()
                raise


class SyncStreamBase(io.RawIOBase):
    """Base of blocking blob streams: a readable ``io.RawIOBase``."""

    def readable(self) -> bool:
        """Return True: blob streams are readable."""
        return True
