"""Unpacking a whole image into a root filesystem: ``unpack`` and ``unpack_async``."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ._async.proxy import AsyncBlob, AsyncImageProxy
from ._async.pull import layer_info as layer_info_async
from ._async.retry import AsyncImageSource, AsyncResumingBlob
from ._backends import run_in_thread_until_done
from ._layers import fetch_plan, unavailable, with_compression
from ._sync.proxy import Blob, ImageProxy
from ._sync.pull import layer_info
from ._sync.retry import ImageSource, ResumingBlob, RetryCallback, retry_policy
from ._unpack_stream import LayerStream
from ._unpack_tree import RootfsWriter, _Stopped, discard_tree
from ._unpack_types import LayerResult, UnpackLimits, UnpackResult
from .config import ImageProxyConfig
from .errors import ImageNotFoundError, InvalidDocumentError
from .events import BlobRetrying
from .oci import ConvertedLayerInfo, Descriptor, Digest, ImageConfiguration, ImageManifest

__all__ = ["unpack", "unpack_async"]

_T = TypeVar("_T")
_CHUNK = 1 << 20

#: Called with each layer's result once it is applied and verified.
LayerCallback = Callable[[LayerResult], object]
#: Called as a layer's bytes are read: the blob, its bytes read so far (compressed,
#: as fetched) and the tar entries of that layer applied so far.
BytesCallback = Callable[[Descriptor, int, int], object]


class _Counted:
    """A blob whose reads are reported to a :data:`BytesCallback`."""

    def __init__(
        self, blob: ResumingBlob, fetched: Descriptor, writer: RootfsWriter, on_bytes: BytesCallback
    ) -> None:
        self._blob, self._fetched, self._writer, self._on_bytes = blob, fetched, writer, on_bytes
        self._entries, self._read = writer.entries, 0
        on_bytes(fetched, 0, 0)

    def read(self, size: int = -1, /) -> bytes:
        data = self._blob.read(size)
        self._read += len(data)
        self._on_bytes(self._fetched, self._read, self._writer.entries - self._entries)
        return data


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


def _remaining(writer: RootfsWriter) -> int | None:
    limit = writer.limits.max_total_bytes
    return None if limit is None else max(0, limit - writer.bytes)


def _unpack(
    reference: str,
    dest: Path,
    config: ImageProxyConfig | None,
    proxy: ImageProxy | None,
    limits: UnpackLimits | None,
    rootless: bool | None,
    progress: LayerCallback | None,
    stop: threading.Event | None,
    on_retry: RetryCallback | None = None,
    on_bytes: BytesCallback | None = None,
) -> UnpackResult:
    created = _prepare(dest)
    retries: list[BlobRetrying] = []
    try:
        with ImageSource(reference, config, proxy) as source:
            policy = retry_policy(source.config)
            digest, manifest = source.proxy.fetch_manifest(source.image)
            image_config = source.proxy.fetch_config(source.image)
            infos = layer_info(source.proxy, source.image, manifest)
            layers = _layers(manifest, image_config, infos)
            results: list[LayerResult] = []
            with RootfsWriter(dest, limits=limits, rootless=rootless) as writer:
                writer._stop = stop
                for listed, fetched, diff_id in layers:
                    # A failed transfer resumes where it stopped; the diff_id check
                    # covers the bytes read before the failure, so they need no hash.
                    blob = ResumingBlob(source, fetched, policy, on_retry, check_prefix=False)
                    try:
                        blob.open()
                    except ImageNotFoundError as exc:
                        raise unavailable(
                            reference,
                            fetched,
                            exc,
                            source.proxy.protocol_version,
                            infos is not None,
                        ) from exc
                    with blob:
                        counted = (
                            blob if on_bytes is None else _Counted(blob, fetched, writer, on_bytes)
                        )
                        result = _apply(writer, counted, listed, fetched, diff_id)
                    retries += blob.retries
                    results.append(result)
                    if progress is not None:
                        progress(result)
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
        retries=tuple(retries),
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
    on_bytes: BytesCallback | None = None,
) -> UnpackResult:
    """Unpack the image ``reference`` into the root filesystem directory ``dest``.

    ``dest`` must be missing (it is created) or empty. Layers stream straight from
    the proxy, one after the other, with no temporary copy: each is decompressed,
    checked against its diff_id and applied with the OCI layer rules (whiteouts,
    opaque directories) by a :class:`RootfsWriter`, which anchors every operation at
    directory descriptors and never follows a symlink that a layer planted. An open
    ``proxy`` may be given to reuse it (``config`` is then ignored). ``limits``
    bound sizes and counts (:class:`UnpackLimits`); ``rootless`` (default: not
    running as root) leaves ownership alone and skips device nodes. ``progress`` is
    called with each layer's :class:`LayerResult`, whose descriptor names the blob
    read with the media type its bytes prove. Where the proxy has GetLayerInfo
    (protocol 0.2.5+), layers are fetched by the digests it names: the only way to
    read a ``containers-storage:`` image stored from compressed layers.

    A layer transfer that fails for a reason that may pass (a cut connection, an
    HTTP 5xx) resumes where it stopped, as often as the configuration's
    ``retry_times`` allows; each retry goes to ``on_retry`` and into the result.
    ``on_bytes`` is called as each layer is read: with the blob's descriptor, the
    bytes read so far and the layer's tar entries applied so far (first with 0, 0).
    On any other failure ``dest`` is emptied (and removed if this call created it).

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
    return _unpack(
        reference, Path(dest), config, proxy, limits, rootless, progress, None, on_retry, on_bytes
    )


class _Bridge:
    """A blocking reader, for a worker thread, of an AsyncBlob read on the event loop."""

    def __init__(self, blob: AsyncBlob, loop: asyncio.AbstractEventLoop) -> None:
        self._blob = blob
        self._loop = loop
        self._buffer = b""

    def read(self, size: int = -1, /) -> bytes:
        if not self._buffer:
            future = asyncio.run_coroutine_threadsafe(self._blob.read(_CHUNK), self._loop)
            self._buffer = future.result()
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _apply(
    writer: RootfsWriter,
    source: _Bridge | Blob | _Counted,
    listed: Descriptor,
    fetched: Descriptor,
    diff_id: Digest,
) -> LayerResult:
    """Apply one layer; its result names the blob with the media type its bytes prove."""
    stream = LayerStream(source, fetched.media_type, diff_id, max_bytes=_remaining(writer))
    descriptor = with_compression(listed, fetched, stream.compression)
    return writer.apply(stream, descriptor=descriptor)


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
    retries: list[BlobRetrying] = []
    try:
        async with AsyncImageSource(reference, proxy=proxy) as source:
            policy = retry_policy(proxy.config)
            digest, manifest = await proxy.fetch_manifest(source.image)
            image_config = await proxy.fetch_config(source.image)
            infos = await layer_info_async(proxy, source.image, manifest)
            layers = _layers(manifest, image_config, infos)
            writer = RootfsWriter(dest, limits=limits, rootless=rootless)
            writer._stop = stop
            results: list[LayerResult] = []
            for listed, fetched, diff_id in layers:
                blob = AsyncResumingBlob(source, fetched, policy, on_retry, check_prefix=False)
                try:
                    await blob.open()
                except ImageNotFoundError as exc:
                    raise unavailable(
                        reference, fetched, exc, proxy.protocol_version, infos is not None
                    ) from exc
                async with blob:
                    work = functools.partial(
                        _apply, writer, _Bridge(blob, loop), listed, fetched, diff_id
                    )
                    result = await run_in_thread_until_done(work, stop)
                retries += blob.retries
                results.append(result)
                if progress is not None:
                    progress(result)
            await run_in_thread_until_done(writer.close, stop)
    except BaseException:
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
        retries=tuple(retries),
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

    The extraction (decompression, hashing, file system calls) runs in a worker
    thread through :func:`asyncio.to_thread`, so the event loop stays free. Without
    ``proxy`` the whole unpack, with its own blocking proxy, runs in that thread;
    with an open :class:`AsyncImageProxy` its requests are made on the loop and the
    worker reads each blob through it. Cancelling the task stops the worker at the
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
