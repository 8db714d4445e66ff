"""The handle of an image opened through a proxy."""

from __future__ import annotations

import inspect
import logging
from types import TracebackType
from typing import Any

_log = logging.getLogger("containers_image_proxy")


class OpenedImage:
    """An image opened with ``open_image``: an opaque handle bound to its proxy.

    Use it as a context manager (``with`` for :class:`ImageProxy`, ``async with`` for
    :class:`AsyncImageProxy`) to close it when the block ends. Once closed, or once
    its proxy is closed, any use raises :class:`ClosedError` before anything is sent.
    Images of archive transports hold a temporary directory in the proxy until closed.
    """

    __slots__ = ("__weakref__", "_closed", "_handle", "_proxy", "reference")

    def __init__(self, proxy: Any, handle: int, reference: str) -> None:
        self._proxy = proxy
        self._handle = handle
        self._closed = False
        #: The reference the image was opened with.
        self.reference = reference

    @property
    def closed(self) -> bool:
        """Whether the image was closed (directly or with its proxy)."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"handle={self._handle}"
        return f"<OpenedImage {self.reference!r} {state}>"

    def __enter__(self) -> OpenedImage:
        return self

    def _interrupted(self, exc_type: type[BaseException] | None) -> bool:
        # On an interrupt the proxy is about to be stopped: asking it to close the
        # image could wait on a request still in progress.
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._closed = True
            return True
        return False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._interrupted(exc_type):
            return
        try:
            result = self._proxy.close_image(self)
        except Exception as error:
            if exc_type is None:
                raise
            _log.debug("closing %r after an error: %s", self, error)
            return
        if inspect.isawaitable(result):
            result.close()  # type: ignore[attr-defined]
            raise TypeError("an image of an AsyncImageProxy is closed with 'async with'")

    async def __aenter__(self) -> OpenedImage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._interrupted(exc_type):
            return
        result = self._proxy.close_image(self)
        if not inspect.isawaitable(result):
            raise TypeError("an image of an ImageProxy is closed with 'with'")
        try:
            await result
        except Exception as error:
            if exc_type is None:
                raise
            _log.debug("closing %r after an error: %s", self, error)
