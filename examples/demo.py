"""Build an image locally, pull it with the command-line tool, then read it from Python.

Run with ``bash scripts/demo.sh`` (or ``python examples/demo.py`` once set up).
No network is used: the image is an OCI layout written to a temporary directory,
and a copy of it is turned into a docker-archive by ``skopeo copy``. The pull
draws its progress display when standard error is a terminal.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

from containers_image_proxy import AsyncImageProxy, ImageProxy, cli
from tests.support.images import Layer, build_docker_archive, build_oci_layout, random_bytes


def build(root: Path) -> list[str]:
    layers = [
        Layer({"etc/os-release": b"NAME=demo\n", "usr/bin/hello": b"#!/bin/sh\necho hi\n"}),
        Layer({"opt/data.bin": random_bytes(96 << 20, seed=1)}, compression="none"),
        Layer({"opt/more.bin": random_bytes(48 << 20, seed=2)}),
        Layer({"opt/extra.bin": random_bytes(64 << 20, seed=3)}, compression="none"),
    ]
    oci = build_oci_layout(root / "layout", layers, labels={"demo": "yes"})
    archive = build_docker_archive(root / "image.tar", layers)
    return [oci.ref, archive.ref]


def fetch_blocking(reference: str) -> None:
    with ImageProxy() as proxy, proxy.open_image(reference) as image:
        digest, manifest = proxy.fetch_manifest(image)
        config = proxy.fetch_config(image)
        print(f"{reference}\n  protocol {proxy.protocol_version}, manifest {digest}")
        print(f"  {config.os}/{config.architecture}, {len(manifest.layers)} layers")
        for layer in manifest.layers:
            started = time.perf_counter()
            hasher = hashlib.sha256()
            with proxy.get_descriptor(image, layer) as blob:
                for chunk in blob:
                    hasher.update(chunk)
            seconds = time.perf_counter() - started
            assert hasher.hexdigest() == layer.digest.encoded
            print(
                f"    {layer.digest.encoded[:12]} {layer.size / 1e6:8.2f} MB "
                f"{layer.size / 1e6 / max(seconds, 1e-9):8.1f} MB/s  {layer.media_type}"
            )


async def fetch_parallel(reference: str) -> None:
    async with AsyncImageProxy() as proxy, await proxy.open_image(reference) as image:
        _, manifest = await proxy.fetch_manifest(image)

        async def count(layer_index: int) -> int:
            layer = manifest.layers[layer_index]
            total = 0
            async with await proxy.get_descriptor(image, layer) as blob:
                async for chunk in blob:
                    total += len(chunk)
            return total

        started = time.perf_counter()
        sizes = await asyncio.gather(*(count(i) for i in range(len(manifest.layers))))
        seconds = time.perf_counter() - started
        print(
            f"  asyncio: {len(sizes)} layers at once, {sum(sizes) / 1e6:.2f} MB in {seconds:.2f}s"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="containers-image-proxy-demo-") as tmp:
        print("building a 4-layer image (200 MiB) as an OCI layout and a docker-archive ...")
        references = build(Path(tmp))
        for n, reference in enumerate(references):
            dest = Path(tmp) / f"pulled-{n}"
            print(f"\n$ containers-image-proxy pull {reference} {dest}")
            status = cli.main(["pull", reference, str(dest), "--jobs", "4"])
            if status:
                raise SystemExit(status)
            print(f"$ containers-image-proxy inspect --format table oci:{dest}:latest")
            cli.main(["inspect", "--format", "table", f"oci:{dest}:latest"])
        print("\nthe same images through the Python API:")
        for reference in references:
            fetch_blocking(reference)
            asyncio.run(fetch_parallel(reference))


if __name__ == "__main__":
    main()
