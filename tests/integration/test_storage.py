"""Reading images from containers-storage, the local store of podman, buildah and CRI-O.

A private vfs store (tests/support/storage.py) is filled the ways users fill theirs:

* ``plain``: ``podman load`` of a docker-archive (gzip and plain layers, whiteouts,
  hardlinks); the store keeps a manifest that names the uncompressed layers.
* ``zstd``: ``podman load`` of an oci-archive (zstd, plain and gzip layers).
* ``multi``: ``skopeo copy oci:... containers-storage:...`` of five layers of many
  files (gzip, zstd, gzip, plain, gzip).

The last two are stored from compressed layers: the store keeps them uncompressed
while their manifests name the compressed blobs, which only GetLayerInfo (protocol
0.2.5+) gets around. Each image is read by name (the store chosen by
``CONTAINERS_STORAGE_CONF``), by image ID, and with the store spelled out in the
reference while the environment points elsewhere; each with Debian's skopeo and, when
``CIP_TEST_SKOPEO_UPSTREAM`` names one, a newer skopeo.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from containers_image_proxy import (
    AccessDeniedError,
    AsyncImageProxy,
    Blob,
    Descriptor,
    ImageNotFoundError,
    ImageProxy,
    ImageProxyConfig,
    pull,
    stream_layers,
    unpack,
    unpack_async,
)
from containers_image_proxy import _protocol as proto
from containers_image_proxy.errors import InvalidReferenceError, LayerUnavailableError, RequestError
from tests.support.hostile_layers import TarLayer, many_files_layers, rich_layers
from tests.support.images import BuiltImage, build_oci_layout
from tests.support.storage import Store, StoredImage, implied_directories, podman_path, storable
from tests.support.treediff import Snapshot, diff, snapshot

pytestmark = pytest.mark.usefixtures("no_leaks")

UPSTREAM_ENV = "CIP_TEST_SKOPEO_UPSTREAM"
NOBODY = 65534
#: The tar media types a store's layers (plain tar) may carry.
PLAIN_TAR = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- fixtures


def _required(name: str, path: str | None) -> str:
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (apt-get install {name})")
        pytest.skip(f"{name} is not installed (set CI=1 to make this a failure)")
    return path


@pytest.fixture(scope="module")
def umoci() -> str:
    return _required("umoci", shutil.which("umoci"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, skopeo: str) -> Store:
    _required("podman", podman_path())
    if os.geteuid() != 0:
        pytest.skip("the private store is filled by podman as root (rootless podman leaves a"
                    " pause process behind)")  # fmt: skip
    return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def other_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """An empty store, where the environment points while a reference names ``store``."""
    return Store(tmp_path_factory.mktemp("other-store"))


def _source(root: Path, name: str, layers: list[TarLayer]) -> BuiltImage:
    # Labels keep the configurations, and so the image IDs, of the images apart.
    return build_oci_layout(root / name, list(layers), labels={"com.example.case": name})


@pytest.fixture(scope="module")
def stored(store: Store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, StoredImage]:
    root = tmp_path_factory.mktemp("store-sources")
    multi = many_files_layers(5, 60, 3000, 1, 300_000, seed=13)
    for index, compression in enumerate(("gzip", "zstd", "gzip", "none", "gzip")):
        multi[index] = dataclasses.replace(multi[index], compression=compression)
    return {
        "plain": store.load_docker_archive(
            _source(root, "plain", storable(rich_layers(("gzip", "none", "gzip")))),
            "localhost/cip/plain:latest",
        ),
        "zstd": store.load_oci_archive(
            _source(root, "zstd", storable(rich_layers(("zstd", "none", "gzip")))),
            "localhost/cip/zstd:v1",
        ),
        "multi": store.copy(_source(root, "multi", multi), "localhost/cip/multi:latest"),
    }


@dataclasses.dataclass(frozen=True)
class Tree:
    path: Path
    snapshot: Snapshot
    ignore: frozenset[str]


@pytest.fixture(scope="module")
def reference_trees(
    stored: dict[str, StoredImage], umoci: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Tree]:
    """Each source image unpacked by umoci (from a gzip twin: umoci 0.4.7 lacks zstd)."""
    root = tmp_path_factory.mktemp("store-references")
    trees = {}
    for key, image in stored.items():
        layers = [
            dataclasses.replace(layer, compression="gzip") if layer.compression == "zstd" else layer
            for layer in image.source.source_layers
        ]
        twin = build_oci_layout(root / f"{key}-twin", layers)
        assert twin.diff_ids == image.source.diff_ids
        rootfs = umoci_unpack(umoci, twin.path, "latest", root / f"{key}-bundle")
        # umoci gives a directory the mtime of its last change by a later layer.
        ignore = implied_directories(image.source) | ({"opt/old"} if key != "multi" else set())
        trees[key] = Tree(rootfs, snapshot(rootfs), frozenset(ignore))
    return trees


def umoci_unpack(umoci: str, layout: Path, tag: str, bundle: Path) -> Path:
    proc = subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"umoci unpack failed: {proc.stderr.decode(errors='replace')}"
    return bundle / "rootfs"


@pytest.fixture(params=["debian", "upstream"])
def skopeo_config(request: pytest.FixtureRequest, skopeo: str) -> ImageProxyConfig:
    """The skopeo under test: Debian's, or the one ``CIP_TEST_SKOPEO_UPSTREAM`` names."""
    if request.param == "debian":
        return ImageProxyConfig()
    path = os.environ.get(UPSTREAM_ENV)
    if not path:
        pytest.skip(f"{UPSTREAM_ENV} is not set (path of a newer skopeo)")
    return ImageProxyConfig(skopeo_cmd=[path])


@dataclasses.dataclass(frozen=True)
class Target:
    """A stored image and the reference a test opens it by."""

    key: str
    image: StoredImage
    reference: str


@pytest.fixture(params=["plain", "zstd", "multi"])
def image_key(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["name", "id", "explicit"])
def target(
    request: pytest.FixtureRequest,
    image_key: str,
    stored: dict[str, StoredImage],
    store: Store,
    other_store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> Target:
    """The image, by name or ID (the child inherits the store from the environment), or
    with the store in the reference while the environment names an empty one."""
    image = stored[image_key]
    if request.param == "explicit":
        env, reference = other_store.env, store.reference(image.name, explicit=True)
    else:
        name = image.image_id if request.param == "id" else image.name
        env, reference = store.env, store.reference(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Target(image_key, image, reference)


def readable(image: StoredImage, proxy: ImageProxy) -> bool:
    """Whether the proxy can serve every layer: by the manifest, or through GetLayerInfo."""
    return image.plain_manifest or proxy.supports("GetLayerInfo")


def can_read(image: StoredImage, config: ImageProxyConfig) -> bool:
    with ImageProxy(config) as proxy:
        return readable(image, proxy)


def decompress(media_type: str, data: bytes) -> bytes:
    """What a caller does with a layer: decompress it as its media type says."""
    if media_type.endswith(("+gzip", ".gzip")):
        return gzip.decompress(data)
    if media_type.endswith(("+zstd", ".zstd")):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# --------------------------------------------------------------------------- the image matrix


def test_open_manifest_config_and_layers(target: Target, skopeo_config: ImageProxyConfig) -> None:
    image, source = target.image, target.image.source
    with ImageProxy(skopeo_config) as proxy, proxy.open_image(target.reference) as opened:
        digest, manifest = proxy.fetch_manifest(opened)
        assert digest == sha256(image.manifest)
        assert len(manifest.layers) == len(source.diff_ids)
        config = proxy.fetch_config(opened)
        assert list(config.rootfs.diff_ids) == source.diff_ids
        assert config.config is not None and config.config.labels == {
            "com.example.case": target.key
        }
        tars = [layer.tar_bytes() for layer in source.source_layers]
        infos = proxy.get_layer_info(opened)
        if not proxy.supports("GetLayerInfo"):
            assert infos is None
        else:
            # The store serves the uncompressed layers, whatever they were stored from.
            assert infos is not None
            assert [(i.digest, i.size) for i in infos] == [
                (d, len(t)) for d, t in zip(source.diff_ids, tars, strict=True)
            ]
            assert {i.media_type for i in infos} <= PLAIN_TAR
            for info, tar in zip(infos, tars, strict=True):
                with proxy.get_blob(opened, info.digest, info.size) as blob:
                    assert blob.read() == tar
        for descriptor, diff_id, tar in zip(manifest.layers, source.diff_ids, tars, strict=True):
            if descriptor.digest != diff_id:
                # A compressed blob the store no longer has: only GetLayerInfo helps.
                assert not image.plain_manifest
                with pytest.raises(ImageNotFoundError, match="does not exist"):
                    proxy.get_descriptor(opened, descriptor).close()
                continue
            with proxy.get_descriptor(opened, descriptor) as blob:
                assert blob.read() == tar


def test_stream_layers(target: Target, skopeo_config: ImageProxyConfig) -> None:
    source = target.image.source
    seen: list[tuple[Descriptor, str]] = []

    def consume(descriptor: Descriptor, blob: Blob) -> None:
        seen.append((descriptor, sha256(decompress(descriptor.media_type, blob.read()))))

    if not can_read(target.image, skopeo_config):
        with pytest.raises(LayerUnavailableError) as caught:
            stream_layers(target.reference, consume, config=skopeo_config)
        assert caught.value.required == "0.2.5"
        assert "skopeo 1.11" in str(caught.value)
        return
    layers = stream_layers(target.reference, consume, config=skopeo_config)
    assert [descriptor for descriptor, _ in seen] == layers
    # Every descriptor handed out states what its bytes are: plain tar, from a store.
    assert [diff_id for _, diff_id in seen] == source.diff_ids
    assert {descriptor.media_type for descriptor in layers} <= PLAIN_TAR


def test_pull_is_read_by_umoci(
    target: Target,
    skopeo_config: ImageProxyConfig,
    reference_trees: dict[str, Tree],
    umoci: str,
    tmp_path: Path,
) -> None:
    layout = tmp_path / "layout"
    if not can_read(target.image, skopeo_config):
        with pytest.raises(LayerUnavailableError):
            pull(target.reference, layout, tag="stored", config=skopeo_config)
        return
    result = pull(target.reference, layout, tag="stored", config=skopeo_config)
    assert result.source_digest == sha256(target.image.manifest)
    config_blob = layout / "blobs" / "sha256" / result.manifest.config.digest.encoded
    assert json.loads(config_blob.read_bytes())["rootfs"]["diff_ids"] == (
        target.image.source.diff_ids
    )
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:stored"], capture_output=True, timeout=60
    )
    assert inspect.returncode == 0, inspect.stderr.decode()
    rootfs = umoci_unpack(umoci, layout, "stored", tmp_path / "bundle")
    reference = reference_trees[target.key]
    assert diff(reference.snapshot, snapshot(rootfs), ignore=reference.ignore) == []


def test_unpack_equals_the_reference_tree(
    target: Target,
    skopeo_config: ImageProxyConfig,
    reference_trees: dict[str, Tree],
    tmp_path: Path,
) -> None:
    dest = tmp_path / "rootfs"
    if not can_read(target.image, skopeo_config):
        with pytest.raises(LayerUnavailableError):
            unpack(target.reference, dest, config=skopeo_config)
        assert not dest.exists()
        return
    result = unpack(target.reference, dest, config=skopeo_config)
    # The store serves plain tar: nothing to decompress.
    assert [layer.compression for layer in result.layers] == ["none"] * len(result.layers)
    assert [layer.diff_id for layer in result.layers] == target.image.source.diff_ids
    reference = reference_trees[target.key]
    assert diff(reference.snapshot, snapshot(dest), ignore=reference.ignore) == []


async def test_unpack_async_over_a_proxy(
    stored: dict[str, StoredImage],
    store: Store,
    skopeo_config: ImageProxyConfig,
    reference_trees: dict[str, Tree],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    image = stored["plain"]
    async with AsyncImageProxy(skopeo_config) as proxy:
        await unpack_async(store.reference(image.image_id), tmp_path / "rootfs", proxy=proxy)
    reference = reference_trees["plain"]
    assert diff(reference.snapshot, snapshot(tmp_path / "rootfs"), ignore=reference.ignore) == []


# --------------------------------------------------------------------------- choosing the store


def test_reference_forms_name_the_same_image(
    stored: dict[str, StoredImage],
    store: Store,
    skopeo_config: ImageProxyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    image = stored["zstd"]
    repository = image.name.rsplit(":", 1)[0]
    forms = [
        image.name,
        image.image_id,
        f"@{image.image_id}",
        image.image_id[:12],
        f"{repository}@{image.image_id}",
        f"{repository}@{sha256(image.manifest)}",
    ]
    references = [store.reference(form) for form in forms] + [
        store.reference(image.name, explicit=True),
        store.reference(image.image_id, explicit=True),
    ]
    with ImageProxy(skopeo_config) as proxy:
        for reference in references:
            with proxy.open_image(reference) as opened:
                assert proxy.fetch_manifest(opened)[0] == sha256(image.manifest), reference
        # Without a tag the name means :latest, which this image does not have.
        with pytest.raises(ImageNotFoundError):
            proxy.open_image(store.reference(repository))


def test_missing_images(
    stored: dict[str, StoredImage],
    store: Store,
    other_store: Store,
    skopeo_config: ImageProxyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    absent_id = "0123456789abcdef" * 4
    present = stored["plain"]
    missing = [
        store.reference("localhost/cip/absent:latest"),
        store.reference(present.name.replace(":latest", ":other-tag")),
        store.reference(f"{present.name.rsplit(':', 1)[0]}@sha256:{'a' * 64}"),
        store.reference(absent_id),
        store.reference(f"@{absent_id}"),
        store.reference(absent_id, explicit=True),
        # In the store the environment names, not in the one the reference names.
        other_store.reference(present.name, explicit=True),
        other_store.reference(present.image_id, explicit=True),
    ]
    with ImageProxy(skopeo_config) as proxy:
        for reference in missing:
            with pytest.raises(ImageNotFoundError) as caught:
                proxy.open_image(reference)
            assert caught.value.method == "OpenImage"
            if absent_id in reference and "@" not in reference:
                assert f"no image with ID {absent_id}" in str(caught.value)
            if proxy.supports("OpenImageOptional"):
                assert proxy.open_image_optional(reference) is None, reference
        # The proxy is still fine, and finds what is there.
        with proxy.open_image(store.reference(present.name)) as opened:
            assert proxy.fetch_manifest(opened)[0] == sha256(present.manifest)
        if proxy.supports("OpenImageOptional"):
            opened_optional = proxy.open_image_optional(store.reference(present.image_id))
            assert opened_optional is not None
            proxy.close_image(opened_optional)


def test_the_child_inherits_the_store_from_the_environment(
    stored: dict[str, StoredImage],
    store: Store,
    other_store: Store,
    skopeo_config: ImageProxyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = stored["plain"]
    reference = f"containers-storage:{image.name}"
    for key, value in other_store.env.items():
        monkeypatch.setenv(key, value)
    with ImageProxy(skopeo_config) as proxy, pytest.raises(ImageNotFoundError):
        proxy.open_image(reference)
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    # The variable is read when skopeo starts: a proxy started before keeps its store.
    with ImageProxy(skopeo_config) as proxy, proxy.open_image(reference) as opened:
        assert proxy.fetch_manifest(opened)[0] == sha256(image.manifest)


def test_a_missing_storage_conf_is_not_a_missing_image(
    stored: dict[str, StoredImage],
    tmp_path: Path,
    skopeo_config: ImageProxyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = tmp_path / "nowhere" / "storage.conf"
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(missing))
    with ImageProxy(skopeo_config) as proxy:
        for opener in (proxy.open_image, proxy.open_image_optional):
            if opener == proxy.open_image_optional and not proxy.supports("OpenImageOptional"):
                continue
            with pytest.raises(RequestError) as caught:
                opener(f"containers-storage:{stored['plain'].name}")
            assert type(caught.value) is RequestError
            assert str(missing) in str(caught.value)
            assert "CONTAINERS_STORAGE_CONF names a file that does not exist" in str(caught.value)


@pytest.fixture
def root_only_store(skopeo: str) -> Iterator[tuple[Store, Path]]:
    """A store that only root may enter, configured in a file anyone may read, and a
    home directory for the user ``nobody``."""
    _required("podman", podman_path())
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run skopeo as another user")
    # Outside the test's own temporary directory, which only root may enter.
    root = Path(tempfile.mkdtemp(prefix="cip-store-"))
    home = Path(tempfile.mkdtemp(prefix="cip-home-"))
    try:
        os.chmod(root, 0o755)
        os.chown(home, NOBODY, NOBODY)
        if not os.stat(root.parent).st_mode & 0o001:
            pytest.skip(f"{root.parent} is not open to other users")
        store = Store(root)
        store.podman("images")  # creates the graph root, open to root only
        assert os.stat(store.graphroot).st_mode & 0o077 == 0
        yield store, home
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.reliability("security", "a store that needs privileges the process lacks")
def test_a_store_that_needs_privileges_gives_a_clear_error(
    root_only_store: tuple[Store, Path],
    skopeo_config: ImageProxyConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, home = root_only_store
    for key, value in store.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(home))
    # skopeo makes its runtime directory there (in /tmp without it), as nobody.
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    skopeo = list(skopeo_config.skopeo_cmd or ["skopeo"])
    config = ImageProxyConfig(skopeo_cmd=[*as_nobody, *skopeo])
    with ImageProxy(config) as proxy:
        for reference in (
            store.reference("localhost/cip/any:latest"),
            store.reference("localhost/cip/any:latest", explicit=True),
        ):
            with pytest.raises(AccessDeniedError) as caught:
                proxy.open_image(reference)
            message = str(caught.value)
            assert "permission denied" in message
            assert str(store.graphroot) in message
            assert "privileges the store needs" in message
            assert not isinstance(caught.value, ImageNotFoundError)


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("reference", "message", "expected"),
    [
        (
            "containers-storage:" + "ab" * 32,
            'parsing named reference "abab": invalid repository name (abab), cannot specify'
            " 64-byte hexadecimal strings",
            ImageNotFoundError,
        ),
        (
            "containers-storage:[vfs@/g+/r]" + "ab" * 32,
            "invalid repository name, cannot specify 64-byte hexadecimal strings",
            ImageNotFoundError,
        ),
        # Elsewhere a 64-digit name is a bad reference, not a missing image.
        (
            "docker://" + "ab" * 32,
            "invalid repository name, cannot specify 64-byte hexadecimal strings",
            InvalidReferenceError,
        ),
        (
            "containers-storage:localhost/x:latest",
            'reference "[vfs@/g+/r]localhost/x:latest" does not resolve to an image ID',
            ImageNotFoundError,
        ),
        (
            "containers-storage:@" + "ab" * 32,
            f'locating image with ID "{"ab" * 32}": image not known',
            ImageNotFoundError,
        ),
        ("containers-storage:x", "mkdir /g/mounts: permission denied", AccessDeniedError),
        ("containers-storage:x", "chown /g/vfs: operation not permitted", AccessDeniedError),
        ("oci:/srv/x:latest", "open /srv/x/index.json: permission denied", AccessDeniedError),
        (
            "containers-storage:x",
            "stat /etc/containers/storage.conf: no such file or directory",
            RequestError,
        ),
        (
            "containers-storage:x",
            "stat /var/lib/containers/storage/x: no such file or directory",
            ImageNotFoundError,
        ),
    ],
)
def test_open_errors_are_typed(reference: str, message: str, expected: type) -> None:
    conf = "/etc/containers/storage.conf"
    error = proto.open_error(reference, proto.request_error("OpenImage", message, None), conf)
    assert type(error) is expected
    assert error.method == "OpenImage"
    hinted = "privileges the store needs" in str(error)
    assert hinted == (expected is AccessDeniedError and reference.startswith("containers-"))
    assert proto.is_storage_missing(reference, error) == (
        expected is ImageNotFoundError and reference.startswith("containers-storage:")
    )
