"""Which digest a layer is fetched by, and which media type its descriptor states."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from containers_image_proxy import (
    CompressionMismatchError,
    ImageNotFoundError,
    InvalidDocumentError,
    LayerUnavailableError,
    RequestError,
    VerificationError,
)
from containers_image_proxy._layers import (
    check_uncompressed,
    fetch_plan,
    true_layer,
    unavailable,
)
from containers_image_proxy.oci import (
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    ConvertedLayerInfo,
    Descriptor,
    Digest,
    ImageManifest,
)
from tests.support.hostile_layers import file, tar_bytes

TAR = tar_bytes([file("a", b"x")])
GZ = gzip.compress(TAR, mtime=0)
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def digest(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def descriptor(media_type: str, data: bytes, **extra: object) -> Descriptor:
    return Descriptor(media_type, digest(data), len(data), **extra)  # type: ignore[arg-type]


def manifest(*layers: Descriptor) -> ImageManifest:
    config = descriptor(MEDIA_TYPE_IMAGE_CONFIG, b"{}")
    return ImageManifest(schema_version=2, config=config, layers=layers)


def test_plan_without_layer_info_is_the_manifest() -> None:
    m = manifest(descriptor(MEDIA_TYPE_LAYER_GZIP, GZ))
    assert fetch_plan(m, None) == list(m.layers)


def test_plan_takes_digest_size_and_type_from_layer_info() -> None:
    listed = descriptor(MEDIA_TYPE_LAYER_GZIP, GZ, urls=("https://example.com/x",))
    info = ConvertedLayerInfo(digest(TAR), len(TAR), MEDIA_TYPE_LAYER)
    (planned,) = fetch_plan(manifest(listed), [info])
    assert (planned.digest, planned.size, planned.media_type) == (
        info.digest,
        len(TAR),
        MEDIA_TYPE_LAYER,
    )
    assert planned.urls is None  # the URLs name the compressed blob
    # The same blob: the manifest's size stands in for an unknown one.
    same = ConvertedLayerInfo(listed.digest, -1, DOCKER_GZIP)
    (planned,) = fetch_plan(manifest(listed), [same])
    assert (planned.size, planned.media_type, planned.urls) == (len(GZ), DOCKER_GZIP, listed.urls)
    # A type that is not a tar layer's is not taken.
    odd = ConvertedLayerInfo(listed.digest, len(GZ), "application/octet-stream")
    assert fetch_plan(manifest(listed), [odd])[0].media_type == MEDIA_TYPE_LAYER_GZIP


@pytest.mark.parametrize(
    ("infos", "message"),
    [
        ([], "lists 0 layers"),
        ([ConvertedLayerInfo(digest(TAR), -1, MEDIA_TYPE_LAYER)], "without a size"),
        ([ConvertedLayerInfo(digest(GZ), 5, MEDIA_TYPE_LAYER_GZIP)], "says 4"),
    ],
)
def test_plan_refuses_layer_info_that_does_not_fit(
    infos: list[ConvertedLayerInfo], message: str
) -> None:
    m = manifest(descriptor(MEDIA_TYPE_LAYER_GZIP, GZ))
    with pytest.raises(InvalidDocumentError, match=message.replace("4", str(len(GZ)))):
        fetch_plan(m, infos)


def test_true_layer() -> None:
    gz = descriptor(MEDIA_TYPE_LAYER_GZIP, GZ)
    plain_labelled_gzip = descriptor(MEDIA_TYPE_LAYER_GZIP, TAR)
    # True labels stay, byte for byte the same descriptor.
    assert true_layer(gz, gz, GZ[:512]) is gz
    tar = descriptor(MEDIA_TYPE_LAYER, TAR)
    assert true_layer(tar, tar, TAR[:512]) is tar
    # The known mislabel: gzip over a plain tar.
    fixed = true_layer(plain_labelled_gzip, plain_labelled_gzip, TAR[:512])
    assert (fixed.media_type, fixed.digest) == (MEDIA_TYPE_LAYER, plain_labelled_gzip.digest)
    restricted = descriptor(MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP, TAR)
    assert (
        true_layer(restricted, restricted, TAR[:512]).media_type
        == MEDIA_TYPE_LAYER_NONDISTRIBUTABLE
    )
    # A Docker type from the layer information, over true gzip: the manifest's type.
    docker = descriptor(DOCKER_GZIP, GZ)
    assert true_layer(gz, docker, GZ[:512]).media_type == MEDIA_TYPE_LAYER_GZIP
    # Other contradictions are refused, as unpack refuses them.
    zstd_labelled = descriptor(MEDIA_TYPE_LAYER_ZSTD, GZ)
    with pytest.raises(CompressionMismatchError):
        true_layer(zstd_labelled, zstd_labelled, GZ[:512])
    with pytest.raises(CompressionMismatchError):
        true_layer(tar, descriptor(MEDIA_TYPE_LAYER, GZ), GZ[:512])
    # Layers that are not tar layers are handed on as they are.
    encrypted = descriptor(MEDIA_TYPE_LAYER_GZIP + "+encrypted", b"opaque")
    assert true_layer(encrypted, encrypted, b"opaque") is encrypted


def test_uncompressed_digest_is_the_diff_id() -> None:
    tar = descriptor(MEDIA_TYPE_LAYER, TAR)
    check_uncompressed(tar, digest(TAR))
    check_uncompressed(descriptor(MEDIA_TYPE_LAYER_GZIP, GZ), digest(TAR))
    with pytest.raises(VerificationError, match="diff_id"):
        check_uncompressed(tar, digest(b"other"))


def test_unavailable_names_the_skopeo_that_reads_it() -> None:
    layer = descriptor(MEDIA_TYPE_LAYER_GZIP, GZ)
    missing = ImageNotFoundError("GetBlob", "locating item named ...: file does not exist")
    error = unavailable("containers-storage:x:1", layer, missing, "0.2.3", has_info=False)
    assert isinstance(error, LayerUnavailableError)
    assert "skopeo 1.11 or later" in str(error) and "file does not exist" in str(error)
    assert (error.required, error.found, error.digest) == ("0.2.5", "0.2.3", str(layer.digest))
    # Anything else is the proxy's own error.
    assert unavailable("docker://x/y", layer, missing, "0.2.3", has_info=False) is missing
    assert unavailable("containers-storage:x", layer, missing, "0.2.8", has_info=True) is missing
    other = RequestError("GetBlob", "boom")
    assert unavailable("containers-storage:x", layer, other, "0.2.3", has_info=False) is other
