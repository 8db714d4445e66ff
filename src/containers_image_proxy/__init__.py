"""Fetch container images through skopeo's image proxy, blocking or with asyncio.

``ImageProxy`` and ``AsyncImageProxy`` start ``skopeo experimental-image-proxy``
as a child process and stream manifests, configurations and blobs out of any
containers/image transport (registries, OCI layouts, archives, containers-storage).
``unpack`` streams an image into a root filesystem, verified layer by layer.
"""

from ._async.proxy import AsyncBlob, AsyncImageProxy, AsyncRawBlob
from ._async.pull import pull_async, stream_layers_async
from ._image import OpenedImage
from ._layout import LayoutError
from ._sync.proxy import Blob, ImageProxy, RawBlob
from ._sync.pull import pull, stream_layers
from ._unpack import unpack, unpack_async
from ._unpack_stream import LayerStream, detect_compression, open_layer
from ._unpack_tree import RootfsWriter
from ._unpack_types import (
    CompressionMismatchError,
    LayerFormatError,
    LayerResult,
    LimitExceededError,
    UnpackError,
    UnpackLimits,
    UnpackResult,
    UnsafeLayerError,
)
from .config import ImageProxyConfig
from .errors import (
    BlobVerificationError,
    BusyError,
    ClosedError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxyError,
    InvalidDigestError,
    InvalidDocumentError,
    ProtocolError,
    ProxyExitedError,
    ProxyFailedError,
    ProxyTooOldError,
    RequestError,
    SpawnError,
    StallTimeoutError,
    VerificationError,
)
from .events import (
    BlobFinished,
    BlobProgress,
    BlobRetrying,
    BlobStarted,
    PullEvent,
    PullResult,
    PullStarted,
)
from .oci import ConvertedLayerInfo, Descriptor, Digest, ImageConfiguration, ImageManifest

__all__ = [
    "AsyncBlob",
    "AsyncImageProxy",
    "AsyncRawBlob",
    "Blob",
    "BlobFinished",
    "BlobProgress",
    "BlobRetrying",
    "BlobStarted",
    "BlobVerificationError",
    "BusyError",
    "ClosedError",
    "CompressionMismatchError",
    "ConfigurationError",
    "ConvertedLayerInfo",
    "Descriptor",
    "Digest",
    "ImageConfiguration",
    "ImageManifest",
    "ImageNotFoundError",
    "ImageProxy",
    "ImageProxyConfig",
    "ImageProxyError",
    "InvalidDigestError",
    "InvalidDocumentError",
    "LayerFormatError",
    "LayerResult",
    "LayerStream",
    "LayoutError",
    "LimitExceededError",
    "OpenedImage",
    "ProtocolError",
    "ProxyExitedError",
    "ProxyFailedError",
    "ProxyTooOldError",
    "PullEvent",
    "PullResult",
    "PullStarted",
    "RawBlob",
    "RequestError",
    "RootfsWriter",
    "SpawnError",
    "StallTimeoutError",
    "UnpackError",
    "UnpackLimits",
    "UnpackResult",
    "UnsafeLayerError",
    "VerificationError",
    "detect_compression",
    "open_layer",
    "pull",
    "pull_async",
    "stream_layers",
    "stream_layers_async",
    "unpack",
    "unpack_async",
]
