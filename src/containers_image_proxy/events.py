"""Progress events of a pull, and its result.

A ``progress`` callable given to :func:`containers_image_proxy.pull` receives these
events in order for each blob (from several threads or tasks at once when blobs
are fetched in parallel): :class:`PullStarted` once, then per blob
:class:`BlobStarted`, any number of :class:`BlobProgress`, and :class:`BlobFinished`.
A blob whose transfer failed for a reason that may pass gets :class:`BlobRetrying`
before each new attempt, whose :class:`BlobProgress` counts from zero again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .errors import ImageProxyError
from .oci import Descriptor, Digest, ImageManifest


@dataclasses.dataclass(frozen=True, slots=True)
class PullStarted:
    """The manifest is known: these blobs (config first, then layers) make the image."""

    reference: str
    blobs: tuple[Descriptor, ...]

    @property
    def total_bytes(self) -> int:
        """The size of all blobs together."""
        return sum(blob.size for blob in self.blobs)


@dataclasses.dataclass(frozen=True, slots=True)
class BlobStarted:
    """A blob starts to download."""

    descriptor: Descriptor


@dataclasses.dataclass(frozen=True, slots=True)
class BlobProgress:
    """``advance`` more bytes of a blob arrived; ``received`` in all so far."""

    descriptor: Descriptor
    advance: int
    received: int


@dataclasses.dataclass(frozen=True, slots=True)
class BlobFinished:
    """A blob is stored and verified; ``skipped`` when it was already there."""

    descriptor: Descriptor
    skipped: bool


@dataclasses.dataclass(frozen=True, slots=True)
class BlobRetrying:
    """A blob's transfer failed with ``error``, which may pass: it starts again.

    ``attempt`` numbers the retries of this blob (1 for the first) up to ``limit``;
    the new attempt starts ``delay`` seconds later. What the failed attempt wrote is
    discarded (a stream already handed out is read again up to where it stopped,
    and checked to be the same).
    """

    descriptor: Descriptor
    attempt: int
    limit: int
    delay: float
    error: ImageProxyError


PullEvent = PullStarted | BlobStarted | BlobProgress | BlobRetrying | BlobFinished


def blob_progress(
    descriptor: Descriptor, progress: Callable[[PullEvent], object] | None
) -> Callable[[int], None]:
    """Return a byte-count callback (as ``Blob.copy_to`` takes) reporting :class:`BlobProgress`."""
    received = 0

    def advance(count: int) -> None:
        nonlocal received
        received += count
        if progress is not None:
            progress(BlobProgress(descriptor, count, received))

    return advance


@dataclasses.dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull stored.

    ``manifest_digest`` names the OCI manifest stored in the layout (the proxy
    converts other formats to OCI); ``source_digest`` is the digest the source gave
    for its own manifest. ``rewritten`` tells that the stored manifest corrects the
    proxy's layer descriptors (media types that contradict the bytes, digests the
    source cannot serve), and then carries ``source_digest`` as an annotation.
    ``tag`` is the image's tag in the layout and ``tag_origin`` where it came from
    (``"given"``, ``"reference"``, ``"image"`` for the archive's own, ``"default"``).
    ``fetched`` and ``skipped`` list blob digests; ``retries`` the failed transfers
    that were tried again.
    """

    reference: str
    dest: Path
    tag: str | None
    manifest_digest: Digest
    source_digest: Digest
    manifest: ImageManifest
    fetched: tuple[Digest, ...]
    skipped: tuple[Digest, ...]
    bytes_fetched: int
    tag_origin: str = "given"
    rewritten: bool = False
    retries: tuple[BlobRetrying, ...] = ()
