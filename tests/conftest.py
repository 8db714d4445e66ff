"""Fixtures for every test: skopeo, images built once per session, the registries, leaks.

The helpers behind them live in tests/support/; CONTRIBUTING.md describes the layout.
"""

from __future__ import annotations

# ============================================================================
# BEGIN test images fixtures (see tests/support/images.py)
# ============================================================================
import gc
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import (
    BIG_LAYER_FILES,
    BuiltImage,
    Layer,
    MultiPlatformImage,
    build_dir,
    build_docker_archive,
    build_oci_archive,
    build_oci_index,
    build_oci_layout,
    corrupt_blob,
    random_bytes,
)
from tests.support.registry import Registry, RegistryImage, find_registry_binary
from tests.support.relay import Relay
from tests.support.resources import child_pids, open_fds
from tests.support.skopeos import SKOPEOS, skopeo_command

pytest_plugins = ["tests.support.reliability"]

IMAGE_LABELS = {
    "org.opencontainers.image.title": "containers-image-proxy test image",
    "com.example.purpose": "testing",
}


def _require_skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("skopeo is required in CI")
        pytest.skip("skopeo is not installed (set CI=1 to make this a failure)")
    return path


@pytest.fixture(scope="session")
def skopeo() -> str:
    """Path to the skopeo binary; skips (or fails under CI) when missing."""
    return _require_skopeo()


def basic_layers() -> list[Layer]:
    """Two layers: a gzip one and an uncompressed one, a few files each."""
    return [
        Layer(
            {
                "etc/os-release": b'NAME="Test"\nID=test\n',
                "usr/bin/hello": random_bytes(4096, seed=1),
                "usr/share/doc/hello/README": b"hello world\n",
            },
            compression="gzip",
        ),
        Layer(
            {
                "etc/hello.conf": b"greeting=hi\n",
                "var/lib/data.bin": random_bytes(20_000, seed=2),
            },
            compression="none",
        ),
    ]


@pytest.fixture(scope="session")
def images_root(tmp_path_factory: pytest.TempPathFactory, skopeo: str) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def oci_image(images_root: Path) -> BuiltImage:
    return build_oci_layout(images_root / "oci", basic_layers(), labels=IMAGE_LABELS)


@pytest.fixture(scope="session")
def oci_index_image(images_root: Path) -> MultiPlatformImage:
    amd64 = [Layer({"arch": b"amd64\n", "bin/tool": random_bytes(3000, seed=10)})]
    arm64 = [
        Layer({"arch": b"arm64\n", "bin/tool": random_bytes(3000, seed=11)}),
        Layer({"etc/arm64-only": b"yes\n"}, compression="none"),
    ]
    return build_oci_index(
        images_root / "oci-index",
        [("linux", "amd64", None, amd64), ("linux", "arm64", "v8", arm64)],
        tag="multi",
    )


@pytest.fixture(scope="session")
def docker_archive_image(images_root: Path, skopeo: str) -> BuiltImage:
    return build_docker_archive(
        images_root / "docker-archive.tar",
        basic_layers(),
        tag="example.com/test:latest",
        labels=IMAGE_LABELS,
        skopeo=skopeo,
    )


@pytest.fixture(scope="session")
def oci_archive_image(images_root: Path) -> BuiltImage:
    return build_oci_archive(images_root / "oci-archive.tar", basic_layers(), labels=IMAGE_LABELS)


@pytest.fixture(scope="session")
def dir_image(images_root: Path) -> BuiltImage:
    return build_dir(images_root / "dir", basic_layers(), labels=IMAGE_LABELS)


@pytest.fixture(scope="session")
def big_config_image(images_root: Path) -> BuiltImage:
    labels = {f"com.example.label.{i:05d}": f"value-{i:05d}-" + "x" * 40 for i in range(2000)}
    image = build_oci_layout(
        images_root / "big-config", [Layer({"big": b"config\n"})], labels=labels
    )
    assert len(image.config) > 100 * 1024
    return image


@pytest.fixture(scope="session")
def many_layers_image(images_root: Path) -> BuiltImage:
    layers = [
        Layer({f"layers/{i:03d}": f"layer {i}\n".encode()}, "gzip" if i % 2 else "none")
        for i in range(300)
    ]
    return build_oci_layout(images_root / "many-layers", layers)


@pytest.fixture
def corrupted_image(tmp_path: Path, skopeo: str) -> BuiltImage:
    """An OCI layout whose first layer blob no longer matches its digest."""
    image = build_oci_layout(tmp_path / "corrupted", basic_layers(), labels=IMAGE_LABELS)
    corrupt_blob(image, 0)
    return image


# ============================================================================
# END test images fixtures
# ============================================================================


# ============================================================================
# BEGIN resource accounting and proxy helpers
# ============================================================================


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves descriptors or child processes behind."""
    gc.collect()
    fds_before, children_before = open_fds(), child_pids()
    yield
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        fds = {fd: target for fd, target in open_fds().items() if fd not in fds_before}
        children = child_pids() - children_before
        if not fds and not children:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"leaked descriptors {fds} and child processes {children}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def big_layers_image(images_root: Path) -> BuiltImage:
    """Two incompressible 3 MiB uncompressed layers: each more than a pipe holds."""
    layers = [Layer({name: data}, compression="none") for name, data in BIG_LAYER_FILES.items()]
    return build_oci_layout(images_root / "big-layers", layers)


# ============================================================================
# END resource accounting and proxy helpers
# ============================================================================


# ============================================================================
# BEGIN local registry fixtures (see tests/support/registry.py)
# ============================================================================


@pytest.fixture(scope="session")
def registry_binary() -> str:
    """Path to docker-registry; skips (or fails under CI) when missing."""
    path = find_registry_binary()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("docker-registry is required in CI (apt-get install docker-registry)")
        pytest.skip("docker-registry is not installed (set CI=1 to make this a failure)")
    return path


def _serve(
    factory: pytest.TempPathFactory,
    name: str,
    binary: str,
    skopeo: str,
    *,
    tls: bool = False,
    auth: bool = False,
) -> Iterator[Registry]:
    registry = Registry(factory.mktemp(name), binary=binary, skopeo=skopeo, tls=tls, auth=auth)
    try:
        yield registry.start()
    finally:
        registry.stop()  # also registered with atexit while it runs


@pytest.fixture(scope="session")
def plain_registry(
    tmp_path_factory: pytest.TempPathFactory, registry_binary: str, skopeo: str
) -> Iterator[Registry]:
    """A registry over plain HTTP (clients need insecure_skip_tls_verification)."""
    yield from _serve(tmp_path_factory, "registry-plain", registry_binary, skopeo)


@pytest.fixture(scope="session")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, registry_binary: str, skopeo: str
) -> Iterator[Registry]:
    """A registry over HTTPS; its CA is ``cert_dir/ca.crt``."""
    yield from _serve(tmp_path_factory, "registry-tls", registry_binary, skopeo, tls=True)


@pytest.fixture(scope="session")
def auth_registry(
    tmp_path_factory: pytest.TempPathFactory, registry_binary: str, skopeo: str
) -> Iterator[Registry]:
    """A registry over HTTPS with htpasswd basic auth (``username``/``password``)."""
    yield from _serve(
        tmp_path_factory, "registry-auth", registry_binary, skopeo, tls=True, auth=True
    )


@pytest.fixture(scope="session")
def registry_image(plain_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    """``oci_image`` pushed to ``plain_registry`` as test/image:latest."""
    return plain_registry.push_image(oci_image, "test/image", "latest")


@pytest.fixture(scope="session")
def big_registry_image(plain_registry: Registry, big_layers_image: BuiltImage) -> RegistryImage:
    """``big_layers_image`` (two 3 MiB layers) pushed to ``plain_registry`` as faults/big:latest:
    big enough to cut, stall or pause a transfer inside a layer."""
    return plain_registry.push_image(big_layers_image, "faults/big", "latest")


@pytest.fixture
def relay(plain_registry: Registry) -> Iterator[Relay]:
    """A relay in front of ``plain_registry``, to inject faults into (``relay.faults``);
    ``relay.image_ref(image)`` names an image through it."""
    with Relay(plain_registry.host) as r:
        yield r


@pytest.fixture(params=SKOPEOS)
def skopeo_cmd(request: pytest.FixtureRequest) -> list[str]:
    """Each skopeo the fault tests run against: Debian's, and the upstream build when
    ``CIP_TEST_SKOPEO_UPSTREAM`` names it (skipped otherwise)."""
    return skopeo_command(request.param)


# ============================================================================
# END local registry fixtures
# ============================================================================
