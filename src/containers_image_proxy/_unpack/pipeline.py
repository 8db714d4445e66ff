"""Unpacking a whole image into a root filesystem: ``unpack`` and ``unpack_async``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar

from .._async.proxy import AsyncBlob, AsyncImageProxy
from .._async.pull import layer_info as layer_info_async
from .._async.retry import AsyncImageSource, AsyncResumingBlob
from .._backends import run_in_thread_until_done
from .._layers import fetch_plan, unavailable, with_compression
from .._retry import RetryPolicy
from .._sync.proxy import ImageProxy
from .._sync.pull import layer_info
from .._sync.retry import ImageSource, ResumingBlob, RetryCallback, retry_policy
from ..config import ImageProxyConfig
from ..errors import ImageNotFoundError, InvalidDocumentError
from ..events import BlobRetrying
from ..oci import ConvertedLayerInfo, Descriptor, Digest, Hasher, ImageConfiguration, ImageManifest
from .compression import LayerStream, check_diff_id
from .results import Compression, LayerResult, UnpackLimits, UnpackResult
from .writer import RootfsWriter, _Stopped, discard_tree

__all__ = ["unpack", "unpack_async"]

_T = TypeVar("_T")
_CHUNK = 1 << 20
#: Decompressed bytes the reader thread may hold ahead of the writer.
_AHEAD = 16 << 20

#: Called with each layer's result once it is applied and verified.
LayerCallback = Callable[[LayerResult], object]


def _prepare(dest: Path) -> bool:
    """Check that ``dest`` is missing or an empty directory; whether it was created."""
    try:
        entries = os.listdir(dest)
    except FileNotFoundError:
        dest.mkdir(parents=True)
        dest.chmod(0o755)  # as umoci makes a rootfs; a root entry in a layer may change it
        return True
    if entries:
        raise FileExistsError(f"unpack destination {str(dest)!r} is not empty")
    return False


#: A layer as the manifest lists it, as it is fetched (see ``_layers.fetch_plan``),
#: and its diff_id.
_Layer = tuple[Descriptor, Descriptor, Digest]


def _layers(
    manifest: ImageManifest,
    config: ImageConfiguration,
    infos: list[ConvertedLayerInfo] | None,
) -> list[_Layer]:
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise InvalidDocumentError(
            f"the manifest has {len(manifest.layers)} layers but the configuration "
            f"lists {len(diff_ids)} diff_ids"
        )
    plan = fetch_plan(manifest, infos)
    return list(zip(manifest.layers, plan, diff_ids, strict=True))


def _fetched(layers: Sequence[_Layer]) -> list[tuple[Descriptor, Digest]]:
    """What the reader thread fetches: each layer's blob and its diff_id."""
    return [(fetched, diff_id) for _, fetched, diff_id in layers]


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


#: Opens a layer's blob, as a context manager that closes it.
_Opener = Callable[[Descriptor], AbstractContextManager[_Readable]]


class _Closed(Exception):
    """The writer went away: the reader thread stops."""


@dataclass(frozen=True, slots=True)
class _End:
    """The end of a layer: what the reader found, and the hasher of its chunks."""

    compression: Compression
    bytes_read: int
    hasher: Hasher


class _Chunk:
    """A piece of a layer's tar, on its way to the writer and to the layer's hasher."""

    __slots__ = ("data", "hasher", "pending")

    def __init__(self, data: bytes, hasher: Hasher) -> None:
        self.data = data
        self.hasher = hasher
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
        whether it did. Called, and returns, with the lock held."""
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

    def put_chunk(self, data: bytes, hasher: Hasher) -> None:
        """Queue a chunk of the layer that ``hasher`` hashes; waits (hashing) while full."""
        with self._lock:
            while not self._closed and self._held >= self._limit:
                if not self._hash_one():
                    self._changed.wait()
            if self._closed:
                raise _Closed
            chunk = _Chunk(data, hasher)
            self._items.append(chunk)
            self._unhashed.append(chunk)
            self._held += len(data)
            self._changed.notify_all()

    def put(self, item: _End | BaseException) -> None:
        """Queue the end of a layer, or the failure that stopped the reader."""
        with self._lock:
            if self._closed:
                raise _Closed
            self._items.append(item)
            self._changed.notify_all()

    def get(self) -> bytes | _End | BaseException:
        """The next item, waiting (hashing) while there is none."""
        with self._lock:
            while not self._items:
                if not self._hash_one():
                    self._changed.wait()
            item = self._items.popleft()
            if not isinstance(item, _Chunk):
                return item
            self._release(item)
            self._changed.notify_all()
            return item.data

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


class _Decompressed(LayerStream):
    """A LayerStream for the reader thread: the bytes are hashed as they pass
    through :class:`_Chunks`, and the writer's thread checks the diff_id."""

    def _hash(self, data: bytes) -> None:
        pass

    def _verify(self) -> None:
        pass


class _Prefetched:
    """One layer's tar, as the reader thread decompressed it, verified at its end.

    What the writer applies: the read that reaches the end checks the diff_id;
    reading raises whatever the reader met (a corrupt blob, a limit...) at the
    point where it met it.
    """

    def __init__(self, chunks: _Chunks, diff_id: Digest) -> None:
        self.diff_id = diff_id
        self.compression: Compression = "none"
        self.bytes_read = 0
        self.verified = False
        self._chunks = chunks
        self._rest = b""
        self._failure: BaseException | None = None

    def read(self, size: int = -1, /) -> bytes:
        if self._failure is not None:
            raise self._failure
        if self._rest:
            data = self._rest
        elif self.verified:
            return b""
        else:
            item = self._chunks.get()
            if isinstance(item, _End):
                self.compression = item.compression
                self.bytes_read = item.bytes_read
                try:
                    self._chunks.hash_all(item.hasher)
                    check_diff_id(self.diff_id, item.hasher, self.bytes_read)
                except BaseException as exc:
                    self._failure = exc
                    raise
                self.verified = True
                return b""
            if isinstance(item, BaseException):
                self._failure = item
                raise item
            data = item
        if 0 <= size < len(data):
            self._rest = data[size:]
            return data[:size]
        self._rest = b""
        return data

    def finish(self) -> None:
        while self.read(_CHUNK):
            pass


class _Reader:
    """A thread that fetches and decompresses the layers, in order.

    It runs ahead of the writer by up to ``_AHEAD`` bytes, into the next layer too
    (whose blob it opens as soon as the previous one is read), so that fetching and
    decompression (zlib, ISA-L and zstd release the GIL) overlap the writer's tar
    parsing and file system calls; the two share the hashing (see :class:`_Chunks`).
    :meth:`layer` hands each layer to the writer, in order. Leaving the ``with``
    block stops the thread and waits for it: a blob it was reading is closed early
    (which waits for a stalled source as long as the proxy's stall timeout lets a
    read wait).
    """

    def __init__(
        self,
        opener: _Opener,
        layers: Sequence[tuple[Descriptor, Digest]],
        max_bytes: int | None,
    ) -> None:
        self._opener = opener
        self._layers = layers
        self._max_bytes = max_bytes
        self._chunks = _Chunks(_AHEAD)
        self._thread = threading.Thread(target=self._run, name="unpack-reader", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the thread (if it still runs) and wait for it."""
        self._chunks.close()
        if self._thread.ident is not None:
            self._thread.join()

    def layer(self, diff_id: Digest) -> _Prefetched:
        """The next layer's tar, to read to its end before asking for the next one."""
        return _Prefetched(self._chunks, diff_id)

    def _run(self) -> None:
        chunks = self._chunks
        read = 0  # decompressed bytes of the layers before
        try:
            for descriptor, diff_id in self._layers:
                limit = self._max_bytes
                with self._opener(descriptor) as blob:
                    stream = _Decompressed(
                        blob,
                        descriptor.media_type,
                        diff_id,
                        max_bytes=None if limit is None else max(0, limit - read),
                    )
                    hasher = diff_id.hasher()
                    while data := stream.read(_CHUNK):
                        chunks.put_chunk(data, hasher)
                read += stream.bytes_read
                chunks.put(_End(stream.compression, stream.bytes_read, hasher))
        except _Closed:
            pass
        except BaseException as exc:  # handed to the writer, which raises it
            with contextlib.suppress(_Closed):
                chunks.put(exc)


def _apply_layer(
    writer: RootfsWriter, reader: _Reader, listed: Descriptor, fetched: Descriptor, diff_id: Digest
) -> LayerResult:
    """Apply the reader's next layer; its result names the blob with the media type
    its bytes prove (see ``_layers.with_compression``)."""
    layer = reader.layer(diff_id)
    result = writer.apply(layer, descriptor=fetched)
    true = with_compression(listed, fetched, layer.compression)
    return dataclasses.replace(result, descriptor=true)


def _apply_layers(
    writer: RootfsWriter,
    reader: _Reader,
    layers: Sequence[_Layer],
    progress: LayerCallback | None,
) -> list[LayerResult]:
    results: list[LayerResult] = []
    for listed, fetched, diff_id in layers:
        result = _apply_layer(writer, reader, listed, fetched, diff_id)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


class _Opened:
    """The layer blobs an unpack opened, each retried as its policy allows."""

    def __init__(self, reference: str, version: str, has_info: bool) -> None:
        self.reference = reference
        self.version = version
        self.has_info = has_info
        self.blobs: list[ResumingBlob | AsyncResumingBlob] = []

    @property
    def retries(self) -> tuple[BlobRetrying, ...]:
        return tuple(retry for blob in self.blobs for retry in blob.retries)

    def unavailable(self, descriptor: Descriptor, exc: ImageNotFoundError) -> Exception:
        return unavailable(self.reference, descriptor, exc, self.version, self.has_info)


def _opener(
    source: ImageSource, policy: RetryPolicy, on_retry: RetryCallback | None, opened: _Opened
) -> _Opener:
    def open_layer(descriptor: Descriptor) -> ResumingBlob:
        # A failed transfer resumes where it stopped; the diff_id check covers the
        # bytes read before the failure, so they need no hash of their own.
        blob = ResumingBlob(source, descriptor, policy, on_retry, check_prefix=False)
        opened.blobs.append(blob)
        try:
            return blob.open()
        except ImageNotFoundError as exc:
            raise opened.unavailable(descriptor, exc) from exc

    return open_layer


def _unpack(
    reference: str,
    dest: Path,
    config: ImageProxyConfig | None,
    proxy: ImageProxy | None,
    limits: UnpackLimits | None,
    rootless: bool | None,
    progress: LayerCallback | None,
    stop: threading.Event | None,
    on_retry: RetryCallback | None,
) -> UnpackResult:
    created = _prepare(dest)
    try:
        with ImageSource(reference, config, proxy) as source:
            policy = retry_policy(source.config)
            digest, manifest = source.proxy.fetch_manifest(source.image)
            image_config = source.proxy.fetch_config(source.image)
            infos = layer_info(source.proxy, source.image, manifest)
            layers = _layers(manifest, image_config, infos)
            opened = _Opened(reference, source.proxy.protocol_version, infos is not None)
            opener = _opener(source, policy, on_retry, opened)
            with RootfsWriter(dest, limits=limits, rootless=rootless) as writer:
                writer._stop = stop
                max_bytes = writer.limits.max_total_bytes
                with _Reader(opener, _fetched(layers), max_bytes) as reader:
                    results = _apply_layers(writer, reader, layers, progress)
    except BaseException:
        discard_tree(dest, remove=created)
        raise
    return UnpackResult(
        reference=reference,
        dest=dest,
        manifest_digest=digest,
        config=image_config,
        layers=tuple(results),
        rootless=writer.rootless,
        warnings=tuple(writer.warnings),
        retries=opened.retries,
    )


def unpack(
    reference: str,
    dest: str | os.PathLike[str],
    *,
    config: ImageProxyConfig | None = None,
    proxy: ImageProxy | None = None,
    limits: UnpackLimits | None = None,
    rootless: bool | None = None,
    progress: LayerCallback | None = None,
    on_retry: RetryCallback | None = None,
) -> UnpackResult:
    """Unpack the image ``reference`` into the root filesystem directory ``dest``.

    ``dest`` must be missing (it is created) or empty. Layers stream straight from
    the proxy, in order, with no temporary copy: a reader thread fetches and
    decompresses them (gzip with ISA-L's inflate, zstd with libzstd), at most 16 MiB
    ahead and into the next layer's blob, while the calling thread checks each
    layer's tar against its diff_id and applies it with the OCI layer rules
    (whiteouts, opaque directories) through a :class:`RootfsWriter`, which anchors
    every operation at directory descriptors and never follows a symlink that a
    layer planted. An open ``proxy`` may be given to reuse it (``config`` is then
    ignored). ``limits`` bound sizes and counts (:class:`UnpackLimits`);
    ``rootless`` (default: not running as root) leaves ownership alone and skips
    device nodes. ``progress`` is called with each layer's :class:`LayerResult`, in
    order, once the layer is applied and verified; its descriptor names the blob
    read with the media type its bytes prove. Where the proxy has GetLayerInfo
    (protocol 0.2.5+), layers are fetched by the digests it names: the only way to
    read a ``containers-storage:`` image stored from compressed layers.

    A layer transfer that fails for a reason that may pass (a cut connection, an
    HTTP 5xx) resumes where it stopped, as often as the configuration's
    ``retry_times`` allows; each retry goes to ``on_retry`` and into the result.
    On any other failure ``dest`` is emptied (and removed if this call created it),
    and the reader thread is stopped and waited for; a blob it was reading is
    closed early (from a stalled source, that waits at most the proxy's stall
    timeout).

    Raises:
        FileExistsError: ``dest`` is not empty.
        LayerFormatError: a layer is not a valid tar, or its media type is unsupported.
        TarTrailerError: a layer's tar goes on after an end-of-archive block.
        CompressionMismatchError: a layer's bytes contradict its media type.
        LayerUnavailableError: the source cannot serve a layer through this skopeo.
        UnsafeLayerError: an entry would escape ``dest`` or go through a symlink.
        LimitExceededError: a layer went past ``limits``.
        VerificationError: a blob or a decompressed layer does not match its digest.
        ImageProxyError: anything the proxy reports (a missing image...).
    """
    return _unpack(reference, Path(dest), config, proxy, limits, rootless, progress, None, on_retry)


class _Bridge:
    """A blocking reader, for a worker thread, of an AsyncBlob read on the event loop."""

    def __init__(self, blob: AsyncBlob, loop: asyncio.AbstractEventLoop) -> None:
        self._blob = blob
        self._loop = loop
        self._buffer = b""
        self._at = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._at >= len(self._buffer):
            future = asyncio.run_coroutine_threadsafe(self._blob.read(_CHUNK), self._loop)
            self._buffer = future.result()
            self._at = 0
        at = self._at
        end = len(self._buffer) if size < 0 else min(len(self._buffer), at + size)
        self._at = end
        return self._buffer[at:end] if at or end < len(self._buffer) else self._buffer


async def _open_async(
    source: AsyncImageSource,
    policy: RetryPolicy,
    on_retry: RetryCallback | None,
    opened: _Opened,
    descriptor: Descriptor,
) -> AsyncResumingBlob:
    blob = AsyncResumingBlob(source, descriptor, policy, on_retry, check_prefix=False)
    opened.blobs.append(blob)
    try:
        return await blob.open()
    except ImageNotFoundError as exc:
        raise opened.unavailable(descriptor, exc) from exc


@contextlib.contextmanager
def _bridged(
    source: AsyncImageSource,
    policy: RetryPolicy,
    on_retry: RetryCallback | None,
    opened: _Opened,
    loop: asyncio.AbstractEventLoop,
    descriptor: Descriptor,
) -> Iterator[_Bridge]:
    """Open a layer's blob on the event loop, for the reader thread."""
    opening = _open_async(source, policy, on_retry, opened, descriptor)
    blob = asyncio.run_coroutine_threadsafe(opening, loop).result()
    try:
        yield _Bridge(blob, loop)
    finally:
        asyncio.run_coroutine_threadsafe(blob.aclose(), loop).result()


async def _unpack_with(
    reference: str,
    dest: Path,
    proxy: AsyncImageProxy,
    limits: UnpackLimits | None,
    rootless: bool | None,
    progress: LayerCallback | None,
    stop: threading.Event,
    on_retry: RetryCallback | None,
) -> UnpackResult:
    loop = asyncio.get_running_loop()
    created = await asyncio.to_thread(_prepare, dest)
    writer: RootfsWriter | None = None
    reader: _Reader | None = None
    try:
        async with AsyncImageSource(reference, proxy=proxy) as source:
            policy = retry_policy(proxy.config)
            digest, manifest = await proxy.fetch_manifest(source.image)
            image_config = await proxy.fetch_config(source.image)
            infos = await layer_info_async(proxy, source.image, manifest)
            layers = _layers(manifest, image_config, infos)
            opened = _Opened(reference, proxy.protocol_version, infos is not None)
            writer = RootfsWriter(dest, limits=limits, rootless=rootless)
            writer._stop = stop
            opener = functools.partial(_bridged, source, policy, on_retry, opened, loop)
            max_bytes = writer.limits.max_total_bytes
            reader = _Reader(opener, _fetched(layers), max_bytes).__enter__()
            results: list[LayerResult] = []
            for listed, fetched, diff_id in layers:
                work = functools.partial(_apply_layer, writer, reader, listed, fetched, diff_id)
                result = await run_in_thread_until_done(work, stop)
                results.append(result)
                if progress is not None:
                    progress(result)
            stopping, reader = reader, None
            await asyncio.to_thread(stopping.stop)
            await run_in_thread_until_done(writer.close, stop)
    except BaseException:
        if reader is not None:
            # The reader thread may wait for the loop: wait for it without blocking it.
            await asyncio.shield(asyncio.to_thread(reader.stop))
        if writer is not None:
            writer.abort()
        await asyncio.shield(asyncio.to_thread(discard_tree, dest, remove=created))
        raise
    return UnpackResult(
        reference=reference,
        dest=dest,
        manifest_digest=digest,
        config=image_config,
        layers=tuple(results),
        rootless=writer.rootless,
        warnings=tuple(writer.warnings),
        retries=opened.retries,
    )


async def unpack_async(
    reference: str,
    dest: str | os.PathLike[str],
    *,
    config: ImageProxyConfig | None = None,
    proxy: AsyncImageProxy | None = None,
    limits: UnpackLimits | None = None,
    rootless: bool | None = None,
    progress: LayerCallback | None = None,
    on_retry: RetryCallback | None = None,
) -> UnpackResult:
    """The asyncio twin of :func:`unpack`, with the same arguments and rules.

    The extraction (decompression, hashing, file system calls) runs in worker
    threads, so the event loop stays free. Without ``proxy`` the whole unpack, with
    its own blocking proxy, runs in a thread of :func:`asyncio.to_thread`; with an
    open :class:`AsyncImageProxy` its requests are made on the loop, the reader
    thread reads each blob through it and each layer is applied in a thread of
    :func:`asyncio.to_thread`. Cancelling the task stops the worker at the
    next tar entry and empties ``dest`` before the cancellation goes on. ``progress``
    is called from the worker thread when there is no ``proxy``.
    """
    stop = threading.Event()
    path = Path(dest)
    try:
        if proxy is None:
            work = functools.partial(
                _unpack, reference, path, config, None, limits, rootless, progress, stop, on_retry
            )
            return await run_in_thread_until_done(work, stop)
        return await _unpack_with(
            reference, path, proxy, limits, rootless, progress, stop, on_retry
        )
    except _Stopped:
        raise asyncio.CancelledError from None
