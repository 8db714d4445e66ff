"""What unpacking did: per layer, and for the whole image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..events import BlobRetrying
from ..oci import Descriptor, Digest, ImageConfiguration
from .compression import Compression

__all__ = ["LayerResult", "UnpackResult"]


@dataclass(frozen=True, slots=True)
class LayerResult:
    """What applying one layer did."""

    descriptor: Descriptor | None
    """The layer's descriptor (``None`` for a stream applied without one)."""
    diff_id: Digest | None
    """The verified digest of the decompressed tar (``None`` when not verified)."""
    compression: Compression
    """The compression found in the blob (see :func:`open_layer` for the rule)."""
    entries: int
    """Tar entries read, whiteouts included."""
    bytes: int
    """Decompressed tar bytes read."""


@dataclass(frozen=True, slots=True)
class UnpackResult:
    """The outcome of :func:`unpack`."""

    reference: str
    dest: Path
    manifest_digest: Digest
    """Digest of the source's manifest (of the list, for a multi-platform image)."""
    config: ImageConfiguration
    layers: tuple[LayerResult, ...]
    rootless: bool
    """Whether ownership and device nodes were left out (not running as root)."""
    warnings: tuple[str, ...]
    """What was skipped: device nodes when rootless, xattrs the filesystem refused..."""
    retries: tuple[BlobRetrying, ...] = ()
    """Layer transfers that failed for a reason that may pass and were resumed."""

    @property
    def entries(self) -> int:
        """Return the tar entries read over all layers."""
        return sum(layer.entries for layer in self.layers)

    @property
    def bytes(self) -> int:
        """Return the decompressed bytes read over all layers."""
        return sum(layer.bytes for layer in self.layers)
