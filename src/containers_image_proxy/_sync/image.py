# Generated from src/containers_image_proxy/_async/image.py by tools/gen_sync.py.
# Edit the source, not this file.
"""The image handle of :class:`ImageProxy`, closed with ``with``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Self

from .._image import OpenedImage

if TYPE_CHECKING:
    from .proxy import ImageProxy

__all__ = ["SyncOpenedImage"]

_log = logging.getLogger("containers_image_proxy")


class SyncOpenedImage(OpenedImage):
    """An :class:`OpenedImage` of :class:`ImageProxy`; ``with`` closes it."""

    __slots__ = ()

    if TYPE_CHECKING:
        _proxy: ImageProxy

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._interrupted(exc_type):
            return
        try:
            self._proxy.close_image(self)
        except Exception as error:
            if exc_type is None:
                raise
            _log.debug("closing %r after an error: %s", self, error)
