"""The tag a pull gives the image in its layout, and skopeo's ``oci:DIR[:TAG]`` destinations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from containers_image_proxy import pull
from containers_image_proxy._tags import default_tag, image_tag, parse_destination, resolve_tag
from tests.support.images import (
    REF_NAME_ANNOTATION,
    BuiltImage,
    Layer,
    build_docker_archive,
    build_oci_archive,
)

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
