"""Spawning skopeo and keeping watch over it.

The child is started from a dedicated thread that then waits for it: Linux sends
the parent-death signal when the spawning *thread* ends, so that thread must live
exactly as long as the child. Waiting in a thread also avoids a SIGCHLD handler.
The child gets a process group of its own: a terminal's Ctrl-C (SIGINT to the
foreground group) then reaches only the Python program, which stops skopeo itself
after cleaning up, instead of skopeo dying first and looking like a crash.
A second thread drains the child's stderr into a bounded tail (and the debug log),
so a chatty child never blocks on a full pipe.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import BinaryIO

from ._command import ChildCommand
from ._fd import OwnedFd, close_all, write_all
from .errors import SpawnError

__all__ = ["ChildProcess", "socket_pair"]

_log = logging.getLogger("containers_image_proxy")
_child_log = logging.getLogger("containers_image_proxy.skopeo")

_STDERR_TAIL = 16 * 1024
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_prctl = _load_prctl()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: only an async-signal-safe call.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


#: util-linux's setpriv sets the parent-death signal and execs the command; spawning
#: through it lets CPython use vfork, which a ``preexec_fn`` rules out.
_SETPRIV = shutil.which("setpriv")


def _check_executable(command: str) -> None:
    """Raise :class:`SpawnError` as exec would, before a wrapper hides the failure."""
    path = command if os.sep in command else shutil.which(command)
    if path is None or not os.path.exists(path):
        error: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
        raise SpawnError(command, error)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), command)
        raise SpawnError(command, error)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Return a SOCK_SEQPACKET pair: (ours, the child's). Both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _private_file(contents: bytes | BinaryIO, minimum_fd: int) -> OwnedFd:
    """Copy ``contents`` into an unnamed memory file, numbered ``minimum_fd`` or above."""
    with OwnedFd(os.memfd_create("containers-auth.json", os.MFD_CLOEXEC)) as memfd:
        if isinstance(contents, bytes):
            write_all(memfd.fileno(), contents)
        else:
            # A seekable file is rewound, so the same config can start many proxies.
            start = contents.tell() if contents.seekable() else None
            while chunk := contents.read(65536):
                write_all(memfd.fileno(), chunk)
            if start is not None:
                contents.seek(start)
        return OwnedFd(fcntl.fcntl(memfd.fileno(), fcntl.F_DUPFD_CLOEXEC, minimum_fd))


class ChildProcess:
    """A running skopeo child: its pid, exit status, stderr tail and private files."""

    def __init__(self, command: ChildCommand, child_socket: socket.socket) -> None:
        """Start ``command`` with ``child_socket`` as its standard input.

        Raises:
            SpawnError: the command cannot be executed.
        """
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._tail_lock = threading.Lock()
        self._exited = threading.Event()
        self._stderr_done = threading.Event()
        self.returncode: int | None = None
        self._private_fds: dict[int, OwnedFd] = {}
        self._credentials = command.credentials
        argv = list(command.argv)
        try:
            for wanted, contents in command.fds.items():
                private = self._private_fds[wanted] = _private_file(contents, wanted)
                fd = private.fileno()
                if fd != wanted:
                    argv = [
                        a.replace(f"/proc/self/fd/{wanted}", f"/proc/self/fd/{fd}") for a in argv
                    ]
            self._proc = self._spawn(argv, child_socket)
        except BaseException:
            self.close_private_files()
            raise
        self.pid = self._proc.pid
        _log.debug("spawned skopeo pid=%d: %s", self.pid, " ".join(argv))
        self._debug = command.debug
        threading.Thread(
            target=self._drain_stderr, name=f"skopeo-{self.pid}-stderr", daemon=True
        ).start()

    def _spawn(self, argv: list[str], child_socket: socket.socket) -> subprocess.Popen[bytes]:
        started = threading.Event()
        outcome: list[subprocess.Popen[bytes] | BaseException] = []

        if _SETPRIV is not None:
            _check_executable(argv[0])
            command = [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
            preexec: Callable[[], None] | None = None
        else:
            command, preexec = argv, _die_with_parent

        def run() -> None:
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=child_socket.fileno(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=tuple(fd.fileno() for fd in self._private_fds.values()),
                    preexec_fn=preexec,
                    process_group=0,
                )
            except BaseException as exc:
                outcome.append(exc)
                started.set()
                return
            outcome.append(proc)
            started.set()
            self.returncode = proc.wait()
            self._exited.set()

        threading.Thread(target=run, name="skopeo-reaper", daemon=True).start()
        started.wait()
        result = outcome[0]
        if isinstance(result, OSError):
            raise SpawnError(argv[0], result) from result
        if isinstance(result, BaseException):
            raise result
        return result

    def _drain_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        try:
            while chunk := os.read(stream.fileno(), 65536):
                if self._debug:
                    for line in chunk.decode(errors="replace").splitlines():
                        _child_log.debug("%s", line)
                with self._tail_lock:
                    self._tail.append(chunk)
                    self._tail_size += len(chunk)
                    while self._tail_size - len(self._tail[0]) >= _STDERR_TAIL:
                        self._tail_size -= len(self._tail.popleft())
        finally:
            stream.close()
            self._stderr_done.set()

    def stderr_tail(self, wait: float = 0.0) -> str:
        """Return the last part of what the child wrote to stderr.

        ``wait`` gives the drain thread that long to reach end-of-file first.
        """
        if wait:
            self._stderr_done.wait(wait)
        with self._tail_lock:
            data = b"".join(self._tail)[-_STDERR_TAIL:]
        return data.decode(errors="replace")

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the child to exit; its status or None."""
        self._exited.wait(timeout)
        return self.returncode

    def has_exited(self) -> bool:
        """Return whether the child has exited (and was reaped)."""
        return self._exited.is_set()

    def stop(self, grace: float = 5.0) -> int | None:
        """Terminate the child, then kill it if it outlives ``grace`` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._exited.is_set():
                break
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass
            self._exited.wait(grace)
        return self.wait(grace)

    def set_registry_auth(self, contents: bytes) -> None:
        """Replace the private auth file's contents (skopeo rereads it per image)."""
        private = next(iter(self._private_fds.values()), None)
        if private is None:
            return
        os.ftruncate(private.fileno(), 0)
        os.pwrite(private.fileno(), contents, 0)

    @property
    def credentials(self) -> tuple[str, str] | None:
        """User name and password to write into the auth file, if any."""
        return self._credentials

    def close_private_files(self) -> None:
        """Close the parent's copies of the private files."""
        fds, self._private_fds = self._private_fds, {}
        close_all(fds.values())
