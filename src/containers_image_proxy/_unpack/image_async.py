"""``unpack_async``: the asyncio edges of the flow of :mod:`.image`.

The manifest, the configuration and the layer information are fetched on an
:class:`AsyncImageProxy` (:func:`_fetch_async`), and the reader thread opens each
layer's blob through the event loop (:func:`_bridged`); the layers are applied by
:func:`.image.apply_image` in a worker thread. Kept apart from :mod:`.image` so
that the blocking ``unpack`` never imports asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .._async.proxy import AsyncBlob, AsyncImageProxy
from .._async.pull import layer_info as layer_info_async
from .._async.retry import AsyncImageSource, AsyncResumingBlob
from .._async_backend import run_in_thread_until_done
from .._fd import CHUNK_SIZE
from .._retry import RetryPolicy
from .._sync.retry import RetryCallback, retry_policy
from ..config import ImageProxyConfig
from ..oci import Descriptor
from .image import (
    ImagePlan,
    LayerCallback,
    OpenedBlobs,
    Stopped,
    apply_image,
    check_empty,
    unpack_blocking,
)
from .limits import UnpackLimits
from .results import LayerResult, UnpackResult

__all__ = ["unpack_async"]


async def _fetch_async(source: AsyncImageSource) -> ImagePlan:
    proxy, image = source.proxy, source.image
    manifest = await proxy.fetch_manifest(image)
    config = await proxy.fetch_config(image)
    infos = await layer_info_async(proxy, image, manifest[1])
    return ImagePlan.of(source.reference, proxy.protocol_version, manifest, config, infos)


class _Bridge:
    """A blocking reader, for a worker thread, of an AsyncBlob read on the event loop."""

    def __init__(self, blob: AsyncBlob, loop: asyncio.AbstractEventLoop) -> None:
        self._blob = blob
        self._loop = loop
        self._buffer = b""
        self._at = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._at >= len(self._buffer):
            future = asyncio.run_coroutine_threadsafe(self._blob.read(CHUNK_SIZE), self._loop)
            self._buffer = future.result()
            self._at = 0
        at = self._at
        end = len(self._buffer) if size < 0 else min(len(self._buffer), at + size)
        self._at = end
        return self._buffer[at:end] if at or end < len(self._buffer) else self._buffer


async def _open_async(
    source: AsyncImageSource,
    policy: RetryPolicy,
    on_retry: RetryCallback | None,
    opened: OpenedBlobs,
    descriptor: Descriptor,
) -> AsyncResumingBlob:
    blob = AsyncResumingBlob(source, descriptor, policy, on_retry, check_prefix=False)
    with opened.opening(blob, descriptor):
        return await blob.open()


@contextlib.contextmanager
def _bridged(
    source: AsyncImageSource,
    policy: RetryPolicy,
    on_retry: RetryCallback | None,
    opened: OpenedBlobs,
    loop: asyncio.AbstractEventLoop,
    descriptor: Descriptor,
) -> Iterator[_Bridge]:
    """Open a layer's blob on the event loop, for the reader thread."""
    opening = _open_async(source, policy, on_retry, opened, descriptor)
    blob = asyncio.run_coroutine_threadsafe(opening, loop).result()
    try:
        yield _Bridge(blob, loop)
    finally:
        asyncio.run_coroutine_threadsafe(blob.aclose(), loop).result()


def _on_loop(
    callback: LayerCallback | None, loop: asyncio.AbstractEventLoop
) -> LayerCallback | None:
    """Return ``callback`` called on the event loop and waited for, from a worker thread
    (so that what it raises stops the unpack there)."""
    if callback is None:
        return None

    async def call(result: LayerResult) -> object:
        return callback(result)

    def on_loop(result: LayerResult) -> object:
        return asyncio.run_coroutine_threadsafe(call(result), loop).result()

    return on_loop


async def _unpack_with(
    reference: str,
    dest: Path,
    proxy: AsyncImageProxy,
    limits: UnpackLimits | None,
    rootless: bool | None,
    progress: LayerCallback | None,
    stop: threading.Event,
    on_retry: RetryCallback | None,
) -> UnpackResult:
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(check_empty, dest)
    async with AsyncImageSource(reference, proxy=proxy) as source:
        image = await _fetch_async(source)
        policy = retry_policy(proxy.config)
        opener = functools.partial(_bridged, source, policy, on_retry, image.opened, loop)
        work = functools.partial(
            apply_image, image, dest, opener, limits, rootless, _on_loop(progress, loop), stop
        )
        return await run_in_thread_until_done(work, stop)


async def unpack_async(
    reference: str,
    dest: str | os.PathLike[str],
    *,
    config: ImageProxyConfig | None = None,
    proxy: AsyncImageProxy | None = None,
    limits: UnpackLimits | None = None,
    rootless: bool | None = None,
    progress: LayerCallback | None = None,
    on_retry: RetryCallback | None = None,
) -> UnpackResult:
    """Unpack the image ``reference`` into ``dest``: the asyncio twin of :func:`unpack`,
    with the same arguments and rules.

    The extraction (decompression, hashing, file system calls) runs in worker
    threads, so the event loop stays free. Without ``proxy`` the whole unpack, with
    its own blocking proxy, runs in a thread of :func:`asyncio.to_thread`; with an
    open :class:`AsyncImageProxy` its requests are made on the loop, the reader
    thread reads each blob through it and the layers are applied in a thread of
    :func:`asyncio.to_thread`. Cancelling the task stops the worker at its next
    chunk of tar (1 MiB at most) and empties ``dest`` before the cancellation goes
    on. ``progress`` is called on the event loop with ``proxy``, from the worker
    thread without.

    Raises:
        asyncio.CancelledError: the task was cancelled (``dest`` is emptied first).
        Exception: as :func:`unpack` raises.
    """
    stop = threading.Event()
    path = Path(dest)
    try:
        if proxy is None:
            work = functools.partial(
                unpack_blocking,
                reference,
                path,
                config,
                None,
                limits,
                rootless,
                progress,
                stop,
                on_retry,
            )
            return await run_in_thread_until_done(work, stop)
        return await _unpack_with(
            reference, path, proxy, limits, rootless, progress, stop, on_retry
        )
    except Stopped:
        raise asyncio.CancelledError from None
