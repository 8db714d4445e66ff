"""Descriptor ownership, whole writes, splice and atomic files (``_fd``)."""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import stat
import threading
from pathlib import Path

import pytest

from containers_image_proxy._fd import (
    CHUNK_SIZE,
    OwnedFd,
    atomic_file,
    close_all,
    prepare_pipe,
    splice,
    write_all,
)

_F_GETPIPE_SZ = 1032


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_owned_fd_forgets_its_number_once_closed() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    owned = OwnedFd(read_end)
    assert owned.fileno() == read_end and not owned.closed
    owned.close()
    assert owned.closed and not is_open(read_end)
    # The kernel gives the number to the next descriptor; the owner never touches it.
    again, other = os.pipe()
    try:
        owned.close()
        with pytest.raises(ValueError, match="closed file descriptor"):
            owned.fileno()
        assert is_open(again)
    finally:
        os.close(again)
        os.close(other)


def test_owned_fd_refuses_a_negative_number() -> None:
    with pytest.raises(ValueError, match="not a file descriptor"):
        OwnedFd(-1)


def test_detach_hands_the_number_on() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    with OwnedFd(read_end) as owned:
        assert owned.detach() == read_end
    assert is_open(read_end)  # leaving the block closed nothing: it was handed on
    os.close(read_end)


def test_a_dropped_owner_closes_its_descriptor() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    OwnedFd(read_end)
    gc.collect()
    assert not is_open(read_end)


def test_close_all_closes_the_rest_after_a_failure() -> None:
    first, second = (OwnedFd(fd) for fd in os.pipe())
    os.close(first.fileno())  # someone else closed it: closing it again fails
    with pytest.raises(OSError) as info:
        close_all([first, second])
    assert info.value.errno == errno.EBADF
    assert first.closed and second.closed


def test_write_all_writes_past_a_full_pipe() -> None:
    read_end, write_end = os.pipe()
    data = os.urandom(3 * 65536 + 17)  # more than a default pipe holds at once
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write_all(write_end, data)
    finally:
        os.close(write_end)
        reader.join()
        os.close(read_end)
    assert bytes(received) == data


def test_prepare_pipe() -> None:
    read_end, write_end = os.pipe()
    with OwnedFd(read_end) as data, OwnedFd(write_end):
        prepare_pipe(data, large=True)
        assert not os.get_blocking(read_end)
        # Raised as far as this user may (the kernel caps it); never made smaller.
        assert fcntl.fcntl(read_end, _F_GETPIPE_SZ) >= min(CHUNK_SIZE, 65536)


def _pipe_with(data: bytes) -> tuple[OwnedFd, int]:
    read_end, write_end = os.pipe()
    write_all(write_end, data)
    source = OwnedFd(read_end)
    prepare_pipe(source)
    return source, write_end


def test_splice_moves_the_bytes_and_reports_them(tmp_path: Path) -> None:
    data = os.urandom(40_000)
    source, write_end = _pipe_with(data)
    os.close(write_end)
    pieces: list[int] = []
    with source, open(tmp_path / "out", "wb") as out:
        moved = splice(
            source,
            out.fileno(),
            len(data),
            wait=lambda: pytest.fail("a full pipe needs no wait"),
            moved=pieces.append,
            stop=threading.Event(),
        )
    assert moved == sum(pieces) == len(data)
    assert (tmp_path / "out").read_bytes() == data


def test_splice_pauses_when_wait_says_so(tmp_path: Path) -> None:
    source, write_end = _pipe_with(b"x" * 100)
    waits: list[int] = []

    def wait() -> bool:
        waits.append(1)
        return False

    with source, open(tmp_path / "out", "wb") as out:
        moved = splice(
            source, out.fileno(), 1000, wait=wait, moved=lambda n: None, stop=threading.Event()
        )
    os.close(write_end)
    assert moved == 100 and waits == [1]


def test_splice_into_an_append_only_file_is_refused(tmp_path: Path) -> None:
    source, write_end = _pipe_with(b"x" * 100)
    os.close(write_end)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with source:
            moved = splice(
                source, fd, 100, wait=lambda: True, moved=lambda n: None, stop=threading.Event()
            )
    finally:
        os.close(fd)
    assert moved == -1
    assert (tmp_path / "out").read_bytes() == b""


def test_splice_stops_when_asked(tmp_path: Path) -> None:
    source, write_end = _pipe_with(b"x" * 100)
    os.close(write_end)
    stop = threading.Event()
    stop.set()
    with source, open(tmp_path / "out", "wb") as out:
        assert splice(source, out.fileno(), 100, wait=lambda: True, moved=print, stop=stop) == 0


def test_atomic_file_replaces_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as out:
        out.write(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["index.json"]  # the temporary file is gone
    with atomic_file(path, mode=0o600, prefix=".1234-") as out:
        out.write(b"new")
        assert any(name.startswith(".1234-") for name in os.listdir(tmp_path))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["index.json"]


def test_atomic_file_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "no" / "file"):
        pass
