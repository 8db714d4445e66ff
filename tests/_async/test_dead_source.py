"""A source that dies, pauses or goes silent in the middle of a blob.

skopeo keeps a blob's pipe open after its source failed and reports the failure
only in FinishPipe's reply (docs/protocol.md rules 1 and 9). After ``probe_interval``
seconds without data the client sends FinishPipe while it keeps reading: a dead
source is then reported within seconds, with skopeo's own error, where the client
used to wait for the whole stall timeout. The real cases run against a registry
behind tests/support/relay.py, on Debian's skopeo and on a newer upstream build; the
fake proxy covers a blob of unknown size, which the registry here never serves.

Written once in ``tests/_async/``; the blocking twin in ``tests/_sync/`` is generated
from it by tools/gen_sync.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict, Unpack

import pytest

from containers_image_proxy import (
    AsyncImageProxy,
    BusyError,
    ImageProxyConfig,
    OpenedImage,
    RequestError,
    StallTimeoutError,
)
from containers_image_proxy.oci import Descriptor
from tests.support.fakeproxy import fake_skopeo
from tests.support.images import BuiltImage
from tests.support.registry import RegistryImage
from tests.support.relay import Relay
from tests.support.skopeos import UPSTREAM_ENV, skopeo_command

pytestmark = pytest.mark.usefixtures("no_leaks")

Observe = Callable[[str], None]

#: Inside the first 3 MiB layer. Under 1 MiB, so that a newer skopeo, which resumes
#: a cut transfer once by itself, gives up at the second cut.
MID_BLOB = 1_000_000
#: The client must report a cut within this many seconds.
REPORT_WITHIN = 5.0


class _Timeouts(TypedDict, total=False):
    stall_timeout: float | None
    probe_interval: float | None


def _config(skopeo_cmd: list[str], **options: Unpack[_Timeouts]) -> ImageProxyConfig:
    return ImageProxyConfig(skopeo_cmd=skopeo_cmd, insecure_skip_tls_verification=True, **options)


def _layer_data(image: RegistryImage, layer: Descriptor) -> bytes:
    return {digest: data for digest, _, _, data in image.image.layers}[str(layer.digest)]


async def _fetch(
    proxy: AsyncImageProxy, img: OpenedImage, layer: Descriptor, how: str, out: Path
) -> bytes:
    """The whole blob, read in chunks (``read``) or copied to a file (``copy_to``)."""
    async with await proxy.get_descriptor(img, layer) as blob:
        if how == "read":
            chunks = []
            while chunk := await blob.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        with open(out, "wb") as sink:
            await blob.copy_to(sink)
    return out.read_bytes()


def _skopeo_name(skopeo_cmd: list[str]) -> str:
    return "upstream" if skopeo_cmd[0] == os.environ.get(UPSTREAM_ENV) else "debian"


# --------------------------------------------------------------------------- dead source


@pytest.mark.reliability("fault", "registry resets the connection mid-blob: error in seconds")
@pytest.mark.parametrize("how", ["read", "copy_to"])
async def test_cut_is_reported_in_seconds(
    relay: Relay,
    big_registry_image: RegistryImage,
    skopeo_cmd: list[str],
    how: str,
    tmp_path: Path,
    observe: Observe,
) -> None:
    # A stall timeout far above the bound: only the probe can make it in time.
    config = _config(skopeo_cmd, stall_timeout=60)
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(relay.image_ref(big_registry_image)) as img,
    ):
        version = proxy.protocol_version
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        relay.set_faults(cut_after=MID_BLOB)
        start = time.monotonic()
        with pytest.raises(RequestError) as info:
            await _fetch(proxy, img, layer, how, tmp_path / "out")
        after_cut = time.monotonic() - relay.cut_times[-1]
        total = time.monotonic() - start
        error = info.value
        assert after_cut < REPORT_WITHIN
        assert error.method == "GetBlob"
        assert "connection reset by peer" in error.message  # skopeo's own error
        if version >= "0.2.8":
            assert error.code == "retryable" and error.retryable
        # FinishPipe was answered: the proxy serves the next request at once.
        relay.set_faults()
        assert await _fetch(proxy, img, layer, how, tmp_path / "out") == _layer_data(
            big_registry_image, layer
        )
    observe(
        f"{_skopeo_name(skopeo_cmd)} ({version}), {relay.cuts} cut(s):"
        f" {type(error).__name__} {after_cut:.2f}s after the last cut ({total:.2f}s into"
        f" the blob; stall_timeout=60, probe_interval=3), code={error.code}: {error.message}"
    )


@pytest.mark.reliability("fault", "registry resets the connection mid-blob (GetRawBlob)")
async def test_cut_raw_blob_is_reported_in_seconds(
    relay: Relay, big_registry_image: RegistryImage, observe: Observe
) -> None:
    # GetRawBlob has no FinishPipe: the worker writes the error to the error pipe
    # and closes both pipes as soon as the source fails (seen with 1.22-dev).
    config = _config(skopeo_command("upstream"), stall_timeout=60)
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(relay.image_ref(big_registry_image)) as img,
    ):
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        relay.set_faults(cut_after=MID_BLOB)
        with pytest.raises(RequestError) as info:
            async with await proxy.get_raw_blob(img, layer.digest, size=layer.size) as blob:
                while await blob.read(1 << 16):
                    pass
        after_cut = time.monotonic() - relay.cut_times[-1]
        assert after_cut < REPORT_WITHIN
        assert info.value.method == "GetRawBlob"
        assert info.value.retryable
        relay.set_faults()
        async with await proxy.get_raw_blob(img, layer.digest, size=layer.size) as blob:
            assert await blob.read() == _layer_data(big_registry_image, layer)
    observe(
        f"{type(info.value).__name__} {after_cut:.2f}s after the last cut ({relay.cuts} cuts):"
        f" {info.value.message}"
    )


# --------------------------------------------------------------------------- slow source


@pytest.mark.reliability("fault", "registry pauses mid-blob past the probe interval, then resumes")
@pytest.mark.parametrize("how", ["read", "copy_to"])
async def test_slow_source_goes_on(
    relay: Relay,
    big_registry_image: RegistryImage,
    skopeo_cmd: list[str],
    how: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    observe: Observe,
) -> None:
    config = _config(skopeo_cmd, stall_timeout=30, probe_interval=1)
    pause = 3.0
    caplog.set_level(logging.DEBUG, logger="containers_image_proxy")
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(relay.image_ref(big_registry_image)) as img,
    ):
        _, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        relay.set_faults(pause_after=MID_BLOB)
        resume = threading.Timer(pause, relay.set_faults)
        start = time.monotonic()
        resume.start()
        try:
            data = await _fetch(proxy, img, layer, how, tmp_path / "out")
        finally:
            resume.cancel()
        elapsed = time.monotonic() - start
        assert data == _layer_data(big_registry_image, layer)
        assert elapsed >= pause
        assert "FinishPipe sent as a probe" in caplog.text  # it was asked, and waited
        assert relay.cuts == 0
        # The probe's reply came with the end of the data: the proxy is free again.
        other = manifest.layers[1]
        assert await _fetch(proxy, img, other, how, tmp_path / "out") == _layer_data(
            big_registry_image, other
        )
    observe(
        f"{_skopeo_name(skopeo_cmd)}: a {pause:.0f}s pause with probe_interval=1: the probe"
        f" got no error, the blob completed correctly in {elapsed:.2f}s"
    )


@pytest.mark.reliability(
    "fault", "registry goes silent mid-blob after the probe: stall timeout, proxy retired"
)
async def test_silent_source_after_probe_stalls(
    relay: Relay, big_registry_image: RegistryImage, skopeo_cmd: list[str], observe: Observe
) -> None:
    stall = 4.0
    config = _config(skopeo_cmd, stall_timeout=stall, probe_interval=1)
    proxy = await AsyncImageProxy(config).open()
    try:
        img = await proxy.open_image(relay.image_ref(big_registry_image))
        _, manifest = await proxy.fetch_manifest(img)
        relay.set_faults(stall_after=MID_BLOB)
        start = time.monotonic()
        with pytest.raises(StallTimeoutError) as info:
            await _fetch(proxy, img, manifest.layers[0], "read", Path("/nonexistent"))
        stalled = time.monotonic() - start
        assert stall <= stalled < stall + 4
        # The probe's FinishPipe waits behind the silent source in skopeo, which
        # serves nothing else until then: the proxy says so instead of hanging.
        assert "no longer usable" in str(info.value)
        start = time.monotonic()
        with pytest.raises(StallTimeoutError):
            await proxy.fetch_manifest(img)
        assert time.monotonic() - start < 1
    finally:
        start = time.monotonic()
        await proxy.finalize()  # skopeo is busy: stopped after the shutdown wait
        closed = time.monotonic() - start
    assert closed < 10
    observe(
        f"{_skopeo_name(skopeo_cmd)}: StallTimeoutError after {stalled:.2f}s (stall_timeout=4,"
        f" probe at 1 s unanswered); next request refused at once; finalize {closed:.2f}s"
    )


# --------------------------------------------------------------------------- fake proxy


@pytest.mark.reliability("fault", "source fails mid-blob, blob of unknown size (fake proxy)")
async def test_failed_source_unknown_size(big_layers_image: BuiltImage) -> None:
    # FinishPipe goes out first for a blob of unknown size (rule 3): its early reply
    # is the failure, whatever the probe setting.
    config = ImageProxyConfig(
        skopeo_cmd=fake_skopeo("0.2.8", "--fail-blob", "--unknown-size"),
        stall_timeout=60,
        probe_interval=None,
    )
    digest, size, _, _ = big_layers_image.layers[0]
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(big_layers_image.ref) as img,
    ):
        start = time.monotonic()
        received = 0
        with pytest.raises(RequestError, match="connection reset by peer") as info:
            async with await proxy.get_blob(img, digest, size) as blob:
                while chunk := await blob.read(1 << 16):
                    received += len(chunk)
        assert time.monotonic() - start < 2
        assert 0 < received < size
        assert info.value.retryable
        # The reply was taken: the proxy serves the next request.
        assert (await proxy.fetch_manifest(img))[0] == big_layers_image.manifest_digest


@pytest.mark.parametrize("probe", [0.5, None])
async def test_failed_source_known_size(big_layers_image: BuiltImage, probe: float | None) -> None:
    stall = 3.0
    config = ImageProxyConfig(
        skopeo_cmd=fake_skopeo("0.2.8", "--fail-blob"), stall_timeout=stall, probe_interval=probe
    )
    digest, size, _, _ = big_layers_image.layers[0]
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(big_layers_image.ref) as img,
    ):
        start = time.monotonic()
        expected = RequestError if probe is not None else StallTimeoutError
        with pytest.raises(expected):
            async with await proxy.get_blob(img, digest, size) as blob:
                while await blob.read(1 << 16):
                    pass
        elapsed = time.monotonic() - start
        if probe is not None:
            assert elapsed < stall  # the probe found the failure
        else:
            assert elapsed >= stall  # without a probe only the stall timeout ends it
        assert (await proxy.fetch_manifest(img))[0] == big_layers_image.manifest_digest


@pytest.mark.reliability(
    "bad input", "another request from the reader of a probed blob, before its end"
)
async def test_request_before_the_end_of_a_probed_blob(
    relay: Relay, big_registry_image: RegistryImage, observe: Observe
) -> None:
    # After a probe the proxy waits for the rest of that blob: a request from the
    # same thread or task before the blob's end could never be served.
    config = _config(skopeo_command("debian"), stall_timeout=30, probe_interval=0.5)
    async with (
        AsyncImageProxy(config) as proxy,
        await proxy.open_image(relay.image_ref(big_registry_image)) as img,
    ):
        digest, manifest = await proxy.fetch_manifest(img)
        layer = manifest.layers[0]
        relay.set_faults(pause_after=MID_BLOB)
        resume = threading.Timer(2.0, relay.set_faults)
        resume.start()
        try:
            async with await proxy.get_descriptor(img, layer) as blob:
                head = b""
                while len(head) < MID_BLOB + (1 << 16):  # past the pause, so probed
                    head += await blob.read(1 << 16)
                with pytest.raises(BusyError, match="FinishPipe is out") as info:
                    await proxy.fetch_manifest(img)
                assert head + await blob.read() == _layer_data(big_registry_image, layer)
        finally:
            resume.cancel()
        assert (await proxy.fetch_manifest(img))[0] == digest  # free again
    observe(f"BusyError at once: {info.value}")
