"""The asyncio client shares the event loop: a request never holds the loop up.

While the loop has nothing else to do, the client waits for skopeo inside poll(2)
on its own descriptors and the loop's selector (no trip through the loop per
request); the moment the loop has work (a timer due, another descriptor, a call
from another thread) that wait goes back to the loop. These tests make skopeo
slow (a registry behind a relay that delays every chunk) and check that the loop
keeps serving timers and other threads meanwhile, and that the client works on
a selector loop whose selector cannot be polled (where it always goes through
the loop). asyncio only: the blocking client has no loop.
"""

from __future__ import annotations

import asyncio
import itertools
import selectors
import threading
import time
from collections.abc import Iterator

import pytest

from containers_image_proxy import AsyncImageProxy, ImageProxyConfig
from tests.support.images import BuiltImage
from tests.support.registry import Registry, RegistryImage
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

#: Seconds the relay adds to every chunk, each way: opening the image takes several.
LATENCY = 0.3
#: The loop must run a due timer or a thread's callback within this many seconds.
PROMPT = 0.2


@pytest.fixture
def slow_ref(registry_image: RegistryImage, plain_registry: Registry) -> Iterator[str]:
    with Relay(plain_registry.host, latency=LATENCY) as relay:
        yield f"docker://{relay.address}/{registry_image.repo}:{registry_image.tag}"


def _config(skopeo: str) -> ImageProxyConfig:
    return ImageProxyConfig(skopeo_cmd=[skopeo], insecure_skip_tls_verification=True)


async def test_timers_run_while_a_request_waits(skopeo: str, slow_ref: str) -> None:
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async with AsyncImageProxy(_config(skopeo)) as proxy:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.monotonic()
        async with await proxy.open_image(slow_ref) as img:
            await proxy.fetch_manifest(img)
        elapsed = time.monotonic() - started
        done.set()
        await task
    assert elapsed > 2 * LATENCY  # skopeo was slow indeed
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert max(gaps) < PROMPT, f"the loop stalled for {max(gaps):.3f} s"
    assert len(ticks) > elapsed / PROMPT


async def test_threads_reach_the_loop_while_a_request_waits(skopeo: str, slow_ref: str) -> None:
    loop = asyncio.get_running_loop()
    delays: list[float] = []

    def arrived(sent: float) -> None:
        delays.append(time.monotonic() - sent)

    def from_thread() -> None:
        for _ in range(5):
            time.sleep(0.05)
            loop.call_soon_threadsafe(arrived, time.monotonic())

    async with AsyncImageProxy(_config(skopeo)) as proxy:
        thread = threading.Thread(target=from_thread)
        thread.start()
        try:
            started = time.monotonic()
            async with await proxy.open_image(slow_ref) as img:
                await proxy.fetch_manifest(img)
            elapsed = time.monotonic() - started
        finally:
            thread.join()
        await asyncio.sleep(0)
    assert elapsed > 2 * LATENCY
    assert len(delays) == 5
    assert max(delays) < PROMPT, f"a thread's callback waited {max(delays):.3f} s"


def test_selector_without_descriptor(skopeo: str, oci_image: BuiltImage) -> None:
    """A loop whose selector has no descriptor to poll: every wait goes through the loop."""

    async def fetch_all() -> dict[str, bytes]:
        blobs: dict[str, bytes] = {}
        async with AsyncImageProxy() as proxy, await proxy.open_image(oci_image.ref) as img:
            _, manifest = await proxy.fetch_manifest(img)
            await proxy.fetch_config(img)

            async def one(digest: str, size: int) -> None:
                async with await proxy.get_blob(img, digest, size) as blob:
                    blobs[digest] = b"".join([chunk async for chunk in blob])

            await asyncio.gather(*(one(str(d.digest), d.size) for d in manifest.layers))
        return blobs

    selector = selectors.SelectSelector()
    assert not hasattr(selector, "fileno")
    loop = asyncio.SelectorEventLoop(selector)
    try:
        blobs = loop.run_until_complete(fetch_all())
    finally:
        loop.close()
    assert blobs == {digest: data for digest, _, _, data in oci_image.layers}
