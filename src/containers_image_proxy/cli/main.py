"""Running a command line: logging, signals, and how a failure ends the command.

A failure ends with one line on standard error (:func:`~.messages.error_message`)
and an exit status from the error's type (:func:`~.status.exit_code_for`);
``--debug`` adds the raw error and the traceback above that line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

from .commands import COMMANDS
from .messages import ErrorContext, error_message
from .output import PROG, OutputClosed, silence_stdout, write_stdout
from .parser import help_text, make_config, parse_args, read_password
from .status import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Terminated, exit_code_for

__all__ = ["main"]

_log = logging.getLogger("containers_image_proxy")


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (rich may redirect it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging(debug: bool) -> Iterator[None]:
    handler = _StderrHandler(logging.DEBUG if debug else logging.WARNING)
    handler.setFormatter(
        logging.Formatter(
            "%(name)s: %(message)s" if debug else f"{PROG}: %(levelname)s: %(message)s"
        )
    )
    previous = _log.level
    _log.addHandler(handler)
    if debug:
        _log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        _log.setLevel(previous)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _termination_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while a command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def error_context(args: argparse.Namespace) -> ErrorContext:
    """What the messages need to know of the command line."""
    if args.username is not None:
        credentials: str | None = f"--username {args.username}"
    elif args.authfile is not None:
        credentials = f"--authfile {args.authfile}"
    else:
        credentials = "--no-creds" if args.no_creds else None
    return ErrorContext(
        reference=getattr(args, "reference", None),
        credentials=credentials,
        skopeo=args.skopeo or "skopeo",
        stall_timeout=300.0 if args.stall_timeout is None else args.stall_timeout,
    )


def _report(exc: BaseException, args: argparse.Namespace) -> int:
    if args.debug:
        traceback.print_exception(exc, file=sys.stderr)
        print(f"{PROG}: debug: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    if isinstance(exc, KeyboardInterrupt):
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
    else:
        message = error_message(exc, error_context(args))
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return exit_code_for(exc)


def _run(args: argparse.Namespace) -> int:
    if args.command == "help":
        write_stdout(help_text(args.topic))
        return EXIT_OK
    (command,) = [command for command in COMMANDS if command.name == args.command]
    password = read_password(args, sys.stdin, os.environ)
    status = command.run(args, make_config(args, password))
    write_stdout("")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    with _logging(args.debug), _termination_signals():
        try:
            return _run(args)
        except (OutputClosed, BrokenPipeError):
            silence_stdout()
            return EXIT_ERROR
        except (Exception, KeyboardInterrupt) as exc:
            return _report(exc, args)
