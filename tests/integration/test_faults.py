"""The client against a real registry behind a fault-injecting relay (tests/support/relay.py).

Every case checks what a user sees: correct, byte-exact data, or a clear
``ImageProxyError`` within a bounded time; never a hang, never wrong bytes handed
over as a success; and a proxy that still works for the next request whenever
skopeo itself survived. Process faults (SIGKILL of skopeo) go through the relay
too, whose latency or stall makes the moment of the kill deterministic.

Observed with skopeo 1.9.3 (protocol 0.2.3): OpenImage fetches the manifest
(GetManifest is then served from skopeo's cache, without network); the config and
each blob are fetched over the network when asked for, each blob on a connection
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    ImageProxyConfig,
    ImageProxyError,
    OpenedImage,
    ProxyExitedError,
    ProxyFailedError,
    RequestError,
    StallTimeoutError,
    VerificationError,
)
from containers_image_proxy.oci import Descriptor
from tests.support.registry import RegistryImage
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

Observe = Callable[[str], None]

#: A layer of big_layers_image is 3 MiB (plus tar headers); cut or stall inside it here.
MID_BLOB = 1_000_000


def _config(stall_timeout: float | None = 5.0) -> ImageProxyConfig:
    # A plain-HTTP registry needs --tls-verify=false.
    return ImageProxyConfig(insecure_skip_tls_verification=True, stall_timeout=stall_timeout)


def _layers(image: RegistryImage) -> dict[str, bytes]:
    return {digest: data for digest, _, _, data in image.image.layers}


def _read_blob(proxy: ImageProxy, img: OpenedImage, layer: Descriptor) -> bytes:
    """Read a blob in chunks (as a user would), so partial data is never lost."""
    chunks = []
    with proxy.get_descriptor(img, layer) as blob:
        while chunk := blob.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


async def _aread_blob(proxy: AsyncImageProxy, img: OpenedImage, layer: Descriptor) -> bytes:
    chunks = []
    async with await proxy.get_descriptor(img, layer) as blob:
        while chunk := await blob.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def _fetch_all(proxy: ImageProxy, relay: Relay, image: RegistryImage) -> None:
    """Open the image through ``relay``; check manifest, config and every layer."""
    expected = _layers(image)
    with proxy.open_image(relay.image_ref(image)) as img:
        digest, manifest = proxy.fetch_manifest(img)
        assert digest == image.image.manifest_digest
        # GetFullConfig re-serialises an OCI config: the exact bytes come from GetBlob.
        assert [str(d) for d in proxy.fetch_config(img).rootfs.diff_ids] == image.image.diff_ids
        assert _read_blob(proxy, img, manifest.config) == image.image.config
        for layer in manifest.layers:
            assert _read_blob(proxy, img, layer) == expected[str(layer.digest)]


async def _afetch_all(proxy: AsyncImageProxy, relay: Relay, image: RegistryImage) -> None:
    expected = _layers(image)
    async with await proxy.open_image(relay.image_ref(image)) as img:
        digest, manifest = await proxy.fetch_manifest(img)
        assert digest == image.image.manifest_digest
        config = await proxy.fetch_config(img)
        assert [str(d) for d in config.rootfs.diff_ids] == image.image.diff_ids
        assert await _aread_blob(proxy, img, manifest.config) == image.image.config
        for layer in manifest.layers:
            assert await _aread_blob(proxy, img, layer) == expected[str(layer.digest)]


@contextlib.contextmanager
def _watchdog(pid: int, seconds: float) -> Iterator[threading.Event]:
    """SIGKILL ``pid`` after ``seconds`` (a hang becomes a failure, not a stuck run)."""
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(seconds, kill)
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
        timer.join()


def _kill_later(pid: int, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def _check_killed(exc: ProxyExitedError, method: str) -> None:
    assert exc.method == method
    assert exc.returncode == -signal.SIGKILL
    assert f"during {method}" in str(exc)
    assert "signal 9" in str(exc)


def _finalize_after_kill(proxy: ImageProxy) -> None:
    # The death was already reported; finalize reports the status again.
    with pytest.raises(ProxyFailedError) as info:
        proxy.finalize()
    assert info.value.returncode == -signal.SIGKILL


async def _afinalize_after_kill(proxy: AsyncImageProxy) -> None:
    with pytest.raises(ProxyFailedError) as info:
        await proxy.finalize()
    assert info.value.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------- slow networks


@pytest.mark.reliability("fault", "registry behind 50 ms latency each way")
def test_latency(relay: Relay, big_registry_image: RegistryImage, observe: Observe) -> None:
    relay.set_faults(latency=0.05)
    with ImageProxy(_config()) as proxy:
        start = time.monotonic()
        with proxy.open_image(relay.image_ref(big_registry_image)):
            opened = time.monotonic() - start
        _fetch_all(proxy, relay, big_registry_image)
        elapsed = time.monotonic() - start
    assert opened >= 0.1  # at least one round trip
    observe(
        f"correct data (6 MiB) in {elapsed:.2f}s; OpenImage alone {opened:.2f}s"
        f" over {relay.connections} connections"
    )


@pytest.mark.reliability("fault", "registry behind a 4 MiB/s bandwidth cap")
def test_bandwidth_cap(relay: Relay, big_registry_image: RegistryImage, observe: Observe) -> None:
    expected = _layers(big_registry_image)
    with (
        ImageProxy(_config()) as proxy,
        proxy.open_image(relay.image_ref(big_registry_image)) as img,
    ):
        _, manifest = proxy.fetch_manifest(img)
        total = sum(layer.size for layer in manifest.layers)
        relay.set_faults(bandwidth=4 << 20)
        start = time.monotonic()
        for layer in manifest.layers:
            assert _read_blob(proxy, img, layer) == expected[str(layer.digest)]
        elapsed = time.monotonic() - start
    floor = total / (4 << 20)
    assert 0.9 * floor <= elapsed < 3 * floor + 2
    observe(
        f"correct data: {total / (1 << 20):.1f} MiB in {elapsed:.2f}s"
        f" ({total / elapsed / (1 << 20):.2f} MiB/s; the cap allows {floor:.2f}s at best)"
    )


# --------------------------------------------------------------------------- cut connections


@pytest.mark.reliability("fault", "connection reset during a layer download")
@pytest.mark.parametrize(
    "cut_after", [100, MID_BLOB, 3 << 20], ids=["in-headers", "mid-blob", "near-end"]
)
def test_cut_during_blob(
    relay: Relay, big_registry_image: RegistryImage, cut_after: int, observe: Observe
) -> None:
    stall = 2.0
    expected = _layers(big_registry_image)
    with ImageProxy(_config(stall)) as proxy:
        img = proxy.open_image(relay.image_ref(big_registry_image))
        _, manifest = proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        assert layer.size > cut_after  # the cut falls inside this blob's response
        relay.set_faults(cut_after=cut_after)
        start = time.monotonic()
        try:
            data = _read_blob(proxy, img, layer)
        except (RequestError, VerificationError, ProxyExitedError, StallTimeoutError) as exc:
            elapsed = time.monotonic() - start
            outcome = f"{type(exc).__name__} after {elapsed:.2f}s ({exc})"
        else:
            elapsed = time.monotonic() - start
            # containers/image may have retried: then every byte must be right.
            assert data == expected[str(layer.digest)]
            outcome = f"correct data in {elapsed:.2f}s"
        assert relay.cuts >= 1
        assert elapsed < stall + 3
        # The proxy is still usable.
        relay.set_faults()
        proxy.close_image(img)
        with proxy.open_image(relay.image_ref(big_registry_image)) as img2:
            _, manifest = proxy.fetch_manifest(img2)
            assert _read_blob(proxy, img2, layer) == expected[str(layer.digest)]
    observe(f"cut after {cut_after} bytes: {outcome}; next open + blob OK")


@pytest.mark.reliability("fault", "connection reset while OpenImage fetches the manifest")
@pytest.mark.parametrize("cut_after", [0, 50, 600])
def test_cut_during_open(
    relay: Relay, registry_image: RegistryImage, cut_after: int, observe: Observe
) -> None:
    with ImageProxy(_config()) as proxy:
        relay.set_faults(cut_after=cut_after)
        start = time.monotonic()
        with pytest.raises(RequestError) as info:
            img = proxy.open_image(relay.image_ref(registry_image))
            proxy.fetch_manifest(img)
        elapsed = time.monotonic() - start
        assert info.value.method == "OpenImage"
        assert elapsed < 5
        relay.set_faults()
        with proxy.open_image(relay.image_ref(registry_image)) as img:
            assert proxy.fetch_manifest(img)[0] == registry_image.image.manifest_digest
    observe(
        f"cut after {cut_after} bytes: RequestError after {elapsed:.2f}s"
        f" ({info.value.message}); next request OK"
    )


@pytest.mark.reliability("fault", "connection reset during GetFullConfig")
def test_cut_during_config(relay: Relay, registry_image: RegistryImage, observe: Observe) -> None:
    with ImageProxy(_config()) as proxy, proxy.open_image(relay.image_ref(registry_image)) as img:
        relay.set_faults(cut_after=0)
        # The manifest was fetched by OpenImage: GetManifest needs no network.
        assert proxy.fetch_manifest(img)[0] == registry_image.image.manifest_digest
        start = time.monotonic()
        with pytest.raises(RequestError) as info:
            proxy.fetch_config_raw(img)
        elapsed = time.monotonic() - start
        assert info.value.method == "GetFullConfig"
        relay.set_faults()
        config = proxy.fetch_config(img)
        assert [str(d) for d in config.rootfs.diff_ids] == registry_image.image.diff_ids
    observe(
        f"GetManifest unaffected (cached); GetFullConfig: RequestError after {elapsed:.2f}s"
        f" ({info.value.message}); retry on the same image OK"
    )


# --------------------------------------------------------------------------- stalls


@pytest.mark.reliability("fault", "registry stalls forever mid-blob (blocking client)")
def test_stall_mid_blob(relay: Relay, big_registry_image: RegistryImage, observe: Observe) -> None:
    with ImageProxy(_config(stall_timeout=2)) as proxy:
        img = proxy.open_image(relay.image_ref(big_registry_image))
        _, manifest = proxy.fetch_manifest(img)
        relay.set_faults(stall_after=MID_BLOB)
        start = time.monotonic()
        with pytest.raises(StallTimeoutError):
            _read_blob(proxy, img, manifest.layers[0])
        stalled = time.monotonic() - start
        assert 2 <= stalled < 6
        relay.set_faults()
        start = time.monotonic()
        _fetch_all(proxy, relay, big_registry_image)
        recovered = time.monotonic() - start
        start = time.monotonic()
    closed = time.monotonic() - start
    assert closed < 5
    observe(
        f"StallTimeoutError after {stalled:.2f}s (stall_timeout=2);"
        f" then a new open + all blobs OK in {recovered:.2f}s on the same proxy;"
        f" finalize {closed:.2f}s"
    )


@pytest.mark.reliability("fault", "registry stalls forever mid-blob (asyncio client)")
async def test_stall_mid_blob_async(
    relay: Relay, big_registry_image: RegistryImage, observe: Observe
) -> None:
    async with AsyncImageProxy(_config(stall_timeout=2)) as proxy:
        img = await proxy.open_image(relay.image_ref(big_registry_image))
        _, manifest = await proxy.fetch_manifest(img)
        relay.set_faults(stall_after=MID_BLOB)
        start = time.monotonic()
        with pytest.raises(StallTimeoutError):
            await _aread_blob(proxy, img, manifest.layers[1])
        stalled = time.monotonic() - start
        assert 2 <= stalled < 6
        relay.set_faults()
        start = time.monotonic()
        await _afetch_all(proxy, relay, big_registry_image)
        recovered = time.monotonic() - start
    observe(
        f"StallTimeoutError after {stalled:.2f}s (stall_timeout=2);"
        f" then a new open + all blobs OK in {recovered:.2f}s on the same proxy"
    )


@pytest.mark.reliability("fault", "registry stalls during OpenImage; finalize from another thread")
def test_stall_during_open_finalize(
    relay: Relay, registry_image: RegistryImage, observe: Observe
) -> None:
    relay.set_faults(stall_after=0)
    proxy = ImageProxy(_config()).open()
    closing: list[float | BaseException] = []

    def close() -> None:
        start = time.monotonic()
        try:
            proxy.finalize()
        except ImageProxyError as exc:
            closing.append(exc)
        closing.append(time.monotonic() - start)

    closer = threading.Timer(1.0, close)
    with _watchdog(proxy.pid, 40) as hung:
        closer.start()
        start = time.monotonic()
        with pytest.raises(ImageProxyError) as info:
            proxy.open_image(relay.image_ref(registry_image))
        elapsed = time.monotonic() - start
        closer.join(30)
    assert not hung.is_set(), "OpenImage was still stuck 40 s after finalize began"
    assert not closer.is_alive()
    # OpenImage has no client-side timeout: finalize ends it, after its shutdown wait.
    assert isinstance(info.value, ProxyExitedError)
    assert info.value.method == "OpenImage"
    assert elapsed < 20
    finalize_time = closing[-1]
    assert isinstance(finalize_time, float)
    assert finalize_time < 15
    raised = closing[0] if len(closing) > 1 else None
    assert raised is None  # stopping a proxy stuck in a request is not its failure
    assert finalize_time < 8
    observe(
        f"OpenImage blocks (no client timeout by design; containers/image waits forever);"
        f" finalize() from another thread 1s later took {finalize_time:.2f}s"
        f" (skopeo cannot read Shutdown while busy: terminated after the shutdown wait)"
        f" and raised {type(raised).__name__ if raised else 'nothing'} ({raised});"
        f" OpenImage raised {type(info.value).__name__} after {elapsed:.2f}s ({info.value})"
    )


@pytest.mark.reliability(
    "fault", "registry stalls during OpenImage; finalize from another task (asyncio)"
)
async def test_stall_during_open_finalize_async(
    relay: Relay, registry_image: RegistryImage, observe: Observe
) -> None:
    relay.set_faults(stall_after=0)
    proxy = await AsyncImageProxy(_config()).open()
    with _watchdog(proxy.pid, 40) as hung:
        opening = asyncio.create_task(proxy.open_image(relay.image_ref(registry_image)))
        await asyncio.sleep(1.0)
        assert not opening.done()
        start = time.monotonic()
        raised: ImageProxyError | None = None
        try:
            await proxy.finalize()
        except ImageProxyError as exc:
            raised = exc
        finalize_time = time.monotonic() - start
        with pytest.raises(ProxyExitedError) as info:
            await asyncio.wait_for(opening, 10)
        elapsed = time.monotonic() - start
    assert not hung.is_set()
    assert info.value.method == "OpenImage"
    assert raised is None
    assert finalize_time < 8
    observe(
        f"finalize() while OpenImage is stuck took {finalize_time:.2f}s and raised"
        f" {type(raised).__name__ if raised else 'nothing'}; OpenImage raised"
        f" {type(info.value).__name__} {elapsed:.2f}s after finalize began"
    )


@pytest.mark.reliability("fault", "cancelling a stuck OpenImage (asyncio) keeps the proxy sane")
async def test_cancelled_open_image_async(
    relay: Relay,
    registry_image: RegistryImage,
    big_registry_image: RegistryImage,
    observe: Observe,
) -> None:
    relay.set_faults(latency=0.2)  # OpenImage takes over a second: cancel it mid-flight
    async with AsyncImageProxy(_config()) as proxy:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(proxy.open_image(relay.image_ref(big_registry_image)), 0.5)
        relay.set_faults()
        await asyncio.sleep(1.5)  # the cancelled OpenImage has been answered by now
        # The cancelled request's reply is discarded: the next ones get their own.
        img = await asyncio.wait_for(proxy.open_image(relay.image_ref(registry_image)), 10)
        digest, _ = await asyncio.wait_for(proxy.fetch_manifest(img), 10)
        observe(f"after the cancel: open + GetManifest returned the right digest {digest}")
        assert digest == registry_image.image.manifest_digest
        assert img.reference == relay.image_ref(registry_image)


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.reliability("fault", "SIGKILL skopeo while OpenImage waits on a stalled registry")
def test_kill_during_stalled_open(
    relay: Relay, registry_image: RegistryImage, observe: Observe
) -> None:
    relay.set_faults(stall_after=0)
    proxy = ImageProxy(_config()).open()
    timer = _kill_later(proxy.pid, 1.0)
    start = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        proxy.open_image(relay.image_ref(registry_image))
    elapsed = time.monotonic() - start
    timer.join()
    _check_killed(info.value, "OpenImage")
    assert elapsed < 5
    _finalize_after_kill(proxy)
    observe(f"ProxyExitedError 1s kill + {elapsed - 1:.2f}s: {info.value}")


@pytest.mark.reliability(
    "fault", "SIGKILL skopeo while a network request is in flight (stalled registry)"
)
@pytest.mark.parametrize("method", ["GetFullConfig", "GetBlob"])
def test_kill_during_request(
    relay: Relay, big_registry_image: RegistryImage, method: str, observe: Observe
) -> None:
    proxy = ImageProxy(_config()).open()
    img = proxy.open_image(relay.image_ref(big_registry_image))
    _, manifest = proxy.fetch_manifest(img)
    relay.set_faults(stall_after=0)
    timer = _kill_later(proxy.pid, 1.0)
    start = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        if method == "GetFullConfig":
            proxy.fetch_config_raw(img)
        else:
            proxy.get_descriptor(img, manifest.layers[0])
    elapsed = time.monotonic() - start
    timer.join()
    _check_killed(info.value, method)
    assert elapsed < 5
    _finalize_after_kill(proxy)
    observe(f"{method}: ProxyExitedError {elapsed:.2f}s after the request (kill at 1s)")


@pytest.mark.reliability("fault", "SIGKILL skopeo during a blob stream (blocking client)")
def test_kill_during_blob_stream(
    relay: Relay, big_registry_image: RegistryImage, observe: Observe
) -> None:
    proxy = ImageProxy(_config()).open()
    img = proxy.open_image(relay.image_ref(big_registry_image))
    _, manifest = proxy.fetch_manifest(img)
    layer = manifest.layers[0]
    relay.set_faults(latency=0.05, bandwidth=2 << 20)  # the blob takes ~1.5 s
    received = 0
    timer: threading.Timer | None = None
    start = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        with proxy.get_descriptor(img, layer) as blob:
            while chunk := blob.read(1 << 16):
                received += len(chunk)
                if timer is None and received >= 500_000:
                    timer = _kill_later(proxy.pid, 0.1)
    elapsed = time.monotonic() - start
    assert timer is not None
    timer.join()
    _check_killed(info.value, "GetBlob")
    assert received < layer.size
    assert elapsed < 5
    _finalize_after_kill(proxy)
    observe(
        f"ProxyExitedError after {received} of {layer.size} bytes,"
        f" {elapsed:.2f}s into the blob: {info.value}"
    )


@pytest.mark.reliability("fault", "SIGKILL skopeo between requests (blocking client)")
def test_kill_between_requests(
    relay: Relay, registry_image: RegistryImage, observe: Observe
) -> None:
    relay.set_faults(latency=0.02)
    proxy = ImageProxy(_config()).open()
    img = proxy.open_image(relay.image_ref(registry_image))
    proxy.fetch_manifest(img)
    os.kill(proxy.pid, signal.SIGKILL)
    time.sleep(0.2)
    start = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        proxy.fetch_manifest(img)
    elapsed = time.monotonic() - start
    _check_killed(info.value, "GetManifest")
    with pytest.raises(ProxyExitedError):
        proxy.fetch_config(img)  # the failure sticks
    assert elapsed < 5
    _finalize_after_kill(proxy)
    observe(f"next request: ProxyExitedError in {elapsed:.3f}s: {info.value}")


@pytest.mark.reliability("fault", "SIGKILL skopeo during requests and streams (asyncio client)")
@pytest.mark.parametrize("when", ["OpenImage", "GetFullConfig", "GetBlob", "stream", "between"])
async def test_kill_async(
    relay: Relay, big_registry_image: RegistryImage, when: str, observe: Observe
) -> None:
    proxy = await AsyncImageProxy(_config()).open()
    loop = asyncio.get_running_loop()
    ref = relay.image_ref(big_registry_image)
    start = time.monotonic()
    with pytest.raises(ProxyExitedError) as info:
        if when == "OpenImage":
            relay.set_faults(stall_after=0)
            loop.call_later(1.0, os.kill, proxy.pid, signal.SIGKILL)
            start = time.monotonic()
            await proxy.open_image(ref)
        img = await proxy.open_image(ref)
        _, manifest = await proxy.fetch_manifest(img)
        if when == "between":
            os.kill(proxy.pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            start = time.monotonic()
            await proxy.fetch_manifest(img)
        elif when == "stream":
            relay.set_faults(latency=0.05, bandwidth=2 << 20)
            start = time.monotonic()
            async with await proxy.get_descriptor(img, manifest.layers[0]) as blob:
                received = 0
                while chunk := await blob.read(1 << 16):
                    if received < 500_000 <= received + len(chunk):
                        loop.call_later(0.1, os.kill, proxy.pid, signal.SIGKILL)
                    received += len(chunk)
        else:
            relay.set_faults(stall_after=0)
            loop.call_later(1.0, os.kill, proxy.pid, signal.SIGKILL)
            start = time.monotonic()
            if when == "GetFullConfig":
                await proxy.fetch_config_raw(img)
            else:
                await proxy.get_descriptor(img, manifest.layers[0])
    elapsed = time.monotonic() - start
    method = {"between": "GetManifest", "stream": "GetBlob"}.get(when, when)
    _check_killed(info.value, method)
    assert elapsed < 5
    await _afinalize_after_kill(proxy)
    moment = "between requests" if when == "between" else f"during {when}"
    observe(f"kill {moment}: ProxyExitedError after {elapsed:.2f}s: {info.value}")
