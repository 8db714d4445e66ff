"""The image handle of :class:`AsyncImageProxy`, closed with ``async with``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Self

from .._image import OpenedImage

if TYPE_CHECKING:
    from .proxy import AsyncImageProxy

__all__ = ["AsyncOpenedImage"]

_log = logging.getLogger("containers_image_proxy")


class AsyncOpenedImage(OpenedImage):
    """An :class:`OpenedImage` of :class:`AsyncImageProxy`; ``async with`` closes it."""

    __slots__ = ()

    if TYPE_CHECKING:
        _proxy: AsyncImageProxy

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._interrupted(exc_type):
            return
        try:
            await self._proxy.close_image(self)
        except Exception as error:
            if exc_type is None:
                raise
            _log.debug("closing %r after an error: %s", self, error)
