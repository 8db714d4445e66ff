"""What each layer of an image really is: which digest to fetch, and its true media type.

The manifest the proxy converts to OCI does not always describe the bytes it serves:

* ``docker-archive:`` sources (and images stored in ``containers-storage:`` from
  one) label their plain tar layers ``tar+gzip``; GetLayerInfo repeats that label.
* ``containers-storage:`` images stored from compressed layers keep only the
  uncompressed layers, while the manifest still names the compressed digests. Only
  GetLayerInfo (protocol 0.2.5+) names the uncompressed blobs the store serves.

So layers are fetched by the digest and size GetLayerInfo gives where the proxy has
it, and the media type handed out or written is the one the first bytes prove
(:func:`~containers_image_proxy.detect_compression`, whose rule also applies here).
"""

from __future__ import annotations

import msgspec

from ._unpack.compression import Compression, detect_compression, media_type_compression
from .errors import (
    ImageNotFoundError,
    InvalidDocumentError,
    LayerFormatError,
    LayerUnavailableError,
    RequestError,
    VerificationError,
)
from .oci import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD,
    MEDIA_TYPE_LAYER_ZSTD,
    ConvertedLayerInfo,
    Descriptor,
    Digest,
    ImageManifest,
)

__all__ = [
    "PREFIX_SIZE",
    "check_uncompressed",
    "fetch_plan",
    "is_tar_layer",
    "true_layer",
    "unavailable",
    "with_compression",
]

#: Bytes of a layer blob needed to tell its compression (a tar header block).
PREFIX_SIZE = 512

_OCI_TYPES: dict[tuple[Compression, bool], str] = {
    ("none", False): MEDIA_TYPE_LAYER,
    ("gzip", False): MEDIA_TYPE_LAYER_GZIP,
    ("zstd", False): MEDIA_TYPE_LAYER_ZSTD,
    ("none", True): MEDIA_TYPE_LAYER_NONDISTRIBUTABLE,
    ("gzip", True): MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP,
    ("zstd", True): MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD,
}


def is_tar_layer(media_type: str) -> bool:
    """Return whether ``media_type`` names a (possibly compressed) tar layer."""
    try:
        media_type_compression(media_type)
    except LayerFormatError:
        return False
    return True


def fetch_plan(manifest: ImageManifest, infos: list[ConvertedLayerInfo] | None) -> list[Descriptor]:
    """Return the descriptor to fetch each layer of ``manifest`` by, in order.

    Without layer information (``infos`` is None: a proxy older than 0.2.5) these
    are the manifest's own descriptors. With it, digest and size come from the
    source, and so does the media type when it names a tar layer (it is the type
    of the blob served, which the bytes are then checked against).

    Raises:
        InvalidDocumentError: the layer information does not fit the manifest.
    """
    if infos is None:
        return list(manifest.layers)
    if len(infos) != len(manifest.layers):
        raise InvalidDocumentError(
            f"the proxy's layer information lists {len(infos)} layers, the manifest"
            f" {len(manifest.layers)}"
        )
    plan = []
    for listed, info in zip(manifest.layers, infos, strict=True):
        if info.digest == listed.digest:
            size = listed.size if info.size == -1 else info.size
        elif info.size >= 0:
            size = info.size
        else:
            raise InvalidDocumentError(
                f"the proxy's layer information gives {info.digest} for {listed.digest}"
                " without a size"
            )
        if info.digest == listed.digest and size != listed.size:
            raise InvalidDocumentError(
                f"layer {listed.digest}: the manifest says {listed.size} bytes, the"
                f" proxy's layer information {size}"
            )
        media_type = info.media_type if is_tar_layer(info.media_type) else listed.media_type
        plan.append(
            msgspec.structs.replace(
                listed,
                media_type=media_type,
                digest=info.digest,
                size=size,
                urls=listed.urls if info.digest == listed.digest else None,
            )
        )
    return plan


def true_layer(listed: Descriptor, fetched: Descriptor, prefix: bytes) -> Descriptor:
    """Return the descriptor of the blob ``fetched`` (a :func:`fetch_plan` entry), truthfully.

    ``listed`` is the layer's descriptor in the manifest and ``prefix`` the blob's
    first :data:`PREFIX_SIZE` bytes. The media type is the manifest's when it names
    the compression the bytes show, else the OCI layer type of that compression
    (non-distributable layers stay non-distributable). A layer that is not a tar
    layer (an encrypted layer, an artifact) is returned as fetched.

    Raises:
        CompressionMismatchError: the bytes contradict the media type in a way
            :func:`~containers_image_proxy.detect_compression` refuses.
    """
    if not is_tar_layer(fetched.media_type):
        return fetched
    return with_compression(
        listed, fetched, detect_compression(fetched.media_type, prefix[:PREFIX_SIZE])
    )


def with_compression(
    listed: Descriptor, fetched: Descriptor, compression: Compression
) -> Descriptor:
    """Return ``fetched`` labelled with the media type of ``compression`` (see ``true_layer``)."""
    if is_tar_layer(listed.media_type) and media_type_compression(listed.media_type) == compression:
        media_type = listed.media_type
    else:
        restricted = any(word in listed.media_type for word in ("nondistributable", "foreign"))
        media_type = _OCI_TYPES[compression, restricted]
    if media_type == fetched.media_type:
        return fetched
    return msgspec.structs.replace(fetched, media_type=media_type)


def check_uncompressed(layer: Descriptor, diff_id: Digest) -> None:
    """Check that an uncompressed layer's digest is its diff_id.

    Raises:
        VerificationError: they differ (with the same algorithm).
    """
    if (
        is_tar_layer(layer.media_type)
        and media_type_compression(layer.media_type) == "none"
        and layer.digest.algorithm == diff_id.algorithm
        and layer.digest != diff_id
    ):
        raise VerificationError(
            f"layer {layer.digest} is an uncompressed tar, but the configuration gives"
            f" it the diff_id {diff_id}"
        )


def unavailable(
    reference: str, layer: Descriptor, error: RequestError, protocol: str, has_info: bool
) -> RequestError | LayerUnavailableError:
    """Return the error to raise when GetBlob refused ``layer``: a clearer one when the reason
    is a ``containers-storage:`` image that an old proxy cannot read.
    """
    if (
        isinstance(error, ImageNotFoundError)
        and not has_info
        and reference.startswith("containers-storage:")
    ):
        return LayerUnavailableError(reference, str(layer.digest), protocol, error.message)
    return error
