# Generated from src/containers_image_proxy/_async/pull.py by tools/gen_sync.py.
# Edit the source, not this file.
"""Pulling a whole image into an OCI layout, and streaming its layers.

Written once for asyncio (``pull_async``, ``stream_layers_async``); the blocking
``pull`` and ``stream_layers`` are generated from this file by tools/gen_sync.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable
from typing import Any

from .. import _protocol as proto
from .._backends import SyncBackend as Backend
from .._backends import SyncResult
from .._image import OpenedImage
from .._layout import Layout
from ..config import ImageProxyConfig
from ..errors import RequestError, VerificationError
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
from ..oci import MEDIA_TYPE_IMAGE_MANIFEST, Descriptor, Digest, decode_config, decode_manifest
from .proxy import Blob, ImageProxy
from .retry import (
    ImageSource,
    ResumingBlob,
    RetryCallback,
    retry_policy,
    retry_transfer,
)

__all__ = ["pull", "stream_layers"]

#: Blobs one proxy streams at once before a pull adds another proxy.
STREAMS_PER_PROXY = 4
#: Proxies a pull starts at most.
MAX_PROXIES = 4

ProgressCallback = Callable[[PullEvent], object]


def default_tag(reference: str) -> str | None:
    """The tag a reference names (``docker://x/y:TAG``, ``oci:DIR:TAG``), if any."""
    transport, _, rest = reference.partition(":")
    if transport == "docker":
        name = rest.removeprefix("//").split("@", 1)[0]
        last = name.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else "latest"
    if transport in ("oci", "oci-archive"):
        match = re.fullmatch(r"[^:]*:([A-Za-z0-9._-]+)", rest)
        return match.group(1) if match else None
    if transport == "docker-archive":
        tail = rest.split(":", 1)[1] if ":" in rest else ""
        return tail.rsplit(":", 1)[1] if ":" in tail.rsplit("/", 1)[-1] else None
    return None


def _fetch_config(proxy: ImageProxy, image: OpenedImage, descriptor: Descriptor) -> bytes:
    """The config blob's exact bytes (see PROTOCOL.md on converted manifests)."""
    try:
        with proxy.get_descriptor(image, descriptor) as blob:
            return blob.read()
    except RequestError as first:
        # A manifest converted to OCI can name a config digest the source lacks;
        # GetFullConfig then returns exactly those bytes.
        data = proxy.fetch_config_raw(image)
        if proto.sha256_digest(data) != descriptor.digest:
            raise first
        return data


def pull(
    reference: str,
    dest: str | os.PathLike[str],
    *,
    tag: str | None = None,
    config: ImageProxyConfig | None = None,
    jobs: int = 4,
    progress: ProgressCallback | None = None,
    proxy: ImageProxy | None = None,
) -> PullResult:
    """Fetch the image ``reference`` into the OCI image layout directory ``dest``.

    The result can be used as ``oci:DEST:TAG``; ``tag`` defaults to the tag of
    ``reference`` (``latest`` for a registry reference without one). Blobs already in
    ``dest`` with the right digest are not fetched again; each new blob is verified
    before it gets its digest name, and ``index.json`` is written last, so an
    interrupted pull can simply be run again. ``jobs`` blobs are fetched at once,
    over one proxy or, above ``STREAMS_PER_PROXY``, over a few. An open ``proxy``
    may be given to reuse it (``config`` is then ignored and ``jobs`` share it).
    A blob whose transfer fails for a reason that may pass is fetched again, as the
    configuration's ``retry_times`` and ``retry_delay`` say; each retry is a
    :class:`BlobRetrying` event and is listed in the result. A proxy of the pull's
    own that can no longer serve requests is replaced for the retry.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    layout = Layout(dest)
    tag = tag if tag is not None else default_tag(reference)
    retries: list[BlobRetrying] = []
    with contextlib.ExitStack() as stack:
        count = 1 if proxy is not None else min(MAX_PROXIES, math.ceil(jobs / STREAMS_PER_PROXY))
        sources = [stack.enter_context(ImageSource(reference, config, proxy)) for _ in range(count)]
        policy = retry_policy(sources[0].config)
        source_digest, raw = sources[0].proxy.fetch_manifest_raw_oci(sources[0].image)
        manifest = decode_manifest(raw)
        blobs = (manifest.config, *manifest.layers)
        if progress is not None:
            progress(PullStarted(reference, blobs))

        # Hashing what is already there reads whole layers: not on the event loop.
        present = Backend.run_blocking(_present, layout, blobs)
        fetched: list[Descriptor] = []

        def fetch(index: int, descriptor: Descriptor) -> None:
            if descriptor.digest in present:
                if progress is not None:
                    progress(BlobFinished(descriptor, skipped=True))
                return
            if progress is not None:
                progress(BlobStarted(descriptor))
            source = sources[index % len(sources)]

            def attempt() -> None:
                if index == 0:
                    data = _fetch_config(source.proxy, source.image, descriptor)
                    layout.write_blob(descriptor.digest, data)
                    if progress is not None:
                        progress(BlobProgress(descriptor, len(data), len(data)))
                else:
                    _fetch_layer(source.proxy, source.image, descriptor, layout, progress)

            retry_transfer(attempt, descriptor, source, policy, progress, retries)
            fetched.append(descriptor)
            if progress is not None:
                progress(BlobFinished(descriptor, skipped=False))

        def task(index: int, descriptor: Descriptor) -> Callable[[], SyncResult[None]]:
            def run() -> None:
                fetch(index, descriptor)

            return run

        def abort() -> None:
            # The blocking twin's threads cannot be cancelled: stopping our skopeos
            # makes the blobs they stream end at once.
            for source in sources:
                source.stop()

        Backend.run_all([task(i, blob) for i, blob in enumerate(blobs)], jobs, abort)

        config_blob = layout.blob_path(manifest.config.digest).read_bytes()
        platform = _platform(config_blob)
        manifest_digest = proto.sha256_digest(raw)
        layout.write_blob(manifest_digest, raw)
        entry: dict[str, Any] = {
            "mediaType": manifest.media_type or MEDIA_TYPE_IMAGE_MANIFEST,
            "digest": str(manifest_digest),
            "size": len(raw),
        }
        if platform:
            entry["platform"] = platform
        layout.add_manifest(entry, tag)
    return PullResult(
        reference=reference,
        dest=layout.root,
        tag=tag,
        manifest_digest=manifest_digest,
        source_digest=source_digest,
        manifest=manifest,
        fetched=tuple(d.digest for d in fetched),
        skipped=tuple(d.digest for d in blobs if d.digest in present),
        bytes_fetched=sum(d.size for d in fetched),
        retries=tuple(retries),
    )


def _present(layout: Layout, blobs: tuple[Descriptor, ...]) -> set[Digest]:
    """The blobs already stored whole in ``layout``."""
    return {blob.digest for blob in blobs if layout.has_blob(blob.digest, blob.size)}


def _platform(config: bytes) -> dict[str, str]:
    try:
        parsed = decode_config(config)
    except ValueError:
        return {}
    platform = {"architecture": parsed.architecture, "os": parsed.os}
    if parsed.variant:
        platform["variant"] = parsed.variant
    return platform


def _fetch_layer(
    proxy: ImageProxy,
    image: OpenedImage,
    descriptor: Descriptor,
    layout: Layout,
    progress: ProgressCallback | None,
) -> None:
    with layout.new_blob(descriptor.digest) as out:
        with proxy.get_descriptor(image, descriptor) as blob:
            written = blob.copy_to(out, blob_progress(descriptor, progress))
        if written != descriptor.size:
            raise VerificationError(
                f"blob {descriptor.digest}: got {written} of {descriptor.size} bytes"
            )


def stream_layers(
    reference: str,
    consume: Callable[[Descriptor, Blob], SyncResult[object]],
    *,
    config: ImageProxyConfig | None = None,
    proxy: ImageProxy | None = None,
    on_retry: RetryCallback | None = None,
) -> list[Descriptor]:
    """Hand each layer of ``reference`` to ``consume`` as a verified stream, in order.

    Nothing touches the disk. Whatever ``consume`` leaves unread is drained, so that
    every layer is verified whole; its errors are raised from here. A transfer that
    fails for a reason that may pass is resumed where it stopped, as often as the
    configuration's ``retry_times`` allows (each retry goes to ``on_retry``), the
    bytes already handed out being checked against the new transfer. Returns the
    layer descriptors.
    """
    with ImageSource(reference, config, proxy) as source:
        policy = retry_policy(source.config)
        _, manifest = source.proxy.fetch_manifest(source.image)
        for layer in manifest.layers:
            blob = ResumingBlob(source, layer, policy, on_retry).open()
            with blob:
                consume(layer, blob)
                if not blob.closed:
                    with open(os.devnull, "wb") as sink:
                        blob.copy_to(sink)
        return list(manifest.layers)
