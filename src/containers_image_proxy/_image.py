"""The handle of an image opened through a proxy."""

from __future__ import annotations

import inspect
from typing import Any


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

    def __exit__(self, *exc_info: object) -> None:
        result = self._proxy.close_image(self)
        if inspect.isawaitable(result):
            result.close()  # type: ignore[attr-defined]
            raise TypeError("an image of an AsyncImageProxy is closed with 'async with'")

    async def __aenter__(self) -> OpenedImage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        result = self._proxy.close_image(self)
        if not inspect.isawaitable(result):
            raise TypeError("an image of an ImageProxy is closed with 'with'")
        await result
