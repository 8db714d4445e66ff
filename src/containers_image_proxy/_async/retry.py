"""Trying a blob transfer again after a failure that may pass.

Written once for asyncio in ``_async/`` (``_sync/`` holds the generated blocking
twin). The decisions (which failures, how many times, how long to wait)
are :class:`~containers_image_proxy._retry.RetryPolicy`'s; this module runs them:

- :class:`AsyncImageSource` is a proxy with an image opened on it. When the proxy
  can serve no more requests (it gave up on a stalled source whose FinishPipe
  never came back) and the source started it, a retry gets a fresh one.
- :func:`retry_transfer` runs one attempt after another, reporting each retry.
- :class:`AsyncResumingBlob` is a layer stream that picks up where it stopped:
  after a failure it asks for the blob again, reads again the bytes it has
  already handed out, checks that they are the same, and goes on.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from .. import _protocol as proto
from .._async_backend import AsyncBackend as Backend
from .._backends import AsyncResult
from .._fd import CHUNK_SIZE
from .._image import OpenedImage
from .._retry import RetryPolicy
from ..config import ImageProxyConfig
from ..errors import ClosedError, ImageProxyError, VerificationError
from ..events import BlobRetrying
from ..oci import Descriptor
from .blob import AsyncBlob
from .proxy import AsyncImageProxy, stop_now, usable
from .stream import AsyncBlobStream

__all__ = [
    "AsyncImageSource",
    "AsyncResumingBlob",
    "RetryCallback",
    "retry_policy",
    "retry_transfer",
]

_log = logging.getLogger("containers_image_proxy")

_T = TypeVar("_T")

#: Called with each :class:`BlobRetrying` before the wait that precedes the retry.
RetryCallback = Callable[[BlobRetrying], object]


def retry_policy(config: ImageProxyConfig) -> RetryPolicy:
    """Return the retry policy ``config`` asks for."""
    return RetryPolicy(config.retry_times, config.retry_delay)


class AsyncImageSource:
    """An image opened on a proxy, for transfers that may be tried again.

    Without ``proxy`` the source starts its own from ``config``, closes it at the
    end, and replaces it when it can no longer serve requests; a given ``proxy``
    is only used (a retry on it fails as the proxy does).
    """

    def __init__(
        self,
        reference: str,
        config: ImageProxyConfig | None = None,
        proxy: AsyncImageProxy | None = None,
    ) -> None:
        self.reference = reference
        self.owned = proxy is None
        self._config = config
        self._proxy = proxy
        self._image: OpenedImage | None = None
        self._stopped = False

    @property
    def proxy(self) -> AsyncImageProxy:
        """The proxy in use now."""
        if self._proxy is None:
            raise ClosedError("the image source is not open")
        return self._proxy

    @property
    def image(self) -> OpenedImage:
        """The image, opened on :attr:`proxy`."""
        if self._image is None:
            raise ClosedError("the image source is not open")
        return self._image

    @property
    def config(self) -> ImageProxyConfig:
        """The configuration of the proxy (the retry settings among it)."""
        return self.proxy.config

    async def open(self) -> Self:
        """Start the proxy (unless one was given) and open the image.

        Raises:
            ImageProxyError: as :meth:`AsyncImageProxy.open` and
                :meth:`AsyncImageProxy.open_image`.
        """
        if self._proxy is None:
            self._proxy = await AsyncImageProxy(self._config).open()
        try:
            self._image = await self._proxy.open_image(self.reference)
        except BaseException:
            if self.owned:
                proxy, self._proxy = self._proxy, None
                await proxy.__aexit__(*sys.exc_info())
            raise
        return self

    async def renew(self) -> None:
        """Replace a proxy of ours that can no longer serve requests; reopen the image.

        Raises:
            ClosedError: the source was stopped.
            ImageProxyError: the new proxy could not start or open the image.
        """
        old = self.proxy
        if usable(old) or not self.owned:
            return
        if self._stopped:
            raise ClosedError("the transfer was stopped")
        _log.info("replacing skopeo pid=%d, which can no longer serve requests", old.pid)
        self._image = None
        try:
            await old.finalize()
        except ImageProxyError as exc:
            _log.debug("closing the replaced proxy: %s", exc)
        self._proxy = await AsyncImageProxy(self._config).open()
        self._image = await self._proxy.open_image(self.reference)

    def stop(self) -> None:
        """Stop a proxy of ours now (an interrupt); later renewals are refused."""
        self._stopped = True
        if self.owned and self._proxy is not None:
            stop_now(self._proxy)

    async def aclose(self) -> None:
        """Close the image and, when it is ours, the proxy."""
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proxy, image = self._proxy, self._image
        self._image = None
        try:
            if image is not None and proxy is not None and usable(proxy):
                try:
                    await proxy.close_image(image)
                except ImageProxyError:
                    if exc_type is None:
                        raise
        finally:
            if self.owned and proxy is not None:
                self._proxy = None
                await proxy.__aexit__(exc_type, exc, tb)


async def retry_transfer(
    attempt: Callable[[], AsyncResult[_T]],
    descriptor: Descriptor,
    source: AsyncImageSource,
    policy: RetryPolicy,
    on_retry: RetryCallback | None = None,
    retries: list[BlobRetrying] | None = None,
) -> _T:
    """Run ``attempt`` until it succeeds, or fails for good (the policy says when).

    Before each retry, :class:`BlobRetrying` goes to ``on_retry`` and ``retries``,
    the policy's delay passes, and ``source`` renews a proxy that broke.

    Raises:
        ImageProxyError: the last attempt's error, once the policy gives up.
    """
    done = 0
    while True:
        try:
            if done:
                await source.renew()
            return await attempt()
        except ImageProxyError as exc:
            if not policy.should_retry(exc, done):
                raise
            done += 1
            event = BlobRetrying(descriptor, done, policy.times, policy.delay_before(done), exc)
        _report(event, on_retry, retries)
        await Backend.sleep(event.delay)


def _report(
    event: BlobRetrying, on_retry: RetryCallback | None, retries: list[BlobRetrying] | None
) -> None:
    # The error is kept, not raised again: its traceback would keep alive the frames
    # of the failed attempt, and with them views of the reader's buffer.
    event.error.__traceback__ = None
    _log.info(
        "blob %s: %s; retry %d of %d in %.1f s",
        event.descriptor.digest,
        event.error,
        event.attempt,
        event.limit,
        event.delay,
    )
    if retries is not None:
        retries.append(event)
    if on_retry is not None:
        on_retry(event)


class AsyncResumingBlob(AsyncBlob):
    """A layer's blob that, after a failure that may pass, goes on where it stopped.

    It reads like any :class:`AsyncBlob`. When the transfer fails and the policy
    allows a retry, the blob is asked for again (from a fresh proxy if the old one
    broke), the bytes already handed out are read again and, with
    ``check_prefix``, compared with them through their sha256, and reading goes
    on; the proxy verifies the new transfer whole, so what was handed out is
    verified with it. Without ``check_prefix`` the caller must verify the data
    itself (an unpack checks the layer's diff_id). Open it with :meth:`open`.
    """

    def __init__(
        self,
        source: AsyncImageSource,
        descriptor: Descriptor,
        policy: RetryPolicy,
        on_retry: RetryCallback | None = None,
        *,
        check_prefix: bool = True,
    ) -> None:
        # The state of a transfer lives in the AsyncBlob of the current attempt.
        self._source = source
        self._descriptor = descriptor
        self._policy = policy
        self._on_retry = on_retry
        self._transfer = proto.Transfer(descriptor.digest, descriptor.size, verify=False)
        self._prefix: Any = hashlib.sha256() if check_prefix else None
        self._inner: AsyncBlob | None = None
        self._done = 0
        #: The retries made so far, in order.
        self.retries: list[BlobRetrying] = []

    async def open(self) -> Self:
        """Ask for the blob (trying again as the policy allows); return the blob itself.

        Raises:
            ImageProxyError: the last attempt's error, once the policy gives up.
        """
        await self._attempt(self._ensure_inner)
        return self

    async def _attempt(self, action: Callable[[], AsyncResult[_T]]) -> _T:
        while True:
            try:
                return await action()
            except ImageProxyError as exc:
                if self._closed or not self._policy.should_retry(exc, self._done):
                    raise
                self._done += 1
                delay = self._policy.delay_before(self._done)
                event = BlobRetrying(self._descriptor, self._done, self._policy.times, delay, exc)
            _report(event, self._on_retry, self.retries)
            await self._drop_inner()
            await Backend.sleep(event.delay)

    async def _ensure_inner(self) -> AsyncBlob:
        """Return the transfer of the current attempt, started (and resumed) when there is none."""
        if self._inner is not None:
            return self._inner
        source = self._source
        await source.renew()
        inner = await source.proxy.get_descriptor(source.image, self._descriptor)
        self._inner = inner
        try:
            await self._skip(inner, self._transfer.received)
        except BaseException:
            await self._drop_inner()
            raise
        return inner

    async def _skip(self, inner: AsyncBlob, count: int) -> None:
        """Read again the ``count`` bytes already handed out; check them if asked."""
        if count == 0:
            return
        hasher = hashlib.sha256() if self._prefix is not None else None
        buffer = bytearray(min(count, CHUNK_SIZE))
        left = count
        with memoryview(buffer) as view:
            while left:
                got = await inner.readinto(view[: min(left, len(view))])
                if got == 0:
                    raise VerificationError(
                        f"blob {self.digest}: the new transfer ended after"
                        f" {count - left} bytes, before the {count} already read"
                    )
                if hasher is not None:
                    hasher.update(view[:got])
                left -= got
        if hasher is not None and hasher.digest() != self._prefix.digest():
            raise VerificationError(
                f"blob {self.digest}: the bytes sent again after a retry differ from"
                f" the {count} bytes read before it"
            )
        _log.debug("blob %s: resumed after %d bytes", self.digest, count)

    async def _drop_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()

    async def _readinto(self, view: memoryview) -> int:
        return len(await self._attempt(lambda: self._read_more(len(view), view)))

    async def _read_bytes(self, size: int) -> bytes:
        return bytes(await self._attempt(lambda: self._read_more(size, None)))

    async def _read_more(self, limit: int, into: memoryview | None) -> bytes | memoryview:
        """Read on from the current attempt: into ``into``, or as new bytes when it is None."""
        inner = await self._ensure_inner()
        if into is None:
            piece: bytes | memoryview = await inner.read(limit)
        else:
            piece = into[: await inner.readinto(into[:limit])]
        if piece:
            self._transfer.update(piece)
            if self._prefix is not None:
                self._prefix.update(piece)
        return piece

    async def _copy(self, fd: int, progress: Callable[[int], object] | None) -> int:
        # The plain read loop: every byte handed out is seen (and hashed).
        return await AsyncBlobStream._copy(self, fd, progress)

    async def aclose(self) -> None:
        """Close the stream, before or after its end; raises nothing for an early close."""
        self._closed = True
        await self._drop_inner()
