"""Pulled layouts: the tag the image gets, and a layout every tool reads.

First the tag a pull gives the image in its layout, and skopeo's ``oci:DIR[:TAG]``
destinations. Then, for each source transport (oci, oci-archive, docker-archive,
dir, a registry, and a private containers-storage store) and each skopeo (Debian's,
and the newer one that ``CIP_TEST_SKOPEO_UPSTREAM`` names), the same rich image
(whiteouts, hardlinks, gzip and plain layers) is pulled. Then: every layer's media
type matches its bytes and the configuration's diff_ids hash the decompressed
layers; ``umoci unpack`` reads the layout into exactly the tree umoci makes of the
original OCI layout; ``skopeo inspect`` and ``skopeo copy oci:DEST:TAG dir:...`` read
it; our unpack and ``stream_layers`` of the source agree. A layer whose bytes are
not its diff_id is refused.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy import (
    ImageProxyConfig,
    LayerUnavailableError,
    ProxyTooOldError,
    VerificationError,
    pull,
    stream_layers,
    unpack,
)
from containers_image_proxy._layout import SOURCE_DIGEST
from containers_image_proxy._reference import default_tag, parse_destination
from containers_image_proxy._tags import image_tag, resolve_tag
from containers_image_proxy.oci import Descriptor
from tests.support.hostile_layers import TarLayer, build, edit_config, file, rich_layers
from tests.support.hostile_layers import layer as tar_layer
from tests.support.images import (
    REF_NAME_ANNOTATION,
    BuiltImage,
    Layer,
    build_dir,
    build_docker_archive,
    build_oci_archive,
    run_skopeo,
)
from tests.support.registry import Registry
from tests.support.treediff import diff, snapshot

pytestmark = pytest.mark.usefixtures("no_leaks")

CLI = [sys.executable, "-m", "containers_image_proxy"]


@pytest.mark.parametrize(
    ("reference", "tag"),
    [
        ("docker://quay.io/fedora/fedora:40", "40"),
        ("docker://quay.io/fedora/fedora", "latest"),
        ("docker://localhost:5000/x/y", "latest"),
        ("docker://localhost:5000/x/y:v1", "v1"),
        ("docker://quay.io/x@sha256:" + "0" * 64, "latest"),
        ("oci:/srv/layout:stable", "stable"),
        ("oci:/srv/layout", None),
        ("oci-archive:/srv/a.tar:v2", "v2"),
        ("docker-archive:/srv/a.tar:example.com/x:v3", "v3"),
        ("docker-archive:/srv/a.tar:example.com/x", "latest"),
        ("docker-archive:/srv/a.tar", None),
        ("docker-archive:/srv/a.tar:@1", None),
        ("dir:/srv/image", None),
        ("containers-storage:quay.io/x:v1", "v1"),
        ("containers-storage:quay.io/x", "latest"),
        ("containers-storage:[vfs@/g+/r]localhost:5000/x:v2", "v2"),
        ("containers-storage:" + "a" * 64, None),  # an image ID
        ("docker-daemon:busybox:1.36", "1.36"),
    ],
)
def test_default_tag(reference: str, tag: str | None) -> None:
    assert default_tag(reference) == tag


def test_destination_spelling() -> None:
    assert parse_destination("oci:/srv/out:v1", None) == ("/srv/out", "v1")
    assert parse_destination("oci:/srv/out", None) == ("/srv/out", None)
    assert parse_destination("oci:/srv/out", "v2") == ("/srv/out", "v2")
    assert parse_destination("oci:/srv/out:v2", "v2") == ("/srv/out", "v2")
    assert parse_destination("/srv/out", "v3") == ("/srv/out", "v3")
    # A Path is a directory, whatever its name.
    assert parse_destination(Path("oci:x:y"), None) == (Path("oci:x:y"), None)
    with pytest.raises(ValueError, match="names the tag 'v1'"):
        parse_destination("oci:/srv/out:v1", "v2")
    with pytest.raises(ValueError, match="no directory"):
        parse_destination("oci::v1", None)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, skopeo: str) -> dict[str, BuiltImage]:
    root = tmp_path_factory.mktemp("tagged")
    layers = [Layer({"a": b"a"}, "gzip")]
    return {
        "docker": build_docker_archive(root / "d.tar", layers, tag="example.com/app:1.2"),
        "oci": build_oci_archive(root / "o.tar", layers, tag="stable"),
    }


def test_image_tag_from_archives_and_layouts(
    archives: dict[str, BuiltImage], oci_image: BuiltImage, dir_image: BuiltImage
) -> None:
    assert image_tag(f"docker-archive:{archives['docker'].path}") == "1.2"
    assert image_tag(f"docker-archive:{archives['docker'].path}:@0") == "1.2"
    assert image_tag(f"docker-archive:{archives['docker'].path}:@7") is None
    assert image_tag(f"oci-archive:{archives['oci'].path}") == "stable"
    assert image_tag(f"oci:{oci_image.path}") == oci_image.tag
    assert image_tag(dir_image.ref) is None
    assert image_tag("docker-archive:/nonexistent.tar") is None
    assert resolve_tag(dir_image.ref, None) == ("latest", "default")
    assert resolve_tag(dir_image.ref, "mine") == ("mine", "given")
    assert resolve_tag(f"oci-archive:{archives['oci'].path}", None) == ("stable", "image")
    assert resolve_tag(archives["docker"].ref, None) == ("1.2", "reference")


def _tags(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_bytes())
    return sorted(m["annotations"][REF_NAME_ANNOTATION] for m in index["manifests"])


def test_every_pull_is_tagged(
    archives: dict[str, BuiltImage], dir_image: BuiltImage, tmp_path: Path
) -> None:
    dest = tmp_path / "layout"
    result = pull(f"docker-archive:{archives['docker'].path}", dest)
    assert (result.tag, result.tag_origin) == ("1.2", "image")
    result = pull(dir_image.ref, dest)
    assert (result.tag, result.tag_origin) == ("latest", "default")
    # skopeo's spelling of the destination: a directory and a tag, not a file name.
    result = pull(dir_image.ref, f"oci:{dest}:from-dest")
    assert (result.tag, result.tag_origin) == ("from-dest", "given")
    assert result.dest == dest
    assert _tags(dest) == ["1.2", "from-dest", "latest"]
    assert not list(tmp_path.glob("oci:*"))


def test_cli_says_the_tag(
    archives: dict[str, BuiltImage], dir_image: BuiltImage, tmp_path: Path
) -> None:
    dest = tmp_path / "layout"
    run = subprocess.run(
        [*CLI, "pull", f"docker-archive:{archives['docker'].path}", f"oci:{dest}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"into oci:{dest}:1.2" in run.stderr
    assert "tagged 1.2, the image's own tag" in run.stderr
    # The archive's plain layers were labelled gzip: the corrected manifest says so.
    assert "layer descriptors corrected" in run.stderr
    assert f"source manifest {archives['docker'].manifest_digest}" in run.stderr
    run = subprocess.run(
        [*CLI, "pull", "--json", dir_image.ref, f"oci:{dest}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "tagged latest: the source names no tag" in run.stderr
    reported = json.loads(run.stdout)
    assert (reported["tag"], reported["tag_origin"], reported["rewritten"]) == (
        "latest",
        "default",
        False,
    )
    assert _tags(dest) == ["1.2", "latest"]
    conflict = subprocess.run(
        [*CLI, "pull", "--tag", "x", dir_image.ref, f"oci:{dest}:y"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert conflict.returncode == 2
    assert "names the tag 'y'" in conflict.stderr


# --------------------------------------------------------------------------- every tool


IS_ROOT = os.geteuid() == 0
#: Directories without a tar entry get "now" as their mtime; umoci gives opt/old the
#: time a later layer changed it (see test_unpack.py).
VOLATILE = frozenset({"a b", "opt", "var", "var/cache", "opt/old"})
OCI_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
}
#: The image in containers-storage, stored from its compressed OCI layout, and from
#: the docker archive (plain layers, labelled gzip like the archive's).
STORED_COMPRESSED = "storage-gzip"
STORED_PLAIN = "storage-plain"
TRANSPORTS = ["oci", "oci-archive", "docker-archive", "dir", "registry"]
TRANSPORTS += [STORED_COMPRESSED, STORED_PLAIN]


@dataclass(frozen=True)
class Skopeo:
    name: str
    path: str

    def config(self, **options: object) -> ImageProxyConfig:
        return ImageProxyConfig(skopeo_cmd=[self.path], **options)  # type: ignore[arg-type]

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run_skopeo(*args, skopeo=self.path)


@pytest.fixture(scope="session", params=["debian", "upstream"])
def any_skopeo(request: pytest.FixtureRequest, skopeo: str) -> Skopeo:
    """Debian's skopeo (protocol 0.2.3), then the newer one (0.2.8) if it is given."""
    if request.param == "debian":
        return Skopeo("debian", skopeo)
    path = os.environ.get("CIP_TEST_SKOPEO_UPSTREAM")
    if not path:
        pytest.skip("CIP_TEST_SKOPEO_UPSTREAM (a skopeo speaking protocol 0.2.8) is not set")
    return Skopeo("upstream", path)


@pytest.fixture(scope="session")
def umoci() -> str:
    path = shutil.which("umoci")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("umoci is required in CI (apt-get install umoci)")
        pytest.skip("umoci is not installed (set CI=1 to make this a failure)")
    return path


def umoci_unpack(umoci: str, layout: Path, tag: str, bundle: Path) -> Path:
    command = [umoci, "unpack", *([] if IS_ROOT else ["--rootless"])]
    run = subprocess.run(
        [*command, "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"umoci cannot read {layout}:{tag}: {run.stderr}"
    return bundle / "rootfs"


def assert_same_tree(expected: Path, actual: Path) -> None:
    snap = snapshot(expected)
    nodes = {
        path: type(node)(
            **{
                **node.__dict__,
                "xattrs": tuple(x for x in node.xattrs if x[0] != "user.rootlesscontainers"),
            }
        )
        for path, node in snap.nodes.items()
    }
    expected_snap = type(snap)(nodes, snap.links)
    assert diff(expected_snap, snapshot(actual), ownership=IS_ROOT, ignore=VOLATILE) == []


def storable_layers() -> list[TarLayer]:
    """``rich_layers`` without the file its own layer whites out.

    containers-storage applies such a layer with the file removed, and then cannot
    serve the layer back (its tar-split names a file the store lacks): neither the
    proxy nor ``skopeo copy`` reads that image from the store.
    """
    base, middle, top = rich_layers()
    top = dataclasses.replace(
        top, entries=tuple(e for e in top.entries if "rewritten" not in e.name)
    )
    return [base, middle, top]


@pytest.fixture(scope="session")
def rich_oci(images_root: Path) -> BuiltImage:
    return build(images_root / "interop-oci", *storable_layers(), tag="v1")


@pytest.fixture(scope="session")
def reference_tree(
    umoci: str, rich_oci: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """umoci's unpack of the original OCI layout: what every pull must give back."""
    return umoci_unpack(umoci, rich_oci.path, "v1", tmp_path_factory.mktemp("reference") / "b")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private vfs containers-storage store, named by the explicit reference form."""
    root = tmp_path_factory.mktemp("store")
    return f"containers-storage:[vfs@{root / 'graph'}+{root / 'run'}]"


@pytest.fixture(scope="session")
def sources(
    images_root: Path, rich_oci: BuiltImage, skopeo: str, store: str, plain_registry: Registry
) -> dict[str, str]:
    """A reference to the rich image in each transport."""
    layers = storable_layers()
    root = images_root / "interop"
    archive = build_docker_archive(root / "rich.docker.tar", layers, tag="example.com/rich:v1")
    stored = f"{store}example.com/rich:v1"
    run_skopeo("copy", "--quiet", rich_oci.ref, stored, skopeo=skopeo)
    # Another configuration: the store keys images by their configuration's digest.
    plain = build_docker_archive(
        root / "rich.plain.tar", layers, tag="example.com/rich:v1", labels={"stored": "plain"}
    )
    stored_plain = f"{store}example.com/rich-plain:v1"
    run_skopeo("copy", "--quiet", plain.ref, stored_plain, skopeo=skopeo)
    return {
        "oci": rich_oci.ref,
        "oci-archive": build_oci_archive(root / "rich.oci.tar", layers, tag="v1").ref,
        "docker-archive": archive.ref,
        "dir": build_dir(root / "dir", layers).ref,
        "registry": plain_registry.push_image(rich_oci, "interop/rich", "v1").ref,
        STORED_COMPRESSED: stored,
        STORED_PLAIN: stored_plain,
    }


def _compression(blob: bytes) -> str:
    if blob.startswith(b"\x1f\x8b"):
        return "gzip"
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def _tar(blob: bytes) -> bytes:
    kind = _compression(blob)
    if kind == "gzip":
        return gzip.decompress(blob)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def check_true_layout(dest: Path, tag: str, source_digest: str) -> tuple[dict[str, Any], bool]:
    """Every blob whole, every layer labelled as its bytes are, every diff_id true."""
    blobs = dest / "blobs" / "sha256"
    for path in blobs.iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    index = json.loads((dest / "index.json").read_bytes())
    (entry,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    ]
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        blob = (blobs / layer["digest"].split(":")[1]).read_bytes()
        assert len(blob) == layer["size"]
        assert OCI_TYPES[layer["mediaType"]] == _compression(blob), layer
        assert "sha256:" + hashlib.sha256(_tar(blob)).hexdigest() == diff_id
    rewritten = SOURCE_DIGEST in manifest.get("annotations", {})
    if rewritten:
        assert manifest["annotations"][SOURCE_DIGEST] == source_digest
    return manifest, rewritten


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pulled_layout_is_read_by_every_tool(
    transport: str,
    any_skopeo: Skopeo,
    sources: dict[str, str],
    umoci: str,
    reference_tree: Path,
    tmp_path: Path,
) -> None:
    reference = sources[transport]
    config = any_skopeo.config(insecure_skip_tls_verification=transport == "registry")
    dest = tmp_path / "layout"
    if transport == STORED_COMPRESSED and any_skopeo.name == "debian":
        # The store keeps these layers uncompressed only; 0.2.3 has no GetLayerInfo.
        for attempt in (
            lambda: pull(reference, dest, config=config),
            lambda: unpack(reference, tmp_path / "ours", config=config),
            lambda: stream_layers(reference, lambda layer, blob: None, config=config),
        ):
            with pytest.raises(LayerUnavailableError, match=r"skopeo 1\.11 or later") as info:
                attempt()
            assert isinstance(info.value, ProxyTooOldError)
            assert info.value.required == "0.2.5"
        return

    result = pull(reference, dest, config=config)
    tag = "latest" if transport == "dir" else "v1"  # dir: has no tag
    assert result.tag == tag
    manifest, rewritten = check_true_layout(dest, tag, str(result.source_digest))
    assert rewritten is result.rewritten
    # Only sources that label plain tar layers gzip, or serve other digests, need it.
    assert rewritten is (transport in ("docker-archive", STORED_COMPRESSED, STORED_PLAIN))
    if not rewritten and transport != "docker-archive":
        assert result.manifest_digest == result.source_digest

    # umoci reads the layout into the tree of the original image.
    assert_same_tree(reference_tree, umoci_unpack(umoci, dest, tag, tmp_path / "bundle"))
    # skopeo reads it (and verifies every digest while copying).
    inspected = json.loads(any_skopeo.run("inspect", f"oci:{dest}:{tag}").stdout)
    assert inspected["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    any_skopeo.run("copy", "--quiet", f"oci:{dest}:{tag}", f"dir:{tmp_path / 'copy'}")
    copied = json.loads((tmp_path / "copy" / "manifest.json").read_bytes())
    assert len(copied["layers"]) == 3

    # Our unpack of the source gives the same tree, and names what it read truthfully.
    unpacked = unpack(reference, tmp_path / "ours", config=config)
    assert_same_tree(reference_tree, tmp_path / "ours")
    stored = [
        Descriptor(layer["mediaType"], layer["digest"], layer["size"])
        for layer in manifest["layers"]
    ]
    assert [
        (layer.descriptor.media_type, layer.descriptor.digest, layer.descriptor.size)
        for layer in unpacked.layers
        if layer.descriptor is not None
    ] == [(d.media_type, d.digest, d.size) for d in stored]

    # stream_layers hands out the same descriptors, over streams that hold those bytes.
    seen: list[tuple[Descriptor, bytes]] = []

    def consume(layer: Descriptor, blob: object) -> None:
        seen.append((layer, blob.read(4)))  # type: ignore[attr-defined]

    handed = stream_layers(reference, consume, config=config)
    assert [(d.media_type, d.digest, d.size) for d in handed] == [
        (d.media_type, d.digest, d.size) for d in stored
    ]
    for layer, head in seen:
        assert OCI_TYPES[layer.media_type] == _compression(head)


def test_pull_refuses_an_uncompressed_layer_that_is_not_its_diff_id(
    skopeo: str, tmp_path: Path
) -> None:
    image = build(tmp_path / "image", tar_layer(file("a"), compression="none"))
    wrong = "sha256:" + hashlib.sha256(b"x").hexdigest()
    edit_config(image, lambda config: config["rootfs"]["diff_ids"].__setitem__(0, wrong))
    with pytest.raises(VerificationError, match="diff_id"):
        pull(image.ref, tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()
