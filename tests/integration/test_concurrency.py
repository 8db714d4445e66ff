"""One proxy shared by many threads, and by many asyncio tasks.

Last, the blocking Blob as a real io.RawIOBase, which the standard library's I/O
helpers accept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import os
import shutil
import time

import pytest

from containers_image_proxy import (
    AsyncImageProxy,
    Blob,
    BusyError,
    ClosedError,
    ImageProxy,
    ImageProxyConfig,
    StallTimeoutError,
)
from tests.support.fakeproxy import fake_skopeo
from tests.support.images import BuiltImage

pytestmark = pytest.mark.usefixtures("no_leaks")


def _expected(image: BuiltImage) -> dict[str, str]:
    return {digest: hashlib.sha256(data).hexdigest() for digest, _, _, data in image.layers}


def test_threads_share_one_proxy(oci_image: BuiltImage, big_layers_image: BuiltImage) -> None:
    images = [oci_image, big_layers_image]

    with ImageProxy() as proxy:

        def work(n: int) -> list[tuple[str, str]]:
            image = images[n % 2]
            results = []
            with proxy.open_image(image.ref) as img:
                digest, manifest = proxy.fetch_manifest(img)
                assert digest == image.manifest_digest
                proxy.fetch_config_raw(img)
                for layer in manifest.layers:
                    with proxy.get_descriptor(img, layer) as blob:
                        h = hashlib.sha256()
                        while chunk := blob.read(200_000):
                            h.update(chunk)
                    results.append((str(layer.digest), h.hexdigest()))
            return results

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(work, range(48)))
    for n, results in enumerate(outcomes):
        expected = _expected(images[n % 2])
        assert len(results) == len(expected)
        for digest, actual in results:
            assert expected[digest] == actual


async def test_tasks_share_one_proxy(oci_image: BuiltImage, big_layers_image: BuiltImage) -> None:
    images = [oci_image, big_layers_image]

    async with AsyncImageProxy() as proxy:

        async def work(n: int) -> list[tuple[str, str]]:
            image = images[n % 2]
            results = []
            async with await proxy.open_image(image.ref) as img:
                digest, manifest = await proxy.fetch_manifest(img)
                assert digest == image.manifest_digest
                await proxy.fetch_config_raw(img)
                for layer in manifest.layers:
                    async with await proxy.get_descriptor(img, layer) as blob:
                        h = hashlib.sha256()
                        async for chunk in blob:
                            h.update(chunk)
                    results.append((str(layer.digest), h.hexdigest()))
            return results

        outcomes = await asyncio.gather(*(work(n) for n in range(64)))
    for n, results in enumerate(outcomes):
        expected = _expected(images[n % 2])
        assert len(results) == len(expected)
        for digest, actual in results:
            assert expected[digest] == actual


@pytest.mark.reliability("bad input", "one blob read by two tasks at once")
async def test_one_blob_read_by_two_tasks(big_layers_image: BuiltImage) -> None:
    digest, size, _, _ = big_layers_image.layers[0]
    config = ImageProxyConfig(skopeo_cmd=fake_skopeo("0.2.8", "--stall-blob"), stall_timeout=2)
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(big_layers_image.ref) as img,
    ):
        blob = await proxy.get_blob(img, digest, size)
        first = asyncio.ensure_future(blob.read())
        await asyncio.sleep(0.2)  # the first read now waits for data that never comes
        with pytest.raises(BusyError, match="already being read"):
            await blob.read(10)
        with pytest.raises(StallTimeoutError):
            await first
        await blob.aclose()


@pytest.mark.reliability("bad input", "one blob read by two threads at once")
def test_one_blob_read_by_two_threads(big_layers_image: BuiltImage) -> None:
    digest, size, _, _ = big_layers_image.layers[0]
    config = ImageProxyConfig(skopeo_cmd=fake_skopeo("0.2.8", "--stall-blob"), stall_timeout=2)
    with ImageProxy(config) as proxy, proxy.open_image(big_layers_image.ref) as img:
        blob = proxy.get_blob(img, digest, size)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(blob.read)
            deadline = time.monotonic() + 10
            while not blob._busy and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(BusyError):
                blob.read(10)
            with pytest.raises(StallTimeoutError):
                first.result()
        blob.close()


@pytest.mark.reliability("fault", "asyncio task cancelled while its blob is spliced in a thread")
async def test_cancelled_copy_waits_for_its_thread(big_layers_image: BuiltImage) -> None:
    digest, size, _, _ = big_layers_image.layers[0]
    config = ImageProxyConfig(skopeo_cmd=fake_skopeo("0.2.8", "--stall-blob"), stall_timeout=30)
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(big_layers_image.ref) as img,
    ):
        blob = await proxy.get_blob(img, digest, size)
        with open(os.devnull, "wb") as sink:
            copying = asyncio.ensure_future(blob.copy_to(sink))
            await asyncio.sleep(1.5)  # half the blob went through; the source now stalls
            copying.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await copying
            assert time.monotonic() - started < 2  # the thread noticed the stop promptly
        assert 0 < blob.bytes_read < size
        started = time.monotonic()
        await blob.aclose()  # the source is stalled: the pipe is given up at once
        assert time.monotonic() - started < 1
        assert (await proxy.fetch_manifest(img))[0] == big_layers_image.manifest_digest


def test_blob_is_a_raw_io_stream(big_layers_image: BuiltImage) -> None:
    digest, size, _, data = big_layers_image.layers[0]
    with ImageProxy() as proxy, proxy.open_image(big_layers_image.ref) as img:
        blob = proxy.get_blob(img, digest, size)
        assert isinstance(blob, Blob) and isinstance(blob, io.RawIOBase)
        assert blob.readable() and not blob.writable() and not blob.seekable()
        with io.BufferedReader(blob, buffer_size=64 * 1024) as buffered:
            assert buffered.read(3) == data[:3]
            assert buffered.read() == data[3:]
            assert buffered.read() == b""
        assert blob.closed

        out = io.BytesIO()
        with proxy.get_blob(img, digest, size) as blob:
            shutil.copyfileobj(blob, out)
        assert out.getvalue() == data
        with pytest.raises(ClosedError), blob:
            pass
