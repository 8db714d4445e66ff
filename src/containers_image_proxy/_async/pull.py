"""Pulling a whole image into an OCI layout, and streaming its layers.

Written once for asyncio (``pull_async``, ``stream_layers_async``) in ``_async/``;
the blocking ``pull`` and ``stream_layers`` in ``_sync/`` are generated from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from .._async_backend import AsyncBackend as Backend
from .._backends import AsyncResult
from .._image import OpenedImage
from .._layers import PREFIX_SIZE, check_uncompressed, fetch_plan, true_layer, unavailable
from .._layout import SOURCE_DIGEST, Layout
from .._reference import parse_destination
from .._tags import resolve_tag
from ..config import ImageProxyConfig
from ..errors import ImageNotFoundError, ProtocolError, RequestError, VerificationError
from ..events import (
    BlobFinished,
    BlobProgress,
    BlobRetrying,
    BlobStarted,
    PullEvent,
    PullResult,
    PullStarted,
    blob_progress,
)
from ..oci import (
    MEDIA_TYPE_IMAGE_MANIFEST,
    ConvertedLayerInfo,
    Descriptor,
    Digest,
    ImageManifest,
    decode_config,
    decode_manifest,
)
from .blob import AsyncBlob
from .proxy import AsyncImageProxy
from .retry import (
    AsyncImageSource,
    AsyncResumingBlob,
    RetryCallback,
    retry_policy,
    retry_transfer,
)

__all__ = ["layer_info", "pull_async", "stream_layers_async"]

_log = logging.getLogger("containers_image_proxy")

#: Blobs one proxy streams at once before a pull adds another proxy. One skopeo
#: serves eight streams as fast as two serve four each (BENCHMARKS.md, case 3).
STREAMS_PER_PROXY = 8
#: Proxies a pull starts at most.
MAX_PROXIES = 4

ProgressCallback = Callable[[PullEvent], object]


async def _fetch_config(
    proxy: AsyncImageProxy, image: OpenedImage, descriptor: Descriptor
) -> bytes:
    """Return the config blob's exact bytes (docs/protocol.md, Observed: configuration bytes)."""
    try:
        async with await proxy.get_descriptor(image, descriptor) as blob:
            return await blob.read()
    except RequestError as first:
        # A manifest converted to OCI can name a config digest the source lacks;
        # GetFullConfig then returns exactly those bytes.
        data = await proxy.fetch_config_raw(image)
        if Digest.from_bytes(data) != descriptor.digest:
            raise first
        return data


async def layer_info(
    proxy: AsyncImageProxy, image: OpenedImage, manifest: ImageManifest
) -> list[ConvertedLayerInfo] | None:
    """Return GetLayerInfo's answer where the proxy can give it, else None.

    None before protocol 0.2.5, and on 0.2.5 and 0.2.6 for images whose answer
    overflows the inline reply's packet (the layers' bytes then tell their types).
    """
    if not manifest.layers:
        return None
    try:
        return await proxy.get_layer_info(image)
    except ProtocolError as exc:
        if proxy.supports("GetLayerInfoPiped") or "packet limit" not in str(exc):
            raise
        _log.debug("no layer information for %s: %s", image.reference, exc)
        return None


async def _open_layer(
    proxy: AsyncImageProxy,
    image: OpenedImage,
    layer: Descriptor,
    has_info: bool,
) -> AsyncBlob:
    try:
        return await proxy.get_descriptor(image, layer)
    except ImageNotFoundError as exc:
        raise unavailable(image.reference, layer, exc, proxy.protocol_version, has_info) from exc


class AsyncPull:
    """One pull under way: its image sources, its destination, what it fetched."""

    def __init__(
        self,
        sources: list[AsyncImageSource],
        layout: Layout,
        progress: ProgressCallback | None,
    ) -> None:
        self.sources = sources
        self.layout = layout
        self.progress = progress
        self.policy = retry_policy(sources[0].config)
        self.fetched: list[Descriptor] = []
        self.retries: list[BlobRetrying] = []

    def report(self, event: PullEvent) -> None:
        """Hand ``event`` to the progress callback, if there is one."""
        if self.progress is not None:
            self.progress(event)

    async def fetch_all(
        self, blobs: tuple[Descriptor, ...], present: set[Digest], has_info: bool, jobs: int
    ) -> None:
        """Fetch the blobs not ``present`` (the config first), ``jobs`` at a time."""

        def task(index: int, descriptor: Descriptor) -> Callable[[], AsyncResult[None]]:
            async def run() -> None:
                if descriptor.digest in present:
                    self.report(BlobFinished(descriptor, skipped=True))
                    return
                self.report(BlobStarted(descriptor))
                await self._fetch(index, descriptor, has_info)
                self.fetched.append(descriptor)
                self.report(BlobFinished(descriptor, skipped=False))

            return run

        def abort() -> None:
            # The blocking twin's threads cannot be cancelled: stopping our skopeos
            # makes the blobs they stream end at once.
            for source in self.sources:
                source.stop()

        await Backend.run_all([task(i, blob) for i, blob in enumerate(blobs)], jobs, abort)

    async def _fetch(self, index: int, descriptor: Descriptor, has_info: bool) -> None:
        source = self.sources[index % len(self.sources)]

        async def attempt() -> None:
            if index == 0:
                data = await _fetch_config(source.proxy, source.image, descriptor)
                self.layout.write_blob(descriptor.digest, data)
                self.report(BlobProgress(descriptor, len(data), len(data)))
            else:
                blob = await _open_layer(source.proxy, source.image, descriptor, has_info)
                await _fetch_layer(blob, descriptor, self.layout, self.progress)

        await retry_transfer(attempt, descriptor, source, self.policy, self.progress, self.retries)


async def pull_async(
    reference: str,
    dest: str | os.PathLike[str],
    *,
    tag: str | None = None,
    config: ImageProxyConfig | None = None,
    jobs: int = 6,
    progress: ProgressCallback | None = None,
    proxy: AsyncImageProxy | None = None,
) -> PullResult:
    """Fetch the image ``reference`` into the OCI image layout directory ``dest``.

    ``dest`` is a directory, or skopeo's ``"oci:DIR[:TAG]"`` spelling of one. The
    image is always tagged, so it can be used as ``oci:DIR:TAG``: ``tag`` (or the
    destination's TAG), else the tag of ``reference`` (``latest`` for a registry
    name without one), else the image's own tag in an archive or layout, else
    ``latest``; ``PullResult.tag_origin`` says which.

    Every layer is stored as the source serves it, under a media type its bytes
    prove (a plain tar, gzip or zstd). Where the proxy's manifest says otherwise (a
    ``docker-archive:`` labels plain tar layers gzip; a ``containers-storage:`` image
    stored from compressed layers serves them uncompressed, under the digests its
    layer information names), the layout gets a corrected manifest, annotated with
    the source's manifest digest; ``PullResult.rewritten`` tells. The configuration
    is stored unchanged, so its diff_ids stay true.

    Blobs already in ``dest`` with the right digest are not fetched again; each new
    blob is verified before it gets its digest name, and ``index.json`` is written
    last, so an interrupted pull can simply be run again. A pull of what is already
    stored writes nothing. ``jobs`` blobs are fetched at once (by default six, as
    ``skopeo copy`` fetches layers), over one proxy or, above ``STREAMS_PER_PROXY``
    (eight), over a few. An open ``proxy`` may be given to reuse
    it (``config`` is then ignored and ``jobs`` share it).

    A blob whose transfer fails for a reason that may pass is fetched again, as the
    configuration's ``retry_times`` and ``retry_delay`` say; each retry is a
    :class:`BlobRetrying` event and is listed in the result. A proxy of the pull's
    own that can no longer serve requests is replaced for the retry.

    Raises:
        ValueError: ``jobs`` below 1, or a destination TAG that contradicts ``tag``.
        LayerUnavailableError: the source cannot serve a layer through this skopeo.
        CompressionMismatchError: a layer's bytes contradict its media type (see
            :func:`~containers_image_proxy.detect_compression`).
        VerificationError: a blob does not match its descriptor, or an uncompressed
            layer's digest is not its diff_id.
        LayoutError: ``dest`` cannot hold an OCI layout.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    dest, tag = parse_destination(dest, tag)
    count = 1 if proxy is not None else min(MAX_PROXIES, math.ceil(jobs / STREAMS_PER_PROXY))
    async with contextlib.AsyncExitStack() as stack:
        sources = [
            await stack.enter_async_context(AsyncImageSource(reference, config, proxy))
            for _ in range(count)
        ]
        # Only once the image is open (and the signature policy has allowed it) is
        # anything written: a refused image leaves no trace in ``dest``.
        pull = AsyncPull(sources, Layout(dest), progress)
        tag, tag_origin = await Backend.run_blocking(resolve_tag, reference, tag)
        source_digest, raw = await sources[0].proxy.fetch_manifest_raw_oci(sources[0].image)
        manifest = decode_manifest(raw)
        infos = await layer_info(sources[0].proxy, sources[0].image, manifest)
        plan = fetch_plan(manifest, infos)
        blobs = (manifest.config, *plan)
        pull.report(PullStarted(reference, blobs))
        # Hashing what is already there reads whole layers: not on the event loop.
        present = await Backend.run_blocking(_present, pull.layout, blobs)
        await pull.fetch_all(blobs, present, infos is not None, jobs)
        stored = await Backend.run_blocking(
            _store_manifest, pull.layout, raw, manifest, plan, source_digest
        )
        await Backend.run_blocking(pull.layout.add_manifest, _index_entry(stored), tag)
    return PullResult(
        reference=reference,
        dest=pull.layout.root,
        tag=tag,
        manifest_digest=stored.digest,
        source_digest=source_digest,
        manifest=stored.manifest,
        fetched=tuple(blob.digest for blob in pull.fetched),
        skipped=tuple(blob.digest for blob in blobs if blob.digest in present),
        bytes_fetched=sum(blob.size for blob in pull.fetched),
        tag_origin=tag_origin,
        rewritten=stored.rewritten,
        retries=tuple(pull.retries),
    )


def _present(layout: Layout, blobs: tuple[Descriptor, ...]) -> set[Digest]:
    """Return the blobs already stored whole in ``layout``."""
    return {blob.digest for blob in blobs if layout.has_blob(blob.digest, blob.size)}


class _Stored(NamedTuple):
    """The manifest a pull stored: decoded, its digest and size, whether it was corrected."""

    manifest: ImageManifest
    digest: Digest
    size: int
    rewritten: bool
    platform: dict[str, str]


def _store_manifest(
    layout: Layout,
    raw: bytes,
    manifest: ImageManifest,
    plan: list[Descriptor],
    source_digest: Digest,
) -> _Stored:
    """Store the manifest, corrected where its layers' bytes say otherwise (blocking)."""
    config = layout.blob_path(manifest.config.digest).read_bytes()
    heads = [layout.read_head(layer.digest, PREFIX_SIZE) for layer in plan]
    layers = [
        true_layer(listed, descriptor, head)
        for listed, descriptor, head in zip(manifest.layers, plan, heads, strict=True)
    ]
    _check_diff_ids(config, layers)
    rewritten = layers != list(manifest.layers)
    if rewritten:
        raw = _corrected_manifest(raw, layers, source_digest)
        manifest = decode_manifest(raw)
    digest = Digest.from_bytes(raw)
    layout.put_blob(digest, raw)
    return _Stored(manifest, digest, len(raw), rewritten, _platform(config))


def _index_entry(stored: _Stored) -> dict[str, Any]:
    """Return the entry of index.json that names the stored manifest."""
    entry: dict[str, Any] = {
        "mediaType": stored.manifest.media_type or MEDIA_TYPE_IMAGE_MANIFEST,
        "digest": str(stored.digest),
        "size": stored.size,
    }
    if stored.platform:
        entry["platform"] = stored.platform
    return entry


def _check_diff_ids(config: bytes, layers: list[Descriptor]) -> None:
    try:
        diff_ids = decode_config(config).rootfs.diff_ids
    except ValueError:
        return  # not an image configuration (an artifact): nothing to check
    if len(diff_ids) == len(layers):
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            check_uncompressed(layer, diff_id)


def _corrected_manifest(raw: bytes, layers: list[Descriptor], source_digest: Digest) -> bytes:
    """Return the manifest ``raw`` with true layer descriptors and the source's digest noted."""
    document = json.loads(raw)
    for entry, layer in zip(document["layers"], layers, strict=True):
        if entry.get("digest") != layer.digest:
            entry.pop("urls", None)
        entry["mediaType"] = layer.media_type
        entry["digest"] = str(layer.digest)
        entry["size"] = layer.size
    annotations = document.get("annotations") or {}
    annotations[SOURCE_DIGEST] = str(source_digest)
    document["annotations"] = annotations
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _platform(config: bytes) -> dict[str, str]:
    try:
        parsed = decode_config(config)
    except ValueError:
        return {}
    platform = {"architecture": parsed.architecture, "os": parsed.os}
    if parsed.variant:
        platform["variant"] = parsed.variant
    return platform


async def _fetch_layer(
    blob: AsyncBlob,
    descriptor: Descriptor,
    layout: Layout,
    progress: ProgressCallback | None,
) -> None:
    try:
        with layout.new_blob(descriptor.digest) as out:
            written = await blob.copy_to(out, blob_progress(descriptor, progress))
            if written != descriptor.size:
                raise VerificationError(
                    f"blob {descriptor.digest}: got {written} of {descriptor.size} bytes"
                )
    finally:
        await blob.aclose()


async def stream_layers_async(
    reference: str,
    consume: Callable[[Descriptor, AsyncBlob], AsyncResult[object]],
    *,
    config: ImageProxyConfig | None = None,
    proxy: AsyncImageProxy | None = None,
    on_retry: RetryCallback | None = None,
) -> list[Descriptor]:
    """Hand each layer of ``reference`` to ``consume`` as a verified stream, in order.

    Each descriptor handed out states what the stream holds: layers are fetched by
    the digests the source's layer information names (protocol 0.2.5+), and the
    media type is the one the first bytes prove (a plain tar, gzip or zstd; see
    :func:`pull_async`), which may differ from the manifest's. Nothing touches the
    disk. Whatever ``consume`` leaves unread is drained, so that every layer is
    verified whole; its errors are raised from here. A transfer that fails for a
    reason that may pass is resumed where it stopped, as often as the
    configuration's ``retry_times`` allows (each retry goes to ``on_retry``), the
    bytes already handed out being checked against the new transfer. Returns the
    descriptors handed out.

    Raises:
        LayerUnavailableError: the source cannot serve a layer through this skopeo.
        CompressionMismatchError: a layer's bytes contradict its media type.
    """
    async with AsyncImageSource(reference, config, proxy) as source:
        policy = retry_policy(source.config)
        _, manifest = await source.proxy.fetch_manifest(source.image)
        infos = await layer_info(source.proxy, source.image, manifest)
        handed: list[Descriptor] = []
        for listed, fetched in zip(manifest.layers, fetch_plan(manifest, infos), strict=True):
            blob = AsyncResumingBlob(source, fetched, policy, on_retry)
            try:
                await blob.open()
            except ImageNotFoundError as exc:
                raise unavailable(
                    reference, fetched, exc, source.proxy.protocol_version, infos is not None
                ) from exc
            async with blob:
                layer = true_layer(listed, fetched, await blob.peek(PREFIX_SIZE))
                await consume(layer, blob)
                if not blob.closed:
                    with open(os.devnull, "wb") as sink:
                        await blob.copy_to(sink)
            handed.append(layer)
        return handed
