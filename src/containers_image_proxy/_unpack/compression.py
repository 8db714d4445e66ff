"""How a layer blob is compressed, and the readers that undo it.

The compression is taken from the media type and checked against the blob's first
bytes (see :func:`detect_compression` for the rule); gzip goes through ISA-L's
inflate where it is installed (zlib's otherwise), zstd through libzstd.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import IO, Literal, Protocol, cast

from .._fd import CHUNK_SIZE
from ..errors import CompressionMismatchError, LayerFormatError
from ..oci import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD,
    MEDIA_TYPE_LAYER_ZSTD,
)

__all__ = [
    "Compression",
    "Decoder",
    "Readable",
    "detect_compression",
    "looks_like_tar",
    "media_type_compression",
    "open_decoder",
]

_log = logging.getLogger("containers_image_proxy")

#: How a layer blob is compressed.
Compression = Literal["none", "gzip", "zstd"]

#: Compressed bytes fed to zlib at once: its unconsumed tail is copied at every call.
_GZIP_INPUT = 128 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: A tar block: the prefix that tells a layer's compression is one header long.
_BLOCK = 512

_MEDIA_TYPES: dict[str, Compression] = {
    MEDIA_TYPE_LAYER: "none",
    MEDIA_TYPE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE: "none",
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER: "gzip",
}


class Readable(Protocol):
    """A source of bytes: a blob, a file, a decompressed stream."""

    def read(self, size: int = ..., /) -> bytes:
        """Return up to ``size`` bytes; b"" at the end."""
        ...


class Decoder(Protocol):
    """The decompressed bytes of a blob, up to ``size`` at a time; b"" at the end."""

    def read(self, size: int, /) -> bytes:
        """Return up to ``size`` decompressed bytes; b"" at the end."""
        ...


def media_type_compression(media_type: str) -> Compression:
    """Return the compression a layer media type names (OCI and Docker layer types).

    Raises:
        LayerFormatError: for anything but an (optionally gzip or zstd compressed) tar
            layer, e.g. an encrypted layer or an artifact.
    """
    try:
        return _MEDIA_TYPES[media_type.split(";", 1)[0].strip()]
    except KeyError:
        raise LayerFormatError(f"unsupported layer media type {media_type!r}") from None


def _sniff(prefix: bytes) -> str:
    if prefix.startswith(_GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(_ZSTD_MAGIC) or (
        len(prefix) >= 4 and prefix[0] & 0xF0 == 0x50 and prefix[1:4] == b"\x2a\x4d\x18"
    ):
        return "zstd"  # a frame, or a skippable frame
    if looks_like_tar(prefix):
        return "none"
    return "unknown"


def looks_like_tar(prefix: bytes) -> bool:
    """Tell whether ``prefix`` starts like a tar stream: empty, an end block, or a valid header."""
    if not prefix:
        return True
    if len(prefix) < _BLOCK:
        return False
    block = prefix[:_BLOCK]
    if not any(block):
        return True
    field = block[148:156].replace(b"\0", b" ").strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    signed = sum((b ^ 0x80) - 0x80 for b in block) - sum((b ^ 0x80) - 0x80 for b in block[148:156])
    return stored in (unsigned, signed + 8 * 0x20)


def detect_compression(media_type: str, prefix: bytes) -> Compression:
    """Decide how to decompress a layer from its media type and its first bytes.

    ``prefix`` holds the blob's first 512 bytes (fewer only for a shorter blob). The
    rule:

    * media type and magic bytes agree (gzip ``1f 8b``, zstd ``28 b5 2f fd``, or a
      valid tar header / empty blob for an uncompressed type): that compression;
    * a gzip media type over bytes that are a plain tar (a valid tar header, or an
      empty blob): plain tar. ``docker-archive:`` sources converted to OCI label
      their uncompressed layers like this; the diff_id check still covers every byte;
    * anything else raises :class:`CompressionMismatchError`: a compressed blob under
      an uncompressed type, gzip and zstd swapped, a zstd type over plain tar, or a
      compressed type over bytes that are neither. Such a blob is not what its
      manifest says, and other tools would read it differently.

    Raises:
        LayerFormatError: the media type is not a tar layer type.
        CompressionMismatchError: see above.
    """
    declared = media_type_compression(media_type)
    detected = _sniff(prefix)
    if detected == declared:
        return declared
    if declared == "gzip" and detected == "none":
        _log.debug("layer labelled %s holds a plain tar: reading it uncompressed", media_type)
        return "none"
    raise CompressionMismatchError(
        f"layer labelled {media_type!r} ({declared}) starts with "
        f"{'bytes of no known format' if detected == 'unknown' else detected + ' data'}"
        f" ({prefix[:4].hex(' ') or 'empty'})",
        declared=declared,
        detected=detected,
    )


def open_decoder(source: Readable, media_type: str) -> tuple[Compression, Decoder]:
    """Read the first bytes of ``source`` and return its compression and its decoder.

    Raises:
        LayerFormatError: the media type is not a tar layer type (found before any read).
        CompressionMismatchError: the first bytes contradict the media type.
    """
    media_type_compression(media_type)  # an unsupported type fails before any read
    prefix = b""
    while len(prefix) < _BLOCK:
        more = source.read(_BLOCK - len(prefix))
        if not more:
            break
        prefix += more
    compression = detect_compression(media_type, prefix)
    if compression == "gzip":
        return compression, _Gzip(source, prefix)
    if compression == "zstd":
        return compression, _Zstd(source, prefix)
    return compression, _Plain(source, prefix)


class _Plain:
    def __init__(self, source: Readable, prefix: bytes) -> None:
        self._source = source
        self._prefix = prefix

    def read(self, size: int) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._source.read(size)


class _Inflater(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def unconsumed_tail(self) -> bytes: ...
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _zlib_inflater() -> _Inflater:
    return zlib.decompressobj(31)


try:  # ISA-L's inflate (a dependency), about twice as fast as zlib's
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal missing or broken: zlib's, slower
    _inflater: Callable[[], _Inflater] = _zlib_inflater
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
else:

    def _isal_inflater() -> _Inflater:
        return isal_zlib.decompressobj(31)

    _inflater = _isal_inflater
    _INFLATE_ERRORS = (zlib.error, cast("type[Exception]", isal_zlib.error))


class _Gzip:
    """Multi-member gzip, with bounded output per call and the trailers (CRC-32 and
    size) checked by the inflater: ISA-L's, or zlib's without isal."""

    def __init__(self, source: Readable, prefix: bytes) -> None:
        self._source = source
        self._input = prefix
        self._zlib = _inflater()
        self._ended = False

    def _more(self) -> bytes:
        return self._source.read(_GZIP_INPUT)

    def read(self, size: int) -> bytes:
        while not self._ended:
            if self._zlib.eof:
                self._next_member()
                continue
            if not self._input:
                self._input = self._more()
                if not self._input:
                    raise LayerFormatError("gzip stream ends in the middle of a member")
            try:
                data = self._zlib.decompress(self._input, size)
            except _INFLATE_ERRORS as exc:
                raise LayerFormatError(f"invalid gzip data: {exc}") from None
            self._input = self._zlib.unconsumed_tail
            if self._zlib.eof:
                self._input = self._zlib.unused_data + self._input
            if data:
                return data
        return b""

    def _next_member(self) -> None:
        # After a member: another member, zero padding, or the end of the blob.
        while len(self._input) < 2:
            more = self._more()
            if not more:
                break
            self._input += more
        if self._input.startswith(_GZIP_MAGIC):
            self._zlib = _inflater()
            return
        while self._input:
            if any(self._input):
                raise LayerFormatError("gzip stream is followed by data that is not gzip")
            self._input = self._more()
        self._ended = True


class _Zstd:
    def __init__(self, source: Readable, prefix: bytes) -> None:
        import zstandard

        self._error = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", _Plain(source, prefix)),
            read_size=CHUNK_SIZE,
            read_across_frames=True,
            closefd=False,
        )

    def read(self, size: int) -> bytes:
        try:
            data: bytes = self._reader.read(size)
        except self._error as exc:
            raise LayerFormatError(f"invalid zstd data: {exc}") from None
        return data
