"""Errors, limits and results of unpacking images into root filesystems."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import (
    CompressionMismatchError,
    LayerFormatError,
    LimitExceededError,
    TarTrailerError,
    UnpackError,
    UnsafeLayerError,
)
from ..events import BlobRetrying
from ..oci import Descriptor, Digest, ImageConfiguration

__all__ = [
    "Compression",
    "CompressionMismatchError",
    "LayerFormatError",
    "LayerResult",
    "LimitExceededError",
    "TarTrailerError",
    "UnpackError",
    "UnpackLimits",
    "UnpackResult",
    "UnsafeLayerError",
]

#: How a layer blob is compressed.
Compression = Literal["none", "gzip", "zstd"]


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """Bounds that protect an unpack against size and entry-count bombs.

    ``None`` disables a bound. The defaults let any reasonable image through.
    """

    #: Decompressed tar bytes over all layers (file contents, headers, padding) plus
    #: the apparent size of sparse files.
    max_total_bytes: int | None = 64 << 30
    #: Tar entries over all layers (whiteouts included).
    max_entries: int | None = 4_000_000
    #: Bytes in an entry's path, or in a link's target.
    max_path_length: int = 4096
    #: Bytes of one PAX or GNU extended header (long names, xattrs), which the tar
    #: parser holds in memory.
    max_header_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_entries"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        for name in ("max_path_length", "max_header_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
        """Tar entries read over all layers."""
        return sum(layer.entries for layer in self.layers)

    @property
    def bytes(self) -> int:
        """Decompressed bytes read over all layers."""
        return sum(layer.bytes for layer in self.layers)
