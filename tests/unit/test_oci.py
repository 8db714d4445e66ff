from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containers_image_proxy.errors import ImageProxyError, InvalidDigestError, InvalidDocumentError
from containers_image_proxy.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    EMPTY_JSON_DIGEST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_EMPTY_JSON,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    ContainerConfig,
    ConvertedLayerInfo,
    Descriptor,
    Digest,
    History,
    ImageConfiguration,
    ImageIndex,
    ImageManifest,
    Platform,
    RootFS,
    convert_layer_info,
    decode_config,
    decode_index,
    decode_layer_info,
    decode_manifest,
    encode,
    parse_digest,
)

HEX_A = "a" * 64
HEX_B = "0123456789abcdef" * 4
HEX_C = hashlib.sha256(b"layer two").hexdigest()
CONFIG_DIGEST = f"sha256:{HEX_A}"
LAYER1_DIGEST = f"sha256:{HEX_B}"
LAYER2_DIGEST = f"sha256:{HEX_C}"
SHA512_DIGEST = "sha512:" + hashlib.sha512(b"x").hexdigest()


# --------------------------------------------------------------------------
# Digest
# --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [CONFIG_DIGEST, LAYER1_DIGEST, SHA512_DIGEST])
def test_valid_digest_round_trips(text: str) -> None:
    d = Digest(text)
    assert isinstance(d, str)
    assert d == text
    assert str(d) == text
    assert type(str(d)) is str
    assert hash(d) == hash(text)
    algorithm, _, encoded = text.partition(":")
    assert d.algorithm == algorithm
    assert d.encoded == encoded
    assert Digest(d) is d
    assert parse_digest(text) == d
    assert isinstance(parse_digest(text), Digest)
    assert parse_digest(d) is d
    assert repr(d) == f"Digest({text!r})"


def test_digest_pickles() -> None:
    d = Digest(LAYER1_DIGEST)
    back = pickle.loads(pickle.dumps(d))
    assert back == d
    assert type(back) is Digest


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty string"),
        (HEX_A, "missing ':'"),
        (f"sha256{HEX_A}", "missing ':'"),
        (f":{HEX_A}", "empty algorithm"),
        ("sha256:", "empty encoded part"),
        (f"SHA256:{HEX_A}", "malformed algorithm 'SHA256'"),
        (f"sha256-:{HEX_A}", "malformed algorithm"),
        ("md5:" + "a" * 32, "unsupported digest algorithm 'md5'"),
        ("blake3:" + HEX_A, "unsupported digest algorithm 'blake3'"),
        ("sha256:abc", "sha256 needs 64 hex characters, got 3"),
        ("sha256:" + "a" * 65, "sha256 needs 64 hex characters, got 65"),
        ("sha512:" + HEX_A, "sha512 needs 128 hex characters, got 64"),
        ("sha256:" + "A" * 64, "uppercase hex character 'A'"),
        ("sha256:" + "a" * 63 + "F", "uppercase hex character 'F'"),
        ("sha256:" + "g" * 64, "non-hex character 'g'"),
        ("sha256:" + "a" * 63 + "=", "non-hex character '='"),
        ("sha256:" + "a" * 63 + "/", "invalid character '/'"),
        ("sha256:" + HEX_A + "\n", "invalid character '\\n'"),
        (" sha256:" + HEX_A, "malformed algorithm"),
    ],
)
def test_invalid_digest_message_names_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidDigestError) as info:
        Digest(text)
    assert fragment in str(info.value)
    with pytest.raises(InvalidDigestError):
        parse_digest(text)


def test_invalid_digest_error_hierarchy() -> None:
    with pytest.raises(ValueError):
        Digest("nope")
    with pytest.raises(ImageProxyError):
        Digest("nope")


def test_digest_rejects_non_string() -> None:
    with pytest.raises(InvalidDigestError, match="expected a string, got int"):
        Digest(5)  # type: ignore[arg-type]


def test_invalid_digest_message_is_bounded() -> None:
    with pytest.raises(InvalidDigestError) as info:
        Digest("sha256:" + "z" * 10_000)
    assert len(str(info.value)) < 400


def test_digest_from_bytes_and_hasher() -> None:
    data = b"hello, world"
    d = Digest.from_bytes(data)
    assert d == "sha256:" + hashlib.sha256(data).hexdigest()
    assert type(d) is Digest
    assert d.matches(data)
    assert not d.matches(data + b"!")

    d512 = Digest.from_bytes(data, "sha512")
    assert d512 == "sha512:" + hashlib.sha512(data).hexdigest()

    h = d.hasher()
    assert h.name == "sha256"
    h.update(data[:5])
    h.update(data[5:])
    assert h.hexdigest() == d.encoded
    # Each call gives a fresh object.
    assert d.hasher().hexdigest() == hashlib.sha256().hexdigest()
    assert Digest(SHA512_DIGEST).hasher().name == "sha512"


def test_digest_from_bytes_unsupported_algorithm() -> None:
    with pytest.raises(InvalidDigestError, match="unsupported digest algorithm 'md5'"):
        Digest.from_bytes(b"x", "md5")


def test_empty_json_digest_constant() -> None:
    assert Digest.from_bytes(b"{}") == EMPTY_JSON_DIGEST
    assert MEDIA_TYPE_EMPTY_JSON == "application/vnd.oci.empty.v1+json"


def test_media_type_constants() -> None:
    assert MEDIA_TYPE_IMAGE_MANIFEST == "application/vnd.oci.image.manifest.v1+json"
    assert MEDIA_TYPE_IMAGE_INDEX == "application/vnd.oci.image.index.v1+json"
    assert MEDIA_TYPE_IMAGE_CONFIG == "application/vnd.oci.image.config.v1+json"
    assert MEDIA_TYPE_LAYER_GZIP == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert MEDIA_TYPE_LAYER_ZSTD == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert DOCKER_MANIFEST_V2 == "application/vnd.docker.distribution.manifest.v2+json"
    assert DOCKER_MANIFEST_LIST == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert DOCKER_CONFIG == "application/vnd.docker.container.image.v1+json"
    assert DOCKER_LAYER_GZIP == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert {MEDIA_TYPE_IMAGE_MANIFEST, DOCKER_MANIFEST_V2} == MANIFEST_MEDIA_TYPES
    assert {MEDIA_TYPE_IMAGE_INDEX, DOCKER_MANIFEST_LIST} == INDEX_MEDIA_TYPES


# --------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------


def manifest_json() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_IMAGE_CONFIG,
            "digest": CONFIG_DIGEST,
            "size": 7023,
        },
        "layers": [
            {
                "mediaType": MEDIA_TYPE_LAYER_GZIP,
                "digest": LAYER1_DIGEST,
                "size": 32654,
            },
            {
                "mediaType": MEDIA_TYPE_LAYER_ZSTD,
                "digest": LAYER2_DIGEST,
                "size": 16724,
                "urls": ["https://example.com/layer"],
                "annotations": {"org.example.layer": "two"},
            },
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"},
        "someVendorField": {"nested": [1, 2, {"x": None}]},
    }


INDEX_JSON = f"""
{{
  "schemaVersion": 2,
  "mediaType": "{MEDIA_TYPE_IMAGE_INDEX}",
  "manifests": [
    {{
      "mediaType": "{MEDIA_TYPE_IMAGE_MANIFEST}",
      "digest": "{LAYER1_DIGEST}",
      "size": 7143,
      "platform": {{"architecture": "ppc64le", "os": "linux"}}
    }},
    {{
      "mediaType": "{MEDIA_TYPE_IMAGE_MANIFEST}",
      "digest": "{LAYER2_DIGEST}",
      "size": 7682,
      "platform": {{
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.5329",
        "os.features": ["win32k"],
        "variant": "v3",
        "futureField": true
      }}
    }},
    {{
      "mediaType": "application/vnd.example.sbom",
      "artifactType": "application/spdx+json",
      "digest": "{EMPTY_JSON_DIGEST}",
      "size": 2,
      "data": "e30="
    }}
  ],
  "annotations": {{"com.example.key1": "value1"}}
}}
"""

CONFIG_JSON = f"""
{{
  "created": "2015-10-31T22:22:56.015925234Z",
  "author": "Alyssa P. Hacker <alyspdev@example.com>",
  "architecture": "arm64",
  "variant": "v8",
  "os": "linux",
  "os.version": "6.1",
  "config": {{
    "User": "alice",
    "ExposedPorts": {{"8080/tcp": {{}}}},
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FOO=bar"],
    "Entrypoint": ["/bin/my-app-binary"],
    "Cmd": ["--foreground", "--config", "/etc/my-app.d/default.cfg"],
    "Volumes": {{"/var/job-result-data": {{}}, "/var/log/my-app-logs": {{}}}},
    "WorkingDir": "/home/alice",
    "Labels": {{"com.example.project.git.url": "https://example.com/project.git"}},
    "StopSignal": "SIGTERM",
    "ArgsEscaped": true,
    "OnBuild": null,
    "Healthcheck": {{"Test": ["CMD", "true"]}}
  }},
  "rootfs": {{
    "diff_ids": ["{LAYER1_DIGEST}", "{LAYER2_DIGEST}"],
    "type": "layers"
  }},
  "history": [
    {{
      "created": "2015-10-31T22:22:54.690851953Z",
      "created_by": "/bin/sh -c #(nop) ADD file:a3bc1e842b69636f9df5256c49c5374f in /"
    }},
    {{
      "created": "2015-10-31T22:22:55.613815829Z",
      "created_by": "/bin/sh -c #(nop) CMD [\\"sh\\"]",
      "author": "someone",
      "comment": "buildkit.dockerfile.v0",
      "empty_layer": true
    }}
  ],
  "container_config": {{"Hostname": "abc"}},
  "docker_version": "1.8.2"
}}
"""


def test_decode_realistic_manifest() -> None:
    m = decode_manifest(json.dumps(manifest_json()).encode())
    assert isinstance(m, ImageManifest)
    assert m.schema_version == 2
    assert m.media_type == MEDIA_TYPE_IMAGE_MANIFEST
    assert m.config == Descriptor(
        media_type=MEDIA_TYPE_IMAGE_CONFIG, digest=Digest(CONFIG_DIGEST), size=7023
    )
    assert type(m.config.digest) is Digest
    assert [layer.digest for layer in m.layers] == [LAYER1_DIGEST, LAYER2_DIGEST]
    assert all(type(layer.digest) is Digest for layer in m.layers)
    assert [layer.size for layer in m.layers] == [32654, 16724]
    assert m.layers[0].media_type == MEDIA_TYPE_LAYER_GZIP
    assert m.layers[0].urls is None
    assert m.layers[0].annotations is None
    assert m.layers[1].urls == ("https://example.com/layer",)
    assert m.layers[1].annotations == {"org.example.layer": "two"}
    assert m.annotations == {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"}
    assert m.subject is None
    assert m.artifact_type is None


def test_decode_manifest_accepts_str_and_memoryview() -> None:
    text = json.dumps(manifest_json())
    assert decode_manifest(text) == decode_manifest(memoryview(text.encode()))


def test_decode_docker_schema2_manifest() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": {"mediaType": DOCKER_CONFIG, "size": 1469, "digest": CONFIG_DIGEST},
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": 3370706, "digest": LAYER1_DIGEST}],
    }
    m = decode_manifest(json.dumps(doc))
    assert m.media_type == DOCKER_MANIFEST_V2
    assert m.config.media_type == DOCKER_CONFIG
    assert m.layers[0].size == 3370706


def test_decode_manifest_with_subject_and_artifact_type() -> None:
    doc = manifest_json()
    doc["artifactType"] = "application/vnd.example+type"
    doc["subject"] = {"mediaType": MEDIA_TYPE_IMAGE_MANIFEST, "digest": LAYER2_DIGEST, "size": 1}
    m = decode_manifest(json.dumps(doc))
    assert m.artifact_type == "application/vnd.example+type"
    assert m.subject is not None
    assert m.subject.digest == LAYER2_DIGEST


def test_decode_realistic_index() -> None:
    idx = decode_index(INDEX_JSON.encode())
    assert isinstance(idx, ImageIndex)
    assert idx.schema_version == 2
    assert idx.media_type == MEDIA_TYPE_IMAGE_INDEX
    assert len(idx.manifests) == 3
    first, second, third = idx.manifests
    assert first.platform == Platform(architecture="ppc64le", os="linux")
    assert second.platform is not None
    assert second.platform.architecture == "amd64"
    assert second.platform.os == "windows"
    assert second.platform.os_version == "10.0.17763.5329"
    assert second.platform.os_features == ("win32k",)
    assert second.platform.variant == "v3"
    assert second.platform.features is None
    assert third.artifact_type == "application/spdx+json"
    assert third.data == b"{}"
    assert third.matches(third.data)
    assert idx.annotations == {"com.example.key1": "value1"}


def test_decode_realistic_config() -> None:
    cfg = decode_config(CONFIG_JSON.encode())
    assert isinstance(cfg, ImageConfiguration)
    assert cfg.created == "2015-10-31T22:22:56.015925234Z"
    assert cfg.author == "Alyssa P. Hacker <alyspdev@example.com>"
    assert (cfg.architecture, cfg.os, cfg.variant, cfg.os_version) == (
        "arm64",
        "linux",
        "v8",
        "6.1",
    )
    assert cfg.os_features is None
    assert cfg.rootfs == RootFS(
        type="layers", diff_ids=(Digest(LAYER1_DIGEST), Digest(LAYER2_DIGEST))
    )
    assert all(type(d) is Digest for d in cfg.rootfs.diff_ids)

    c = cfg.config
    assert isinstance(c, ContainerConfig)
    assert c.user == "alice"
    assert c.exposed_ports == {"8080/tcp": {}}
    assert c.env == (
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "FOO=bar",
    )
    assert c.entrypoint == ("/bin/my-app-binary",)
    assert c.cmd == ("--foreground", "--config", "/etc/my-app.d/default.cfg")
    assert c.volumes is not None
    assert set(c.volumes) == {"/var/job-result-data", "/var/log/my-app-logs"}
    assert c.working_dir == "/home/alice"
    assert c.labels == {"com.example.project.git.url": "https://example.com/project.git"}
    assert c.stop_signal == "SIGTERM"
    assert c.args_escaped is True

    assert len(cfg.history) == 2
    assert cfg.history[0].created_by is not None
    assert cfg.history[0].created_by.startswith("/bin/sh -c #(nop) ADD")
    assert cfg.history[0].empty_layer is None
    assert cfg.history[1] == History(
        created="2015-10-31T22:22:55.613815829Z",
        created_by='/bin/sh -c #(nop) CMD ["sh"]',
        author="someone",
        comment="buildkit.dockerfile.v0",
        empty_layer=True,
    )


def test_decode_minimal_config_defaults() -> None:
    doc = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    cfg = decode_config(json.dumps(doc))
    assert cfg.config is None
    assert cfg.history == ()
    assert cfg.created is None
    assert cfg.rootfs.diff_ids == ()


def test_config_null_fields_as_written_by_docker() -> None:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": None, "Cmd": None, "Entrypoint": None, "Volumes": None, "User": ""},
        "rootfs": {"type": "layers", "diff_ids": [LAYER1_DIGEST]},
    }
    cfg = decode_config(json.dumps(doc))
    assert cfg.config == ContainerConfig(user="")


# --------------------------------------------------------------------------
# Invalid documents
# --------------------------------------------------------------------------


def _manifest_error(doc: object) -> str:
    with pytest.raises(InvalidDocumentError) as info:
        decode_manifest(json.dumps(doc).encode())
    return str(info.value)


def test_bad_digest_in_manifest_names_path() -> None:
    doc = manifest_json()
    doc["layers"][0]["digest"] = "sha256:abc"
    msg = _manifest_error(doc)
    assert "image manifest" in msg
    assert "sha256 needs 64 hex characters, got 3" in msg
    assert "$.layers[0].digest" in msg


def test_unsupported_digest_algorithm_in_manifest() -> None:
    doc = manifest_json()
    doc["config"]["digest"] = "md5:" + "a" * 32
    msg = _manifest_error(doc)
    assert "unsupported digest algorithm 'md5'" in msg
    assert "$.config.digest" in msg


def test_digest_of_wrong_json_type_names_path() -> None:
    doc = manifest_json()
    doc["layers"][1]["digest"] = 12
    msg = _manifest_error(doc)
    assert "$.layers[1].digest" in msg
    assert "int" in msg


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.pop("config"), "`config`"),
        (lambda d: d.pop("layers"), "`layers`"),
        (lambda d: d.pop("schemaVersion"), "`schemaVersion`"),
        (lambda d: d["layers"][1].pop("size"), "$.layers[1]"),
        (lambda d: d["config"].pop("mediaType"), "$.config"),
        (lambda d: d["config"].pop("digest"), "$.config"),
    ],
)
def test_missing_required_field(mutate: Any, path: str) -> None:
    doc = manifest_json()
    mutate(doc)
    msg = _manifest_error(doc)
    assert "image manifest" in msg
    assert "missing required field" in msg
    assert path in msg


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.__setitem__("schemaVersion", "2"), "$.schemaVersion"),
        (lambda d: d.__setitem__("layers", {}), "$.layers"),
        (lambda d: d["layers"][0].__setitem__("size", "12"), "$.layers[0].size"),
        (lambda d: d["layers"][0].__setitem__("size", -1), "$.layers[0].size"),
        (lambda d: d["layers"][0].__setitem__("size", True), "$.layers[0].size"),
        (lambda d: d["layers"][1].__setitem__("urls", "http://x"), "$.layers[1].urls"),
        (lambda d: d["annotations"].__setitem__("k", 1), "$.annotations"),
        (lambda d: d["config"].__setitem__("mediaType", None), "$.config.mediaType"),
    ],
)
def test_wrong_types_name_path(mutate: Any, path: str) -> None:
    doc = manifest_json()
    mutate(doc)
    msg = _manifest_error(doc)
    assert path in msg


def test_top_level_not_an_object() -> None:
    assert "Expected `object`, got `array`" in _manifest_error([])


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe", b'{"schemaVersion": 2,}'])
def test_malformed_json(data: bytes) -> None:
    with pytest.raises(InvalidDocumentError, match="image manifest: malformed JSON"):
        decode_manifest(data)


def test_deeply_nested_json_is_a_document_error() -> None:
    data = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidDocumentError, match="image manifest"):
        decode_manifest(data)


def test_index_and_config_errors_name_kind() -> None:
    with pytest.raises(InvalidDocumentError, match=r"image index: .*\$\.manifests\[0\]\.digest"):
        decode_index(
            json.dumps(
                {"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "x", "size": 1}]}
            )
        )
    bad_cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
    with pytest.raises(
        InvalidDocumentError, match=r"image configuration: .*`diff_ids`.*\$\.rootfs"
    ):
        decode_config(json.dumps(bad_cfg))
    bad_cfg = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [LAYER1_DIGEST, "sha256:ABC"]},
    }
    with pytest.raises(
        InvalidDocumentError, match=r"image configuration: .*\$\.rootfs\.diff_ids\[1\]"
    ):
        decode_config(json.dumps(bad_cfg))
    with pytest.raises(InvalidDocumentError, match=r"\$\.config\.Env"):
        decode_config(
            json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Env": "A=B"},
                    "rootfs": {"type": "layers", "diff_ids": []},
                }
            )
        )


def test_document_error_hierarchy() -> None:
    with pytest.raises(ValueError):
        decode_manifest(b"{}")
    with pytest.raises(ImageProxyError):
        decode_manifest(b"{}")


# --------------------------------------------------------------------------
# Layer info
# --------------------------------------------------------------------------

LAYER_INFO = [
    {"digest": LAYER1_DIGEST, "size": 1234, "media_type": MEDIA_TYPE_LAYER_GZIP},
    {"digest": LAYER2_DIGEST, "size": -1, "media_type": MEDIA_TYPE_LAYER_ZSTD, "extra": 1},
]


def test_decode_layer_info() -> None:
    infos = decode_layer_info(json.dumps(LAYER_INFO).encode())
    assert isinstance(infos, list)
    assert infos == [
        ConvertedLayerInfo(Digest(LAYER1_DIGEST), 1234, MEDIA_TYPE_LAYER_GZIP),
        ConvertedLayerInfo(Digest(LAYER2_DIGEST), -1, MEDIA_TYPE_LAYER_ZSTD),
    ]
    assert all(type(i.digest) is Digest for i in infos)
    assert decode_layer_info(b"[]") == []


def test_convert_layer_info_matches_decode() -> None:
    infos = convert_layer_info(json.loads(json.dumps(LAYER_INFO)))
    assert infos == decode_layer_info(json.dumps(LAYER_INFO))
    assert all(type(i.digest) is Digest for i in infos)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (None, "Expected `array`, got `null`"),
        ([{"digest": "sha256:zz", "size": 1, "media_type": "x"}], "$[0].digest"),
        ([{"digest": LAYER1_DIGEST, "size": -2, "media_type": "x"}], "$[0].size"),
        ([{"digest": LAYER1_DIGEST, "size": 1}], "`media_type`"),
        ([{"digest": LAYER1_DIGEST, "size": 1, "mediaType": "x"}], "`media_type`"),
    ],
)
def test_layer_info_errors(obj: object, fragment: str) -> None:
    with pytest.raises(InvalidDocumentError) as info:
        convert_layer_info(obj)
    assert "layer info" in str(info.value)
    assert fragment in str(info.value)
    with pytest.raises(InvalidDocumentError) as info:
        decode_layer_info(json.dumps(obj))
    assert fragment in str(info.value)


# --------------------------------------------------------------------------
# Encoding, construction, immutability
# --------------------------------------------------------------------------


def test_manifest_encode_decode_round_trip() -> None:
    m = decode_manifest(json.dumps(manifest_json()))
    data = encode(m)
    assert decode_manifest(data) == m
    as_json = json.loads(data)
    # Spec names on the wire, no nulls for unset optional fields, unknown fields dropped.
    assert as_json["schemaVersion"] == 2
    assert as_json["layers"][0] == {
        "mediaType": MEDIA_TYPE_LAYER_GZIP,
        "digest": LAYER1_DIGEST,
        "size": 32654,
    }
    assert "someVendorField" not in as_json
    assert "subject" not in as_json
    assert b"null" not in data


def test_index_and_config_round_trip() -> None:
    idx = decode_index(INDEX_JSON)
    idx_json = json.loads(encode(idx))
    assert idx_json["manifests"][1]["platform"]["os.version"] == "10.0.17763.5329"
    assert idx_json["manifests"][2]["data"] == "e30="
    assert decode_index(encode(idx)) == idx

    cfg = decode_config(CONFIG_JSON)
    cfg_json = json.loads(encode(cfg))
    assert cfg_json["os.version"] == "6.1"
    assert cfg_json["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg_json["config"]["WorkingDir"] == "/home/alice"
    assert cfg_json["rootfs"] == {"type": "layers", "diff_ids": [LAYER1_DIGEST, LAYER2_DIGEST]}
    assert cfg_json["history"][1]["empty_layer"] is True
    assert decode_config(encode(cfg)) == cfg

    infos = decode_layer_info(json.dumps(LAYER_INFO))
    assert json.loads(encode(infos)) == [
        {"digest": LAYER1_DIGEST, "size": 1234, "media_type": MEDIA_TYPE_LAYER_GZIP},
        {"digest": LAYER2_DIGEST, "size": -1, "media_type": MEDIA_TYPE_LAYER_ZSTD},
    ]


def test_encode_bare_digest() -> None:
    assert encode(Digest(LAYER1_DIGEST)) == f'"{LAYER1_DIGEST}"'.encode()
    assert encode([Digest(LAYER1_DIGEST)]) == f'["{LAYER1_DIGEST}"]'.encode()


def test_encode_unsupported_type_raises() -> None:
    with pytest.raises(TypeError):
        encode(object())


def test_direct_construction_validates_and_coerces_digest() -> None:
    d = Descriptor(media_type="x", digest=LAYER1_DIGEST, size=3)  # type: ignore[arg-type]
    assert type(d.digest) is Digest
    with pytest.raises(InvalidDigestError):
        Descriptor(media_type="x", digest="sha256:nope", size=3)  # type: ignore[arg-type]
    info = ConvertedLayerInfo(digest=LAYER2_DIGEST, size=-1, media_type="x")  # type: ignore[arg-type]
    assert type(info.digest) is Digest
    with pytest.raises(InvalidDigestError):
        ConvertedLayerInfo(digest="md5:00", size=1, media_type="x")  # type: ignore[arg-type]


def test_descriptor_matches_and_same_content() -> None:
    blob = b"some layer bytes"
    desc = Descriptor(MEDIA_TYPE_LAYER_GZIP, Digest.from_bytes(blob), len(blob))
    assert desc.matches(blob)
    assert not desc.matches(blob + b"x")
    wrong_size = Descriptor(MEDIA_TYPE_LAYER_GZIP, desc.digest, len(blob) + 1)
    assert not wrong_size.matches(blob)
    assert desc.same_content(Descriptor("other/type", desc.digest, len(blob)))
    assert not desc.same_content(wrong_size)


@pytest.mark.parametrize(
    ("obj", "attr", "value"),
    [
        (Descriptor("x", Digest(LAYER1_DIGEST), 1), "size", 2),
        (Platform("amd64", "linux"), "os", "windows"),
        (RootFS("layers", ()), "type", "other"),
        (History(), "comment", "x"),
        (ContainerConfig(), "user", "root"),
        (ConvertedLayerInfo(Digest(LAYER1_DIGEST), 1, "x"), "size", 5),
    ],
)
def test_structs_are_frozen(obj: object, attr: str, value: object) -> None:
    with pytest.raises(AttributeError):
        setattr(obj, attr, value)
    assert not hasattr(obj, "__dict__")


def test_decoded_manifest_is_frozen_and_hashable() -> None:
    doc = manifest_json()
    del doc["annotations"]
    del doc["layers"][1]["annotations"]
    m = decode_manifest(json.dumps(doc))
    with pytest.raises(AttributeError):
        m.layers = ()  # type: ignore[misc]
    assert isinstance(m.layers, tuple)
    assert hash(m) == hash(decode_manifest(json.dumps(doc)))


def test_structs_are_msgspec_structs() -> None:
    for cls in (ImageManifest, ImageIndex, ImageConfiguration, Descriptor, Platform):
        assert issubclass(cls, msgspec.Struct)
        assert cls.__struct_config__.frozen


# --------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_document_error(data: bytes) -> None:
    try:
        result = decode_manifest(data)
    except InvalidDocumentError:
        return
    assert isinstance(result, ImageManifest)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_descriptor_like = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.text(max_size=8) | _json_values,
        "digest": st.sampled_from([LAYER1_DIGEST, "sha256:abc", "md5:00", ""]) | _json_values,
        "size": st.integers(min_value=-3, max_value=10) | _json_values,
        "platform": _json_values,
        "data": st.sampled_from(["e30=", "!!"]) | _json_values,
    },
)
_manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.just(2) | _json_values,
        "config": _descriptor_like | _json_values,
        "layers": st.lists(_descriptor_like, max_size=3) | _json_values,
        "subject": _descriptor_like,
        "annotations": _json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(_manifest_like)
def test_random_manifest_shapes_only_raise_document_error(doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    try:
        result = decode_manifest(data)
    except InvalidDocumentError:
        return
    assert isinstance(result, ImageManifest)
    assert type(result.config.digest) is Digest
    assert decode_manifest(encode(result)) == result


@given(st.binary(min_size=0, max_size=256), st.sampled_from(["sha256", "sha512"]))
def test_from_bytes_always_valid(data: bytes, algorithm: str) -> None:
    d = Digest.from_bytes(data, algorithm)
    assert Digest(str(d)) == d
    assert d.algorithm == algorithm
    assert d.matches(data)
