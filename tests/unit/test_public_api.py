"""The public names stay where users import them from, and the errors form one family."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import pytest

import containers_image_proxy
from containers_image_proxy import AsyncImageProxy, ImageProxy, errors
from tests.support.images import BuiltImage


def _names(text: str) -> list[str]:
    return text.split()


PUBLIC = {
    "containers_image_proxy": _names(
        """
        AccessDeniedError AsyncBlob AsyncImageProxy AsyncRawBlob AuthenticationError
        Blob BlobFinished BlobProgress BlobRetrying BlobStarted BlobVerificationError
        BusyError CertificateError ClosedError CompressionMismatchError
        ConfigurationError ConvertedLayerInfo Descriptor Digest ImageConfiguration
        ImageManifest ImageNotFoundError ImageProxy ImageProxyConfig ImageProxyError
        InvalidDigestError InvalidDocumentError InvalidReferenceError LayerFormatError
        LayerResult LayerStream LayerUnavailableError LayoutError LimitExceededError
        OpenedImage PolicyNotEnforcedError PolicyRejectedError ProtocolError
        ProxyExitedError ProxyFailedError ProxyTooOldError PullEvent PullResult
        PullStarted RawBlob RequestError RootfsWriter SpawnError StallTimeoutError
        TarTrailerError UnpackError UnpackLimits UnpackResult UnsafeLayerError
        UnsupportedOptionError VerificationError __version__ detect_compression
        open_layer pull pull_async stream_layers stream_layers_async unpack
        unpack_async
        """
    ),
    "containers_image_proxy.config": _names(
        """
        AUTH_FD ChildCommand ConfigurationError DEBUG_ENV ImageProxyConfig
        OPTION_FIELDS StrPath build_command validate
        """
    ),
    "containers_image_proxy.errors": _names(
        """
        AccessDeniedError AuthenticationError BlobVerificationError BusyError
        CertificateError ClosedError CompressionMismatchError ConfigurationError
        ImageNotFoundError ImageProxyError InvalidDigestError InvalidDocumentError
        InvalidReferenceError LayerFormatError LayerUnavailableError LimitExceededError
        PolicyNotEnforcedError PolicyRejectedError ProtocolError ProxyExitedError
        ProxyFailedError ProxyTooOldError RequestError SpawnError StallTimeoutError
        TarTrailerError UnpackError UnsafeLayerError UnsupportedOptionError
        VerificationError
        """
    ),
    "containers_image_proxy.oci": _names(
        """
        ContainerConfig ConvertedLayerInfo DOCKER_CONFIG DOCKER_FOREIGN_LAYER
        DOCKER_LAYER_GZIP DOCKER_MANIFEST_LIST DOCKER_MANIFEST_V2 Descriptor Digest
        EMPTY_JSON_DIGEST Hasher History INDEX_MEDIA_TYPES ImageConfiguration
        ImageIndex ImageManifest MANIFEST_MEDIA_TYPES MEDIA_TYPE_DESCRIPTOR
        MEDIA_TYPE_EMPTY_JSON MEDIA_TYPE_IMAGE_CONFIG MEDIA_TYPE_IMAGE_INDEX
        MEDIA_TYPE_IMAGE_MANIFEST MEDIA_TYPE_LAYER MEDIA_TYPE_LAYER_GZIP
        MEDIA_TYPE_LAYER_NONDISTRIBUTABLE MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP
        MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD MEDIA_TYPE_LAYER_ZSTD Platform RootFS
        SUPPORTED_DIGEST_ALGORITHMS convert_layer_info decode_config decode_index
        decode_layer_info decode_manifest encode parse_digest
        """
    ),
    "containers_image_proxy.events": _names(
        """
        BlobFinished BlobProgress BlobRetrying BlobStarted PullEvent PullResult
        PullStarted blob_progress
        """
    ),
}


@pytest.mark.parametrize(
    ("module", "name"), [(module, name) for module, names in PUBLIC.items() for name in names]
)
def test_public_name_is_importable_where_it_was(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name)


def test_package_all_lists_exactly_the_public_names() -> None:
    assert sorted(containers_image_proxy.__all__) == sorted(PUBLIC["containers_image_proxy"])
    assert set(PUBLIC["containers_image_proxy"]) <= set(dir(containers_image_proxy))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'AsyncImageProxi'"):
        # The ignore is needed, and mypy (warn_unused_ignores) checks that it is: type
        # checkers must not see the lazy loader, or they would accept any name.
        _ = containers_image_proxy.AsyncImageProxi  # type: ignore[attr-defined]


def test_the_blocking_api_does_not_import_asyncio() -> None:
    # Start-up time of every blocking program and command: asyncio costs ~20 ms.
    code = (
        "import sys\n"
        "from containers_image_proxy import ImageProxy, pull, unpack, stream_layers\n"
        "import containers_image_proxy.cli.main\n"
        "assert 'asyncio' not in sys.modules, 'asyncio imported'\n"
        "from containers_image_proxy import AsyncImageProxy, unpack_async\n"
        "assert 'asyncio' in sys.modules\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in the package, outside the command line's own."""
    found: dict[str, type[BaseException]] = {}
    package = containers_image_proxy.__path__
    for info in pkgutil.walk_packages(package, "containers_image_proxy."):
        if info.name.split(".")[1] in ("cli", "__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("containers_image_proxy")
                # The unpack's private control flow, never raised to a caller: the stop
                # signal, and the reader thread's "the writer went away".
                and value.__name__ not in ("Stopped", "_Closed")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_exception_lives_in_errors() -> None:
    found = _exception_classes()
    assert "containers_image_proxy.errors.LayoutError" in found
    assert [name for name in found if not name.startswith("containers_image_proxy.errors.")] == []


def test_the_tree_in_the_errors_docstring_is_true() -> None:
    """Each class drawn under another derives from it, and every error is drawn."""
    assert errors.__doc__ is not None
    drawn: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"(\s*)(?:[│ ]*[├└]── )?([A-Z]\w+Error)\b", line)
        if match and ("──" in line or line.strip().startswith("ImageProxyError")):
            drawn.append((line.index(match[2]), match[2]))
    parents: dict[int, str] = {}
    for depth, name in drawn:
        parents[depth] = name
        parent = max((d for d in parents if d < depth), default=None)
        if parent is not None:
            assert issubclass(getattr(errors, name), getattr(errors, parents[parent])), name
    defined = {cls.__name__ for cls in _exception_classes().values()}
    assert sorted(defined) == sorted(name for _, name in drawn)


def test_image_flavours_refuse_the_other_statement(oci_image: BuiltImage) -> None:
    with ImageProxy() as proxy:
        image = proxy.open_image(oci_image.ref)

        async def enter() -> None:
            async with image:
                pass

        with pytest.raises(TypeError, match="ImageProxy is closed with 'with'"):
            asyncio.run(enter())
        with image:
            assert not image.closed
        assert image.closed

    async def main() -> None:
        async with AsyncImageProxy() as proxy:
            image = await proxy.open_image(oci_image.ref)
            with pytest.raises(TypeError, match="AsyncImageProxy is closed with 'async with'"):
                with image:
                    pass
            async with image:
                assert not image.closed
            assert image.closed

    asyncio.run(main())
