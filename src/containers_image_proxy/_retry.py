"""When a failed blob transfer is tried again, and after how long (no I/O here).

``pull``, ``unpack`` and ``stream_layers`` retry a blob whose transfer failed for a
reason that may pass (:func:`~containers_image_proxy._protocol.is_transient`), a
bounded number of times, waiting longer before each new attempt. The loops that
do it live in ``_async/retry.py``; this module only decides.
"""

from __future__ import annotations

import dataclasses

from ._protocol import is_transient

__all__ = ["MAX_BACKOFF", "RetryPolicy"]

#: The longest wait of the exponential backoff, in seconds.
MAX_BACKOFF = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``times`` retries at most per blob; ``delay`` seconds before each, or, when
    ``delay`` is None, an exponential backoff: 1 s, 2 s, 4 s... up to :data:`MAX_BACKOFF`.
    """

    times: int = 3
    delay: float | None = None

    def delay_before(self, retry: int) -> float:
        """Return the seconds to wait before retry number ``retry`` (1 for the first)."""
        if self.delay is not None:
            return self.delay
        return min(MAX_BACKOFF, 2.0 ** (retry - 1))

    def should_retry(self, error: BaseException, retries_done: int) -> bool:
        """Return whether a transfer that failed with ``error`` after ``retries_done`` retries
        is tried again: the error must be transient and retries left."""
        return retries_done < self.times and is_transient(error)
