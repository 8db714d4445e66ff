"""The pure part of ``inspect``: skopeo's report built from the proxy's answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from containers_image_proxy import InvalidDocumentError
from containers_image_proxy._inspect import (
    SKOPEO_KEYS,
    InspectedImage,
    TemplateError,
    check_template,
    go_json,
    go_time_string,
    inspect_table,
    is_json_format,
    manifest_converted,
    render_template,
    skopeo_inspect,
    source_layer_media_type,
)
from containers_image_proxy._reference import docker_reference_name
from containers_image_proxy.oci import Digest

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64


def _bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _manifest(*layers: dict[str, Any]) -> bytes:
    return _bytes(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + "c" * 64,
                "size": 2,
            },
            "layers": list(layers),
        }
    )


LAYERS = (
    {"mediaType": OCI_GZIP, "digest": LAYER_A, "size": 10},
    {"mediaType": OCI_TAR, "digest": LAYER_B, "size": 20, "annotations": {"z": "1", "a": "2"}},
)


def _image(
    reference: str = "oci:/x:latest",
    *,
    config: dict[str, Any],
    original: dict[str, Any] | None = None,
    converted: bool = False,
) -> InspectedImage:
    manifest = _manifest(*LAYERS)
    digest = Digest.from_bytes(b"the original" if converted else manifest)
    return InspectedImage(
        reference,
        digest,
        manifest,
        _bytes(config),
        _bytes(original) if original is not None else None,
    )


CONFIG: dict[str, Any] = {
    "created": "2024-01-01T00:00:00Z",
    "architecture": "arm64",
    "variant": "v8",
    "os": "linux",
    "config": {"Env": ["A=1"], "Labels": {"z": "last", "a": "first"}},
}


def test_report_keys_values_and_order() -> None:
    report = skopeo_inspect(_image("docker://quay.io/a/b:1", config=CONFIG))
    assert list(report) == list(SKOPEO_KEYS)
    manifest_digest = str(Digest.from_bytes(_manifest(*LAYERS)))
    assert report == {
        "Name": "quay.io/a/b",
        "Digest": manifest_digest,
        "RepoTags": [],
        "Created": "2024-01-01T00:00:00Z",
        "DockerVersion": "",
        "Labels": {"a": "first", "z": "last"},
        "Architecture": "arm64",
        "Os": "linux",
        "Layers": [LAYER_A, LAYER_B],
        "LayersData": [
            {"MIMEType": OCI_GZIP, "Digest": LAYER_A, "Size": 10, "Annotations": None},
            {
                "MIMEType": OCI_TAR,
                "Digest": LAYER_B,
                "Size": 20,
                "Annotations": {"a": "2", "z": "1"},
            },
        ],
        "Env": ["A=1"],
    }
    # Maps are written sorted by key, as Go writes them.
    assert list(report["Labels"]) == ["a", "z"]
    assert list(report["LayersData"][1]["Annotations"]) == ["a", "z"]


def test_no_name_without_a_docker_reference() -> None:
    report = skopeo_inspect(_image("oci:/x:latest", config=CONFIG))
    assert "Name" not in report
    assert list(report) == [key for key in SKOPEO_KEYS if key != "Name"]


def test_missing_values_are_skopeo_s_empty_ones() -> None:
    report = skopeo_inspect(_image(config={}))
    assert report["Created"] is None
    assert (report["Labels"], report["Env"]) == (None, None)
    assert (report["Architecture"], report["Os"], report["DockerVersion"]) == ("", "", "")


def test_empty_labels_and_env_come_from_the_original_configuration() -> None:
    """The proxy's re-serialised configuration leaves empty Labels and Env out."""
    original = {"docker_version": "20.10.1", "config": {"Labels": {}, "Env": []}}
    report = skopeo_inspect(_image(config={"config": {}}, original=original))
    assert (report["Labels"], report["Env"]) == ({}, [])
    assert report["DockerVersion"] == "20.10.1"
    # Go's decoder matches keys regardless of case when no exact key is there.
    report = skopeo_inspect(_image(config={}, original={"Config": {"labels": {}}}))
    assert (report["Labels"], report["Env"]) == ({}, None)
    # null in the original stays null.
    report = skopeo_inspect(_image(config={}, original={"config": {"Labels": None}}))
    assert report["Labels"] is None


def test_converted_source() -> None:
    """A Docker schema 2 source: Docker layer types, Go's zero time when none is given."""
    image = _image(config={"architecture": "amd64", "os": "linux"}, converted=True)
    assert image.converted
    assert image.manifest_digest == Digest.from_bytes(image.manifest) != image.digest
    report = skopeo_inspect(image)
    assert report["Digest"] == str(image.digest)
    assert report["Created"] == "0001-01-01T00:00:00Z"
    assert [layer["MIMEType"] for layer in report["LayersData"]] == [
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    ]


def test_source_layer_media_types() -> None:
    pairs = {
        OCI_TAR: "application/vnd.docker.image.rootfs.diff.tar",
        OCI_GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd": (
            "application/vnd.docker.image.rootfs.diff.tar.zstd"
        ),
        "application/vnd.oci.image.layer.nondistributable.v1.tar": (
            "application/vnd.docker.image.rootfs.foreign.diff.tar"
        ),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ),
    }
    for oci, docker in pairs.items():
        assert source_layer_media_type(oci, converted=True) == docker
        assert source_layer_media_type(oci, converted=False) == oci
    assert source_layer_media_type("application/x-other", converted=True) == "application/x-other"


def test_manifest_converted() -> None:
    data = b'{"schemaVersion":2}'
    assert not manifest_converted(Digest.from_bytes(data), data)
    assert manifest_converted(Digest.from_bytes(b"other"), data)


@pytest.mark.parametrize(
    "document",
    [b"[]", b"{", b'{"layers": 3}', b'{"layers": [1]}', b'{"layers": [{"annotations": []}]}'],
)
def test_invalid_manifest(document: bytes) -> None:
    image = InspectedImage("oci:/x", Digest.from_bytes(document), document, b"{}")
    with pytest.raises(InvalidDocumentError, match="invalid manifest"):
        skopeo_inspect(image)


def test_invalid_configuration() -> None:
    image = _image(config={})
    with pytest.raises(InvalidDocumentError, match="invalid image configuration"):
        skopeo_inspect(InspectedImage(image.reference, image.digest, image.manifest, b"[1]"))


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("docker://busybox", "docker.io/library/busybox"),
        ("docker://busybox:1.36", "docker.io/library/busybox"),
        ("docker://index.docker.io/user/app:v1", "docker.io/user/app"),
        ("docker://localhost:5000/a/b@sha256:" + "1" * 64, "localhost:5000/a/b"),
        ("docker://127.0.0.1:5000/test/image:latest", "127.0.0.1:5000/test/image"),
        ("docker-archive:/tmp/a.tar:example.com/test:latest", "example.com/test"),
        ("docker-archive:/tmp/a.tar:app", "docker.io/library/app"),
        ("docker-archive:/tmp/a.tar", None),
        ("docker-archive:/tmp/a.tar:@0", None),
        ("docker-daemon:quay.io/a/b:1", "quay.io/a/b"),
        ("docker-daemon:sha256:" + "2" * 64, None),
        ("containers-storage:quay.io/a/b:1", "quay.io/a/b"),
        ("containers-storage:[overlay@/var/lib/c+/run/c]localhost/x:1", "localhost/x"),
        ("containers-storage:localhost/x:1@" + "3" * 64, "localhost/x"),
        ("containers-storage:" + "3" * 64, None),
        ("oci:/tmp/layout:latest", None),
        ("oci-archive:/tmp/a.tar", None),
        ("dir:/tmp/d", None),
        ("docker:busybox", None),
        ("docker://Not/Lowercase", None),
        ("nonsense", None),
    ],
)
def test_docker_reference_name(reference: str, name: str | None) -> None:
    assert docker_reference_name(reference) == name


def test_go_json() -> None:
    value: dict[str, Any] = {"B": "<a> & \u00e9 \u2028", "A": [], "C": {}, "D": None, "E": [1]}
    assert go_json(value) == (
        "{\n"
        '    "B": "\\u003ca\\u003e \\u0026 \u00e9 \\u2028",\n'
        '    "A": [],\n'
        '    "C": {},\n'
        '    "D": null,\n'
        '    "E": [\n'
        "        1\n"
        "    ]\n"
        "}\n"
    )
    assert json.loads(go_json(value)) == value


@pytest.mark.parametrize(
    "text", ["json", " json ", "{{json .}}", "{{ json . }}", "{{json}}", "\tjson\n"]
)
def test_json_formats(text: str) -> None:
    assert is_json_format(text)


@pytest.mark.parametrize("text", ["table", "{{.Digest}}", "jsonx", "{{json .Labels}}"])
def test_not_json_formats(text: str) -> None:
    assert not is_json_format(text)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("2024-01-01T00:00:00Z", "2024-01-01 00:00:00 +0000 UTC"),
        ("2024-01-01T00:00:00.5Z", "2024-01-01 00:00:00.5 +0000 UTC"),
        ("2024-03-01T12:30:00.123+02:00", "2024-03-01 12:30:00.123 +0200 +0200"),
        ("2024-03-01T12:30:00-05:30", "2024-03-01 12:30:00 -0530 -0530"),
        (None, "<nil>"),
    ],
)
def test_go_time_string(text: str | None, shown: str) -> None:
    assert go_time_string(text) == shown


def test_go_time_string_refuses_other_text() -> None:
    with pytest.raises(TemplateError):
        go_time_string("yesterday")


def test_render_template() -> None:
    report = skopeo_inspect(_image("docker://quay.io/a/b:1", config=CONFIG))
    template = "{{.Name}} {{ .Os }}/{{.Architecture}}\\t{{.Labels}} {{.Layers}} {{.RepoTags}}"
    assert render_template(template, report) == (
        f"quay.io/a/b linux/arm64\tmap[a:first z:last] [{LAYER_A} {LAYER_B}] []\n"
    )
    assert render_template("{{.Created}}\n", report) == "2024-01-01 00:00:00 +0000 UTC\n"
    assert render_template("plain", report) == "plain\n"
    empty = skopeo_inspect(_image(config={}))
    assert render_template("[{{.Name}}] {{.Labels}} {{.Env}}", empty) == "[] map[] []\n"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{json .Labels}}", "unsupported template action"),
        ("{{.Labels.a}}", "unsupported template action"),
        ("{{range .Layers}}x{{end}}", "unsupported template action"),
        ("{{.LayersData}}", "unknown template field 'LayersData'"),
        ("{{.digest}}", "unknown template field 'digest'"),
        ("{{.Digest", "unbalanced"),
        ("}}", "unbalanced"),
    ],
)
def test_unsupported_templates(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        check_template(template)
    with pytest.raises(TemplateError, match=message):
        render_template(template, {})


def test_inspect_table() -> None:
    image = _image("docker://quay.io/a/b:1", config=CONFIG, converted=True)
    text = inspect_table(image, skopeo_inspect(image))
    lines = text.splitlines()
    assert lines[:6] == [
        "Name:        quay.io/a/b",
        f"Digest:      {image.digest}",
        f"Converted:   Docker schema 2, shown as OCI {image.manifest_digest}",
        "Platform:    linux/arm64/v8",
        "Created:     2024-01-01T00:00:00Z",
        "Layers:      2 (30 bytes)",
    ]
    assert "  a=first" in lines and "  A=1" in lines
    plain = inspect_table(_image(config={}), skopeo_inspect(_image(config={})))
    assert "Platform:    -" in plain and "Labels:      -" in plain and "Env:         -" in plain
