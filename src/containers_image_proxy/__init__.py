"""Fetch container images through skopeo's image proxy, blocking or with asyncio.

``ImageProxy`` and ``AsyncImageProxy`` start ``skopeo experimental-image-proxy``
as a child process and stream manifests, configurations and blobs out of any
containers/image transport (registries, OCI layouts, archives, containers-storage).
``unpack`` streams an image into a root filesystem, verified layer by layer.
"""

from typing import TYPE_CHECKING

from ._image import OpenedImage
from ._sync.blob import Blob, RawBlob
from ._sync.proxy import ImageProxy
from ._sync.pull import pull, stream_layers
from ._unpack.compression import detect_compression
from ._unpack.image import unpack
from ._unpack.layer import LayerStream, open_layer
from ._unpack.limits import UnpackLimits
from ._unpack.results import LayerResult, UnpackResult
from ._unpack.writer import RootfsWriter
from .config import ImageProxyConfig
from .errors import (
    AccessDeniedError,
    AuthenticationError,
    BlobVerificationError,
    BusyError,
    CertificateError,
    ClosedError,
    CompressionMismatchError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxyError,
    InvalidDigestError,
    InvalidDocumentError,
    InvalidReferenceError,
    LayerFormatError,
    LayerUnavailableError,
    LayoutError,
    LimitExceededError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    ProtocolError,
    ProxyExitedError,
    ProxyFailedError,
    ProxyTooOldError,
    RequestError,
    SpawnError,
    StallTimeoutError,
    TarTrailerError,
    UnpackError,
    UnsafeLayerError,
    UnsupportedOptionError,
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

if TYPE_CHECKING:
    from ._async.blob import AsyncBlob, AsyncRawBlob
    from ._async.proxy import AsyncImageProxy
    from ._async.pull import pull_async, stream_layers_async
    from ._unpack.image_async import unpack_async

    #: This package's version, from its installed metadata (``0+unknown`` when not
    #: installed).
    __version__: str

#: The asyncio names, and the module each comes from: imported on first use, so
#: that a program using only the blocking API does not import asyncio.
_LAZY = {
    "AsyncBlob": "._async.blob",
    "AsyncRawBlob": "._async.blob",
    "AsyncImageProxy": "._async.proxy",
    "pull_async": "._async.pull",
    "stream_layers_async": "._async.pull",
    "unpack_async": "._unpack.image_async",
}


# Hidden from type checkers, which would otherwise accept any name of the module
# (the lazy names are declared above for them).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import the asyncio names (and read ``__version__``) when first asked for."""
        if name == "__version__":
            from ._version import package_version

            value: object = package_version()
        elif name in _LAZY:
            import importlib

            value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        """The public names, those imported on first use included."""
        return sorted(set(globals()) | set(__all__))


__all__ = [
    "AccessDeniedError",
    "AsyncBlob",
    "AsyncImageProxy",
    "AsyncRawBlob",
    "AuthenticationError",
    "Blob",
    "BlobFinished",
    "BlobProgress",
    "BlobRetrying",
    "BlobStarted",
    "BlobVerificationError",
    "BusyError",
    "CertificateError",
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
    "InvalidReferenceError",
    "LayerFormatError",
    "LayerResult",
    "LayerStream",
    "LayerUnavailableError",
    "LayoutError",
    "LimitExceededError",
    "OpenedImage",
    "PolicyNotEnforcedError",
    "PolicyRejectedError",
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
    "TarTrailerError",
    "UnpackError",
    "UnpackLimits",
    "UnpackResult",
    "UnsafeLayerError",
    "UnsupportedOptionError",
    "VerificationError",
    "__version__",
    "detect_compression",
    "open_layer",
    "pull",
    "pull_async",
    "stream_layers",
    "stream_layers_async",
    "unpack",
    "unpack_async",
]
