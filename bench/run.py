"""Benchmarks: each case against its alternatives, side by side in the same run.

    python bench/run.py                 # default sizes, a few minutes on 2 cores
    python bench/run.py --smoke         # tiny sizes, seconds: checks that the suite works
    python bench/run.py --blob-mib 256 --layers 4 --layer-mib 32 --repeat 5
    python bench/run.py --only round-trips,gather   # some cases; results to a temporary directory

Prints a table of ratios (case, ours, alternative, ratio, goal, met) and writes the
results as JSON and a PNG chart to bench/results/ (to a temporary directory with
--smoke). Images are built by the suite itself; nothing leaves the machine, except
that the Debian image of ``bench/realimage.py`` (the real-image pull) is built from
the configured Debian mirror on first use and cached (``--no-real`` skips it; with
``--smoke`` a small stand-in tree takes its place). Case 6 runs on the skopeo on PATH
and, when ``CIP_TEST_SKOPEO_UPSTREAM`` names another skopeo binary, on that one too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _chart import draw
from _table import markdown_table
from containers_storage import markdown_section as storage_section
from realimage import RealImage, real_image, smoke_image

from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    ImageProxyConfig,
    pull,
)
from tests.support.registry import Registry
from tests.support.relay import Relay

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
#: The cases ``--only`` can name, in the order they run (case numbers 1 to 6).
CASES = ("stream", "round-trips", "pull", "real-pull", "memory", "startup", "gather")


# --------------------------------------------------------------------------- images


def _write_blob(root: Path, data_chunks: Iterator[bytes]) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    tmp = root / "blobs" / "sha256" / ".tmp"
    with tmp.open("wb") as f:
        for chunk in data_chunks:
            hasher.update(chunk)
            f.write(chunk)
            size += len(chunk)
    digest = hasher.hexdigest()
    tmp.rename(root / "blobs" / "sha256" / digest)
    return f"sha256:{digest}", size


def build_layout(root: Path, layer_sizes: list[int], seed: int = 0) -> dict[str, Any]:
    """An OCI layout with incompressible layers of about the given sizes.

    Each layer is a plain tar holding one file of random bytes, so that every
    consumer (pull checks the bytes against the media type) takes it for what it is.
    """
    (root / "blobs" / "sha256").mkdir(parents=True)
    layers = []
    for n, size in enumerate(layer_sizes):
        # One header block, the data padded to a block, two end blocks.
        data_size = max(0, (size - 3 * 512) // 512 * 512)
        header = tarfile.TarInfo(f"data/layer-{n}.bin")
        header.size = data_size
        header.mode = 0o644

        def chunks(
            data_size: int = data_size, n: int = n, header: tarfile.TarInfo = header
        ) -> Iterator[bytes]:
            yield header.tobuf(format=tarfile.PAX_FORMAT)
            key = f"{seed}-{n}".encode()
            done = 0
            while done < data_size:
                piece = min(8 * MiB, data_size - done)
                yield hashlib.shake_256(key + done.to_bytes(8, "big")).digest(piece)
                done += piece
            yield bytes(1024)

        digest, size = _write_blob(root, chunks())
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
    ).encode()
    config_digest, _ = _write_blob(root, iter([config]))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    manifest_digest, _ = _write_blob(root, iter([manifest]))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    }
                ],
            }
        )
    )
    return {"ref": f"oci:{root}:latest", "layers": layers}


# --------------------------------------------------------------------------- the floor


class RawClient:
    """The least a client can do: the protocol by hand, no checks, no objects."""

    def __init__(self, skopeo: str = "skopeo") -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [skopeo, "experimental-image-proxy"], stdin=theirs.fileno(), stderr=subprocess.DEVNULL
        )
        theirs.close()
        self.call("Initialize", [])

    def call(self, method: str, args: list[Any]) -> tuple[Any, int, list[int]]:
        self.sock.send(json.dumps({"method": method, "args": args}).encode())
        data, fds, _, _ = socket.recv_fds(self.sock, 32 * 1024, 2)
        reply = json.loads(data)
        if not reply["success"]:
            raise RuntimeError(reply["error"])
        return reply["value"], reply["pipeid"], fds

    def read_piped(self, pipeid: int, fd: int) -> bytes:
        self.sock.send(json.dumps({"method": "FinishPipe", "args": [pipeid]}).encode())
        chunks = []
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
        os.close(fd)
        socket.recv_fds(self.sock, 32 * 1024, 2)
        return b"".join(chunks)

    def splice_blob(self, handle: int, digest: str, size: int, out: int) -> None:
        _, pipeid, (fd,) = self.call("GetBlob", [handle, digest, size])
        left = size
        while left:
            left -= os.splice(fd, out, left)
        self.read_piped(pipeid, fd)

    def close(self) -> None:
        self.sock.close()
        self.proc.wait()

    # The same by asyncio: each wait is one add_reader / remove_reader, as it must be.
    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def acall(self, method: str, args: list[Any]) -> tuple[Any, int, list[int]]:
        self.sock.send(json.dumps({"method": method, "args": args}).encode())
        await self._readable(self.sock.fileno())
        data, fds, _, _ = socket.recv_fds(self.sock, 32 * 1024, 2)
        reply = json.loads(data)
        return reply["value"], reply["pipeid"], fds

    async def aread_piped(self, pipeid: int, fd: int) -> bytes:
        os.set_blocking(fd, False)
        self.sock.send(json.dumps({"method": "FinishPipe", "args": [pipeid]}).encode())
        chunks = []
        while True:
            try:
                chunk = os.read(fd, MiB)
            except BlockingIOError:
                await self._readable(fd)
                continue
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
        await self._readable(self.sock.fileno())
        socket.recv_fds(self.sock, 32 * 1024, 2)
        return b"".join(chunks)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Row:
    case: str
    ours_name: str
    ours: float
    other_name: str
    other: float
    unit: str
    higher_is_better: bool
    goal: float | None  # on the ratio ours/other (or other/ours when lower is better)
    least: float = 1e-9  # values below this count as this much in the ratio

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.other
        return self.other / max(self.ours, self.least)

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal


def best(repeat: int, run: Callable[[], None]) -> float:
    """Best wall-clock seconds of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


# --------------------------------------------------------------------------- cases


def case_stream(image: dict[str, Any], repeat: int) -> list[Row]:
    layer = image["layers"][0]
    digest, size = layer["digest"], layer["size"]
    devnull = os.open(os.devnull, os.O_WRONLY)
    results: dict[str, float] = {}
    try:
        raw = RawClient()
        handle, _, _ = raw.call("OpenImage", [image["ref"]])
        results["floor: raw GetBlob + os.splice"] = best(
            repeat, lambda: raw.splice_blob(handle, digest, size, devnull)
        )
        raw.close()

        with ImageProxy() as proxy, proxy.open_image(image["ref"]) as img:

            def blocking_splice() -> None:
                with proxy.get_blob(img, digest, size) as blob:
                    blob.copy_to(devnull)

            def blocking_readinto() -> None:
                buffer = bytearray(MiB)
                with proxy.get_blob(img, digest, size) as blob:
                    while count := blob.readinto(buffer):
                        os.write(devnull, memoryview(buffer)[:count])

            results["blocking copy_to (splice)"] = best(repeat, blocking_splice)
            results["blocking readinto, reused 1 MiB buffer"] = best(repeat, blocking_readinto)

        async def async_run() -> float:
            async with AsyncImageProxy() as proxy, await proxy.open_image(image["ref"]) as img:

                async def once() -> None:
                    async with await proxy.get_blob(img, digest, size) as blob:
                        await blob.copy_to(devnull)

                times = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    await once()
                    times.append(time.perf_counter() - started)
                return min(times)

        results["async copy_to (splice)"] = asyncio.run(async_run())

        def skopeo_copy() -> None:
            with tempfile.TemporaryDirectory(dir=HERE) as out:
                subprocess.run(
                    ["skopeo", "copy", "--quiet", image["ref"], f"dir:{out}/img"], check=True
                )

        results["skopeo copy to dir:"] = best(repeat, skopeo_copy)
    finally:
        os.close(devnull)
    mb = size / MiB
    rate = {name: mb / seconds for name, seconds in results.items()}
    floor = "floor: raw GetBlob + os.splice"
    rows = [
        Row(
            f"1. stream {mb:.0f} MiB blob",
            name,
            rate[name],
            floor,
            rate[floor],
            "MiB/s",
            True,
            0.95,
        )
        for name in (
            "blocking copy_to (splice)",
            "async copy_to (splice)",
            "blocking readinto, reused 1 MiB buffer",
        )
    ]
    rows.append(
        Row(
            f"1. stream {mb:.0f} MiB blob",
            "blocking copy_to (splice)",
            rate["blocking copy_to (splice)"],
            "skopeo copy to dir:",
            rate["skopeo copy to dir:"],
            "MiB/s",
            True,
            None,
        )
    )
    return rows


def case_round_trips(image: dict[str, Any], calls: int, repeat: int) -> list[Row]:
    def raw_floor() -> float:
        raw = RawClient()
        handle, _, _ = raw.call("OpenImage", [image["ref"]])
        started = time.perf_counter()
        for _ in range(calls):
            _, pipeid, (fd,) = raw.call("GetManifest", [handle])
            raw.read_piped(pipeid, fd)
        seconds = time.perf_counter() - started
        raw.close()
        return seconds / calls * 1e6

    def blocking_run() -> float:
        with ImageProxy() as proxy, proxy.open_image(image["ref"]) as img:
            started = time.perf_counter()
            for _ in range(calls):
                proxy.fetch_manifest_raw_oci(img)
            return (time.perf_counter() - started) / calls * 1e6

    async def async_run() -> float:
        async with AsyncImageProxy() as proxy, await proxy.open_image(image["ref"]) as img:
            started = time.perf_counter()
            for _ in range(calls):
                await proxy.fetch_manifest_raw_oci(img)
            return (time.perf_counter() - started) / calls * 1e6

    async def async_floor() -> float:
        raw = RawClient()
        raw.sock.setblocking(False)
        handle, _, _ = await raw.acall("OpenImage", [image["ref"]])
        started = time.perf_counter()
        for _ in range(calls):
            _, pipeid, (fd,) = await raw.acall("GetManifest", [handle])
            await raw.aread_piped(pipeid, fd)
        seconds = time.perf_counter() - started
        raw.close()
        return seconds / calls * 1e6

    # Rounds alternate between the variants, and each keeps its best round, so that
    # a slow moment of the machine does not fall on one variant only.
    rounds: dict[str, list[float]] = {"floor": [], "blocking": [], "async": [], "afloor": []}
    for _ in range(max(2 * repeat, 6)):
        rounds["floor"].append(raw_floor())
        rounds["blocking"].append(blocking_run())
        rounds["async"].append(asyncio.run(async_run()))
        rounds["afloor"].append(asyncio.run(async_floor()))
    floor, blocking = min(rounds["floor"]), min(rounds["blocking"])
    asynchronous, asyncio_floor = min(rounds["async"]), min(rounds["afloor"])
    name = f"2. {calls} GetManifest round trips"
    return [
        Row(name, "blocking", blocking, "floor: raw socket loop", floor, "us/call", False, 1 / 1.2),
        Row(
            name,
            "async",
            asynchronous,
            "raw asyncio socket loop",
            asyncio_floor,
            "us/call",
            False,
            1 / 1.2,
        ),
        Row(name, "async", asynchronous, "floor: raw socket loop", floor, "us/call", False, 0.85),
    ]


def timed_pull(ref: str, dest: Path, jobs: int) -> float:
    """Seconds ``pull`` takes to fetch ``ref`` (a plain-HTTP registry) into ``dest``,
    which is removed after."""
    config = ImageProxyConfig(insecure_skip_tls_verification=True)
    started = time.perf_counter()
    pull(ref, dest, config=config, jobs=jobs)
    seconds = time.perf_counter() - started
    shutil.rmtree(dest)
    return seconds


def timed_skopeo_copy(ref: str, dest: Path) -> float:
    """Seconds ``skopeo copy`` takes to fetch ``ref`` (a plain-HTTP registry) into the
    OCI layout ``dest``, which is removed after."""
    command = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", ref, f"oci:{dest}:latest"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(dest)
    return seconds


def case_pull(
    image: dict[str, Any], work: Path, bandwidth: float, latency: float, repeat: int
) -> list[Row]:
    total = sum(layer["size"] for layer in image["layers"]) / MiB
    one = "one at a time (jobs=1)"
    default = "one proxy (jobs=6, the default)"
    eight = "one proxy (jobs=8)"
    pool = "pool of 2 proxies (jobs=16)"
    skopeo = "skopeo copy docker:// oci:"
    with Registry(work / "registry") as registry:
        registry.push(image["ref"], "bench/image", "latest")
        with Relay(registry.host, bandwidth=bandwidth, latency=latency) as relay:
            ref = f"docker://{relay.address}/bench/image:latest"

            def ours(jobs: int) -> float:
                return timed_pull(ref, work / f"pull-{jobs}", jobs)

            # The serial pull is only the base of the speed-ups (and the longest):
            # one run; the others take turns, each keeping its best round.
            seconds = {one: ours(1)}
            seconds |= alternate(
                {
                    default: lambda: ours(6),
                    eight: lambda: ours(8),
                    pool: lambda: ours(16),
                    skopeo: lambda: timed_skopeo_copy(ref, work / "skopeo-pull"),
                },
                repeat,
            )
    name = (
        f"3. pull {len(image['layers'])} x {image['layers'][0]['size'] / MiB:.0f} MiB,"
        f" {bandwidth / MiB:.0f} MiB/s per connection, +{latency * 1000:.0f} ms"
    )
    rate = {label: total / s for label, s in seconds.items()}
    parallel = (default, eight, pool)
    rows = [Row(name, label, rate[label], one, rate[one], "MiB/s", True, 3.0) for label in parallel]
    # At six at once, ours and skopeo copy's take the same waves of capped streams:
    # level by construction, so no goal; more streams over one proxy must beat it.
    rows += [
        Row(name, label, rate[label], skopeo, rate[skopeo], "MiB/s", True, goal)
        for label, goal in ((default, None), (eight, 1.0), (pool, 1.0))
    ]
    return rows


def case_real_pull(real: RealImage, work: Path, repeat: int) -> list[Row]:
    """Pull the Debian image from a registry on this machine, against skopeo copy."""
    with Registry(work / "registry-real") as registry:
        ref = registry.push(real.ref("gzip"), "bench/debian", "latest")

        def skopeo() -> float:
            return timed_skopeo_copy(ref, work / "real-skopeo")

        runs: dict[str, Callable[[], float]] = {
            "one proxy (jobs=6, the default)": lambda: timed_pull(ref, work / "real-pull", 6),
            "skopeo copy docker:// oci:": skopeo,
        }
        skopeo()  # the registry's files into the page cache, for everyone alike
        best_of = alternate(runs, max(repeat, 5))
    name = f"3. pull {real.describe('gzip')}, local registry"
    stored = real.stored("gzip") / MiB
    rate = {label: stored / seconds for label, seconds in best_of.items()}
    skopeo_name = "skopeo copy docker:// oci:"
    return [
        Row(name, label, rate[label], skopeo_name, rate[skopeo_name], "MiB/s", True, 1.0)
        for label in rate
        if label != skopeo_name
    ]


def alternate(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each variant's best of ``rounds`` turns, the variants taking turns in a rotating
    order so that a slow moment of the machine does not fall on one variant only."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for turn in range(rounds):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(runs[name]())
    return {name: min(values) for name, values in times.items()}


def case_gather(image: dict[str, Any], skopeo: str, label: str, repeat: int) -> list[Row]:
    """All the image's blobs at once, from spawn to close: ``AsyncImageProxy`` with
    chunks read into Python, against a raw client with a thread splicing each pipe."""
    layers = [(layer["digest"], layer["size"]) for layer in image["layers"]]
    total = sum(size for _, size in layers)

    async def gathered() -> float:
        started = time.perf_counter()
        config = ImageProxyConfig(skopeo_cmd=[skopeo])
        received = 0
        async with AsyncImageProxy(config) as proxy, await proxy.open_image(image["ref"]) as img:

            async def one(digest: str, size: int) -> None:
                nonlocal received
                async with await proxy.get_blob(img, digest, size) as blob:
                    async for chunk in blob:
                        received += len(chunk)

            await asyncio.gather(*(one(digest, size) for digest, size in layers))
        seconds = time.perf_counter() - started
        assert received == total, (received, total)
        return seconds

    def floor() -> float:
        started = time.perf_counter()
        raw = RawClient(skopeo)
        handle, _, _ = raw.call("OpenImage", [image["ref"]])
        pipes = [raw.call("GetBlob", [handle, digest, size]) for digest, size in layers]
        devnull = os.open(os.devnull, os.O_WRONLY)

        def drain(fd: int, size: int) -> None:
            # The pipe ends at FinishPipe only: read the known size, as a client must.
            while size:
                size -= os.splice(fd, devnull, size)

        try:
            threads = [
                threading.Thread(target=drain, args=(fds[0], size))
                for (_, _, fds), (_, size) in zip(pipes, layers, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for _, pipeid, (fd,) in pipes:
                raw.read_piped(pipeid, fd)
        finally:
            os.close(devnull)
        raw.close()
        return time.perf_counter() - started

    async def asyncio_floor() -> float:
        # The least a one-thread asyncio client can do: a reader callback per pipe,
        # kept registered, reading into one reused buffer (no task, future or object
        # per chunk).
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        raw = RawClient(skopeo)
        handle, _, _ = raw.call("OpenImage", [image["ref"]])
        pipes = [raw.call("GetBlob", [handle, digest, size]) for digest, size in layers]
        left = {fds[0]: size for (_, _, fds), (_, size) in zip(pipes, layers, strict=True)}
        done = loop.create_future()
        view = memoryview(bytearray(MiB))

        def readable(fd: int) -> None:
            try:
                left[fd] -= os.readv(fd, [view[: left[fd]]])
            except BlockingIOError:
                return
            if not left[fd]:
                loop.remove_reader(fd)
                if not any(left.values()):
                    done.set_result(None)

        for fd in left:
            os.set_blocking(fd, False)
            loop.add_reader(fd, readable, fd)
        await done
        for _, pipeid, (fd,) in pipes:
            os.set_blocking(fd, True)
            raw.read_piped(pipeid, fd)
        raw.close()
        return time.perf_counter() - started

    best_of = alternate(
        {
            "ours": lambda: asyncio.run(gathered()),
            "floor": floor,
            "asyncio floor": lambda: asyncio.run(asyncio_floor()),
        },
        repeat,
    )
    mib = total / MiB
    name = (
        f"6. {len(layers)} x {layers[0][1] / MiB:.0f} MiB blobs gathered at once,"
        f" spawn to close ({label})"
    )
    ours = "AsyncImageProxy, chunks read into Python"
    return [
        Row(
            name,
            ours,
            mib / best_of["ours"],
            "floor: raw client, a thread splicing each pipe",
            mib / best_of["floor"],
            "MiB/s",
            True,
            0.9,
        ),
        Row(
            name,
            ours,
            mib / best_of["ours"],
            "raw asyncio client, one loop reading each pipe",
            mib / best_of["asyncio floor"],
            "MiB/s",
            True,
            None,
        ),
    ]


def _child_peak(args: list[str]) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    ).stdout
    return int(out.strip().splitlines()[-1])


def child_main(args: list[str]) -> None:
    """Run one workload in this (fresh) process; print its peak RSS in bytes."""
    kind, ref, *rest = args
    if kind == "baseline":
        with ImageProxy() as proxy, proxy.open_image(ref) as img:
            proxy.fetch_manifest(img)
    elif kind == "stream":
        digest, size = rest[0], int(rest[1])
        with open(os.devnull, "wb") as sink, ImageProxy() as proxy, proxy.open_image(ref) as img:
            with proxy.get_blob(img, digest, size) as blob:
                blob.copy_to(sink)
            with proxy.get_blob(img, digest, size) as blob:
                while blob.read(MiB):
                    pass
    elif kind == "pull":
        with tempfile.TemporaryDirectory() as dest:
            pull(ref, dest, config=ImageProxyConfig(insecure_skip_tls_verification=True), jobs=8)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def case_memory(stream_image: dict[str, Any], pull_image: dict[str, Any], work: Path) -> list[Row]:
    layer = stream_image["layers"][0]
    baseline = _child_peak(["baseline", stream_image["ref"]])
    streaming = _child_peak(["stream", stream_image["ref"], layer["digest"], str(layer["size"])])
    with Registry(work / "registry-mem") as registry:
        ref = registry.push(pull_image["ref"], "bench/mem", "latest")
        pulling = _child_peak(["pull", ref])
    rows = []
    for label, peak in (
        ("stream the big blob (splice and read)", streaming),
        ("pull the layered image, jobs=8", pulling),
    ):
        above = (peak - baseline) / MiB
        # Goal: under 64 MiB above the interpreter's baseline; ratio = 64 / measured.
        rows.append(
            Row(
                "4. peak RSS above baseline",
                label,
                above,
                "budget",
                64.0,
                "MiB",
                False,
                1.0,
                least=1.0,
            )
        )
    return rows


def case_startup(cycles: int) -> list[Row]:
    def rate(run: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(cycles):
            run()
        return cycles / (time.perf_counter() - started)

    version = rate(lambda: subprocess.run(["skopeo", "--version"], check=True, capture_output=True))
    raw = rate(lambda: RawClient().close())
    ours = rate(lambda: ImageProxy().open().finalize())
    name = "5. start-up"
    what = "spawn + Initialize + finalize"
    return [
        Row(name, what, ours, "raw spawn + Initialize + close", raw, "per s", True, 0.8),
        Row(name, what, ours, "skopeo --version", version, "per s", True, None),
    ]


# --------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    head = ("case", "ours", "value", "alternative", "value", "ratio", "goal", "met")
    lines: list[tuple[str, ...]] = []
    for r in rows:
        lines.append(
            (
                r.case,
                r.ours_name,
                f"{r.ours:.1f} {r.unit}",
                r.other_name,
                f"{r.other:.1f} {r.unit}",
                f"{r.ratio:.2f}",
                "-" if r.goal is None else f">= {r.goal:.2f}",
                "-" if r.met is None else ("yes" if r.met else "NO"),
            )
        )
    return markdown_table(head, lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the suite works")
    parser.add_argument("--blob-mib", type=int, default=1024, help="case 1 and 4 blob size")
    parser.add_argument("--calls", type=int, default=2000, help="case 2 round trips")
    parser.add_argument("--layers", type=int, default=8, help="case 3 layer count")
    parser.add_argument("--layer-mib", type=int, default=64, help="case 3 layer size")
    parser.add_argument("--bandwidth-mib", type=float, default=32, help="case 3 cap per connection")
    parser.add_argument("--latency-ms", type=float, default=10, help="case 3 added latency")
    parser.add_argument("--cycles", type=int, default=20, help="case 5 start-ups")
    parser.add_argument(
        "--gather-mib", type=int, default=64, help="case 6: size of each of 4 blobs"
    )
    parser.add_argument(
        "--no-real", action="store_true", help="skip the Debian image (needs root, network once)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best is kept)")
    parser.add_argument("--out", type=Path, default=None, help="where JSON and PNG go")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(CASES),
        help=f"run only these cases (comma-separated, of: {','.join(CASES)}); the results then"
        " go to a temporary directory unless --out is given",
    )
    args = parser.parse_args()
    unknown = set(args.only) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) in --only: {', '.join(sorted(unknown))}")
    partial = set(args.only) != set(CASES)
    if args.smoke:
        args.blob_mib, args.calls, args.layers, args.layer_mib = 4, 50, 2, 1
        args.cycles, args.repeat, args.bandwidth_mib, args.latency_ms = 2, 1, 64, 1
        args.gather_mib = 1
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cip-bench-", dir=HERE)))
        out = args.out or (work / "results" if args.smoke or partial else HERE / "results")
        out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        only = set(args.only)
        big = (
            build_layout(work / "big", [args.blob_mib * MiB]) if only & {"stream", "memory"} else {}
        )
        layered = (
            build_layout(work / "layered", [args.layer_mib * MiB] * args.layers, seed=1)
            if only & {"round-trips", "pull", "memory"}
            else {}
        )
        rows: list[Row] = []
        if "stream" in only:
            rows += case_stream(big, args.repeat)
        if "round-trips" in only:
            rows += case_round_trips(layered, args.calls, args.repeat)
        if "pull" in only:
            rows += case_pull(
                layered, work, args.bandwidth_mib * MiB, args.latency_ms / 1000, args.repeat
            )
        if "real-pull" in only and not args.no_real:
            real = smoke_image(work) if args.smoke else real_image(log=_stderr)
            rows += case_real_pull(real, work, args.repeat)
        if "memory" in only:
            rows += case_memory(big, layered, work)
        if "startup" in only:
            rows += case_startup(args.cycles)
        if "gather" in only:
            gather = build_layout(work / "gather", [args.gather_mib * MiB] * 4, seed=2)
            rows += case_gather(gather, "skopeo", _skopeo_version(), args.repeat)
            upstream = os.environ.get("CIP_TEST_SKOPEO_UPSTREAM")
            if upstream:
                rows += case_gather(gather, upstream, _skopeo_version(upstream), args.repeat)
            else:
                print("CIP_TEST_SKOPEO_UPSTREAM is not set: case 6 runs on one skopeo only")
        elapsed = time.monotonic() - started
        text = table(rows)
        print(text)
        print(
            f"\n{os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, {_skopeo_version()}, {elapsed:.0f} s"
        )
        result = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "skopeo": _skopeo_version(),
            "seconds": elapsed,
            "options": {k: v for k, v in vars(args).items() if k != "out"},
            "rows": [dataclasses.asdict(r) | {"ratio": r.ratio, "met": r.met} for r in rows],
            "table": text,
        }
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        draw(out)
        print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
        if not args.smoke and not partial and args.out is None:
            write_report(result)
        return 0


def write_report(result: dict[str, Any]) -> None:
    """BENCHMARKS.md: the latest tables and chart, and the notes on goals."""
    text = [
        "# Benchmarks",
        "",
        f"Latest full run: {time.strftime('%Y-%m-%d')}, {result['cores']} cores,"
        f" Python {result['python']}, {result['skopeo']}, {result['seconds']:.0f} s.",
        "Generated by `python bench/unpack.py` then `python bench/run.py` (see"
        " [bench/NOTES.md](bench/NOTES.md)); options of the latter: `"
        + _options(result["options"])
        + "`.",
        "Every case runs its alternatives side by side in the same run; a ratio above 1"
        " means ours is better (for times and memory, the alternative's value over ours).",
        "",
        "![benchmark ratios](bench/results/results.png)",
        "",
        result["table"],
        "",
        *_unpack_section(),
        *storage_section(),
        (HERE / "NOTES.md").read_text().strip(),
        "",
    ]
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(text))
    print(f"wrote {HERE.parent / 'BENCHMARKS.md'}")


def _options(options: dict[str, Any]) -> str:
    """Options as on the command line (flags only when set)."""
    words = []
    for key, value in options.items():
        if key == "smoke" or value is False or value is None:
            continue
        if key == "only":
            if set(value) == set(CASES):
                continue  # every case: the default
            value = ",".join(value)
        flag = "--" + key.replace("_", "-")
        words.append(flag if value is True else f"{flag} {value}")
    return " ".join(words)


def _unpack_section() -> list[str]:
    """The latest `bench/unpack.py` results, when there are any."""
    path = HERE / "results" / "unpack.json"
    if not path.exists():
        return []
    unpack = json.loads(path.read_text())
    caches = "page cache dropped" if unpack.get("caches_dropped") else "page cache kept"
    lines = [
        "## Unpack",
        "",
        f"`python bench/unpack.py` ({unpack['umoci']}, {unpack['cores']} cores,"
        f" options `{_options(unpack['options'])}`, {caches} and the layout and every"
        " contender's programs read again before each run, best of alternating rounds, "
        f"{unpack['seconds']:.0f} s):",
        "",
        unpack["table"],
        "",
        *unpack.get("notes", []),
        "",
    ]
    real = unpack.get("real_image")
    if real:
        lines += [
            f"The Debian image ({real['name']}, from {real['mirror']}; built by"
            " `bench/realimage.py`):",
            "",
            markdown_table(
                ("layer", "what", "entries", "tar", "gzip", "zstd"),
                [
                    (
                        str(n),
                        layer["description"],
                        str(layer["entries"]),
                        f"{layer['tar_bytes'] / MiB:.1f} MiB",
                        f"{layer['gzip']['size'] / MiB:.1f} MiB",
                        f"{layer['zstd']['size'] / MiB:.1f} MiB",
                    )
                    for n, layer in enumerate(real["layers"])
                ],
            ),
            "",
        ]
    return lines


def _skopeo_version(skopeo: str = "skopeo") -> str:
    return subprocess.run([skopeo, "--version"], capture_output=True, text=True).stdout.strip()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
