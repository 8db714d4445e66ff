"""Bounds that protect an unpack against size and entry-count bombs, and their count."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LimitExceededError

__all__ = ["Budget", "UnpackLimits", "check_length"]


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


class Budget:
    """The decompressed bytes and tar entries of an unpack so far, over all layers,
    held against its :class:`UnpackLimits`."""

    __slots__ = ("bytes", "entries", "limits")

    def __init__(self, limits: UnpackLimits) -> None:
        self.limits = limits
        self.bytes = 0
        self.entries = 0

    def charge(self, count: int) -> None:
        """Count ``count`` more decompressed bytes.

        Raises:
            LimitExceededError: past ``max_total_bytes``.
        """
        self.bytes += count
        limit = self.limits.max_total_bytes
        if limit is not None and self.bytes > limit:
            raise LimitExceededError(
                f"layers decompress to more than {limit} bytes",
                limit="max_total_bytes",
                value=limit,
            )

    def count_entry(self, name: str) -> None:
        """Count the tar entry ``name``.

        Raises:
            LimitExceededError: past ``max_entries``.
        """
        self.entries += 1
        limit = self.limits.max_entries
        if limit is not None and self.entries > limit:
            raise LimitExceededError(
                f"more than {limit} tar entries", limit="max_entries", value=limit, entry=name
            )


def check_length(value: str, limit: int, what: str, entry: str) -> None:
    """Check that ``value`` (a path, a link target) fits in ``limit`` bytes.

    Raises:
        LimitExceededError: it does not.
    """
    if len(value) * 4 > limit and len(value.encode("utf-8", "surrogateescape")) > limit:
        shown = f"{value[:80]!r}..." if len(value) > 80 else repr(value)
        raise LimitExceededError(
            f"{what} longer than {limit} bytes: {shown}",
            limit="max_path_length",
            value=limit,
            entry=entry,
        )
