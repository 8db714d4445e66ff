"""The handle of an image opened through a proxy, common to both flavours.

Each proxy class hands out its own flavour (``_async/image.py`` and its generated
twin), which closes the image with ``async with`` or ``with``; using the other
statement raises :class:`TypeError` at once. The functions here are the proxy's
side of the handle: which number to send, and marking it closed.
"""

from __future__ import annotations

from typing import Self

from .errors import ClosedError

__all__ = ["OpenedImage", "image_handle", "is_closed_on", "mark_closed"]


class OpenedImage:
    """An image opened with ``open_image``: an opaque handle bound to its proxy.

    Use it as a context manager (``with`` for :class:`ImageProxy`, ``async with`` for
    :class:`AsyncImageProxy`) to close it when the block ends. Once closed, or once
    its proxy is closed, any use raises :class:`ClosedError` before anything is sent.
    Images of archive transports hold a temporary directory in the proxy until closed.
    """

    __slots__ = ("__weakref__", "_closed", "_handle", "_proxy", "reference")

    def __init__(self, proxy: object, handle: int, reference: str) -> None:
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

    def _interrupted(self, exc_type: type[BaseException] | None) -> bool:
        """Return whether the block ended with an interrupt, in which case the image is dropped.

        The proxy is about to be stopped then: asking it to close the image could
        wait on a request still in progress.
        """
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._closed = True
            return True
        return False

    def _wrong_statement(self, statement: str) -> TypeError:
        return TypeError(f"an image of {type(self._proxy).__name__} is closed with {statement!r}")

    # Each flavour overrides one pair; the other pair refuses.

    def __enter__(self) -> Self:
        raise self._wrong_statement("async with")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        raise self._wrong_statement("async with")

    async def __aenter__(self) -> Self:
        raise self._wrong_statement("with")

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        raise self._wrong_statement("with")


def image_handle(image: OpenedImage, proxy: object) -> int:
    """Return the handle to send for ``image`` in a request of ``proxy``.

    Raises:
        ClosedError: the image belongs to another proxy, or was closed.
    """
    if image._proxy is not proxy:
        raise ClosedError(f"{image!r} belongs to another proxy")
    if image._closed:
        raise ClosedError(f"image {image.reference!r} was closed")
    return image._handle


def is_closed_on(image: object, proxy: object) -> bool:
    """Return whether ``image`` is an image of ``proxy`` that was already closed."""
    return isinstance(image, OpenedImage) and image._closed and image._proxy is proxy


def mark_closed(image: OpenedImage) -> None:
    """Mark ``image`` closed: it sends nothing from now on."""
    image._closed = True
