"""Unpacking a whole image into a root filesystem: ``unpack``, and the flow it
shares with ``unpack_async`` (:mod:`.image_async`).

Both run one flow, :func:`apply_image`, in the thread that applies the layers.
They differ only at its edges: how the manifest, the configuration and the layer
information are fetched (:func:`_fetch` here on a blocking proxy, on an
``AsyncImageProxy`` there), and how the reader thread opens a layer's blob
(:func:`_opener` here, through the event loop there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .._layers import fetch_plan, unavailable, with_compression
from .._retry import RetryPolicy
from .._sync.proxy import ImageProxy
from .._sync.pull import layer_info
from .._sync.retry import ImageSource, ResumingBlob, RetryCallback, retry_policy
from ..config import ImageProxyConfig
from ..errors import ImageNotFoundError, InvalidDocumentError
from ..events import BlobRetrying
from ..oci import ConvertedLayerInfo, Descriptor, Digest, ImageConfiguration, ImageManifest
from .dirfd import discard_tree
from .limits import UnpackLimits
from .pipeline import LayerReader, Opener
from .results import LayerResult, UnpackResult
from .writer import RootfsWriter

if TYPE_CHECKING:
    from .._async.retry import AsyncResumingBlob

__all__ = [
    "ImagePlan",
    "LayerCallback",
    "OpenedBlobs",
    "Stopped",
    "apply_image",
    "check_empty",
    "unpack",
    "unpack_blocking",
]

#: Called with each layer's result once it is applied and verified.
LayerCallback = Callable[[LayerResult], object]
#: Called as a layer is applied: the blob, its bytes read so far (compressed, as
#: fetched) and the layer's tar entries applied so far.
BytesCallback = Callable[[Descriptor, int, int], object]

#: A layer as the manifest lists it, as it is fetched (see ``_layers.fetch_plan``),
#: and its diff_id.
PlannedLayer = tuple[Descriptor, Descriptor, Digest]


class Stopped(Exception):
    """The unpack was cancelled from the event loop (``stop`` was set).

    Raised in the applying thread and turned into :class:`asyncio.CancelledError`
    by :func:`unpack_async`; it never reaches a caller, so it stays here rather
    than in ``errors``.
    """


def check_empty(dest: Path) -> None:
    """Check, before any work, that ``dest`` is missing or an empty directory.

    Raises:
        FileExistsError: it is not empty.
    """
    with contextlib.suppress(FileNotFoundError):
        if os.listdir(dest):
            raise FileExistsError(f"unpack destination {str(dest)!r} is not empty")


def _prepare(dest: Path) -> bool:
    """Make ``dest`` ready, missing or empty as it must be; tell whether it was created.

    Raises:
        FileExistsError: it is not empty.
    """
    try:
        dest.mkdir(parents=True)
    except FileExistsError:
        check_empty(dest)
        return False
    dest.chmod(0o755)  # as umoci makes a rootfs; a root entry in a layer may change it
    return True


class OpenedBlobs:
    """The layer blobs an unpack opened, each retried as its policy allows."""

    def __init__(self, reference: str, version: str, has_info: bool) -> None:
        self.reference = reference
        self.version = version
        self.has_info = has_info
        self.blobs: list[ResumingBlob | AsyncResumingBlob] = []

    @property
    def retries(self) -> tuple[BlobRetrying, ...]:
        """Return the retries of all the blobs, in order."""
        return tuple(retry for blob in self.blobs for retry in blob.retries)

    @contextlib.contextmanager
    def opening(
        self, blob: ResumingBlob | AsyncResumingBlob, descriptor: Descriptor
    ) -> Iterator[None]:
        """Note ``blob``; turn "not found" while it opens into the error that says why."""
        self.blobs.append(blob)
        try:
            yield
        except ImageNotFoundError as exc:
            raise unavailable(self.reference, descriptor, exc, self.version, self.has_info) from exc


class ImagePlan:
    """What the flow needs from the source: the documents, and the layers to fetch."""

    __slots__ = ("config", "digest", "layers", "opened", "reference")

    def __init__(
        self,
        reference: str,
        digest: Digest,
        config: ImageConfiguration,
        layers: list[PlannedLayer],
        opened: OpenedBlobs,
    ) -> None:
        self.reference = reference
        self.digest = digest
        self.config = config
        self.layers = layers
        self.opened = opened

    @classmethod
    def of(
        cls,
        reference: str,
        version: str,
        manifest: tuple[Digest, ImageManifest],
        config: ImageConfiguration,
        infos: list[ConvertedLayerInfo] | None,
    ) -> ImagePlan:
        """Check the documents against each other and plan the fetches.

        Raises:
            InvalidDocumentError: the manifest and the configuration disagree.
        """
        digest, listed = manifest
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(listed.layers):
            raise InvalidDocumentError(
                f"the manifest has {len(listed.layers)} layers but the configuration "
                f"lists {len(diff_ids)} diff_ids"
            )
        plan = fetch_plan(listed, infos)
        layers = list(zip(listed.layers, plan, diff_ids, strict=True))
        opened = OpenedBlobs(reference, version, infos is not None)
        return cls(reference, digest, config, layers, opened)


def _fetch(source: ImageSource) -> ImagePlan:
    proxy, image = source.proxy, source.image
    manifest = proxy.fetch_manifest(image)
    config = proxy.fetch_config(image)
    infos = layer_info(proxy, image, manifest[1])
    return ImagePlan.of(source.reference, proxy.protocol_version, manifest, config, infos)


class _Watch:
    """What the applying thread does with every chunk it takes from the reader.

    It notices a stop, between two chunks (at most 1 MiB of tar apart). It is also
    the place for progress within a layer: it hears of the blob bytes read and the
    tar bytes taken of each layer, in the thread that applies it, and
    ``writer.entries`` counts the entries applied.
    """

    def __init__(
        self,
        stop: threading.Event | None,
        on_bytes: BytesCallback | None = None,
        blobs: list[Descriptor] | None = None,
    ) -> None:
        self._stop = stop
        self._on_bytes = on_bytes
        self._blobs = blobs or []
        self._writer: RootfsWriter | None = None
        self._layer = -1
        self._base = 0

    def watch(self, writer: RootfsWriter) -> None:
        """Count entries applied by ``writer`` (for ``on_bytes``)."""
        self._writer = writer

    def start(self, layer: int) -> None:
        """The layer of index ``layer`` is about to be applied: report it at zero."""
        if self._on_bytes is not None and self._writer is not None:
            self._layer, self._base = layer, self._writer.entries
            self._on_bytes(self._blobs[layer], 0, 0)

    def done(self, layer: int, entries: int) -> None:
        """The layer is applied and verified: all its bytes were read."""
        if self._on_bytes is not None:
            blob = self._blobs[layer]
            self._on_bytes(blob, blob.size, entries)

    def __call__(self, layer: int, compressed: int, decompressed: int) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Stopped
        if self._on_bytes is None or self._writer is None:
            return
        if layer != self._layer:
            self._layer, self._base = layer, self._writer.entries
        self._on_bytes(self._blobs[layer], compressed, self._writer.entries - self._base)


def apply_image(
    image: ImagePlan,
    dest: Path,
    opener: Opener,
    limits: UnpackLimits | None,
    rootless: bool | None,
    progress: LayerCallback | None,
    stop: threading.Event | None,
    on_bytes: BytesCallback | None = None,
) -> UnpackResult:
    """Apply the layers of ``image`` to ``dest``: the flow of both unpacks, blocking.

    The reader thread fetches (through ``opener``) and decompresses the layers; this
    thread applies them, in order. On any failure the reader thread is stopped and
    waited for, and ``dest`` is emptied (and removed if this call created it).
    """
    created = _prepare(dest)
    try:
        with RootfsWriter(dest, limits=limits, rootless=rootless) as writer:
            fetched = [(blob, diff_id) for _, blob, diff_id in image.layers]
            max_bytes = writer.limits.max_total_bytes
            watch = _Watch(stop, on_bytes, [blob for blob, _ in fetched])
            watch.watch(writer)
            with LayerReader(opener, fetched, max_bytes, on_chunk=watch) as reader:
                results: list[LayerResult] = []
                for index, (listed, blob, diff_id) in enumerate(image.layers):
                    layer = reader.layer(diff_id)
                    watch.start(index)
                    applied = writer.apply(layer, descriptor=blob)
                    watch.done(index, applied.entries)
                    # The result names the blob with the media type its bytes prove.
                    true = with_compression(listed, blob, layer.compression)
                    results.append(dataclasses.replace(applied, descriptor=true))
                    if progress is not None:
                        progress(results[-1])
    except BaseException:
        discard_tree(dest, remove=created)
        raise
    return UnpackResult(
        reference=image.reference,
        dest=dest,
        manifest_digest=image.digest,
        config=image.config,
        layers=tuple(results),
        rootless=writer.rootless,
        warnings=tuple(writer.warnings),
        retries=image.opened.retries,
    )


def _opener(
    source: ImageSource, policy: RetryPolicy, on_retry: RetryCallback | None, opened: OpenedBlobs
) -> Opener:
    def open_layer(descriptor: Descriptor) -> ResumingBlob:
        # A failed transfer resumes where it stopped; the diff_id check covers the
        # bytes read before the failure, so they need no hash of their own.
        blob = ResumingBlob(source, descriptor, policy, on_retry, check_prefix=False)
        with opened.opening(blob, descriptor):
            return blob.open()

    return open_layer


def unpack_blocking(
    reference: str,
    dest: Path,
    config: ImageProxyConfig | None,
    proxy: ImageProxy | None,
    limits: UnpackLimits | None,
    rootless: bool | None,
    progress: LayerCallback | None,
    stop: threading.Event | None,
    on_retry: RetryCallback | None,
    on_bytes: BytesCallback | None = None,
) -> UnpackResult:
    check_empty(dest)
    with ImageSource(reference, config, proxy) as source:
        image = _fetch(source)
        opener = _opener(source, retry_policy(source.config), on_retry, image.opened)
        return apply_image(image, dest, opener, limits, rootless, progress, stop, on_bytes)


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
    ``on_bytes`` is called, from the calling thread, as each layer is applied: with
    the blob's descriptor, its bytes read so far and the layer's tar entries applied
    so far.
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
    return unpack_blocking(
        reference, Path(dest), config, proxy, limits, rootless, progress, None, on_retry, on_bytes
    )
