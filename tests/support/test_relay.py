"""Unit tests of the fault relay (tests/support/relay.py) against a small TCP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.images import random_bytes
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

PAYLOAD = random_bytes(1 << 20, seed=77)


class Server:
    """A threaded TCP server on 127.0.0.1.

    ``mode="serve"``: waits for a request (any bytes), sends ``payload``, closes.
    (A server that spoke first could reset a connection before the client's
    connect() returned, which would make the cut tests racy.)
    ``mode="echo"``: sends back whatever arrives, until end-of-file.
    """

    def __init__(self, mode: str, payload: bytes = PAYLOAD) -> None:
        self.mode = mode
        self.payload = payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.stopping = False
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.errors: list[BaseException] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.stopping:
                    sock.close()
                    return
                self.accepted += 1
                self.socks.append(sock)
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.mode == "serve":
                sock.recv(1024)
                sock.sendall(self.payload)
                sock.shutdown(socket.SHUT_WR)
            else:
                while data := sock.recv(65536):
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if not self.stopping:
                self.errors.append(exc)

    def close(self) -> None:
        with self.lock:
            self.stopping = True
        # Wake accept() by connecting once, then close everything.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
            pass
        self.acceptor.join(5)
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def serve() -> Iterator[Server]:
    server = Server("serve")
    yield server
    server.close()


@pytest.fixture
def echo() -> Iterator[Server]:
    server = Server("echo")
    yield server
    server.close()


REQUEST = b"GET\n"


def _connect(relay: Relay, timeout: float = 5.0, request: bool = False) -> socket.socket:
    """A connection through ``relay``; ``request`` sends a request to a serve server."""
    host, port = relay.address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    if request:
        sock.sendall(REQUEST)
    return sock


def _recv_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the end; and how it ended ("eof", "reset" or "timeout")."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        except TimeoutError:
            return b"".join(chunks), "timeout"
        if not chunk:
            return b"".join(chunks), "eof"
        chunks.append(chunk)


def _round_trip(sock: socket.socket, message: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = sock.recv(len(message) - len(got))
        assert chunk, "connection closed"
        got += chunk
    assert got == message
    return time.monotonic() - start


def test_pass_through_is_exact(serve: Server) -> None:
    with Relay(("127.0.0.1", serve.port)) as relay:
        assert relay.address == f"127.0.0.1:{relay.port}"
        for _ in range(3):
            with _connect(relay, request=True) as sock:
                data, end = _recv_all(sock)
            assert end == "eof"
            assert data == PAYLOAD
        assert relay.connections == 3
        assert relay.bytes_down == 3 * len(PAYLOAD)
        assert relay.bytes_up == 3 * len(REQUEST)


def test_echo_both_directions(echo: Server) -> None:
    message = random_bytes(300_000, seed=5)
    with Relay(f"127.0.0.1:{echo.port}") as relay, _connect(relay) as sock:

        def send() -> None:
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        data, end = _recv_all(sock)
        sender.join()
        assert (data, end) == (message, "eof")
        assert relay.bytes_up == relay.bytes_down == len(message)


def test_concurrent_connections(serve: Server) -> None:
    results: list[bytes] = []

    def fetch() -> None:
        with _connect(relay, request=True) as sock:
            results.append(_recv_all(sock)[0])

    with Relay(("127.0.0.1", serve.port), latency=0.01) as relay:
        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [PAYLOAD] * 8
        assert relay.connections == 8


def test_latency_is_added(echo: Server) -> None:
    with Relay(("127.0.0.1", echo.port)) as relay, _connect(relay) as sock:
        clean = min(_round_trip(sock) for _ in range(3))
        relay.set_faults(latency=0.1)
        slow = min(_round_trip(sock) for _ in range(3))
    assert clean < 0.05
    assert 0.2 <= slow < 0.5  # 100 ms each way


def test_latency_keeps_order(echo: Server) -> None:
    with Relay(("127.0.0.1", echo.port), latency=0.02) as relay, _connect(relay) as sock:
        sent = b"".join(i.to_bytes(4, "big") for i in range(2000))
        for i in range(0, len(sent), 400):
            sock.sendall(sent[i : i + 400])
        sock.shutdown(socket.SHUT_WR)
        data, end = _recv_all(sock)
    assert (data, end) == (sent, "eof")


def test_bandwidth_cap(serve: Server) -> None:
    with Relay(("127.0.0.1", serve.port)) as relay:
        start = time.monotonic()
        with _connect(relay, request=True) as sock:
            assert _recv_all(sock) == (PAYLOAD, "eof")
        fast = time.monotonic() - start
        relay.set_faults(bandwidth=2 << 20)
        start = time.monotonic()
        with _connect(relay, request=True) as sock:
            assert _recv_all(sock) == (PAYLOAD, "eof")
        capped = time.monotonic() - start
    assert fast < 0.3
    assert 0.4 <= capped < 1.5  # 1 MiB at 2 MiB/s: 0.5 s


@pytest.mark.parametrize("n", [0, 1, 1000, 65536, 300_001])
def test_cut_after_delivers_exactly_n_bytes(serve: Server, n: int) -> None:
    with Relay(("127.0.0.1", serve.port), cut_after=n) as relay:
        with _connect(relay, request=True) as sock:
            data, end = _recv_all(sock)
        assert data == PAYLOAD[:n]
        assert end in ("reset", "eof")
        assert relay.cuts == 1
        assert relay.bytes_down == n
        deadline = time.monotonic() + 2
        while relay.active_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.active_connections == 0


def test_cut_sends_a_reset(serve: Server) -> None:
    with (
        Relay(("127.0.0.1", serve.port), cut_after=10) as relay,
        _connect(relay, request=True) as sock,
    ):
        time.sleep(0.2)  # the cut has happened: the reset is already here
        assert sock.recv(100) == PAYLOAD[:10]
        with pytest.raises(ConnectionResetError):
            sock.recv(100)


@pytest.mark.parametrize("n", [0, 5000])
def test_stall_after_delivers_n_bytes_then_nothing(serve: Server, n: int) -> None:
    with Relay(("127.0.0.1", serve.port), stall_after=n) as relay:
        with _connect(relay, timeout=0.5, request=True) as sock:
            data, end = _recv_all(sock)
            assert (data, end) == (PAYLOAD[:n], "timeout")
            assert relay.active_connections == 1  # still open
            # Stalled from the start: not even the request went through.
            assert relay.bytes_up == (0 if n == 0 else len(REQUEST))
            relay.set_faults()  # a stalled connection stays stalled
            data, end = _recv_all(sock)
            assert (data, end) == (b"", "timeout")
        # New connections are clean again.
        with _connect(relay, request=True) as sock:
            assert _recv_all(sock) == (PAYLOAD, "eof")


def test_live_faults_apply_to_existing_connections(echo: Server) -> None:
    with Relay(("127.0.0.1", echo.port)) as relay, _connect(relay, timeout=0.5) as sock:
        assert _round_trip(sock) < 0.05
        relay.set_faults(latency=0.15)
        assert _round_trip(sock) >= 0.3
        relay.set_faults()
        assert _round_trip(sock) < 0.05
        # stall_after counts from the moment it is set on an existing connection.
        relay.set_faults(stall_after=6)
        assert _round_trip(sock, b"abcdef") < 0.05
        sock.sendall(b"more")
        with pytest.raises(TimeoutError):
            sock.recv(10)


def test_live_cut_on_existing_connection(echo: Server) -> None:
    with Relay(("127.0.0.1", echo.port)) as relay, _connect(relay) as sock:
        _round_trip(sock, b"x" * 100)
        relay.set_faults(cut_after=3)
        sock.sendall(b"hello")
        data, end = _recv_all(sock)
        assert data == b"hel"
        assert end in ("reset", "eof")
        assert relay.bytes_down == 103


def test_refused_target_resets_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on ``port`` now.
    with Relay(("127.0.0.1", port)) as relay:
        try:
            with _connect(relay) as sock:
                data, end = _recv_all(sock)
        except ConnectionResetError:  # the reset can beat connect() back to the caller
            data, end = b"", "reset"
        assert data == b""
        assert end in ("reset", "eof")


def test_close_leaks_nothing(serve: Server, echo: Server) -> None:
    threads_before = set(threading.enumerate())
    relay = Relay(("127.0.0.1", serve.port), stall_after=1000)
    clients = [_connect(relay, request=True) for _ in range(3)]
    time.sleep(0.2)
    assert relay.active_connections == 3
    relay.close()
    relay.close()  # idempotent
    for sock in clients:
        data, end = _recv_all(sock)
        assert data == PAYLOAD[:1000]
        assert end in ("reset", "eof")
        sock.close()
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(OSError):
        _connect(relay, timeout=1).close()


def test_bad_faults_are_refused(serve: Server) -> None:
    with Relay(("127.0.0.1", serve.port)) as relay:
        with pytest.raises(ValueError):
            relay.set_faults(latency=-1)
        with pytest.raises(ValueError):
            relay.set_faults(bandwidth=0)
        with pytest.raises(ValueError):
            relay.set_faults(cut_after=-1)


async def test_works_under_an_asyncio_test(serve: Server) -> None:
    """The relay has its own loop: a test's loop doing async I/O through it is fine."""
    with Relay(("127.0.0.1", serve.port), latency=0.01) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(REQUEST)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    assert data == PAYLOAD


def test_max_cuts_cuts_only_the_first_connections(serve: Server) -> None:
    with Relay(("127.0.0.1", serve.port), cut_after=1000, max_cuts=2) as relay:
        for _ in range(2):
            with _connect(relay, request=True) as sock:
                data, end = _recv_all(sock)
            assert data == PAYLOAD[:1000]
            assert end in ("reset", "eof")
        with _connect(relay, request=True) as sock:
            assert _recv_all(sock) == (PAYLOAD, "eof")
        assert relay.cuts == 2
        assert len(relay.cut_times) == 2
        assert relay.cut_times[0] <= relay.cut_times[1] <= time.monotonic()


def test_pause_holds_data_until_cleared(serve: Server) -> None:
    with Relay(("127.0.0.1", serve.port), pause_after=5000) as relay:
        with _connect(relay, timeout=0.5, request=True) as sock:
            data, end = _recv_all(sock)
            assert (data, end) == (PAYLOAD[:5000], "timeout")
            relay.set_faults()  # unlike a stall, a pause ends
            sock.settimeout(5)
            rest, end = _recv_all(sock)
        assert data + rest == PAYLOAD
        assert end == "eof"
        assert relay.cuts == 0
