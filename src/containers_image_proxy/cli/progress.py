"""Progress on standard error, drawn with rich: bars while data flows, lines for retries.

``pull`` and ``blob`` draw a bar per blob being fetched (and a total); ``unpack``
draws a bar per layer, of the compressed bytes read, with the tar entries applied
so far. The display appears when standard error is a terminal, or with
``--progress``; ``--quiet`` turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..events import (
    BlobFinished,
    BlobProgress,
    BlobRetrying,
    BlobStarted,
    PullEvent,
    PullStarted,
)
from ..oci import Descriptor, Digest
from .messages import describe
from .output import PROG, isatty

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = [
    "ProgressDisplay",
    "UnpackDisplay",
    "progress_display",
    "pull_events",
    "retried",
    "retries_json",
    "retry_line",
    "unpack_display",
]


def short(digest: Digest) -> str:
    """The first 12 hex digits of ``digest``, as bars and lines name a blob."""
    return digest.encoded[:12]


def retry_line(event: BlobRetrying) -> str:
    """The line that reports a retry."""
    return (
        f"retrying {short(event.descriptor.digest)} ({event.attempt}/{event.limit})"
        f" in {event.delay:g}s after: {describe(event.error)}"
    )


def retries_json(retries: Sequence[BlobRetrying]) -> list[dict[str, Any]]:
    """The retries of a result, as ``--json`` prints them."""
    return [
        {
            "digest": str(event.descriptor.digest),
            "attempt": event.attempt,
            "delay": event.delay,
            "error": describe(event.error),
        }
        for event in retries
    ]


def retried(retries: Sequence[BlobRetrying]) -> str:
    """What a summary line adds about retries (nothing when there were none)."""
    if not retries:
        return ""
    return f", {len(retries)} {'retry' if len(retries) == 1 else 'retries'}"


def pull_events(
    args: argparse.Namespace, display: Callable[[PullEvent], None] | None
) -> Callable[[PullEvent], None] | None:
    """The pull's progress callback: the display, or (without one) lines for retries."""
    if display is not None or args.display == "quiet":
        return display

    def report(event: PullEvent) -> None:
        if isinstance(event, BlobRetrying):
            print(f"{PROG}: {retry_line(event)}", file=sys.stderr, flush=True)

    return report


class ProgressDisplay:
    """Draws pull events with rich: one bar per blob being fetched, and a total.

    Callable with :data:`~containers_image_proxy.PullEvent` values, from any thread.
    The total counts only the bytes that are fetched (skipped blobs are taken off).
    A finished blob's bar is hidden, unless it is the only one. A retry prints a
    line and starts the blob's bar (and its share of the total) again.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._tasks: dict[Digest, TaskID] = {}
        self._received: dict[Digest, int] = {}
        self._total: TaskID | None = None
        self._total_bytes = 0

    def __call__(self, event: PullEvent) -> None:
        """Show ``event``; safe to call from several threads at once."""
        with self._lock:
            self._handle(event)

    def _advance(self, digest: Digest, count: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._received[digest] += count
            self._progress.advance(task, count)
        if self._total is not None:
            self._progress.advance(self._total, count)

    def _handle(self, event: PullEvent) -> None:
        progress = self._progress
        if isinstance(event, PullStarted):
            if len(event.blobs) > 1:
                self._total_bytes = event.total_bytes
                self._total = progress.add_task("total", total=self._total_bytes)
        elif isinstance(event, BlobStarted):
            digest = event.descriptor.digest
            if digest not in self._tasks:
                self._tasks[digest] = progress.add_task(short(digest), total=event.descriptor.size)
                self._received[digest] = 0
        elif isinstance(event, BlobProgress):
            self._advance(event.descriptor.digest, event.advance)
        elif isinstance(event, BlobRetrying):
            self._retrying(event)
        elif isinstance(event, BlobFinished):
            self._finished(event)

    def _retrying(self, event: BlobRetrying) -> None:
        digest = event.descriptor.digest
        lost = self._received.get(digest, 0)
        task = self._tasks.get(digest)
        if task is not None:
            self._received[digest] = 0
            self._progress.reset(
                task, description=f"{short(digest)} retry {event.attempt}/{event.limit}"
            )
        if self._total is not None and lost:
            self._progress.advance(self._total, -lost)
        self._progress.console.print(retry_line(event), highlight=False, markup=False)

    def _finished(self, event: BlobFinished) -> None:
        descriptor = event.descriptor
        if event.skipped:
            if self._total is not None:
                self._total_bytes = max(0, self._total_bytes - descriptor.size)
                self._progress.update(self._total, total=self._total_bytes)
            return
        missing = descriptor.size - self._received.get(descriptor.digest, descriptor.size)
        if missing > 0:
            self._advance(descriptor.digest, missing)
        task = self._tasks.pop(descriptor.digest, None)
        self._received.pop(descriptor.digest, None)
        if task is not None:
            self._progress.update(task, visible=self._total is None)


class UnpackDisplay:
    """Draws an unpack with rich: a bar per layer while it is read, then its line.

    The bar counts the layer's compressed bytes read from the source, and shows the
    tar entries applied so far; once the layer is applied and verified, the bar
    gives way to a line that stays. Safe to call from any thread.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._tasks: dict[Digest, TaskID] = {}

    def read(self, descriptor: Descriptor, done: int, entries: int) -> None:
        """``done`` bytes of the layer ``descriptor`` were read, ``entries`` applied."""
        with self._lock:
            task = self._tasks.get(descriptor.digest)
            if task is None:
                task = self._progress.add_task(
                    short(descriptor.digest), total=descriptor.size, entries=0
                )
                self._tasks[descriptor.digest] = task
            self._progress.update(task, completed=done, entries=entries)

    def finished(self, descriptor: Descriptor | None, line: str) -> None:
        """The layer is applied: drop its bar and print ``line`` above the others."""
        with self._lock:
            task = self._tasks.pop(descriptor.digest, None) if descriptor else None
            if task is not None:
                self._progress.remove_task(task)
            self._progress.console.print(line, highlight=False, markup=False)

    def retrying(self, event: BlobRetrying) -> None:
        """A layer's transfer failed and resumes: say so above the bars."""
        with self._lock:
            self._progress.console.print(
                f"{PROG}: {retry_line(event)}", highlight=False, markup=False
            )


@contextlib.contextmanager
def _rich_progress(args: argparse.Namespace, *, entries: bool = False) -> Iterator[Progress | None]:
    """A rich progress display on standard error, or None when there is to be none."""
    display: str | None = args.display
    if display == "quiet" or (display is None and not isatty(sys.stderr)):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    extra = (TextColumn("{task.fields[entries]:>7} entries"),) if entries else ()
    console = Console(stderr=True, force_terminal=True if display == "progress" else None)
    progress = Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        *extra,
        console=console,
        redirect_stdout=False,
    )
    with progress:
        yield progress


@contextlib.contextmanager
def progress_display(args: argparse.Namespace) -> Iterator[Callable[[PullEvent], None] | None]:
    """A pull-event callback drawing on standard error, or None when there is no display."""
    with _rich_progress(args) as progress:
        yield None if progress is None else ProgressDisplay(progress)


@contextlib.contextmanager
def unpack_display(args: argparse.Namespace) -> Iterator[UnpackDisplay | None]:
    """An unpack display on standard error, or None when there is none."""
    with _rich_progress(args, entries=True) as progress:
        yield None if progress is None else UnpackDisplay(progress)
