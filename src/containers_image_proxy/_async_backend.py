"""The asyncio primitives: :class:`AsyncBackend`, against which ``_async/`` is written.

Its blocking twin is :class:`~._backends.SyncBackend`; the generated ``_sync/``
modules import that one instead, so only the asyncio client imports asyncio.

Waiting is where the asyncio client loses to the blocking one: each trip through
the event loop (a future, a reader added and removed, the loop's own poll) costs
more than the request it waits for. So :meth:`AsyncBackend.wait_readable` first
asks whether the descriptor is ready already, and, when the loop has nothing else
to run, sleeps in ``poll(2)`` itself on the descriptor *and* the loop's selector:
anything the loop would have woken for (another descriptor, a thread's
``call_soon_threadsafe``, a signal) ends that sleep at once and the wait goes on
through the loop, and so does a timer coming due. A request then costs about what
it costs the blocking client.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._backends import ALSO_READY, READY, Packet, make_poller, receive_packet, which_ready

_T = TypeVar("_T")

#: Longest sleep of an asyncio wait inside ``poll(2)`` before it goes through the loop.
_SHARED_SLEEP = 0.05
_POLLIN = select.POLLIN


def _idle_loop(loop: asyncio.AbstractEventLoop) -> tuple[int, float]:
    """The loop's selector and how long the loop would sleep now, if it has nothing to do.

    ``(-1, 0.0)`` when it has callbacks to run or a timer due, is stopping, or is
    not a selector loop whose selector can be polled (then nobody sleeps for it).
    """
    if not isinstance(loop, BaseSelectorEventLoop):
        return -1, 0.0
    try:
        if loop._ready or loop._stopping:  # type: ignore[attr-defined]
            return -1, 0.0
        sleep = _SHARED_SLEEP
        timers = loop._scheduled  # type: ignore[attr-defined]
        if timers:
            sleep = min(sleep, timers[0].when() - loop.time())
            if sleep <= 0:
                return -1, 0.0
        return loop._selector.fileno(), sleep  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return -1, 0.0


def _resolve(waiter: asyncio.Future[int], value: int) -> None:
    if not waiter.done():
        waiter.set_result(value)


class AsyncBackend:
    """asyncio primitives: the running loop's readiness callbacks and its executor."""

    Lock = asyncio.Lock

    @staticmethod
    async def wait_readable(fd: int, timeout: float | None, also: int | None = None) -> int:
        """Wait until ``fd`` (or ``also``) is readable or ``timeout`` passes.

        Returns :data:`READY` and/or :data:`ALSO_READY`, or 0 when the timeout passed.
        Readiness already there is seen without a trip through the loop; while the
        loop has nothing else to do, the wait sleeps in poll(2) together with the
        loop's selector (see the module's docstring).
        """
        loop = asyncio.get_running_loop()
        poller = make_poller(fd, also)
        selector, sleep = _idle_loop(loop)
        if selector < 0:
            ready = which_ready(poller.poll(0), fd, also)
            if ready:
                return ready
        else:
            if timeout is not None and timeout < sleep:
                sleep = timeout
            poller.register(selector, _POLLIN)
            started = 0.0 if timeout is None else time.monotonic()
            ready = which_ready(poller.poll(sleep * 1000), fd, also)
            if ready:
                return ready
            if timeout is not None:
                timeout -= time.monotonic() - started
                if timeout <= 0:
                    return 0
        waiter: asyncio.Future[int] = loop.create_future()
        loop.add_reader(fd, _resolve, waiter, READY)
        if also is not None:
            loop.add_reader(also, _resolve, waiter, ALSO_READY)
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter, 0)
        try:
            return await waiter
        finally:
            loop.remove_reader(fd)
            if also is not None:
                loop.remove_reader(also)
            if timer is not None:
                timer.cancel()

    @staticmethod
    async def send(sock: socket.socket, data: bytes) -> None:
        """Send one packet."""
        try:
            sock.send(data)  # a packet goes whole or not at all
        except BlockingIOError:
            await asyncio.get_running_loop().sock_sendall(sock, data)

    @staticmethod
    async def recv(sock: socket.socket, timeout: float | None) -> Packet | None:
        """Receive one packet with its fds; None when ``timeout`` passes first."""
        while True:
            if not await AsyncBackend.wait_readable(sock.fileno(), timeout):
                return None
            try:
                return receive_packet(sock)
            except BlockingIOError:
                pass

    @staticmethod
    def recv_now(sock: socket.socket) -> Packet | None:
        """Receive one packet from a socket that a wait found readable; None if it was not."""
        try:
            return receive_packet(sock)
        except BlockingIOError:
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
