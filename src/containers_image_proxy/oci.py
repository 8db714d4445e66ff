"""Typed, validated OCI image-spec structures decoded from JSON with msgspec.

The structures mirror the `OCI image specification`_ (and the Docker image
manifest schema 2, which shares its shape). Attribute names are snake_case;
each maps to the JSON name used by the specification (``mediaType``,
``os.version``, ``ExposedPorts``, ...). All structs are frozen (and therefore
slotted); unknown JSON fields are ignored so newer or vendor-extended documents
still decode.

Decoding goes through module-level :class:`msgspec.json.Decoder` instances, so
the per-call cost is only the parse itself. Any failure (malformed JSON, a wrong
type, a missing required field, an invalid digest) raises
:class:`~containers_image_proxy.errors.InvalidDocumentError` naming the document
kind and the JSON path of the offending value.

.. _OCI image specification: https://github.com/opencontainers/image-spec
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Final, Protocol, Self, TypeVar

import msgspec

from .errors import InvalidDigestError, InvalidDocumentError

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V2",
    "EMPTY_JSON_DIGEST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MEDIA_TYPE_DESCRIPTOR",
    "MEDIA_TYPE_EMPTY_JSON",
    "MEDIA_TYPE_IMAGE_CONFIG",
    "MEDIA_TYPE_IMAGE_INDEX",
    "MEDIA_TYPE_IMAGE_MANIFEST",
    "MEDIA_TYPE_LAYER",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_NONDISTRIBUTABLE",
    "MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP",
    "MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD",
    "MEDIA_TYPE_LAYER_ZSTD",
    "SUPPORTED_DIGEST_ALGORITHMS",
    "ContainerConfig",
    "ConvertedLayerInfo",
    "Descriptor",
    "Digest",
    "Hasher",
    "History",
    "ImageConfiguration",
    "ImageIndex",
    "ImageManifest",
    "Platform",
    "RootFS",
    "convert_layer_info",
    "decode_config",
    "decode_index",
    "decode_layer_info",
    "decode_manifest",
    "encode",
    "parse_digest",
]

# --------------------------------------------------------------------------
# Media types
# --------------------------------------------------------------------------

MEDIA_TYPE_DESCRIPTOR: Final = "application/vnd.oci.descriptor.v1+json"
MEDIA_TYPE_IMAGE_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_IMAGE_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_IMAGE_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_LAYER_NONDISTRIBUTABLE: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP: Final = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)
MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD: Final = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
)
MEDIA_TYPE_EMPTY_JSON: Final = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST_V2: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD: Final = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

#: Media types of single-image manifests (OCI and Docker schema 2).
MANIFEST_MEDIA_TYPES: Final = frozenset({MEDIA_TYPE_IMAGE_MANIFEST, DOCKER_MANIFEST_V2})
#: Media types of multi-platform indexes (OCI index and Docker manifest list).
INDEX_MEDIA_TYPES: Final = frozenset({MEDIA_TYPE_IMAGE_INDEX, DOCKER_MANIFEST_LIST})

# --------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------

#: Registered algorithms this module accepts, mapped to their hex length.
SUPPORTED_DIGEST_ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}

# Grammar from the image-spec "Digests" section.
_ALGORITHM_RE: Final = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED_RE: Final = re.compile(r"[a-zA-Z0-9=_-]+")
_HEX_RE: Final = re.compile(r"[0-9a-f]+")
# Fast path: the overwhelmingly common, fully valid forms.
_VALID_RE: Final = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")

_MAX_SHOWN: Final = 100


def _shown(value: str) -> str:
    """Return ``repr(value)``, shortened so error messages stay readable."""
    if len(value) > _MAX_SHOWN:
        return repr(value[:_MAX_SHOWN] + "...")
    return repr(value)


class Hasher(Protocol):
    """The subset of the :mod:`hashlib` hash object interface used here."""

    @property
    def name(self) -> str:
        """The hashlib name of the algorithm."""
        ...

    def update(self, data: bytes, /) -> None:
        """Feed more data into the hash."""
        ...

    def digest(self) -> bytes:
        """Return the binary digest of the data fed so far."""
        ...

    def hexdigest(self) -> str:
        """Return the lowercase hex digest of the data fed so far."""
        ...


def _explain_invalid(value: str) -> str:
    """Return a message describing why ``value`` is not a valid digest."""
    shown = _shown(value)
    if not value:
        return "invalid digest '': empty string"
    algorithm, sep, encoded = value.partition(":")
    if not sep:
        return f"invalid digest {shown}: missing ':' between algorithm and encoded part"
    if not algorithm:
        return f"invalid digest {shown}: empty algorithm"
    if not _ALGORITHM_RE.fullmatch(algorithm):
        return f"invalid digest {shown}: malformed algorithm {_shown(algorithm)}"
    if not encoded:
        return f"invalid digest {shown}: empty encoded part"
    if not _ENCODED_RE.fullmatch(encoded):
        bad = next(c for c in encoded if not _ENCODED_RE.fullmatch(c))
        return f"invalid digest {shown}: invalid character {bad!r} in encoded part"
    expected = SUPPORTED_DIGEST_ALGORITHMS.get(algorithm)
    if expected is None:
        supported = ", ".join(SUPPORTED_DIGEST_ALGORITHMS)
        return f"unsupported digest algorithm {algorithm!r} in {shown} (supported: {supported})"
    if not _HEX_RE.fullmatch(encoded):
        bad = next(c for c in encoded if not _HEX_RE.fullmatch(c))
        if bad in "ABCDEF":
            return (
                f"invalid digest {shown}: uppercase hex character {bad!r}; "
                f"{algorithm} digests must be lowercase hex"
            )
        return f"non-hex character {bad!r} in digest {shown}"
    return (
        f"invalid digest {shown}: {algorithm} needs {expected} hex characters, got {len(encoded)}"
    )


class Digest(str):
    """A validated content digest such as ``sha256:<64 lowercase hex>``.

    Being a :class:`str` subclass, a digest compares, hashes and formats exactly
    like its ``"algorithm:hex"`` text. Construction validates against the
    image-spec grammar and checks the registered algorithms strictly: only
    ``sha256`` (64 lowercase hex characters) and ``sha512`` (128) are accepted.

    Raises:
        InvalidDigestError: if ``value`` is not a string or not a valid digest.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Self:
        """Validate ``value`` and return it as a digest."""
        if type(value) is cls:
            return value
        if not isinstance(value, str):
            raise InvalidDigestError(
                f"invalid digest: expected a string, got {type(value).__name__}"
            )
        if _VALID_RE.fullmatch(value) is None:
            raise InvalidDigestError(_explain_invalid(value))
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Digest({str.__repr__(self)})"

    @property
    def algorithm(self) -> str:
        """The algorithm name, e.g. ``"sha256"`` (also its :mod:`hashlib` name)."""
        return self.partition(":")[0]

    @property
    def encoded(self) -> str:
        """The encoded (lowercase hex) part after the colon."""
        return self.partition(":")[2]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> Self:
        """Compute the digest of ``data`` with ``algorithm``.

        Raises:
            InvalidDigestError: if ``algorithm`` is not supported.
        """
        if algorithm not in SUPPORTED_DIGEST_ALGORITHMS:
            supported = ", ".join(SUPPORTED_DIGEST_ALGORITHMS)
            raise InvalidDigestError(
                f"unsupported digest algorithm {algorithm!r} (supported: {supported})"
            )
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")

    def hasher(self) -> Hasher:
        """Return a fresh :mod:`hashlib` object for this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        """Return whether ``data`` hashes to this digest."""
        return hashlib.new(self.algorithm, data).hexdigest() == self.encoded


def parse_digest(value: str | Digest) -> Digest:
    """Return ``value`` as a validated :class:`Digest`.

    Raises:
        InvalidDigestError: if ``value`` is not a valid, supported digest.
    """
    return Digest(value)


#: Digest of the two-byte empty JSON object ``{}`` (see MEDIA_TYPE_EMPTY_JSON).
EMPTY_JSON_DIGEST: Final = Digest(
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)

# --------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------

_NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_Annotations = dict[str, str]


class Platform(msgspec.Struct, frozen=True, omit_defaults=True):
    """The platform an image in an index runs on."""

    architecture: str
    os: str
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: tuple[str, ...] | None = msgspec.field(default=None, name="os.features")
    variant: str | None = None
    features: tuple[str, ...] | None = None


class Descriptor(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    """A content descriptor: media type, digest and size of a referenced blob."""

    media_type: str
    digest: Digest
    size: _NonNegative
    urls: tuple[str, ...] | None = None
    annotations: _Annotations | None = None
    data: bytes | None = None
    """Embedded content (base64 in JSON, decoded to bytes here)."""
    platform: Platform | None = None
    artifact_type: str | None = None

    def __post_init__(self) -> None:
        # Decoding already produced a Digest via the dec_hook; this only costs an
        # isinstance check there, and validates direct construction from a str.
        if type(self.digest) is not Digest:
            msgspec.structs.force_setattr(self, "digest", Digest(self.digest))

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        """Return whether ``data`` has this descriptor's size and digest."""
        return len(data) == self.size and self.digest.matches(data)

    def same_content(self, other: Descriptor) -> bool:
        """Return whether ``other`` describes the same blob (digest and size)."""
        return self.digest == other.digest and self.size == other.size


class ImageManifest(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    """An image manifest (OCI or Docker schema 2): a config plus ordered layers."""

    schema_version: int
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = None
    subject: Descriptor | None = None
    annotations: _Annotations | None = None
    artifact_type: str | None = None


class ImageIndex(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    """An image index (or Docker manifest list) referencing per-platform manifests."""

    schema_version: int
    manifests: tuple[Descriptor, ...]
    media_type: str | None = None
    subject: Descriptor | None = None
    annotations: _Annotations | None = None
    artifact_type: str | None = None


class ContainerConfig(msgspec.Struct, frozen=True, omit_defaults=True, rename="pascal"):
    """Execution parameters for a container (the ``config`` of an image config)."""

    user: str | None = None
    exposed_ports: dict[str, Any] | None = None
    """Keys are ``"port/proto"``; values are (empty) objects."""
    env: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: dict[str, Any] | None = None
    """Keys are container paths; values are (empty) objects."""
    working_dir: str | None = None
    labels: _Annotations | None = None
    stop_signal: str | None = None
    args_escaped: bool | None = None


class RootFS(msgspec.Struct, frozen=True, omit_defaults=True):
    """The layer DiffIDs (digests of uncompressed layers) of an image."""

    type: str
    diff_ids: tuple[Digest, ...]


class History(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One entry of an image's build history."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


class ImageConfiguration(msgspec.Struct, frozen=True, omit_defaults=True):
    """An image configuration (OCI or Docker): platform, runtime config, rootfs, history."""

    architecture: str
    os: str
    rootfs: RootFS
    created: str | None = None
    author: str | None = None
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: tuple[str, ...] | None = msgspec.field(default=None, name="os.features")
    variant: str | None = None
    config: ContainerConfig | None = None
    history: tuple[History, ...] = ()


class ConvertedLayerInfo(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A layer as reported by the image proxy's ``GetLayerInfo`` call.

    ``size`` is ``-1`` when the size is unknown.
    """

    digest: Digest
    size: Annotated[int, msgspec.Meta(ge=-1)]
    media_type: str

    def __post_init__(self) -> None:
        if type(self.digest) is not Digest:
            msgspec.structs.force_setattr(self, "digest", Digest(self.digest))


# --------------------------------------------------------------------------
# Decoding and encoding
# --------------------------------------------------------------------------


def _dec_hook(type_: type, obj: object) -> object:
    """Build custom types (only :class:`Digest`) from decoded JSON values.

    msgspec calls this for any type it does not know, with whatever JSON value
    was present, so the value's type must be checked here. ``ValueError`` and
    ``TypeError`` (``InvalidDigestError`` is a ``ValueError``) are turned by
    msgspec into a ``ValidationError`` carrying the JSON path.
    """
    if type_ is Digest:
        if not isinstance(obj, str):
            raise TypeError(f"Expected digest string, got `{type(obj).__name__}`")
        return Digest(obj)
    raise NotImplementedError(f"cannot decode {type_!r}")


def _enc_hook(obj: object) -> object:
    """Encode custom types; msgspec does not encode ``str`` subclasses natively."""
    if isinstance(obj, str):
        return str(obj)
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


_T = TypeVar("_T")
_JSONInput = bytes | bytearray | memoryview | str

_MANIFEST_DECODER: Final = msgspec.json.Decoder(ImageManifest, dec_hook=_dec_hook)
_INDEX_DECODER: Final = msgspec.json.Decoder(ImageIndex, dec_hook=_dec_hook)
_CONFIG_DECODER: Final = msgspec.json.Decoder(ImageConfiguration, dec_hook=_dec_hook)
_LAYER_INFO_DECODER: Final = msgspec.json.Decoder(list[ConvertedLayerInfo], dec_hook=_dec_hook)
_ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook)


def _decode(decoder: msgspec.json.Decoder[_T], data: _JSONInput, kind: str) -> _T:
    """Decode ``data`` with ``decoder``, mapping failures to InvalidDocumentError."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidDocumentError(f"invalid {kind}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidDocumentError(f"invalid {kind}: malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidDocumentError(f"invalid {kind}: JSON nested too deeply") from exc


def decode_manifest(data: _JSONInput) -> ImageManifest:
    """Decode an OCI image manifest or Docker schema 2 manifest from JSON.

    Raises:
        InvalidDocumentError: if the document is malformed or invalid.
    """
    return _decode(_MANIFEST_DECODER, data, "image manifest")


def decode_index(data: _JSONInput) -> ImageIndex:
    """Decode an OCI image index or Docker manifest list from JSON.

    Raises:
        InvalidDocumentError: if the document is malformed or invalid.
    """
    return _decode(_INDEX_DECODER, data, "image index")


def decode_config(data: _JSONInput) -> ImageConfiguration:
    """Decode an OCI (or Docker) image configuration from JSON.

    Raises:
        InvalidDocumentError: if the document is malformed or invalid.
    """
    return _decode(_CONFIG_DECODER, data, "image configuration")


def decode_layer_info(data: _JSONInput) -> list[ConvertedLayerInfo]:
    """Decode the JSON reply of the proxy's ``GetLayerInfo`` call.

    Raises:
        InvalidDocumentError: if the document is malformed or invalid.
    """
    return _decode(_LAYER_INFO_DECODER, data, "layer info list")


def convert_layer_info(obj: object) -> list[ConvertedLayerInfo]:
    """Convert an already-decoded JSON value (a list of dicts) to layer infos.

    Raises:
        InvalidDocumentError: if ``obj`` does not have the expected shape.
    """
    try:
        return msgspec.convert(obj, list[ConvertedLayerInfo], dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise InvalidDocumentError(f"invalid layer info list: {exc}") from exc
    except RecursionError as exc:
        raise InvalidDocumentError("invalid layer info list: nested too deeply") from exc


def encode(obj: object) -> bytes:
    """Encode a structure from this module (or plain data) to JSON bytes.

    Fields still at their default (``None``/empty) are omitted.
    """
    return _ENCODER.encode(obj)
