"""Check the test-image builders in tests/support/images.py against the real skopeo."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.images import (
    DOCKER_MANIFEST,
    FIXED_MTIME,
    HAVE_ZSTD,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    BuiltImage,
    Layer,
    MultiPlatformImage,
    build_oci_layout,
    random_bytes,
    run_skopeo,
    sha256_digest,
)

SINGLE_IMAGE_FIXTURES = [
    "oci_image",
    "docker_archive_image",
    "oci_archive_image",
    "dir_image",
    "big_config_image",
]


def copy_to_dir(skopeo: str, ref: str, out: Path, *global_opts: str) -> Path:
    run_skopeo(*global_opts, "copy", "--quiet", ref, f"dir:{out}", skopeo=skopeo)
    return out


def assert_dir_matches(out: Path, image: BuiltImage) -> None:
    """The dir: copy holds exactly the recorded manifest, config and layer blobs."""
    assert (out / "manifest.json").read_bytes() == image.manifest
    assert (out / image.config_digest.removeprefix("sha256:")).read_bytes() == image.config
    for digest, size, _, data in image.layers:
        stored = (out / digest.removeprefix("sha256:")).read_bytes()
        assert len(stored) == size
        assert stored == data


# --------------------------------------------------------------------------- pure Python


def test_layer_is_deterministic() -> None:
    files = {"a/b/c.txt": b"hello", "a/d": random_bytes(1000, seed=3)}
    for compression in ("gzip", "none"):
        one, two = Layer(dict(files), compression).blob(), Layer(dict(files), compression).blob()
        assert one == two
    assert Layer(files, "gzip").blob()[1] == Layer(files, "none").blob()[0]


def test_layer_tar_entries() -> None:
    _, tar_bytes = Layer({"/usr/bin/tool": b"x" * 10, "etc/conf": b"c"}).blob()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["etc", "etc/conf", "usr", "usr/bin", "usr/bin/tool"]
        for member in members.values():
            assert (member.mtime, member.uid, member.gid) == (FIXED_MTIME, 0, 0)
            assert member.mode == (0o755 if member.isdir() else 0o644)
        fh = tar.extractfile("usr/bin/tool")
        assert fh is not None
        assert fh.read() == b"x" * 10


def test_layer_rejects_bad_paths() -> None:
    with pytest.raises(ValueError):
        Layer({"../escape": b""}).tar_bytes()
    with pytest.raises(ValueError):
        Layer({"a": b"", "a/b": b""}).tar_bytes()
    with pytest.raises(ValueError):
        Layer({}, compression="bzip2")


def test_random_bytes() -> None:
    data = random_bytes(100_000, seed=7)
    assert len(data) == 100_000
    assert data == random_bytes(100_000, seed=7)
    assert data != random_bytes(100_000, seed=8)
    assert len(gzip.compress(data)) > len(data)  # incompressible


def test_oci_layout_contents(oci_image: BuiltImage) -> None:
    layout = oci_image.path
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads((layout / "index.json").read_bytes())["manifests"]
    assert entry["digest"] == oci_image.manifest_digest
    assert entry["annotations"][REF_NAME_ANNOTATION] == "latest"
    manifest = oci_image.manifest_json
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_GZIP, OCI_LAYER_TAR]
    config = oci_image.config_json
    assert config["rootfs"]["diff_ids"] == oci_image.diff_ids
    assert len(config["history"]) == 2
    assert config["config"]["Labels"]["com.example.purpose"] == "testing"
    # The uncompressed layer's digest is its diff ID.
    assert oci_image.layers[1][0] == oci_image.diff_ids[1]
    assert oci_image.layers[0][0] != oci_image.diff_ids[0]


# --------------------------------------------------------------------------- skopeo


@pytest.mark.parametrize("fixture", SINGLE_IMAGE_FIXTURES)
def test_skopeo_inspect_raw(fixture: str, request: pytest.FixtureRequest, skopeo: str) -> None:
    image: BuiltImage = request.getfixturevalue(fixture)
    raw = run_skopeo("inspect", "--raw", image.ref, skopeo=skopeo).stdout
    assert raw == image.manifest
    assert sha256_digest(raw) == image.manifest_digest
    config = run_skopeo("inspect", "--config", "--raw", image.ref, skopeo=skopeo).stdout
    assert config == image.config
    assert sha256_digest(config) == image.config_digest


@pytest.mark.parametrize("fixture", SINGLE_IMAGE_FIXTURES)
def test_skopeo_inspect(fixture: str, request: pytest.FixtureRequest, skopeo: str) -> None:
    image: BuiltImage = request.getfixturevalue(fixture)
    info = json.loads(run_skopeo("inspect", image.ref, skopeo=skopeo).stdout)
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == image.layer_digests
    assert info["Architecture"] == "amd64"
    assert info["Labels"] == image.config_json["config"]["Labels"]


@pytest.mark.parametrize("fixture", [*SINGLE_IMAGE_FIXTURES, "many_layers_image"])
def test_skopeo_copy_to_dir(
    fixture: str, request: pytest.FixtureRequest, skopeo: str, tmp_path: Path
) -> None:
    image: BuiltImage = request.getfixturevalue(fixture)
    assert_dir_matches(copy_to_dir(skopeo, image.ref, tmp_path / "out"), image)


def test_docker_archive_is_schema2(docker_archive_image: BuiltImage) -> None:
    manifest = docker_archive_image.manifest_json
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert docker_archive_image.manifest_media_type == DOCKER_MANIFEST
    # docker-archive stores layers uncompressed, so layer digests are the diff IDs.
    assert docker_archive_image.layer_digests == docker_archive_image.diff_ids
    assert docker_archive_image.ref.endswith(":example.com/test:latest")


def test_big_config(big_config_image: BuiltImage) -> None:
    assert len(big_config_image.config) > 100 * 1024
    assert len(big_config_image.config_json["config"]["Labels"]) == 2000


def test_many_layers(many_layers_image: BuiltImage, skopeo: str) -> None:
    assert len(many_layers_image.layers) == 300
    assert len(set(many_layers_image.layer_digests)) == 300
    raw = run_skopeo("inspect", "--raw", many_layers_image.ref, skopeo=skopeo).stdout
    assert raw == many_layers_image.manifest


def test_corrupted_image_fails_copy(
    corrupted_image: BuiltImage, skopeo: str, tmp_path: Path
) -> None:
    blob = corrupted_image.blob_paths[0].read_bytes()
    digest, size, _, original = corrupted_image.layers[0]
    assert len(blob) == size
    assert blob != original
    assert sha256_digest(blob) != digest
    # Manifest and config are intact ...
    raw = run_skopeo("inspect", "--raw", corrupted_image.ref, skopeo=skopeo).stdout
    assert raw == corrupted_image.manifest
    # ... but reading the layer must fail.
    out = f"dir:{tmp_path / 'out'}"
    proc = run_skopeo("copy", "--quiet", corrupted_image.ref, out, skopeo=skopeo, check=False)
    assert proc.returncode != 0
    assert b"digest" in proc.stderr.lower()


def test_multiple_tags_in_one_layout(tmp_path: Path, skopeo: str) -> None:
    layout = tmp_path / "layout"
    first = build_oci_layout(layout, [Layer({"one": b"1"})], tag="one")
    second = build_oci_layout(layout, [Layer({"two": b"2"})], tag="two", architecture="arm64")
    again = build_oci_layout(layout, [Layer({"one": b"1 again"})], tag="one")
    tags = [
        m["annotations"][REF_NAME_ANNOTATION]
        for m in json.loads((layout / "index.json").read_bytes())["manifests"]
    ]
    assert sorted(tags) == ["one", "two"]
    assert first.manifest_digest != again.manifest_digest
    for image in (second, again):
        raw = run_skopeo("inspect", "--raw", image.ref, skopeo=skopeo).stdout
        assert raw == image.manifest


def test_annotations(tmp_path: Path, skopeo: str) -> None:
    image = build_oci_layout(
        tmp_path / "layout",
        [Layer({"f": b"x"})],
        extra_annotations={"org.example.note": "hi"},
    )
    assert image.manifest_json["annotations"] == {"org.example.note": "hi"}
    (entry,) = json.loads((image.path / "index.json").read_bytes())["manifests"]
    assert entry["annotations"] == {"org.example.note": "hi", REF_NAME_ANNOTATION: "latest"}
    assert run_skopeo("inspect", "--raw", image.ref, skopeo=skopeo).stdout == image.manifest


@pytest.mark.skipif(not HAVE_ZSTD, reason="zstandard module not installed")
def test_zstd_layer(tmp_path: Path, skopeo: str) -> None:
    image = build_oci_layout(tmp_path / "layout", [Layer({"z": b"zstd" * 100}, "zstd")])
    assert_dir_matches(copy_to_dir(skopeo, image.ref, tmp_path / "out"), image)


# --------------------------------------------------------------------------- multi-platform


def test_index_raw(oci_index_image: MultiPlatformImage, skopeo: str) -> None:
    raw = run_skopeo("inspect", "--raw", oci_index_image.ref, skopeo=skopeo).stdout
    assert raw == oci_index_image.index
    assert sha256_digest(raw) == oci_index_image.index_digest
    index = oci_index_image.index_json
    assert index["mediaType"] == OCI_INDEX
    platforms = [m["platform"] for m in index["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert set(oci_index_image.images) == {"linux/amd64", "linux/arm64/v8"}
    for image in oci_index_image.images.values():
        assert image.index_digest == oci_index_image.index_digest


@pytest.mark.parametrize(("arch", "key"), [("amd64", "linux/amd64"), ("arm64", "linux/arm64/v8")])
def test_index_platform_override(
    oci_index_image: MultiPlatformImage, skopeo: str, tmp_path: Path, arch: str, key: str
) -> None:
    image = oci_index_image.images[key]
    override = ("--override-os", "linux", "--override-arch", arch)
    info = json.loads(run_skopeo(*override, "inspect", image.ref, skopeo=skopeo).stdout)
    assert info["Architecture"] == arch
    assert info["Layers"] == image.layer_digests
    config = run_skopeo(*override, "inspect", "--config", "--raw", image.ref, skopeo=skopeo)
    assert config.stdout == image.config
    assert_dir_matches(copy_to_dir(skopeo, image.ref, tmp_path / "out", *override), image)
