"""A layer blob as a verified stream of its decompressed tar bytes.

The compression is taken from the media type and checked against the first bytes
(see :func:`detect_compression` for the rule); the decompressed bytes are hashed as
they pass and compared with the layer's diff_id when the stream ends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zlib
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Protocol, cast

from .._image import OpenedImage
from ..errors import ImageProxyError, VerificationError
from ..oci import Descriptor, Digest, Hasher, parse_digest
from .results import (
    Compression,
    CompressionMismatchError,
    LayerFormatError,
    LimitExceededError,
    TarTrailerError,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from .._sync.proxy import ImageProxy

__all__ = [
    "LayerStream",
    "check_tar_trailer",
    "detect_compression",
    "media_type_compression",
    "open_layer",
]

_log = logging.getLogger("containers_image_proxy")

_CHUNK = 1 << 20
#: Compressed bytes fed to zlib at once: its unconsumed tail is copied at every call.
_GZIP_INPUT = 128 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK = 512

_MEDIA_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def media_type_compression(media_type: str) -> Compression:
    """The compression a layer media type names (OCI and Docker layer types).

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
    if _looks_like_tar(prefix):
        return "none"
    return "unknown"


def _looks_like_tar(prefix: bytes) -> bool:
    """Whether ``prefix`` starts like a tar stream: empty, an end block, or a valid header."""
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


def check_tar_trailer(read: Callable[[int], bytes], offset: int) -> None:
    """Check what follows the zero block that ended a tar at ``offset``, to its end.

    ``read`` reads the stream from just after that block (b"" at its end). A tar ends with two
    zero blocks, and what comes after them is ignored, with one exception:

    * a zero block followed by anything but a second zero block (or the end) is
      refused, as Go's archive/tar (umoci, containers/storage) refuses it;
    * a valid tar header after the two zero blocks is refused too: readers that
      skip zero blocks (``tar --ignore-zeros``) would extract entries that readers
      stopping at the end marker hide, so the layer means different trees to
      different tools. Other data (padding, junk) is ignored.

    Raises:
        TarTrailerError: see above.
    """
    position = offset + _BLOCK
    pending = b""
    blocks = 0
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        pending += chunk
        usable = len(pending) - len(pending) % _BLOCK
        if usable and pending.count(0, 0, usable) == usable:
            blocks += usable // _BLOCK
        else:
            for start in range(0, usable, _BLOCK):
                block = pending[start : start + _BLOCK]
                _check_trailer_block(block, blocks, position + start)
                blocks += 1
        position += usable
        pending = pending[usable:]
    if pending and blocks == 0 and pending.count(0) != len(pending):
        _check_trailer_block(pending, 0, position)


def _check_trailer_block(block: bytes, index: int, offset: int) -> None:
    if block.count(0) == len(block):
        return
    if index == 0:
        raise TarTrailerError(
            f"the tar goes on after a single end-of-archive block: data at offset {offset}"
            " where a second zero block or the end should be",
            offset=offset,
        )
    if len(block) == _BLOCK and _looks_like_tar(block):
        raise TarTrailerError(
            f"a tar header at offset {offset}, after the end-of-archive blocks: tools"
            " that read past the end marker would extract entries that others hide",
            offset=offset,
        )


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


class _Plain:
    def __init__(self, source: _Readable, prefix: bytes) -> None:
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

    def __init__(self, source: _Readable, prefix: bytes) -> None:
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
    def __init__(self, source: _Readable, prefix: bytes) -> None:
        import zstandard

        self._error = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", _Plain(source, prefix)),
            read_size=_CHUNK,
            read_across_frames=True,
            closefd=False,
        )

    def read(self, size: int) -> bytes:
        try:
            data: bytes = self._reader.read(size)
        except self._error as exc:
            raise LayerFormatError(f"invalid zstd data: {exc}") from None
        return data


class LayerStream(io.RawIOBase):
    """The decompressed tar bytes of a layer blob, verified against its diff_id.

    ``source`` is the blob as a readable binary stream (a :class:`Blob`, a file);
    ``media_type`` gives the compression, checked against the blob's first bytes by
    :func:`detect_compression` (which reading starts at construction). The sha256 (or
    the diff_id's algorithm) of everything read is compared with ``diff_id`` by the
    read that reaches the end, which raises :class:`VerificationError` on a mismatch;
    :meth:`finish` reads what is left and verifies it. ``max_bytes`` bounds the
    decompressed size (:class:`LimitExceededError`). Closing the stream does not
    close ``source``.
    """

    def __init__(
        self,
        source: _Readable,
        media_type: str,
        diff_id: Digest | str,
        *,
        max_bytes: int | None = None,
    ) -> None:
        self.diff_id: Digest = parse_digest(diff_id)
        self.media_type = media_type
        self.max_bytes = max_bytes
        #: Decompressed bytes read so far.
        self.bytes_read = 0
        #: Whether the end was reached and verified.
        self.verified = False
        self._source = source
        self._hasher = self.diff_id.hasher()
        media_type_compression(media_type)  # an unsupported type fails before any read
        prefix = b""
        while len(prefix) < _BLOCK:
            more = source.read(_BLOCK - len(prefix))
            if not more:
                break
            prefix += more
        #: The compression found in the blob (see :func:`detect_compression`).
        self.compression: Compression = detect_compression(media_type, prefix)
        self._decoder: _Plain | _Gzip | _Zstd
        if self.compression == "gzip":
            self._decoder = _Gzip(source, prefix)
        elif self.compression == "zstd":
            self._decoder = _Zstd(source, prefix)
        else:
            self._decoder = _Plain(source, prefix)
        self._ended = False
        self._failure: BaseException | None = None

    def readable(self) -> bool:
        """Always true."""
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` decompressed bytes (all that is left when negative); b"" at
        the end, after verification.
        """
        if self.closed:
            raise ValueError("read from a closed layer stream")
        if size is None or size < 0:
            return self.readall()
        if self._failure is not None:
            raise self._failure
        if self._ended or size == 0:
            return b""
        try:
            data = self._decoder.read(size)
            if not data:
                self._end()
                return b""
            self.bytes_read += len(data)
            if self.max_bytes is not None and self.bytes_read > self.max_bytes:
                raise LimitExceededError(
                    f"layer {self.diff_id} decompresses to more than {self.max_bytes} bytes",
                    limit="max_total_bytes",
                    value=self.max_bytes,
                )
        except ImageProxyError as exc:
            self._failure = exc
            raise
        self._hash(data)
        return data

    def _hash(self, data: bytes) -> None:
        self._hasher.update(data)

    def readall(self) -> bytes:
        """Everything that is left."""
        chunks = []
        while chunk := self.read(_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read into ``buffer``; 0 at the end."""
        with memoryview(buffer) as outer, outer.cast("B") as view:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)

    def _end(self) -> None:
        self._ended = True
        # The whole blob must be read: a Blob verifies its own digest at its end.
        extra = 0
        while chunk := self._source.read(_CHUNK):
            extra += len(chunk)
        if extra and self.compression != "none":
            raise LayerFormatError(
                f"layer {self.diff_id}: {extra} byte(s) after the end of the compressed data"
            )
        self._verify()

    def _verify(self) -> None:
        check_diff_id(self.diff_id, self._hasher, self.bytes_read)
        self.verified = True

    def finish(self) -> None:
        """Read (and hash) whatever is left, then verify the diff_id."""
        while self.read(_CHUNK):
            pass


def check_diff_id(diff_id: Digest, hasher: Hasher, size: int) -> None:
    """Raise VerificationError unless the ``size`` bytes that ``hasher`` saw are ``diff_id``."""
    actual = f"{diff_id.algorithm}:{hasher.hexdigest()}"
    if actual != diff_id:
        raise VerificationError(
            f"layer diff_id mismatch: expected {diff_id}, the decompressed "
            f"{size} bytes hash to {actual}"
        )


@contextlib.contextmanager
def open_layer(
    proxy: ImageProxy,
    image: OpenedImage,
    descriptor: Descriptor,
    diff_id: Digest | str,
    *,
    max_bytes: int | None = None,
) -> Iterator[LayerStream]:
    """Open one layer of ``image`` as a verified stream of its decompressed tar.

    ``diff_id`` is the layer's entry in the image configuration's ``rootfs.diff_ids``.
    The blob streams straight from the proxy (no temporary copy). When the ``with``
    block ends normally, whatever the consumer left unread (a tar parser stops at the
    end-of-archive blocks) is read: the decompressor and the blob are drained to the
    end, so the proxy verifies the blob's digest, and the decompressed bytes are
    checked against ``diff_id`` (:class:`VerificationError` on a mismatch, never a
    silent pass). When the block raises, the blob is closed early instead, which the
    proxy takes as a deliberate early close. The compression rule is that of
    :func:`detect_compression`.

    Raises:
        LayerFormatError: unsupported media type, corrupt compressed data.
        CompressionMismatchError: the bytes contradict the media type.
        VerificationError: the decompressed bytes do not hash to ``diff_id``, or the
            blob does not match its descriptor.
        LimitExceededError: more than ``max_bytes`` decompressed bytes.
    """
    diff_id = parse_digest(diff_id)
    with proxy.get_descriptor(image, descriptor) as blob:
        stream = LayerStream(blob, descriptor.media_type, diff_id, max_bytes=max_bytes)
        yield stream
        stream.finish()
