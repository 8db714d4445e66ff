"""Unpacking a whole image into a root filesystem: ``unpack`` and ``unpack_async``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ._async.proxy import AsyncBlob, AsyncImageProxy
from ._async.pull import layer_info as layer_info_async
from ._backends import run_in_thread_until_done
from ._image import OpenedImage
from ._layers import fetch_plan, unavailable, with_compression
from ._sync.proxy import Blob, ImageProxy
from ._sync.pull import layer_info
from ._unpack_stream import LayerStream
from ._unpack_tree import RootfsWriter, _Stopped, discard_tree
from ._unpack_types import LayerResult, UnpackLimits, UnpackResult
from .config import ImageProxyConfig
from .errors import ImageNotFoundError, InvalidDocumentError
from .oci import ConvertedLayerInfo, Descriptor, Digest, ImageConfiguration, ImageManifest

__all__ = ["unpack", "unpack_async"]

_T = TypeVar("_T")
_CHUNK = 1 << 20

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


def _get_layer(proxy: ImageProxy, image: OpenedImage, layer: Descriptor, has_info: bool) -> Blob:
    try:
        return proxy.get_descriptor(image, layer)
    except ImageNotFoundError as exc:
        raise unavailable(image.reference, layer, exc, proxy.protocol_version, has_info) from exc


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
) -> UnpackResult:
    created = _prepare(dest)
    try:
        with contextlib.ExitStack() as stack:
            if proxy is None:
                proxy = stack.enter_context(ImageProxy(config))
            image = stack.enter_context(proxy.open_image(reference))
            digest, manifest = proxy.fetch_manifest(image)
            image_config = proxy.fetch_config(image)
            infos = layer_info(proxy, image, manifest)
            layers = _layers(manifest, image_config, infos)
            results: list[LayerResult] = []
            with RootfsWriter(dest, limits=limits, rootless=rootless) as writer:
                writer._stop = stop
                for listed, fetched, diff_id in layers:
                    with _get_layer(proxy, image, fetched, infos is not None) as blob:
                        result = _apply(writer, blob, listed, fetched, diff_id)
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

    On any failure ``dest`` is emptied (and removed if this call created it).

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
    return _unpack(reference, Path(dest), config, proxy, limits, rootless, progress, stop=None)


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
    source: _Bridge | Blob,
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
) -> UnpackResult:
    loop = asyncio.get_running_loop()
    created = await asyncio.to_thread(_prepare, dest)
    writer: RootfsWriter | None = None
    try:
        async with await proxy.open_image(reference) as image:
            digest, manifest = await proxy.fetch_manifest(image)
            image_config = await proxy.fetch_config(image)
            infos = await layer_info_async(proxy, image, manifest)
            layers = _layers(manifest, image_config, infos)
            writer = RootfsWriter(dest, limits=limits, rootless=rootless)
            writer._stop = stop
            results: list[LayerResult] = []
            for listed, fetched, diff_id in layers:
                try:
                    blob = await proxy.get_descriptor(image, fetched)
                except ImageNotFoundError as exc:
                    raise unavailable(
                        reference, fetched, exc, proxy.protocol_version, infos is not None
                    ) from exc
                async with blob:
                    work = functools.partial(
                        _apply, writer, _Bridge(blob, loop), listed, fetched, diff_id
                    )
                    result = await run_in_thread_until_done(work, stop)
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
                _unpack, reference, path, config, None, limits, rootless, progress, stop
            )
            return await run_in_thread_until_done(work, stop)
        return await _unpack_with(reference, path, proxy, limits, rootless, progress, stop)
    except _Stopped:
        raise asyncio.CancelledError from None
