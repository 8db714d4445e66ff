"""Layers fetched and decompressed ahead, in a reader thread, for the thread that applies them.

:class:`LayerReader` runs the thread; :class:`_Chunks` carries the decompressed
chunks to the applying thread and shares their hashing between the two;
:class:`PrefetchedLayer` is what the applying thread reads, one layer at a time,
verified at its end.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Self

from .._fd import CHUNK_SIZE
from ..oci import Descriptor, Digest, Hasher
from .compression import Compression, Readable
from .layer import LayerBytes, check_diff_id

__all__ = ["ChunkCallback", "LayerReader", "Opener", "PrefetchedLayer"]

#: Decompressed bytes the reader thread may hold ahead of the writer.
_AHEAD = 16 << 20

#: Opens a layer's blob, as a context manager that closes it.
Opener = Callable[[Descriptor], AbstractContextManager[Readable]]

#: Called in the applying thread for each chunk it takes, before it gets it: with
#: the layer's index, the blob bytes read and the decompressed bytes taken of that
#: layer so far. It may raise, to stop the unpack there.
ChunkCallback = Callable[[int, int, int], None]


class _Closed(Exception):
    """The applying side went away: the reader thread stops.

    A signal between the two threads of this module, never raised out of it (the
    reader thread catches it), so it stays here rather than in ``errors``.
    """


@dataclass(frozen=True, slots=True)
class _End:
    """The end of a layer: what the reader found, and the hasher of its chunks."""

    compression: Compression
    bytes_read: int
    hasher: Hasher


class _Chunk:
    """A piece of a layer's tar, on its way to the writer and to the layer's hasher."""

    __slots__ = ("compressed", "data", "hasher", "pending")

    def __init__(self, data: bytes, hasher: Hasher, compressed: int) -> None:
        self.data = data
        self.hasher = hasher
        self.compressed = compressed  # blob bytes read when it was decompressed
        self.pending = 2  # to be taken by the writer, and hashed


class _Chunks:
    """A bounded queue of decompressed chunks from the reader thread to the writer,
    and their hashing, shared by the two threads.

    Every chunk is hashed once, in order, by whichever thread would otherwise wait:
    the reader when the queue is full (the writer is the slower, e.g. with a fast
    inflater or many small files), the writer when it is empty (decompression is
    the slower). Chunks not both taken and hashed hold about ``limit`` bytes at most
    (one chunk more). After :meth:`close` a put raises :class:`_Closed`.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[_Chunk | _End | BaseException] = deque()
        self._unhashed: deque[_Chunk] = deque()
        self._hashing: _Chunk | None = None
        self._held = 0
        self._limit = limit
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def _release(self, chunk: _Chunk) -> None:
        chunk.pending -= 1
        if not chunk.pending:
            self._held -= len(chunk.data)

    def _hash_one(self) -> bool:
        """Hash the oldest chunk not hashed yet, unless another thread is hashing;
        tell whether it did. Called, and returns, with the lock held."""
        if self._hashing is not None or not self._unhashed:
            return False
        chunk = self._hashing = self._unhashed.popleft()
        self._lock.release()
        try:
            chunk.hasher.update(chunk.data)  # without the GIL (hashlib) or the lock
        finally:
            self._lock.acquire()
            self._hashing = None
            self._release(chunk)
            self._changed.notify_all()
        return True

    def put_chunk(self, data: bytes, hasher: Hasher, compressed: int) -> None:
        """Queue a chunk of the layer that ``hasher`` hashes; wait (hashing) while full.

        Raises:
            _Closed: the queue was closed.
        """
        with self._lock:
            while not self._closed and self._held >= self._limit:
                if not self._hash_one():
                    self._changed.wait()
            if self._closed:
                raise _Closed
            chunk = _Chunk(data, hasher, compressed)
            self._items.append(chunk)
            self._unhashed.append(chunk)
            self._held += len(data)
            self._changed.notify_all()

    def put(self, item: _End | BaseException) -> None:
        """Queue the end of a layer, or the failure that stopped the reader.

        Raises:
            _Closed: the queue was closed.
        """
        with self._lock:
            if self._closed:
                raise _Closed
            self._items.append(item)
            self._changed.notify_all()

    def get(self) -> _Chunk | _End | BaseException:
        """Return the next item, waiting (hashing) while there is none."""
        with self._lock:
            while not self._items:
                if not self._hash_one():
                    self._changed.wait()
            item = self._items.popleft()
            if isinstance(item, _Chunk):
                self._release(item)
                self._changed.notify_all()
            return item

    def hash_all(self, hasher: Hasher) -> None:
        """Finish hashing the chunks of the layer that ``hasher`` hashes."""
        with self._lock:
            while True:
                if self._unhashed and self._unhashed[0].hasher is hasher:
                    if self._hash_one():
                        continue
                elif self._hashing is None or self._hashing.hasher is not hasher:
                    return
                self._changed.wait()

    def close(self) -> None:
        """Drop what is queued; the reader's next put raises :class:`_Closed`."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._unhashed.clear()
            self._held = 0
            self._changed.notify_all()


class PrefetchedLayer:
    """One layer's tar, as the reader thread decompressed it, verified at its end.

    What the writer applies: the read that reaches the end checks the diff_id;
    reading raises whatever the reader met (a corrupt blob, a limit...) at the
    point where it met it, and whatever ``on_chunk`` raises.
    """

    def __init__(
        self, chunks: _Chunks, index: int, diff_id: Digest, on_chunk: ChunkCallback | None
    ) -> None:
        self.index = index
        self.diff_id = diff_id
        self.compression: Compression = "none"
        self.bytes_read = 0
        self.verified = False
        self._chunks = chunks
        self._on_chunk = on_chunk
        self._taken = 0
        self._rest = b""
        self._failure: BaseException | None = None

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes (a whole chunk when negative); b"" at the end.

        Raises:
            VerificationError: the layer does not hash to ``diff_id`` (at the end).
            Exception: what the reader thread met, or what ``on_chunk`` raised.
        """
        if self._failure is not None:
            raise self._failure
        if self._rest:
            data = self._rest
        elif self.verified:
            return b""
        else:
            item = self._chunks.get()
            if isinstance(item, _End):
                self._end(item)
                return b""
            if isinstance(item, BaseException):
                self._failure = item
                raise item
            data = self._take(item)
        if 0 <= size < len(data):
            self._rest = data[size:]
            return data[:size]
        self._rest = b""
        return data

    def _take(self, chunk: _Chunk) -> bytes:
        self._taken += len(chunk.data)
        if self._on_chunk is not None:
            self._on_chunk(self.index, chunk.compressed, self._taken)
        return chunk.data

    def _end(self, end: _End) -> None:
        self.compression = end.compression
        self.bytes_read = end.bytes_read
        try:
            self._chunks.hash_all(end.hasher)
            check_diff_id(self.diff_id, end.hasher, self.bytes_read)
        except BaseException as exc:
            self._failure = exc
            raise
        self.verified = True

    def finish(self) -> None:
        """Read what is left, to the verified end."""
        while self.read(CHUNK_SIZE):
            pass


class _Counted:
    """A blob, counting the bytes read from it."""

    __slots__ = ("_blob", "count")

    def __init__(self, blob: Readable) -> None:
        self._blob = blob
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._blob.read(size)
        self.count += len(data)
        return data


class LayerReader:
    """A thread that fetches and decompresses the layers, in order.

    It runs ahead of the writer by up to ``_AHEAD`` bytes, into the next layer too
    (whose blob it opens as soon as the previous one is read), so that fetching and
    decompression (zlib, ISA-L and zstd release the GIL) overlap the writer's tar
    parsing and file system calls; the two share the hashing (see :class:`_Chunks`).
    :meth:`layer` hands each layer to the writer, in order; ``on_chunk`` (see
    :data:`ChunkCallback`) hears of every chunk the writer takes. Leaving the
    ``with`` block stops the thread and waits for it: a blob it was reading is
    closed early (which waits for a stalled source as long as the proxy's stall
    timeout lets a read wait).
    """

    def __init__(
        self,
        opener: Opener,
        layers: Sequence[tuple[Descriptor, Digest]],
        max_bytes: int | None,
        *,
        on_chunk: ChunkCallback | None = None,
    ) -> None:
        self._opener = opener
        self._layers = layers
        self._max_bytes = max_bytes
        self._on_chunk = on_chunk
        self._given = 0
        self._chunks = _Chunks(_AHEAD)
        self._thread = threading.Thread(target=self._run, name="unpack-reader", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the thread (if it still runs) and wait for it."""
        self._chunks.close()
        if self._thread.ident is not None:
            self._thread.join()

    def layer(self, diff_id: Digest) -> PrefetchedLayer:
        """Return the next layer's tar, to read to its end before asking for the next one."""
        index, self._given = self._given, self._given + 1
        return PrefetchedLayer(self._chunks, index, diff_id, self._on_chunk)

    def _run(self) -> None:
        chunks = self._chunks
        read = 0  # decompressed bytes of the layers before
        try:
            for descriptor, diff_id in self._layers:
                limit = None if self._max_bytes is None else max(0, self._max_bytes - read)
                with self._opener(descriptor) as blob:
                    counted = _Counted(blob)
                    stream = LayerBytes(counted, descriptor.media_type, diff_id, max_bytes=limit)
                    hasher = diff_id.hasher()
                    while data := stream.read(CHUNK_SIZE):
                        chunks.put_chunk(data, hasher, counted.count)
                read += stream.bytes_read
                chunks.put(_End(stream.compression, stream.bytes_read, hasher))
        except _Closed:
            pass
        except BaseException as exc:  # handed to the writer, which raises it
            with contextlib.suppress(_Closed):
                chunks.put(exc)
