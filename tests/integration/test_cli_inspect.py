"""``inspect`` prints what ``skopeo inspect`` prints: compared with skopeo's own output.

Every image is inspected by the installed skopeo and, when ``CIP_TEST_SKOPEO_UPSTREAM``
names one, by a newer skopeo too; the comparison is key by key and in skopeo's key
order. Where the image proxy cannot know skopeo's value, the test names the key and
both values (``Difference``); every other key must be equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy.cli import EXIT_OK, EXIT_USAGE
from tests.support.images import (
    DIR_TRANSPORT_VERSION,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_MANIFEST,
    BuiltImage,
    Layer,
    MultiPlatformImage,
    run_skopeo,
    sha256_digest,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.usefixtures("no_leaks")

CLI = [sys.executable, "-m", "containers_image_proxy"]
UPSTREAM_ENV = "CIP_TEST_SKOPEO_UPSTREAM"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"


def run_ours(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_IMAGE_PROXY_DEBUG"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=60
    )


def ours(*args: str) -> bytes:
    proc = run_ours(*args)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    return proc.stdout


@pytest.fixture(params=["installed", "upstream"])
def skopeo_bin(request: pytest.FixtureRequest, skopeo: str) -> str:
    """The skopeo whose ``inspect`` output is the reference: the installed one, then upstream."""
    if request.param == "installed":
        return skopeo
    upstream = os.environ.get(UPSTREAM_ENV)
    if not upstream:
        pytest.skip(f"{UPSTREAM_ENV} is not set: no newer skopeo to compare with")
    return upstream


def theirs(skopeo: str, *args: str, global_options: tuple[str, ...] = ()) -> bytes:
    return run_skopeo(*global_options, "inspect", *args, skopeo=skopeo).stdout


@dataclass(frozen=True)
class Difference:
    """A key whose value the proxy cannot know: what we print and what skopeo prints."""

    ours: Any
    skopeo: Any


def assert_like_skopeo(
    our_report: Mapping[str, Any],
    skopeo_report: Mapping[str, Any],
    differences: Mapping[str, Difference] | None = None,
) -> None:
    """Key by key, in skopeo's order; only the keys in ``differences`` may differ."""
    differences = differences or {}
    our_keys = list(our_report)
    if "LayersData" not in skopeo_report:
        # Deliberate: skopeo 1.9.3 prints no LayersData; we print it as newer skopeo does.
        assert "LayersData" in our_keys
        our_keys.remove("LayersData")
    assert our_keys == list(skopeo_report)
    for key, value in skopeo_report.items():
        if key in differences:
            assert our_report[key] == differences[key].ours, key
            assert value == differences[key].skopeo, key
            assert value != differences[key].ours, f"{key} is no longer a difference"
        else:
            assert our_report[key] == value, key


def compare_inspect(
    ref: str,
    skopeo: str,
    differences: Mapping[str, Difference] | None = None,
    *options: str,
    global_options: tuple[str, ...] = (),
) -> dict[str, Any]:
    our_output = ours(*global_options, "inspect", *options, ref)
    their_output = theirs(skopeo, *options, ref, global_options=global_options)
    our_report: dict[str, Any] = json.loads(our_output)
    assert_like_skopeo(our_report, json.loads(their_output), differences)
    if not differences and b'"LayersData"' in their_output:
        assert our_output == their_output  # the same bytes: skopeo's JSON layout
    return our_report


# --------------------------------------------------------------------------- local sources

LOCAL_SOURCES = ["oci_image", "oci_archive_image", "dir_image", "docker_archive_image"]


@pytest.mark.parametrize("fixture", LOCAL_SOURCES)
def test_inspect_equals_skopeo(
    fixture: str, request: pytest.FixtureRequest, skopeo_bin: str
) -> None:
    image: BuiltImage = request.getfixturevalue(fixture)
    report = compare_inspect(image.ref, skopeo_bin)
    assert report["Digest"] == image.manifest_digest
    assert report["Layers"] == image.layer_digests


def test_docker_archive_layer_types_are_the_source_s(docker_archive_image: BuiltImage) -> None:
    """The proxy converts the manifest to OCI; inspect shows the Docker layer types."""
    report = json.loads(ours("inspect", docker_archive_image.ref))
    assert report["Name"] == "example.com/test"
    manifest = docker_archive_image.manifest_json
    assert [layer["MIMEType"] for layer in report["LayersData"]] == [
        layer["mediaType"] for layer in manifest["layers"]
    ]
    converted = json.loads(ours("manifest", docker_archive_image.ref))
    assert {layer["mediaType"] for layer in converted["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }


def test_index_digest_is_the_platform_s(
    oci_index_image: MultiPlatformImage, skopeo_bin: str
) -> None:
    """Deliberate: the proxy resolves an index and only tells the platform manifest's digest."""
    arm64 = oci_index_image.images["linux/arm64/v8"]
    platform = ("--override-arch", "arm64", "--override-variant", "v8")
    report = compare_inspect(
        oci_index_image.ref,
        skopeo_bin,
        {"Digest": Difference(arm64.manifest_digest, oci_index_image.index_digest)},
        global_options=platform,
    )
    assert report["Layers"] == arm64.layer_digests
    assert report["Labels"] == {}  # empty in the configuration, not null
    # Deliberate: --raw prints the platform's manifest; skopeo prints the index.
    raw = ours(*platform, "inspect", "--raw", oci_index_image.ref)
    assert raw == arm64.manifest
    assert theirs(skopeo_bin, "--raw", oci_index_image.ref) == oci_index_image.index


# --------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def registry_oci(plain_registry: Registry, oci_image: BuiltImage) -> str:
    plain_registry.push(oci_image.ref, "inspect/oci", "v1")
    ref = plain_registry.push(oci_image.ref, "inspect/oci", "v2")
    assert plain_registry.get_manifest("inspect/oci", "v2")[1] == OCI_MANIFEST
    return ref


@pytest.fixture(scope="module")
def registry_docker(plain_registry: Registry, docker_archive_image: BuiltImage) -> str:
    ref = plain_registry.push(docker_archive_image.ref, "inspect/docker", "v1")
    assert plain_registry.get_manifest("inspect/docker", "v1")[1] == DOCKER_MANIFEST
    return ref


@pytest.mark.parametrize(
    ("fixture", "tags"), [("registry_oci", ["v1", "v2"]), ("registry_docker", ["v1"])]
)
def test_registry_equals_skopeo(
    fixture: str,
    tags: list[str],
    request: pytest.FixtureRequest,
    skopeo_bin: str,
    plain_registry: Registry,  # started before no_leaks counts processes
) -> None:
    ref: str = request.getfixturevalue(fixture)
    tls = "--tls-verify=false"
    # Deliberate: the proxy cannot list a repository's tags; skopeo asks the registry.
    report = compare_inspect(ref, skopeo_bin, {"RepoTags": Difference([], tags)}, tls)
    assert report["Name"] == ref.removeprefix("docker://").rpartition(":")[0]
    # With --no-tags skopeo does not ask either, and the outputs are equal.
    our_output = ours(tls, "inspect", "--no-tags", ref)
    assert json.loads(our_output) == report
    their_output = theirs(skopeo_bin, tls, "--no-tags", ref)
    assert_like_skopeo(report, json.loads(their_output))
    if b'"LayersData"' in their_output:
        assert our_output == their_output


# --------------------------------------------------------------------------- configurations


def _write_dir_image(path: Path, manifest: dict[str, Any], blobs: list[bytes]) -> str:
    path.mkdir()
    for blob in blobs:
        (path / sha256_digest(blob).removeprefix("sha256:")).write_bytes(blob)
    (path / "manifest.json").write_bytes(json.dumps(manifest).encode())
    (path / "version").write_bytes(DIR_TRANSPORT_VERSION)
    return f"dir:{path}"


def _layer_descriptors(
    layers: list[Layer], media_types: list[str], annotations: list[dict[str, str] | None]
) -> tuple[list[dict[str, Any]], list[bytes], list[str]]:
    descriptors, blobs, diff_ids = [], [], []
    for layer, media_type, notes in zip(layers, media_types, annotations, strict=True):
        blob, tar = layer.blob()
        descriptor: dict[str, Any] = {
            "mediaType": media_type,
            "digest": sha256_digest(blob),
            "size": len(blob),
        }
        if notes is not None:
            descriptor["annotations"] = notes
        descriptors.append(descriptor)
        blobs.append(blob)
        diff_ids.append(sha256_digest(tar))
    return descriptors, blobs, diff_ids


TWO_LAYERS = [Layer({"a": b"a\n"}), Layer({"b": b"b\n"}, compression="none")]


@pytest.fixture(scope="module")
def oci_with_extras(tmp_path_factory: pytest.TempPathFactory, skopeo: str) -> str:
    """An OCI image whose configuration has docker_version, empty Labels and Env, and a
    creation time with an offset; layers with annotations, one of them empty."""
    descriptors, blobs, diff_ids = _layer_descriptors(
        TWO_LAYERS,
        [layer.media_type for layer in TWO_LAYERS],
        [{"z.last": "1", "a.first": "<tag> & \u00e9"}, {}],
    )
    config = json.dumps(
        {
            "created": "2024-03-01T12:30:00.500000000+02:00",
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "docker_version": "20.10.1",
            "config": {"Env": [], "Labels": {}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": descriptors,
    }
    return _write_dir_image(tmp_path_factory.mktemp("extras") / "oci", manifest, [config, *blobs])


@pytest.fixture(scope="module")
def docker_with_extras(tmp_path_factory: pytest.TempPathFactory, skopeo: str) -> str:
    """A Docker schema 2 image with docker_version, empty Labels and Env, no creation time."""
    descriptors, blobs, diff_ids = _layer_descriptors(
        TWO_LAYERS, [DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR], [None, None]
    )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "docker_version": "24.0.7",
            "config": {"Env": [], "Labels": {}, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": descriptors,
    }
    return _write_dir_image(
        tmp_path_factory.mktemp("extras") / "docker", manifest, [config, *blobs]
    )


def test_oci_configuration_details_equal_skopeo(oci_with_extras: str, skopeo_bin: str) -> None:
    """docker_version, empty Labels/Env and the creation time come out as skopeo's."""
    report = compare_inspect(oci_with_extras, skopeo_bin)
    assert report["DockerVersion"] == "20.10.1"
    assert (report["Labels"], report["Env"]) == ({}, [])
    assert report["Created"] == "2024-03-01T12:30:00.5+02:00"
    notes = [layer["Annotations"] for layer in report["LayersData"]]
    assert notes == [{"a.first": "<tag> & \u00e9", "z.last": "1"}, {}]


def test_docker_schema2_dropped_fields(docker_with_extras: str, skopeo_bin: str) -> None:
    """Deliberate: what the OCI conversion drops from a Docker schema 2 configuration.

    The proxy only returns the converted configuration: docker_version is gone, and
    empty Labels and Env are left out of it. Layer types and the missing creation
    time (Go's zero time) are still skopeo's.
    """
    report = compare_inspect(
        docker_with_extras,
        skopeo_bin,
        {
            "DockerVersion": Difference("", "24.0.7"),
            "Labels": Difference(None, {}),
            "Env": Difference(None, []),
        },
    )
    assert report["Created"] == "0001-01-01T00:00:00Z"
    assert [layer["MIMEType"] for layer in report["LayersData"]] == [
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_TAR,
    ]


# --------------------------------------------------------------------------- --raw and --config

OCI_SOURCES = ["oci_image", "oci_archive_image", "dir_image", "oci_with_extras"]


def _ref(request: pytest.FixtureRequest, fixture: str) -> str:
    value = request.getfixturevalue(fixture)
    return value if isinstance(value, str) else str(value.ref)


@pytest.mark.parametrize("fixture", [*OCI_SOURCES, "registry_oci"])
def test_raw_and_config_of_oci_sources_are_skopeo_s_bytes(
    fixture: str, request: pytest.FixtureRequest, skopeo: str, plain_registry: Registry
) -> None:
    ref = _ref(request, fixture)
    tls = ["--tls-verify=false"] if ref.startswith("docker://") else []
    for options in (["--raw"], ["--config"], ["--raw", "--config"], ["--config", "--raw"]):
        proc = run_ours(*tls, "inspect", *options, ref)
        assert proc.returncode == EXIT_OK, proc.stderr.decode()
        assert proc.stdout == theirs(skopeo, *tls, *options, ref), options
        assert proc.stderr == b"", options  # nothing converted: nothing to say


@pytest.mark.parametrize(
    "fixture", ["docker_archive_image", "registry_docker", "docker_with_extras"]
)
def test_raw_of_docker_schema2_is_the_conversion_and_says_so(
    fixture: str, request: pytest.FixtureRequest, skopeo: str, plain_registry: Registry
) -> None:
    """Deliberate: the proxy only returns the OCI conversion of a Docker schema 2 manifest
    and configuration; --raw prints it and says which digest is which."""
    ref = _ref(request, fixture)
    tls = ["--tls-verify=false"] if ref.startswith("docker://") else []
    original = theirs(skopeo, *tls, "--raw", ref)
    assert json.loads(original)["mediaType"] == DOCKER_MANIFEST
    digest = json.loads(ours(*tls, "inspect", ref))["Digest"]
    assert digest == sha256_digest(original)

    proc = run_ours(*tls, "inspect", "--raw", ref)
    assert proc.returncode == EXIT_OK
    assert proc.stdout == ours(*tls, "manifest", ref)
    assert json.loads(proc.stdout)["mediaType"] == OCI_MANIFEST
    printed = "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    (note,) = proc.stderr.decode().splitlines()
    assert "note:" in note and "Docker schema 2" in note and "converted" in note
    assert f"its digest: {printed}" in note and f"Digest, is {digest}" in note

    proc = run_ours(*tls, "inspect", "--raw", "--config", ref)
    assert proc.returncode == EXIT_OK
    assert proc.stdout == ours(*tls, "config", ref)
    assert proc.stdout != theirs(skopeo, *tls, "--raw", "--config", ref)  # the original
    (note,) = proc.stderr.decode().splitlines()
    printed = "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    assert "OCI conversion" in note and f"its digest: {printed}" in note and digest in note

    # --config is the OCI configuration for skopeo too: the same bytes, nothing to say.
    proc = run_ours(*tls, "inspect", "--config", ref)
    assert proc.stdout == theirs(skopeo, *tls, "--config", ref) and proc.stderr == b""


# --------------------------------------------------------------------------- --format

TEMPLATES = [
    "{{.Digest}}",
    "{{ .Name }}|{{.DockerVersion}}|",
    "{{.Created}}",
    "{{.Labels}}",
    "{{.Layers}} {{.RepoTags}}",
    "{{.Env}}",
    "{{.Os}}/{{.Architecture}}\n",
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("fixture", ["docker_archive_image", "oci_with_extras"])
def test_templates_equal_skopeo(
    template: str, fixture: str, request: pytest.FixtureRequest, skopeo_bin: str
) -> None:
    ref = _ref(request, fixture)
    expected = theirs(skopeo_bin, "--format", template, ref)
    assert ours("inspect", "--format", template, ref) == expected
    assert ours("inspect", "-f", template, ref) == expected


def test_template_tab_escape(oci_image: BuiltImage) -> None:
    """``\\t`` is a tab, as in current skopeo (1.9.3 prints nothing for such a template)."""
    upstream = os.environ.get(UPSTREAM_ENV)
    if not upstream:
        pytest.skip(f"{UPSTREAM_ENV} is not set: no newer skopeo to compare with")
    template = "{{.Os}}\\t{{.Architecture}}"
    expected = theirs(upstream, "--format", template, oci_image.ref)
    assert expected == b"linux\tamd64\n"
    assert ours("inspect", "--format", template, oci_image.ref) == expected


def test_json_formats(oci_image: BuiltImage, skopeo: str) -> None:
    default = ours("inspect", oci_image.ref)
    assert json.loads(default)["Digest"] == oci_image.manifest_digest
    for options in (["--format", "json"], ["--format", "{{json .}}"], ["--json"]):
        assert ours("inspect", *options, oci_image.ref) == default
    assert theirs(skopeo, "--format", "{{json .}}", oci_image.ref) == theirs(skopeo, oci_image.ref)


def test_table_format(docker_archive_image: BuiltImage) -> None:
    text = ours("inspect", "--format", "table", docker_archive_image.ref).decode()
    lines = text.splitlines()
    assert "Name:        example.com/test" in lines
    assert f"Digest:      {docker_archive_image.manifest_digest}" in lines
    converted = sha256_digest(ours("manifest", docker_archive_image.ref))
    assert f"Converted:   Docker schema 2, shown as OCI {converted}" in lines
    assert "Platform:    linux/amd64" in lines
    for digest in docker_archive_image.layer_digests:
        (line,) = [line for line in lines if digest in line]
        assert DOCKER_LAYER_GZIP in line
    for key, value in docker_archive_image.config_json["config"]["Labels"].items():
        assert f"  {key}={value}" in lines


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--format", "{{json .Labels}}"], ["unsupported template action"]),
        (["--format", "{{range .Layers}}{{.}}{{end}}"], ["unsupported template action"]),
        (["--format", "{{.LayersData}}"], ["unknown template field 'LayersData'"]),
        (["--format", "{{.Variant}}"], ["unknown template field 'Variant'"]),
        (["--format", "{{.Digest"], ["unbalanced"]),
        (["--raw", "--format", "json"], ["--raw does not take --format"]),
        (["--config", "--format", "table"], ["--config prints JSON"]),
    ],
)
def test_format_usage_errors(options: list[str], words: list[str], tmp_path: Path) -> None:
    """Checked before anything starts: the reference need not exist."""
    proc = run_ours("inspect", *options, f"oci:{tmp_path}/missing:latest")
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE, err
    assert "Traceback" not in err
    for word in words:
        assert word in err
