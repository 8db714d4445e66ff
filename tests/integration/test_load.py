"""Load: many cycles, many threads and tasks, several proxies; nothing grows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from containers_image_proxy import AsyncImageProxy, ImageProxy
from tests.support.images import BuiltImage
from tests.support.resources import child_pids, open_fds

pytestmark = pytest.mark.usefixtures("no_leaks")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def zombies() -> list[int]:
    found = []
    for pid in child_pids():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            found.append(pid)
    return found


def cycle(proxy: ImageProxy, image: BuiltImage) -> None:
    with proxy.open_image(image.ref) as img:
        digest, manifest = proxy.fetch_manifest(img)
        assert digest == image.manifest_digest
        assert proxy.fetch_config_raw(img)
        layer = manifest.layers[0]
        with proxy.get_descriptor(img, layer) as blob:
            assert hashlib.sha256(blob.read()).hexdigest() == layer.digest.encoded


@pytest.mark.reliability("load", "1,000 open/manifest/config/blob/close cycles on one proxy")
def test_thousand_cycles(oci_image: BuiltImage, observe: Callable[[str], None]) -> None:
    with ImageProxy() as proxy:
        for _ in range(50):  # warm up allocators and caches
            cycle(proxy, oci_image)
        fds, children, rss = len(open_fds()), child_pids(), rss_bytes()
        started = time.monotonic()
        for _ in range(1000):
            cycle(proxy, oci_image)
        seconds = time.monotonic() - started
        growth = rss_bytes() - rss
        assert len(open_fds()) == fds
        assert child_pids() == children
        assert not zombies()
        assert growth < 16 << 20, f"resident memory grew by {growth / 2**20:.1f} MiB"
    observe(
        f"{1000 / seconds:.0f} cycles/s; fds and children unchanged; RSS growth "
        f"{growth / 2**20:.1f} MiB"
    )


@pytest.mark.reliability("load", "64 threads sharing one blocking proxy, 10 cycles each")
def test_64_threads(
    oci_image: BuiltImage, big_layers_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    images = itertools.cycle([oci_image, big_layers_image])
    with ImageProxy() as proxy:
        fds = len(open_fds())
        started = time.monotonic()

        def work(image: BuiltImage) -> None:
            for _ in range(10):
                cycle(proxy, image)

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            jobs = [pool.submit(work, next(images)) for _ in range(64)]
            for job in jobs:
                job.result()
        seconds = time.monotonic() - started
        assert len(open_fds()) == fds
    observe(f"640 cycles in {seconds:.1f}s, every result correct, no descriptor left")


async def async_cycle(proxy: AsyncImageProxy, image: BuiltImage) -> None:
    async with await proxy.open_image(image.ref) as img:
        digest, manifest = await proxy.fetch_manifest(img)
        assert digest == image.manifest_digest
        assert await proxy.fetch_config_raw(img)
        for layer in manifest.layers:
            hasher = hashlib.sha256()
            async with await proxy.get_descriptor(img, layer) as blob:
                async for chunk in blob:
                    hasher.update(chunk)
            assert hasher.hexdigest() == layer.digest.encoded


@pytest.mark.reliability("load", "64 asyncio tasks sharing one proxy, 10 cycles each")
async def test_64_tasks(
    oci_image: BuiltImage, big_layers_image: BuiltImage, observe: Callable[[str], None]
) -> None:
    async with AsyncImageProxy() as proxy:
        fds = len(open_fds())
        started = time.monotonic()

        async def worker(image: BuiltImage) -> None:
            for _ in range(10):
                await async_cycle(proxy, image)

        await asyncio.gather(*(worker([oci_image, big_layers_image][n % 2]) for n in range(64)))
        seconds = time.monotonic() - started
        assert len(open_fds()) == fds
        assert not zombies()
    observe(f"640 cycles in {seconds:.1f}s, every result correct, no descriptor left")


@pytest.mark.reliability("load", "a pool of 4 proxies shared by 32 threads, 20 cycles each")
def test_pool_of_proxies(oci_image: BuiltImage, observe: Callable[[str], None]) -> None:
    proxies = [ImageProxy().open() for _ in range(4)]
    try:
        assert len(child_pids() & {p.pid for p in proxies}) == 4
        with concurrent.futures.ThreadPoolExecutor(32) as pool:

            def cycles(proxy: ImageProxy) -> None:
                for _ in range(20):
                    cycle(proxy, oci_image)

            jobs = [pool.submit(cycles, proxies[n % 4]) for n in range(32)]
            for job in jobs:
                job.result()
    finally:
        for proxy in proxies:
            proxy.close()
    assert not zombies()
    observe("640 cycles over 4 proxies, all correct; all 4 children reaped")
