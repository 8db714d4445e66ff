"""AsyncImageProxy: the asyncio client of skopeo's image proxy.

Written once for asyncio in ``_async/``; ``_sync/`` holds the blocking twin that
``tools/gen_sync.py`` generates from it (``await`` removed, ``Async`` names
replaced), and a check fails when the two drift apart. Protocol decisions are
``_protocol``'s; this module starts and stops the proxy, opens images and turns
each call into a request on the :class:`~.channel.AsyncChannel`.
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from types import TracebackType
from typing import Any

from .. import _protocol as proto
from .._async_backend import AsyncBackend as Backend
from .._command import OPTION_FIELDS, auth_file_contents, build_command
from .._fd import close_all, prepare_pipe
from .._image import OpenedImage, image_handle, is_closed_on, mark_closed
from .._process import ChildProcess, socket_pair
from .._reference import registry_host
from .._trust import PolicyGuard
from ..config import ImageProxyConfig
from ..errors import (
    ClosedError,
    ImageProxyError,
    InvalidReferenceError,
    ProxyExitedError,
    ProxyFailedError,
    RequestError,
    VerificationError,
)
from ..oci import (
    ConvertedLayerInfo,
    Descriptor,
    Digest,
    ImageConfiguration,
    ImageManifest,
    convert_layer_info,
    decode_config,
    decode_layer_info,
    decode_manifest,
    parse_digest,
)
from .blob import AsyncBlob, AsyncRawBlob
from .channel import AsyncChannel
from .image import AsyncOpenedImage

# The blob classes are imported from here too (they are what the proxy returns).
__all__ = ["AsyncBlob", "AsyncImageProxy", "AsyncRawBlob", "stop_now", "usable"]

_log = logging.getLogger("containers_image_proxy")

#: Seconds a proxy asked to shut down has to exit before it is stopped.
_SHUTDOWN_WAIT = 5.0
#: Seconds between SIGTERM and SIGKILL when a proxy is stopped at once.
_KILL_GRACE = 2.0


class AsyncImageProxy:
    """A skopeo image proxy child process and the connection to it.

    ``async with AsyncImageProxy(config) as proxy:`` starts skopeo, checks its
    protocol version and shuts it down at the end. One proxy may serve many tasks
    at once; requests are answered in order while blobs stream in parallel.
    """

    def __init__(self, config: ImageProxyConfig | None = None) -> None:
        """Prepare a proxy for ``config``; nothing starts before :meth:`open`.

        Raises:
            ConfigurationError: the configuration is invalid.
        """
        self.config = config or ImageProxyConfig()
        self._command = build_command(self.config)
        self._channel: AsyncChannel | None = None
        self._child: ChildProcess | None = None
        self._version = proto.ProtocolVersion(0, 0, 0)
        self._closed = False
        self._images: weakref.WeakSet[OpenedImage] = weakref.WeakSet()
        self._policy_guard: PolicyGuard | None = None
        #: The child's CONTAINERS_STORAGE_CONF (it inherits this process's environment).
        self._storage_conf: str | None = None

    @property
    def protocol_version(self) -> str:
        """The protocol version the proxy answered to Initialize, e.g. ``"0.2.8"``."""
        self._live()
        return str(self._version)

    @property
    def pid(self) -> int:
        """The process id of the skopeo child."""
        self._live()
        assert self._child is not None
        return self._child.pid

    def supports(self, method: str) -> bool:
        """Return whether the running proxy has protocol ``method`` (e.g. ``"GetRawBlob"``).

        Raises:
            ClosedError: the proxy is not open.
        """
        self._live()
        return proto.supports(method, self._version)

    def _spawn(self) -> tuple[socket.socket, ChildProcess]:
        ours, theirs = socket_pair()
        try:
            with theirs:
                child = ChildProcess(self._command, theirs)
        except BaseException:
            ours.close()
            raise
        Backend.prepare_socket(ours)
        return ours, child

    async def open(self) -> AsyncImageProxy:
        """Start skopeo and initialize the protocol; return the proxy itself.

        Raises:
            ClosedError: the proxy was closed before.
            SpawnError: the skopeo command cannot be started.
            UnsupportedOptionError: the installed skopeo lacks an option the configuration asks for.
            ProxyTooOldError: the proxy speaks a protocol older than 0.2.3.
            ProxyExitedError: skopeo exited during the start.
        """
        if self._closed:
            raise ClosedError("this proxy was closed; create a new one")
        if self._channel is not None:
            return self
        self._storage_conf = os.environ.get(proto.STORAGE_CONF_ENV)
        sock, child = await Backend.run_blocking(self._spawn)
        channel = AsyncChannel(sock, child, self.config.stall_timeout, self.config.probe_interval)
        try:
            reply = await channel.call("Initialize")
            version = proto.ProtocolVersion.parse(reply.value)
            proto.check_version(version)
        except BaseException as exc:
            await Backend.run_blocking(child.stop, 1.0)
            sock.close()
            child.close_private_files()
            if isinstance(exc, ProxyExitedError):
                unsupported = proto.startup_error(exc, OPTION_FIELDS)
                if unsupported is not None:
                    raise unsupported from exc
            raise
        _log.debug("skopeo pid=%d speaks protocol %s", child.pid, version)
        self._version = version
        self._channel = channel
        self._child = child
        return self

    async def __aenter__(self) -> AsyncImageProxy:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.finalize()
            return
        if issubclass(exc_type, KeyboardInterrupt):
            # Interrupted: no orderly shutdown, which could wait on a busy proxy.
            await Backend.run_blocking(stop_now, self)
        try:
            await self.finalize()
        except ImageProxyError as error:
            _log.debug("closing the proxy after an error: %s", error)

    def _live(self) -> AsyncChannel:
        if self._channel is None:
            if self._closed:
                raise ClosedError("the proxy is closed")
            raise ClosedError("the proxy is not open: use it as a context manager or call open()")
        return self._channel

    def _handle(self, image: OpenedImage) -> int:
        if not isinstance(image, OpenedImage):
            raise TypeError(f"expected an OpenedImage, got {type(image).__name__}")
        self._live()
        return image_handle(image, self)

    async def _open(self, method: str, reference: str) -> OpenedImage | None:
        if not isinstance(reference, str):
            raise TypeError(f"image reference must be a str, got {type(reference).__name__}")
        if not reference:
            raise InvalidReferenceError(method, "image reference is empty")
        channel = self._live()
        proto.require(method, self._version)
        optional = method == "OpenImageOptional"
        if not proto.enforces_policy(self._version):
            # Fail closed: this proxy would open the image whatever the policy says.
            if self._policy_guard is None:
                self._policy_guard = await Backend.run_blocking(PolicyGuard, self.config)
            await Backend.run_blocking(self._policy_guard.check, reference, str(self._version))
        child = self._child
        assert child is not None
        async with channel.lock:
            credentials = child.credentials
            host = registry_host(reference)
            if credentials is not None and host is not None:
                child.set_registry_auth(auth_file_contents(host, *credentials))
            await channel.send(method, [reference])
            try:
                reply = await channel.receive(method)
            except RequestError as exc:
                failure = proto.open_error(reference, exc, self._storage_conf)
                if optional and proto.is_storage_missing(reference, failure):
                    return None
                raise failure from None
        handle = proto.image_handle(method, reply.value, optional=optional)
        if handle == 0:
            return None
        image = AsyncOpenedImage(self, handle, reference)
        self._images.add(image)
        return image

    async def open_image(self, reference: str) -> OpenedImage:
        """Open an image, e.g. ``"docker://quay.io/fedora/fedora:latest"`` or ``"oci:DIR:TAG"``.

        Raises:
            InvalidReferenceError: the reference is malformed or empty.
            ImageNotFoundError: the source has no such image.
            PolicyRejectedError: the signature policy refused the image.
            PolicyNotEnforcedError: a policy applies, and this proxy would not enforce it.
            ConfigurationError: the signature policy file cannot be read (before 0.2.6).
            RequestError: the proxy failed otherwise (its subclasses tell why).
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        image = await self._open("OpenImage", reference)
        assert image is not None
        return image

    async def open_image_optional(self, reference: str) -> OpenedImage | None:
        """Open an image, or return None if it does not exist (protocol 0.2.4+).

        Raises:
            ProxyTooOldError: the proxy speaks a protocol older than 0.2.4.
            RequestError: as :meth:`open_image`, a missing image aside.
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        return await self._open("OpenImageOptional", reference)

    async def close_image(self, image: OpenedImage) -> None:
        """Close an image; closing it twice is harmless.

        Raises:
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        if is_closed_on(image, self):
            return
        handle = self._handle(image)
        mark_closed(image)
        self._images.discard(image)
        await self._live().call("CloseImage", [handle])

    async def _fetch_piped(self, method: str, image: OpenedImage) -> tuple[Any, bytes]:
        handle = self._handle(image)
        proto.require(method, self._version)
        channel = self._live()
        async with channel.lock:
            await channel.send(method, [handle])
            reply = await channel.receive(method)
            return reply.value, await channel.read_piped(method, reply)

    async def fetch_manifest_raw_oci(self, image: OpenedImage) -> tuple[Digest, bytes]:
        """Return the manifest converted to OCI, and the digest of the original manifest.

        Raises:
            RequestError: the proxy could not fetch it.
            StallTimeoutError: the manifest stopped arriving.
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        value, data = await self._fetch_piped("GetManifest", image)
        return proto.manifest_digest(value), data

    async def fetch_manifest(self, image: OpenedImage) -> tuple[Digest, ImageManifest]:
        """Return the manifest, decoded, and the digest of the original manifest.

        Raises:
            InvalidDocumentError: the manifest is not a valid image manifest.
            RequestError: as :meth:`fetch_manifest_raw_oci`.
        """
        digest, data = await self.fetch_manifest_raw_oci(image)
        return digest, decode_manifest(data)

    async def fetch_config_raw(self, image: OpenedImage) -> bytes:
        """Return the full image configuration as OCI JSON bytes.

        Raises:
            RequestError: the proxy could not fetch it.
            StallTimeoutError: the configuration stopped arriving.
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        return (await self._fetch_piped("GetFullConfig", image))[1]

    async def fetch_config(self, image: OpenedImage) -> ImageConfiguration:
        """Return the full image configuration, decoded.

        Raises:
            InvalidDocumentError: the configuration is not a valid image configuration.
            RequestError: as :meth:`fetch_config_raw`.
        """
        return decode_config(await self.fetch_config_raw(image))

    async def get_blob(self, image: OpenedImage, digest: Digest | str, size: int) -> AsyncBlob:
        """Stream a blob; the proxy checks that it has ``size`` bytes and ``digest``.

        Raises:
            VerificationError: ``size`` differs from the size the source reports.
            InvalidDigestError: ``digest`` is malformed.
            ValueError: ``size`` is out of range (TypeError: not an int).
            RequestError: the proxy refused the blob (ImageNotFoundError: no such blob).
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        handle = self._handle(image)
        digest = parse_digest(digest)
        size = proto.check_size_argument(size)
        channel = self._live()
        reply = await channel.call("GetBlob", [handle, str(digest), size])
        (pipe,) = reply.fds
        try:
            prepare_pipe(pipe, large=True)
            actual = proto.blob_size("GetBlob", reply.value)
        except BaseException:
            pipe.close()
            raise
        blob = AsyncBlob(
            channel,
            pipe,
            reply.pipeid,
            proto.Transfer(digest, size, verify=False),
            known_size=actual != -1,
        )
        if actual not in (-1, size):
            await blob.aclose()
            raise VerificationError(
                f"blob {digest}: asked for {size} bytes, the source has {actual}"
            )
        return blob

    async def get_descriptor(self, image: OpenedImage, descriptor: Descriptor) -> AsyncBlob:
        """Stream the blob a descriptor names.

        Raises:
            RequestError: as :meth:`get_blob`, whose errors it raises.
        """
        return await self.get_blob(image, descriptor.digest, descriptor.size)

    async def get_raw_blob(
        self,
        image: OpenedImage,
        digest: Digest | str,
        *,
        size: int | None = None,
        verify: bool = True,
    ) -> AsyncRawBlob:
        """Stream a blob without the proxy's checks (protocol 0.2.8+).

        Digest and size are verified here while the data streams, unless ``verify``
        is false. ``size``, when given, must match what the source reports.

        Raises:
            ProxyTooOldError: the proxy speaks a protocol older than 0.2.8.
            VerificationError: ``size`` differs from the size the source reports.
            InvalidDigestError: ``digest`` is malformed.
            RequestError: the proxy refused the blob.
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        handle = self._handle(image)
        digest = parse_digest(digest)
        if size is not None:
            size = proto.check_size_argument(size)
        proto.require("GetRawBlob", self._version)
        reply = await self._live().call("GetRawBlob", [handle, str(digest)])
        data, errors = reply.fds
        try:
            prepare_pipe(data, large=True)
            prepare_pipe(errors)
            actual = proto.blob_size("GetRawBlob", reply.value)
            if size is not None and actual not in (-1, size):
                raise VerificationError(
                    f"blob {digest}: asked for {size} bytes, the source has {actual}"
                )
        except BaseException:
            close_all(reply.fds)
            raise
        expected = actual if actual != -1 else size
        transfer = proto.Transfer(digest, expected if verify else None, verify=verify)
        return AsyncRawBlob((data, errors), transfer, self.config.stall_timeout)

    async def get_layer_info(self, image: OpenedImage) -> list[ConvertedLayerInfo] | None:
        """Return the layer digests, sizes and media types as the proxy would deliver them.

        Piped on protocol 0.2.7+, inline on 0.2.5 and 0.2.6; None on older proxies.

        Raises:
            ProtocolError: the inline answer (0.2.5, 0.2.6) overflows the packet limit.
            RequestError: the proxy could not tell.
            ClosedError: the proxy or the image is closed, or the image is another proxy's.
            ProxyExitedError: skopeo exited.
        """
        if proto.supports("GetLayerInfoPiped", self._version):
            return decode_layer_info((await self._fetch_piped("GetLayerInfoPiped", image))[1])
        if not proto.supports("GetLayerInfo", self._version):
            self._handle(image)
            return None
        reply = await self._live().call("GetLayerInfo", [self._handle(image)])
        return convert_layer_info(reply.value)

    async def finalize(self) -> None:
        """Shut the proxy down and wait for skopeo to exit; raise if it failed.

        Calling it again, or on a proxy that never opened, does nothing.

        Raises:
            ProxyFailedError: skopeo exited with a failure status.
        """
        channel, self._channel = self._channel, None
        self._closed = True
        for image in list(self._images):
            mark_closed(image)
        if channel is None:
            return
        channel.break_with(ClosedError("the proxy is closed"))
        child = channel.child
        try:
            try:
                await Backend.send(channel.sock, proto.encode_request("Shutdown"))
            except OSError:
                pass
            returncode = await Backend.run_blocking(child.wait, _SHUTDOWN_WAIT)
            if returncode is None:
                # Busy with a request that does not end (a stalled registry): the
                # proxy cannot read Shutdown, so it is stopped; that is not its failure.
                _log.warning("skopeo pid=%d did not shut down; terminating it", child.pid)
                await Backend.run_blocking(child.stop, 1.0)
                return
        finally:
            channel.sock.close()
            child.close_private_files()
        if returncode != 0:
            raise ProxyFailedError(returncode, await Backend.run_blocking(child.stderr_tail, 1.0))
        _log.debug("skopeo pid=%d exited", child.pid)

    async def aclose(self) -> None:
        """Shut the proxy down, as :meth:`finalize` does.

        Raises:
            ProxyFailedError: skopeo exited with a failure status.
        """
        await self.finalize()

    def __del__(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            # Without its socket the proxy exits on its own; the reaper thread waits for it.
            channel.sock.close()

    def __repr__(self) -> str:
        if self._channel is None:
            return f"<{type(self).__name__} {'closed' if self._closed else 'not open'}>"
        return f"<{type(self).__name__} pid={self.pid} protocol={self._version}>"


def usable(proxy: AsyncImageProxy) -> bool:
    """Return whether ``proxy`` is open and can still serve requests."""
    return proxy._channel is not None and proxy._channel.failure is None


def stop_now(proxy: AsyncImageProxy) -> None:
    """Stop the skopeo of ``proxy`` now (an interrupt, an aborted pull); blocks until it is gone.

    Nothing more is sent to it: what is waiting on it fails soon, with the proxy's
    exit. Safe from any thread; :meth:`AsyncImageProxy.finalize` still releases the rest.
    """
    channel = proxy._channel
    if channel is None:
        return
    channel.break_with(ClosedError("the proxy was stopped"))
    channel.child.stop(_KILL_GRACE)
