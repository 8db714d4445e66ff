"""The decisions behind probing silent blobs and retrying failed ones, without I/O.

``PipeWatch`` says when a silent pipe is probed with FinishPipe and when it has
stalled; ``is_transient`` which failures may pass; ``RetryPolicy`` how often and
after how long a blob is tried again. The messages below are the ones skopeo
1.9.3 and a current upstream build gave for a reset connection (seen through
tests/support/relay.py), and containers/image's wording for HTTP failures.
"""

from __future__ import annotations

import math

import pytest

from containers_image_proxy import (
    BlobVerificationError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxyConfig,
    ProxyExitedError,
    RequestError,
    StallTimeoutError,
    VerificationError,
)
from containers_image_proxy import _protocol as proto
from containers_image_proxy._retry import MAX_BACKOFF, RetryPolicy
from containers_image_proxy.config import build_command
from containers_image_proxy.oci import Digest

DIGEST = Digest("sha256:" + "ab" * 32)


class Clock:
    """A controllable time.monotonic for Transfer.idle()."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("containers_image_proxy._protocol.time.monotonic", fake)
    return fake


def _watch(
    clock: Clock, probe: float | None, stall: float | None, **kw: bool
) -> tuple[proto.PipeWatch, proto.Transfer]:
    transfer = proto.Transfer(DIGEST, 100, verify=False)
    return proto.PipeWatch(transfer, probe, stall, **kw), transfer


# --------------------------------------------------------------------------- PipeWatch


def test_probe_comes_before_the_stall(clock: Clock) -> None:
    watch, _ = _watch(clock, probe=3, stall=300)
    assert watch.timeout() == 3
    assert watch.silence() is proto.Silence.WAIT
    clock.now += 3
    assert watch.silence() is proto.Silence.PROBE
    watch.probe_sent()
    # Once FinishPipe is out, only the stall timeout is left, counted from the data.
    assert watch.timeout() == 297
    clock.now += 296.9
    assert watch.silence() is proto.Silence.WAIT
    clock.now += 0.1
    assert watch.silence() is proto.Silence.STALL
    assert watch.timeout() == 0


def test_data_restarts_the_count(clock: Clock) -> None:
    watch, transfer = _watch(clock, probe=3, stall=10)
    clock.now += 2.5
    transfer.update(b"x" * 10)
    clock.now += 2.5
    assert watch.silence() is proto.Silence.WAIT
    assert watch.timeout() == pytest.approx(0.5)


def test_busy_proxy_defers_the_probe(clock: Clock) -> None:
    watch, _ = _watch(clock, probe=3, stall=300)
    clock.now += 3
    assert watch.silence() is proto.Silence.PROBE
    watch.probe_deferred()
    assert watch.silence() is proto.Silence.WAIT
    assert watch.timeout() == pytest.approx(proto.PROBE_RETRY)  # soon, but no busy loop
    clock.now += proto.PROBE_RETRY
    assert watch.silence() is proto.Silence.PROBE


@pytest.mark.parametrize(("probe", "stall"), [(None, 5.0), (5.0, 5.0), (6.0, 5.0)])
def test_no_probe_when_off_or_not_before_the_stall(
    clock: Clock, probe: float | None, stall: float
) -> None:
    watch, _ = _watch(clock, probe=probe, stall=stall)
    assert watch.timeout() == stall
    clock.now += stall
    assert watch.silence() is proto.Silence.STALL


def test_no_stall_timeout(clock: Clock) -> None:
    watch, _ = _watch(clock, probe=None, stall=None)
    assert watch.timeout() is None
    clock.now += 1e6
    assert watch.silence() is proto.Silence.WAIT
    probing, _ = _watch(clock, probe=2, stall=None)
    assert probing.timeout() == 2
    probing.probe_sent()
    assert probing.timeout() is None


def test_finish_pipe_already_out(clock: Clock) -> None:
    # A blob of unknown size sends FinishPipe first: there is nothing to probe.
    watch, _ = _watch(clock, probe=1, stall=4, probing=True)
    clock.now += 2
    assert watch.silence() is proto.Silence.WAIT
    assert watch.timeout() == 2


# --------------------------------------------------------------------------- is_transient

RESET_1_9_3 = "read tcp 127.0.0.1:46144->127.0.0.1:42367: read: connection reset by peer"
RESET_UPSTREAM = (
    "(heuristic tuning data: total 1999076 @1119.258 ms, last retry 999567 @4.969 ms,"
    " last progress @ 1.134 ms): " + RESET_1_9_3
)


@pytest.mark.parametrize(
    "message",
    [
        RESET_1_9_3,
        "unexpected EOF",
        "reading blob sha256:abc: EOF",
        "EOF",
        "dial tcp 127.0.0.1:5000: connect: connection refused",
        "read tcp 10.0.0.1:1->10.0.0.2:443: i/o timeout",
        "net/http: TLS handshake timeout",
        "net/http: timeout awaiting response headers",
        "fetching blob: received unexpected HTTP status: 503 Service Unavailable",
        "Error fetching blob: invalid status code from registry 502 (Bad Gateway)",
        "reading blob: 500 Internal Server Error",
        "received unexpected HTTP status: 429 Too Many Requests",
    ],
)
def test_transient_messages(message: str) -> None:
    assert proto.is_transient(RequestError("GetBlob", message))
    assert proto.is_transient(RequestError("GetBlob", message, "other"))


@pytest.mark.parametrize(
    "message",
    [
        "manifest unknown",
        "reading blob sha256:abc: unauthorized: authentication required",
        "received unexpected HTTP status: 404 Not Found",
        "received unexpected HTTP status: 403 Forbidden",
        "invalid status code from registry 401 (Unauthorized)",
        "blob size 5000 is not a valid size",
        "EOFError in a name",
        "write |1: broken pipe",
    ],
)
def test_lasting_messages(message: str) -> None:
    assert not proto.is_transient(RequestError("GetBlob", message))


def test_transient_by_kind() -> None:
    # The proxy's own code decides where it gives one.
    assert proto.is_transient(RequestError("GetBlob", RESET_UPSTREAM, "retryable"))
    assert proto.is_transient(RequestError("GetBlob", "whatever went wrong", "retryable"))
    assert not proto.is_transient(RequestError("GetBlob", "write |1: broken pipe", "EPIPE"))
    assert proto.is_transient(StallTimeoutError("blob x: no data arrived for 5 seconds"))
    # The data was wrong: trying again would hide it.
    assert not proto.is_transient(VerificationError("digest mismatch"))
    assert not proto.is_transient(
        BlobVerificationError("GetBlob", "corrupted blob: unexpected EOF", "retryable")
    )
    assert not proto.is_transient(ImageNotFoundError("GetBlob", "blob unknown: EOF"))
    assert not proto.is_transient(ProxyExitedError("GetBlob", -9, ""))
    assert not proto.is_transient(OSError("No space left on device"))


# --------------------------------------------------------------------------- RetryPolicy


def test_backoff_doubles_up_to_a_ceiling() -> None:
    policy = RetryPolicy(times=10)
    assert [policy.delay_before(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, MAX_BACKOFF, 30]
    assert RetryPolicy(times=3, delay=0.25).delay_before(5) == 0.25


def test_retries_are_bounded_and_only_for_transient_errors() -> None:
    policy = RetryPolicy(times=2)
    reset = RequestError("GetBlob", RESET_1_9_3)
    assert policy.should_retry(reset, 0)
    assert policy.should_retry(reset, 1)
    assert not policy.should_retry(reset, 2)
    assert not policy.should_retry(VerificationError("digest mismatch"), 0)
    assert not RetryPolicy(times=0).should_retry(reset, 0)


# --------------------------------------------------------------------------- configuration


def test_config_defaults() -> None:
    config = ImageProxyConfig()
    assert config.stall_timeout == 300
    assert config.probe_interval == 3
    assert config.retry_times == 3
    assert config.retry_delay is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_interval", 0),
        ("probe_interval", -1.0),
        ("probe_interval", math.nan),
        ("probe_interval", math.inf),
        ("probe_interval", True),
        ("probe_interval", "3"),
        ("retry_times", -1),
        ("retry_times", 1.5),
        ("retry_times", True),
        ("retry_times", 1000),
        ("retry_delay", -0.1),
        ("retry_delay", math.nan),
        ("retry_delay", 1e9),
        ("retry_delay", "1s"),
    ],
)
def test_config_rejects(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        build_command(ImageProxyConfig(**{field: value}), environ={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_interval", None),
        ("probe_interval", 0.5),
        ("retry_times", 0),
        ("retry_times", 100),
        ("retry_delay", 0),
        ("retry_delay", 2.5),
    ],
)
def test_config_accepts(field: str, value: object) -> None:
    # These settings are the client's: nothing of them reaches skopeo's command line.
    argv = build_command(ImageProxyConfig(**{field: value}), environ={}).argv  # type: ignore[arg-type]
    assert argv == ("skopeo", "experimental-image-proxy")
