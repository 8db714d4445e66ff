"""Where the commands write: standard output, JSON, output files, notes on standard error.

An output file appears complete or not at all: it is written through
:func:`~containers_image_proxy._fd.atomic_file` (a temporary file beside it, then a
rename). What only a command line meets is handled here: devices and FIFOs such as
``/dev/null`` are written directly, a symbolic link is followed so the file it
points to is replaced, a directory is refused, and failures become exit status 6.
A reader that closes standard output early (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO, Final

from .._fd import atomic_file
from ..errors import ImageProxyError
from .status import EXIT_OUTPUT, CliError

__all__ = [
    "PROG",
    "OutputClosed",
    "atomic_output",
    "isatty",
    "note",
    "output_error",
    "print_json",
    "silence_stdout",
    "summary",
    "write_stdout",
]

#: The command's name, as messages start with it.
PROG: Final = "containers-image-proxy"


class OutputClosed(Exception):
    """Standard output (or an output pipe) was closed by its reader."""


def output_error(what: str, exc: OSError) -> CliError:
    """The error that reports a failed write to ``what``.

    Raises:
        OutputClosed: the reader closed the pipe (nothing is reported then).
    """
    if isinstance(exc, BrokenPipeError):
        raise OutputClosed from exc
    return CliError(f"cannot write {what}: {exc.strerror or exc}", EXIT_OUTPUT)


def silence_stdout() -> None:
    """Point standard output at /dev/null, so that exiting flushes nothing into a dead pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def write_stdout(data: bytes | str) -> None:
    """Write ``data`` to standard output and flush it."""
    try:
        if isinstance(data, str):
            sys.stdout.write(data)
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except OSError as exc:
        silence_stdout()
        raise output_error("to standard output", exc) from exc


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON."""
    write_stdout(json.dumps(value, indent=2) + "\n")


def note(text: str) -> None:
    """Tell the user something on standard error, whatever ``--quiet`` says."""
    print(f"{PROG}: note: {text}", file=sys.stderr, flush=True)


def summary(args: argparse.Namespace, text: str) -> None:
    """A summary line on standard error, unless ``--quiet``."""
    if args.display != "quiet":
        print(text, file=sys.stderr, flush=True)


def isatty(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (False for anything without a descriptor)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _existing(name: str, target: Path) -> os.stat_result | None:
    try:
        return target.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise output_error(name, exc) from exc


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(name: str) -> Iterator[BinaryIO]:
    """A file that replaces ``name`` once the block succeeds.

    A regular file keeps its permissions; a new one gets those the umask allows.
    Devices and FIFOs are written directly; symbolic links are followed.

    Raises:
        CliError: ``name`` is a directory, or cannot be written (exit status 6).
    """
    target = Path(os.path.realpath(name))
    existing = _existing(name, target)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise CliError(f"cannot write {name}: it is a directory", EXIT_OUTPUT)
    try:
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            with open(target, "wb") as direct:
                yield direct
            return
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else _new_file_mode()
        with atomic_file(target, mode=mode) as out:
            yield out
    except ImageProxyError:
        raise
    except OSError as exc:
        raise output_error(name, exc) from exc
