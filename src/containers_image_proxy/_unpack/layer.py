"""A layer blob as a verified stream of its decompressed tar bytes.

:class:`LayerBytes` decompresses a blob (see :func:`~.compression.open_decoder`),
bounds the result and reads the blob to its end; :class:`LayerStream` hashes what
passes and compares it with the layer's diff_id when the stream ends. The unpack
pipeline reads :class:`LayerBytes` in its reader thread and hashes the chunks on
their way to the writer instead (see :mod:`.pipeline`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .._fd import CHUNK_SIZE
from .._image import OpenedImage
from ..errors import ImageProxyError, LayerFormatError, LimitExceededError, VerificationError
from ..oci import Descriptor, Digest, Hasher, parse_digest
from .compression import Compression, Readable, open_decoder

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from .._sync.proxy import ImageProxy

__all__ = ["LayerBytes", "LayerStream", "check_diff_id", "open_layer"]


class LayerBytes:
    """The decompressed tar bytes of a layer blob, bounded and read to the blob's end.

    Nothing is hashed here. ``max_bytes`` bounds the decompressed size
    (:class:`LimitExceededError`). At the end of the compressed data the rest of the
    blob is read (a Blob verifies its own digest at its end); bytes there, after
    compressed data, are an error. A failure sticks: later reads raise it again.
    """

    def __init__(
        self, source: Readable, media_type: str, diff_id: Digest, *, max_bytes: int | None
    ) -> None:
        self.diff_id = diff_id
        self.max_bytes = max_bytes
        #: Decompressed bytes read so far.
        self.bytes_read = 0
        #: Whether the blob was read to its end.
        self.ended = False
        self._source = source
        self._failure: ImageProxyError | None = None
        #: The compression found in the blob (see :func:`detect_compression`).
        self.compression: Compression
        self.compression, self._decoder = open_decoder(source, media_type)

    def read(self, size: int, /) -> bytes:
        """Return up to ``size`` decompressed bytes; b"" at the end.

        Raises:
            LayerFormatError: corrupt compressed data, or data after it.
            LimitExceededError: more than ``max_bytes`` decompressed bytes.
            ImageProxyError: what reading the blob raised (a digest mismatch...).
        """
        if self._failure is not None:
            raise self._failure
        if self.ended or size == 0:
            return b""
        try:
            data = self._decoder.read(size)
            if not data:
                self._drain()
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
        return data

    def _drain(self) -> None:
        self.ended = True
        extra = 0
        while chunk := self._source.read(CHUNK_SIZE):
            extra += len(chunk)
        if extra and self.compression != "none":
            raise LayerFormatError(
                f"layer {self.diff_id}: {extra} byte(s) after the end of the compressed data"
            )


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
        source: Readable,
        media_type: str,
        diff_id: Digest | str,
        *,
        max_bytes: int | None = None,
    ) -> None:
        self.diff_id: Digest = parse_digest(diff_id)
        self.media_type = media_type
        self.max_bytes = max_bytes
        #: Whether the end was reached and verified.
        self.verified = False
        self._hasher = self.diff_id.hasher()
        self._failure: ImageProxyError | None = None
        self._bytes = LayerBytes(source, media_type, self.diff_id, max_bytes=max_bytes)
        #: The compression found in the blob (see :func:`detect_compression`).
        self.compression: Compression = self._bytes.compression

    @property
    def bytes_read(self) -> int:
        """Return the decompressed bytes read so far."""
        return self._bytes.bytes_read

    def readable(self) -> bool:
        """Return True: the stream is for reading."""
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Return up to ``size`` decompressed bytes (all that is left when negative);
        b"" at the end, after verification.

        Raises:
            ValueError: the stream is closed.
            VerificationError: the bytes do not hash to ``diff_id`` (at the end).
            LayerFormatError: corrupt compressed data.
            LimitExceededError: more than ``max_bytes`` decompressed bytes.
        """
        if self.closed:
            raise ValueError("read from a closed layer stream")
        if size is None or size < 0:
            return self.readall()
        if self._failure is not None:
            raise self._failure
        if size == 0:
            return b""
        data = self._bytes.read(size)
        if data:
            self._hasher.update(data)
        elif not self.verified:
            try:
                check_diff_id(self.diff_id, self._hasher, self.bytes_read)
            except VerificationError as exc:
                self._failure = exc
                raise
            self.verified = True
        return data

    def readall(self) -> bytes:
        """Return everything that is left."""
        chunks = []
        while chunk := self.read(CHUNK_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read into ``buffer``; return how many bytes, 0 at the end."""
        with memoryview(buffer) as outer, outer.cast("B") as view:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)

    def finish(self) -> None:
        """Read (and hash) whatever is left, then verify the diff_id."""
        while self.read(CHUNK_SIZE):
            pass


def check_diff_id(diff_id: Digest, hasher: Hasher, size: int) -> None:
    """Check that the ``size`` bytes that ``hasher`` saw are ``diff_id``.

    Raises:
        VerificationError: they are not.
    """
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
