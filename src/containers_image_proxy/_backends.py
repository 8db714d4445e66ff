"""The few primitives in which the blocking and asyncio shells differ.

``_async/`` is written against :class:`AsyncBackend`; its blocking twin in
``_sync/`` is generated from it and uses :class:`SyncBackend`, whose methods have
the same names and meaning but block the calling thread. The functions outside
the two classes serve both (:func:`poll_readable` also serves the asyncio code's
worker threads).
"""

from __future__ import annotations

import asyncio
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

_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC
_TRUNCATED = socket.MSG_TRUNC | socket.MSG_CTRUNC


#: One packet from the proxy: its bytes, the descriptors it carried, whether it was cut.
Packet = tuple[bytes, list[OwnedFd], bool]


def _recv_now(sock: socket.socket) -> Packet:
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MSG_SIZE + 1, MAX_FDS, _RECV_FLAGS)
    return data, [OwnedFd(fd) for fd in fds], bool(flags & _TRUNCATED)


def poll_readable(fd: int, timeout: float | None, also: int | None = None) -> bool:
    """Block until ``fd`` (or ``also``) is readable or ``timeout`` passes; False on timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if also is not None:
        poller.register(also, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


class SyncBackend:
    """Blocking primitives: threads, locks and poll(2)."""

    Lock = threading.Lock

    @staticmethod
    def wait_readable(fd: int, timeout: float | None, also: int | None = None) -> bool:
        """Block until ``fd`` (or ``also``) is readable or ``timeout`` passes; False on timeout."""
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
        return _recv_now(sock)

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


class AsyncBackend:
    """asyncio primitives: the running loop's readiness callbacks and its executor."""

    Lock = asyncio.Lock

    @staticmethod
    async def wait_readable(fd: int, timeout: float | None, also: int | None = None) -> bool:
        """Wait until ``fd`` (or ``also``) is readable or ``timeout`` passes; False on timeout."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        if also is not None:
            loop.add_reader(also, wake)
        try:
            if timeout is None:
                await ready
            else:
                await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
            if also is not None:
                loop.remove_reader(also)
        return True

    @staticmethod
    async def send(sock: socket.socket, data: bytes) -> None:
        """Send one packet."""
        await asyncio.get_running_loop().sock_sendall(sock, data)

    @staticmethod
    async def recv(sock: socket.socket, timeout: float | None) -> Packet | None:
        """Receive one packet with its fds; None when ``timeout`` passes first."""
        while True:
            try:
                return _recv_now(sock)
            except BlockingIOError:
                pass
            if not await AsyncBackend.wait_readable(sock.fileno(), timeout):
                return None

    @staticmethod
    async def run_blocking(function: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking call in a worker thread."""
        return await asyncio.to_thread(function, *args)

    @staticmethod
    def prepare_socket(sock: socket.socket) -> None:
        """Put our end of the socket in the mode this shell expects."""
        sock.setblocking(False)

    @staticmethod
    async def run_interruptible(function: Callable[..., _T], *args: Any) -> _T:
        """Run ``function(*args, stop)`` in a worker thread.

        If the caller is cancelled, ``stop`` (a threading.Event) is set and the
        thread is waited for before the cancellation goes on, so nothing the thread
        uses (a descriptor) is released under it.
        """
        stop = threading.Event()
        return await run_in_thread_until_done(lambda: function(*args, stop), stop)

    @staticmethod
    def current_owner() -> object:
        """Return who is running: the current task (None outside of one)."""
        return asyncio.current_task()

    @staticmethod
    async def try_acquire(lock: asyncio.Lock) -> bool:
        """Take ``lock`` if it is free, without waiting; whether it was taken."""
        if lock.locked():
            return False
        await lock.acquire()  # free and (but for a racing waiter) taken at once
        return True

    @staticmethod
    async def sleep(seconds: float) -> None:
        """Wait ``seconds``."""
        await asyncio.sleep(seconds)

    @staticmethod
    async def run_all(
        tasks: list[Callable[[], Awaitable[object]]],
        limit: int,
        abort: Callable[[], object] | None = None,
    ) -> None:
        """Run ``tasks``, ``limit`` at a time; on the first failure cancel the rest.

        ``abort`` is for the blocking twin, whose threads cannot be cancelled: here
        cancelling the tasks is enough and it is not called.
        """
        semaphore = asyncio.Semaphore(limit)

        async def run(task: Callable[[], Awaitable[object]]) -> None:
            async with semaphore:
                await task()

        futures = [asyncio.ensure_future(run(task)) for task in tasks]
        try:
            await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()
            await asyncio.gather(*futures, return_exceptions=True)
            raise


class SyncStreamBase(io.RawIOBase):
    """Base of blocking blob streams: a readable ``io.RawIOBase``."""

    def readable(self) -> bool:
        """Return True: blob streams are readable."""
        return True


class AsyncStreamBase:
    """Base of asyncio blob streams."""


async def run_in_thread_until_done(function: Callable[[], _T], stop: threading.Event) -> _T:
    """Run ``function`` in a worker thread; if cancelled, set ``stop`` and wait for it.

    The thread is always finished before the cancellation goes on, so nothing it
    uses (a descriptor, a directory being written) is released under it.
    """
    future = asyncio.ensure_future(asyncio.to_thread(function))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        try:
            await future
        except BaseException:
            pass
        raise
