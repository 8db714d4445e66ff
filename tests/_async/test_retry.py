"""Retries of blob transfers that failed for a reason that may pass.

A registry behind tests/support/relay.py resets the first connections in the middle of a
layer; ``pull``, ``unpack`` and ``stream_layers`` must still deliver exactly the
image, say how often they retried, and never retry what failed verification.
Both skopeos: Debian's gives up at the first cut; the newer one resumes a cut
transfer once by itself, then reports a second cut as ``retryable``.

Written once in ``tests/_async/``; the blocking twin in ``tests/_sync/`` is generated
from it by tools/gen_sync.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from containers_image_proxy import (
    AsyncBlob,
    BlobRetrying,
    ImageProxyConfig,
    PullEvent,
    RequestError,
    VerificationError,
    pull_async,
    stream_layers_async,
    unpack_async,
)
from containers_image_proxy.oci import Descriptor
from tests.support.images import BIG_LAYER_FILES, BuiltImage, run_skopeo
from tests.support.registry import RegistryImage
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

Observe = Callable[[str], None]

#: Inside a 3 MiB layer, under the 1 MiB a newer skopeo needs before it resumes again.
MID_BLOB = 1_000_000


def _config(skopeo_cmd: list[str], **options: float | int | None) -> ImageProxyConfig:
    settings: dict[str, float | int | None] = {"retry_delay": 0.1, "stall_timeout": 30}
    settings.update(options)
    return ImageProxyConfig(
        skopeo_cmd=skopeo_cmd,
        insecure_skip_tls_verification=True,
        **settings,  # type: ignore[arg-type]
    )


def _check_layout(dest: Path, image: RegistryImage) -> None:
    """Every blob is whole and the layers are the image's; skopeo reads the layout."""
    for path in (dest / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    for digest, _, _, data in image.image.layers:
        assert (dest / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == data
    inspected = json.loads(run_skopeo("inspect", f"oci:{dest}:latest").stdout)
    assert inspected["Layers"] == image.image.layer_digests


def _retries(count: int) -> str:
    return f"{count} {'retry' if count == 1 else 'retries'}"


def _check_retries(retries: list[BlobRetrying] | tuple[BlobRetrying, ...], limit: int) -> None:
    assert retries, "the cut transfer was not retried"
    for event in retries:
        assert event.error.retryable or "connection reset by peer" in str(event.error)
        assert event.limit == limit
        assert 1 <= event.attempt <= limit
        assert event.delay == 0.1
    assert len(retries) <= 2 * limit  # two layers at most


# --------------------------------------------------------------------------- pull


@pytest.mark.reliability("fault", "pull: the first two layer connections are reset mid-blob")
async def test_pull_retries_cut_connections(
    relay: Relay,
    big_registry_image: RegistryImage,
    skopeo_cmd: list[str],
    tmp_path: Path,
    observe: Observe,
) -> None:
    relay.set_faults(cut_after=MID_BLOB, max_cuts=2)
    events: list[PullEvent] = []
    dest = tmp_path / "layout"
    start = time.monotonic()
    result = await pull_async(
        relay.image_ref(big_registry_image),
        dest,
        config=_config(skopeo_cmd),
        jobs=1,
        progress=events.append,
    )
    elapsed = time.monotonic() - start
    assert relay.cuts == 2
    _check_layout(dest, big_registry_image)
    _check_retries(result.retries, 3)
    assert [e for e in events if isinstance(e, BlobRetrying)] == list(result.retries)
    # Nothing of a failed attempt is left behind.
    assert sorted(p.name for p in (dest / "blobs" / "sha256").iterdir()) == sorted(
        {d.digest.encoded for d in (result.manifest.config, *result.manifest.layers)}
        | {result.manifest_digest.encoded}
    )
    first = result.retries[0].error
    assert isinstance(first, RequestError)
    observe(
        f"{_retries(len(result.retries))} for {relay.cuts} cuts, layout verified, {elapsed:.2f}s:"
        f" {first.message[:120]}"
    )


async def test_pull_gives_up_after_retry_times(
    relay: Relay, big_registry_image: RegistryImage, skopeo_cmd: list[str], tmp_path: Path
) -> None:
    relay.set_faults(cut_after=MID_BLOB)  # every connection
    events: list[PullEvent] = []
    dest = tmp_path / "layout"
    with pytest.raises(RequestError, match="connection reset by peer"):
        await pull_async(
            relay.image_ref(big_registry_image),
            dest,
            config=_config(skopeo_cmd, retry_times=2),
            jobs=1,
            progress=events.append,
        )
    retries = [e for e in events if isinstance(e, BlobRetrying)]
    assert [e.attempt for e in retries] == [1, 2]
    assert len({e.descriptor.digest for e in retries}) == 1
    leftovers = [p.name for p in (dest / "blobs" / "sha256").iterdir()]
    assert all(len(name) == 64 and not name.startswith(".") for name in leftovers)


async def test_pull_without_retries_fails_at_the_first_cut(
    relay: Relay, big_registry_image: RegistryImage, skopeo_cmd: list[str], tmp_path: Path
) -> None:
    relay.set_faults(cut_after=MID_BLOB, max_cuts=2)
    events: list[PullEvent] = []
    with pytest.raises(RequestError):
        await pull_async(
            relay.image_ref(big_registry_image),
            tmp_path / "layout",
            config=_config(skopeo_cmd, retry_times=0),
            jobs=1,
            progress=events.append,
        )
    assert not [e for e in events if isinstance(e, BlobRetrying)]


@pytest.mark.reliability("fault", "pull: a corrupted blob is not retried")
async def test_verification_failure_is_not_retried(
    corrupted_image: BuiltImage, tmp_path: Path, observe: Observe
) -> None:
    events: list[PullEvent] = []
    with pytest.raises(VerificationError) as info:
        await pull_async(
            corrupted_image.ref,
            tmp_path / "layout",
            config=ImageProxyConfig(retry_times=5, retry_delay=0),
            progress=events.append,
        )
    assert not [e for e in events if isinstance(e, BlobRetrying)]
    observe(f"{type(info.value).__name__} at once, no retry: {info.value}")


@pytest.mark.reliability(
    "fault", "pull: a layer connection goes silent after the probe; a fresh proxy finishes"
)
async def test_pull_replaces_a_proxy_stuck_on_a_silent_source(
    relay: Relay,
    big_registry_image: RegistryImage,
    skopeo_cmd: list[str],
    tmp_path: Path,
    observe: Observe,
) -> None:
    def heal(event: PullEvent) -> None:
        # The silent connection stays silent; new ones are clean.
        if isinstance(event, BlobRetrying):
            relay.set_faults()

    relay.set_faults(stall_after=MID_BLOB)
    dest = tmp_path / "layout"
    start = time.monotonic()
    result = await pull_async(
        relay.image_ref(big_registry_image),
        dest,
        config=_config(skopeo_cmd, stall_timeout=3, probe_interval=1),
        jobs=1,
        progress=heal,
    )
    elapsed = time.monotonic() - start
    _check_layout(dest, big_registry_image)
    assert len(result.retries) == 1
    assert "no longer usable" in str(result.retries[0].error)
    observe(
        f"StallTimeoutError after the unanswered probe, proxy replaced, pull verified in"
        f" {elapsed:.2f}s (stall_timeout=3 plus the old proxy's shutdown wait)"
    )


# --------------------------------------------------------------------------- streams


@pytest.mark.reliability("fault", "stream_layers: layer connections reset mid-blob")
async def test_stream_layers_resumes(
    relay: Relay, big_registry_image: RegistryImage, skopeo_cmd: list[str], observe: Observe
) -> None:
    relay.set_faults(cut_after=MID_BLOB, max_cuts=2)
    received: dict[str, bytes] = {}
    retries: list[BlobRetrying] = []

    async def consume(layer: Descriptor, blob: AsyncBlob) -> None:
        chunks = []
        while chunk := await blob.read(1 << 16):
            chunks.append(chunk)
        received[str(layer.digest)] = b"".join(chunks)

    layers = await stream_layers_async(
        relay.image_ref(big_registry_image),
        consume,
        config=_config(skopeo_cmd),
        on_retry=retries.append,
    )
    assert relay.cuts == 2
    assert received == {digest: data for digest, _, _, data in big_registry_image.image.layers}
    assert [str(layer.digest) for layer in layers] == list(received)
    _check_retries(retries, 3)
    observe(f"{_retries(len(retries))} for {relay.cuts} cuts; every layer byte-exact")


@pytest.mark.reliability("fault", "unpack: layer connections reset mid-blob")
@pytest.mark.parametrize("own_proxy", [True, False], ids=["own-proxy", "given-proxy"])
async def test_unpack_resumes(
    relay: Relay,
    big_registry_image: RegistryImage,
    skopeo_cmd: list[str],
    tmp_path: Path,
    own_proxy: bool,
    observe: Observe,
) -> None:
    from containers_image_proxy import AsyncImageProxy

    relay.set_faults(cut_after=MID_BLOB, max_cuts=2)
    dest = tmp_path / "rootfs"
    config = _config(skopeo_cmd)
    seen: list[BlobRetrying] = []
    if own_proxy:
        result = await unpack_async(
            relay.image_ref(big_registry_image), dest, config=config, on_retry=seen.append
        )
    else:
        async with AsyncImageProxy(config) as proxy:
            result = await unpack_async(
                relay.image_ref(big_registry_image), dest, proxy=proxy, on_retry=seen.append
            )
    assert relay.cuts == 2
    for name, data in BIG_LAYER_FILES.items():
        assert (dest / name).read_bytes() == data
    assert list(result.retries) == seen
    _check_retries(seen, 3)
    observe(f"{_retries(len(seen))} for {relay.cuts} cuts; rootfs byte-exact")
