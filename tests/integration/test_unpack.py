"""Unpacking images into root filesystems: compared with umoci, and attacked.

Images are built here (tests/support/hostile_layers.py) and unpacked through the real skopeo.
Every hostile layer must be refused with a typed error or contained inside ``dest``,
while a sentinel directory next to ``dest`` stays untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containers_image_proxy import (
    AsyncImageProxy,
    Blob,
    BlobVerificationError,
    ClosedError,
    CompressionMismatchError,
    Descriptor,
    Digest,
    ImageNotFoundError,
    ImageProxy,
    ImageProxyError,
    InvalidDocumentError,
    LayerFormatError,
    LayerResult,
    LayerStream,
    LimitExceededError,
    OpenedImage,
    RootfsWriter,
    TarTrailerError,
    UnpackError,
    UnpackLimits,
    UnsafeLayerError,
    VerificationError,
    detect_compression,
    open_layer,
    unpack,
    unpack_async,
)
from containers_image_proxy._unpack import compression, pipeline
from containers_image_proxy._unpack.tar import LayerTarInfo as _Info
from tests.support.hostile_layers import (
    Entry,
    TarLayer,
    build,
    compress,
    continued_tar,
    directory,
    edit_config,
    file,
    hardlink,
    layer,
    opaque,
    raw_layer,
    rich_layers,
    symlink,
    tar_bytes,
    whiteout,
    without_end,
)
from tests.support.images import (
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    BuiltImage,
    build_docker_archive,
)
from tests.support.treediff import Snapshot, diff, snapshot

pytestmark = pytest.mark.usefixtures("no_leaks")

IS_ROOT = os.geteuid() == 0
#: Directories that layers only imply (no tar entry): their mtimes are "now".
IMPLIED = frozenset({"a b", "opt", "var", "var/cache", "opt/rewritten"})
#: umoci --rootless keeps ownership in this xattr; we do not.
ROOTLESS_XATTR = "user.rootlesscontainers"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def umoci() -> str:
    path = shutil.which("umoci")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("umoci is required in CI (apt-get install umoci)")
        pytest.skip("umoci is not installed (set CI=1 to make this a failure)")
    return path


@pytest.fixture(scope="module")
def proxy(skopeo: str) -> Iterator[ImageProxy]:
    """One proxy for the many small unpacks of this module."""
    with ImageProxy() as p:
        yield p


@pytest.fixture(scope="session")
def rich_image(images_root: Path) -> BuiltImage:
    return build(images_root / "rich", *rich_layers())


def umoci_unpack(umoci: str, layout: Path, tag: str, bundle: Path, *, rootless: bool) -> Path:
    command = [umoci, "unpack", *(["--rootless"] if rootless else [])]
    subprocess.run(
        [*command, "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return bundle / "rootfs"


def without(snap: Snapshot, xattr: str) -> Snapshot:
    nodes = {
        path: type(node)(
            **{**node.__dict__, "xattrs": tuple(x for x in node.xattrs if x[0] != xattr)}
        )
        for path, node in snap.nodes.items()
    }
    return Snapshot(nodes, snap.links)


def assert_same(expected: Path, actual: Path, **options: object) -> None:
    lines = diff(without(snapshot(expected), ROOTLESS_XATTR), snapshot(actual), **options)  # type: ignore[arg-type]
    assert lines == []


# --------------------------------------------------------------------------- umoci


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_unpack_matches_umoci(
    umoci: str, rich_image: BuiltImage, tmp_path: Path, rootless: bool
) -> None:
    if not rootless and not IS_ROOT:
        pytest.skip("needs root")
    reference = rich_image.ref
    theirs = umoci_unpack(umoci, rich_image.path, "latest", tmp_path / "bundle", rootless=rootless)
    result = unpack(reference, tmp_path / "ours", rootless=rootless)
    # Differences on purpose: directories without an entry get "now" on both sides,
    # and opt/old keeps the mtime its last entry declared (umoci: the time a later
    # layer changed its children).
    assert_same(theirs, tmp_path / "ours", ownership=not rootless, ignore=IMPLIED | {"opt/old"})
    ours = snapshot(tmp_path / "ours")
    assert ours.nodes["opt/old"].mtime_ns == 1_704_067_200 * 10**9
    assert [layer.compression for layer in result.layers] == ["gzip", "none", "gzip"]
    assert result.rootless is rootless
    assert result.warnings == ()
    assert result.entries == sum(layer.entries for layer in result.layers) > 40
    assert result.config.rootfs.diff_ids == tuple(layer.diff_id for layer in result.layers)
    # The rules, spelled out (umoci agrees on all of them).
    root = tmp_path / "ours"
    assert not (root / "etc/shadow").exists()  # whiteout
    assert (root / "var/cache/app").read_bytes().startswith(b"a file")  # whited-out dir, re-added
    assert sorted(os.listdir(root / "opt/old")) == ["new"]  # opaque marker after the new file
    assert (root / "opt/turns-dir/inside").exists() and (root / "opt/turns-file").is_file()
    assert stat.S_IMODE((root / "attrs").stat().st_mode) == 0o751  # dir over dir: attributes
    assert (root / "attrs/inner").exists()
    assert (
        os.readlink(root / "bin") == "usr/bin"
        and os.readlink(root / "usr/bin/sh") == "/bin/busybox"
    )
    assert (root / "usr/bin/tool-link").read_bytes().startswith(b"#!/bin/sh")  # link broken
    assert frozenset({"etc/os-release", "etc/os-release-link"}) in ours.links
    assert stat.S_IMODE((root / "usr/bin/tool-link").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert os.getxattr(root / "caps", "user.comment") == b"hello \xff\x00 world"
    assert stat.S_ISFIFO(os.lstat(root / "dev-fifo").st_mode)
    assert (root / "opt/rewritten/kept").exists()  # a whiteout never hides its own layer
    if not rootless:
        assert os.stat(root / "home/user/.profile").st_uid == 1000


def test_zstd_and_uncompressed_layers_match_umoci(
    umoci: str, rich_image: BuiltImage, tmp_path: Path
) -> None:
    # umoci 0.4.7 (Debian 12) refuses zstd layers: it unpacks the gzip twin.
    image = build(tmp_path / "zstd", *rich_layers(("zstd", "none", "zstd")))
    assert image.layers[0][2] == OCI_LAYER_ZSTD
    assert image.diff_ids == rich_image.diff_ids
    theirs = umoci_unpack(umoci, rich_image.path, "latest", tmp_path / "bundle", rootless=True)
    result = unpack(image.ref, tmp_path / "ours", rootless=True)
    assert [layer.compression for layer in result.layers] == ["zstd", "none", "zstd"]
    assert_same(theirs, tmp_path / "ours", ownership=False, ignore=IMPLIED | {"opt/old"})


def test_docker_archive_matches_umoci(
    umoci: str, skopeo: str, rich_image: BuiltImage, tmp_path: Path
) -> None:
    archive = build_docker_archive(tmp_path / "rich.tar", rich_layers(), tag="example.com/rich:1")
    # skopeo labels the archive's plain tar layers as gzip: the magic bytes win.
    assert {media_type for _, _, media_type, _ in archive.layers} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    theirs = umoci_unpack(umoci, rich_image.path, "latest", tmp_path / "bundle", rootless=True)
    result = unpack(archive.ref, tmp_path / "ours", rootless=True)
    assert [layer.compression for layer in result.layers] == ["none"] * 3
    assert_same(theirs, tmp_path / "ours", ownership=False, ignore=IMPLIED | {"opt/old"})


def test_sparse_files_match_umoci(umoci: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "sparse", "wb") as f:
        f.truncate(8 << 20)
        for offset in (0, 3 << 20, (8 << 20) - 5):
            f.seek(offset)
            f.write(b"data!")
    (source / "plain").write_bytes(b"plain\n")
    images = {}
    for fmt in ("gnu", "posix"):
        archive = tmp_path / f"{fmt}.tar"
        subprocess.run(
            ["tar", "--sparse", f"--format={fmt}", "--mtime=@0", "--owner=0", "--group=0",
             "-C", str(source), "-cf", str(archive), "sparse", "plain"],
            check=True,
        )  # fmt: skip
        images[fmt] = build(tmp_path / fmt, raw_layer(archive.read_bytes(), "gzip"))
    # umoci 0.4.7 refuses GNU sparse entries (type 'S') and expands PAX sparse ones.
    with pytest.raises(subprocess.CalledProcessError):
        umoci_unpack(umoci, images["gnu"].path, "latest", tmp_path / "bgnu", rootless=True)
    theirs = umoci_unpack(umoci, images["posix"].path, "latest", tmp_path / "b", rootless=True)
    for fmt, image in images.items():
        unpack(image.ref, tmp_path / fmt / "ours", rootless=True)
        assert_same(theirs, tmp_path / fmt / "ours", ownership=False)
        written = tmp_path / fmt / "ours" / "sparse"
        assert written.read_bytes() == (source / "sparse").read_bytes()
        assert os.stat(written).st_blocks * 512 < 1 << 20  # the holes stayed holes


def test_many_directories_match_umoci(umoci: str, tmp_path: Path) -> None:
    """More directories than the descriptor cache holds, links and whiteouts across them."""
    base = [
        file(f"t{n // 20}/d{n}/f{i}", f"{n}-{i}".encode()) for n in range(400) for i in range(3)
    ]
    middle = [
        *[
            hardlink(f"t{n // 20}/d{n}/link", f"t{(n * 7) % 400 // 20}/d{(n * 7) % 400}/f0")
            for n in range(0, 400, 3)
        ],
        *[whiteout(f"t{n // 20}/d{n}") for n in range(1, 400, 9)],
        *[opaque(f"t{n // 20}/d{n}") for n in range(2, 400, 11)],
        *[file(f"t{n // 20}/d{n}/new", b"new") for n in range(2, 400, 11)],
    ]
    top = [whiteout(f"t{n}") for n in range(0, 20, 6)] + [directory("t1", mode=0o700)]
    image = build(
        tmp_path / "img",
        layer(*base),
        layer(*middle, compression="none"),
        layer(*top, compression="zstd"),
    )
    gzip_twin = build(
        tmp_path / "twin", layer(*base), layer(*middle, compression="none"), layer(*top)
    )
    theirs = umoci_unpack(umoci, gzip_twin.path, "latest", tmp_path / "bundle", rootless=True)
    unpack(image.ref, tmp_path / "ours", rootless=True)
    ours = snapshot(tmp_path / "ours")
    implied = frozenset(p for p in ours.nodes if p.count("/") <= 1 and p != "t1")
    assert_same(theirs, tmp_path / "ours", ownership=False, ignore=implied)
    assert len(ours.links) > 50


# --------------------------------------------------------------------------- asyncio


async def test_unpack_async_without_and_with_a_proxy(
    skopeo: str, rich_image: BuiltImage, tmp_path: Path
) -> None:
    reference = rich_image.ref
    seen: list[LayerResult] = []
    first = await unpack_async(reference, tmp_path / "a", progress=seen.append)
    assert len(seen) == 3 and first.layers == tuple(seen)
    async with AsyncImageProxy() as proxy:
        second = await unpack_async(reference, tmp_path / "b", proxy=proxy)
        assert proxy.protocol_version  # still usable
    assert first.entries == second.entries
    assert_same(tmp_path / "a", tmp_path / "b", ignore=IMPLIED)


async def test_unpack_async_cancelled(skopeo: str, tmp_path: Path) -> None:
    big = build(
        tmp_path / "big",
        *[layer(*[file(f"d{n}/f{i}", b"x" * 100) for i in range(4000)]) for n in range(6)],
    )
    for with_proxy in (False, True):
        dest = tmp_path / f"dest{with_proxy}"
        async with AsyncImageProxy() as proxy:
            task = asyncio.ensure_future(
                unpack_async(big.ref, dest, proxy=proxy if with_proxy else None)
            )
            while not dest.exists() or len(os.listdir(dest)) < 2:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not dest.exists()
        assert not _reader_threads()


async def test_unpack_async_progress_runs_on_the_loop(skopeo: str, tmp_path: Path) -> None:
    """With a proxy, progress is called on the event loop's thread, layer by layer;
    what it raises stops the unpack and empties the destination."""
    image = build(tmp_path / "img", layer(file("a")), layer(file("b")), layer(file("c")))
    threads: list[threading.Thread] = []

    def progress(result: LayerResult) -> None:
        threads.append(threading.current_thread())
        if len(threads) == 2:
            raise RuntimeError("enough")

    async with AsyncImageProxy() as proxy:
        with pytest.raises(RuntimeError, match="enough"):
            await unpack_async(image.ref, tmp_path / "dest", proxy=proxy, progress=progress)
        assert proxy.protocol_version  # still usable
    assert threads == [threading.main_thread()] * 2
    assert not (tmp_path / "dest").exists()
    assert not _reader_threads()


async def test_unpack_async_errors_clean_up(skopeo: str, tmp_path: Path) -> None:
    image = build(tmp_path / "img", layer(file("ok"), file("../escape")))
    corrupt = build(
        tmp_path / "corrupt",
        layer(file("ok")),
        TarLayer({}, "gzip", entries=(file("a"),), stored=compress(tar_bytes([file("b")]), "gzip")),
    )
    async with AsyncImageProxy() as proxy:
        with pytest.raises(UnsafeLayerError):
            await unpack_async(image.ref, tmp_path / "dest", proxy=proxy)
        with pytest.raises(VerificationError):  # met by the reader thread
            await unpack_async(corrupt.ref, tmp_path / "dest", proxy=proxy)
        assert proxy.protocol_version  # still usable
    assert not (tmp_path / "dest").exists()
    assert not _reader_threads()


# --------------------------------------------------------------------------- pipeline


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "unpack-reader"]


class _RecordingProxy(ImageProxy):
    """A proxy that notes which layer blobs were opened, and when."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []
        self.opened_event = threading.Condition()

    def get_descriptor(self, image: OpenedImage, descriptor: Descriptor) -> Blob:
        with self.opened_event:
            self.opened.append(str(descriptor.digest))
            self.opened_event.notify_all()
        return super().get_descriptor(image, descriptor)


def test_next_layer_is_fetched_while_one_is_applied(skopeo: str, tmp_path: Path) -> None:
    image = build(
        tmp_path / "img",
        *[layer(*[file(f"l{n}/f{i}", b"x" * 300) for i in range(50)]) for n in range(3)],
    )
    digests = [digest for digest, _, _, _ in image.layers]
    waited: list[bool] = []
    proxy = _RecordingProxy()

    def progress(result: LayerResult) -> None:
        # Layer n is applied: the reader has (or soon has) opened layer n + 1 already,
        # without waiting for this callback to return.
        index = len(waited)
        if index + 1 < len(digests):
            with proxy.opened_event:
                waited.append(
                    proxy.opened_event.wait_for(lambda: len(proxy.opened) > index + 1, 10)
                )

    with proxy:
        result = unpack(image.ref, tmp_path / "dest", proxy=proxy, progress=progress)
    assert waited == [True, True]
    assert proxy.opened == digests
    assert [layer.diff_id for layer in result.layers] == list(image.diff_ids)
    assert not _reader_threads()


def test_reader_failure_in_a_later_layer(proxy: ImageProxy, tmp_path: Path) -> None:
    """A layer that fails verification stops the unpack when the writer reaches it,
    even though the reader met the failure while an earlier layer was being applied."""
    good = layer(*[file(f"f{i}", b"y" * 1000) for i in range(200)])
    bad = TarLayer(
        {}, "gzip", entries=(file("a"),), stored=compress(tar_bytes([file("b")]), "gzip")
    )
    mislabelled = layer(file("c"), compression="gzip", label=OCI_LAYER_ZSTD)
    for index, (broken, error) in enumerate(
        [(bad, VerificationError), (mislabelled, CompressionMismatchError)]
    ):
        image = build(tmp_path / f"img{index}", good, broken, layer(file("z")))
        applied: list[LayerResult] = []
        with pytest.raises(error):
            unpack(image.ref, tmp_path / f"dest{index}", proxy=proxy, progress=applied.append)
        assert len(applied) == 1  # the good layer went through first
        assert not (tmp_path / f"dest{index}").exists()
        assert not _reader_threads()
    # The proxy is still usable: the reader closed what it had open.
    assert proxy.fetch_manifest(proxy.open_image(image.ref))[1].layers


def test_writer_failure_stops_a_reader_that_is_ahead(proxy: ImageProxy, tmp_path: Path) -> None:
    """The writer fails at the first entry while the reader waits on a full queue."""
    payload = hashlib.shake_256(b"incompressible").digest(1 << 20)
    image = build(
        tmp_path / "img",
        layer(file("../escape"), *[file(f"big{i}", payload) for i in range(40)]),
        layer(*[file(f"more{i}", payload) for i in range(8)]),
    )
    with pytest.raises(UnsafeLayerError):
        unpack(image.ref, tmp_path / "dest", proxy=proxy)
    assert not (tmp_path / "dest").exists()
    assert not _reader_threads()
    with proxy.open_image(image.ref) as opened:  # the proxy is still usable
        assert proxy.fetch_config(opened).rootfs.diff_ids == tuple(image.diff_ids)


class _SlowReader:
    def __init__(self, data: bytes, delay: float) -> None:
        self._file = io.BytesIO(data)
        self._delay = delay

    def read(self, size: int = -1, /) -> bytes:
        time.sleep(self._delay)
        return self._file.read(size)


@pytest.mark.parametrize("slower", ["reader", "writer"])
def test_pipeline_shares_the_hashing(monkeypatch: pytest.MonkeyPatch, slower: str) -> None:
    """Every chunk is hashed once, in order, by the thread that would otherwise wait;
    a corrupt layer fails at its end either way."""
    monkeypatch.setattr(pipeline, "_AHEAD", 256 << 10)
    tars = [tar_bytes([file("f", hashlib.shake_256(b"%d" % n).digest(3 << 20))]) for n in range(3)]
    blobs = {sha256(tar): tar for tar in tars}
    diff_ids = [Digest(sha256(tar)) for tar in tars]
    diff_ids[2] = Digest(sha256(b"something else"))
    layers = [
        (Descriptor(OCI_LAYER_TAR, Digest(sha256(tar)), len(tar)), diff_id)
        for tar, diff_id in zip(tars, diff_ids, strict=True)
    ]
    hashed_by: list[str] = []
    hash_one = pipeline._Chunks._hash_one

    def recording(chunks: pipeline._Chunks) -> bool:
        done = hash_one(chunks)
        if done:
            hashed_by.append(threading.current_thread().name)
        return done

    monkeypatch.setattr(pipeline._Chunks, "_hash_one", recording)

    @contextlib.contextmanager
    def opener(descriptor: Descriptor) -> Iterator[_SlowReader | io.BytesIO]:
        data = blobs[str(descriptor.digest)]
        yield _SlowReader(data, 0.004) if slower == "reader" else io.BytesIO(data)

    with pipeline.LayerReader(opener, layers, None) as reader:
        for index, (tar, diff_id) in enumerate(zip(tars, diff_ids, strict=True)):
            stream = reader.layer(diff_id)
            pieces = []
            try:
                while piece := stream.read(64 << 10):
                    pieces.append(piece)
                    if slower == "writer":
                        time.sleep(0.002)
            except VerificationError:
                assert index == 2
                break
            assert b"".join(pieces) == tar and stream.verified and index < 2
    assert not _reader_threads()
    busy = "MainThread" if slower == "reader" else "unpack-reader"
    assert hashed_by.count(busy) > len(hashed_by) // 2


# --------------------------------------------------------------------------- layer API


def test_open_layer_drains_and_verifies(
    proxy: ImageProxy, rich_image: BuiltImage, tmp_path: Path
) -> None:
    with proxy.open_image(rich_image.ref) as opened:
        _, manifest = proxy.fetch_manifest(opened)
        diff_ids = proxy.fetch_config(opened).rootfs.diff_ids
        tars = [item.tar_bytes() for item in rich_layers()]
        for descriptor, diff_id, tar in zip(manifest.layers, diff_ids, tars, strict=True):
            # The consumer stops after 100 bytes: the rest is drained and verified.
            with open_layer(proxy, opened, descriptor, diff_id) as stream:
                assert stream.read(100) == tar[:100]
            assert stream.verified and stream.bytes_read == len(tar)
        # A wrong diff_id fails at the end of the block, however little was read.
        wrong = sha256(b"something else")
        with pytest.raises(VerificationError, match="diff_id mismatch"):
            with open_layer(proxy, opened, manifest.layers[0], wrong) as stream:
                stream.read(10)
        # A consumer that raises closes the blob early; the proxy stays usable.
        with pytest.raises(KeyError):
            with open_layer(proxy, opened, manifest.layers[1], diff_ids[1]) as stream:
                raise KeyError
        with open_layer(proxy, opened, manifest.layers[1], diff_ids[1]) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                names = [member.name for member in archive]
        assert "opt/old/.wh..wh..opq" in names
        # RootfsWriter applies open_layer streams, the layer-level way to unpack.
        with RootfsWriter(tmp_path / "root", rootless=True) as writer:
            for descriptor, diff_id in zip(manifest.layers, diff_ids, strict=True):
                with open_layer(proxy, opened, descriptor, diff_id) as stream:
                    writer.apply(stream, descriptor=descriptor)
        with pytest.raises(ClosedError):
            writer.apply(io.BytesIO(b""))
    assert (tmp_path / "root/opt/old/new").exists()


def test_open_layer_corrupted_blob(proxy: ImageProxy, tmp_path: Path) -> None:
    from tests.support.images import corrupt_blob

    image = build(tmp_path / "img", layer(file("f", os.urandom(50_000)), compression="none"))
    corrupt_blob(image, 0)
    with proxy.open_image(image.ref) as opened:
        _, manifest = proxy.fetch_manifest(opened)
        with pytest.raises(BlobVerificationError):
            with open_layer(proxy, opened, manifest.layers[0], image.diff_ids[0]) as stream:
                stream.read(10)
    with pytest.raises(VerificationError):
        unpack(image.ref, tmp_path / "dest", proxy=proxy)
    assert not (tmp_path / "dest").exists()


TAR = tar_bytes([file("a", b"hello"), directory("d"), file("d/b", b"x" * 5000)])


@pytest.mark.parametrize(
    ("media_type", "blob", "expected"),
    [
        (OCI_LAYER_TAR, TAR, "none"),
        (OCI_LAYER_GZIP, compress(TAR, "gzip"), "gzip"),
        (OCI_LAYER_ZSTD, compress(TAR, "zstd"), "zstd"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", compress(TAR, "gzip"), "gzip"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", TAR, "none"),  # docker-archive
        ("application/vnd.docker.image.rootfs.diff.tar.zstd", compress(TAR, "zstd"), "zstd"),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", TAR, "none"),
        (OCI_LAYER_GZIP, b"", "none"),  # an empty blob: an empty layer
        (OCI_LAYER_TAR, compress(TAR, "gzip"), CompressionMismatchError),
        (OCI_LAYER_TAR, compress(TAR, "zstd"), CompressionMismatchError),
        (OCI_LAYER_GZIP, compress(TAR, "zstd"), CompressionMismatchError),
        (OCI_LAYER_ZSTD, compress(TAR, "gzip"), CompressionMismatchError),
        (OCI_LAYER_ZSTD, TAR, CompressionMismatchError),
        (OCI_LAYER_GZIP, b"\xfd7zXZ\x00" + bytes(600), CompressionMismatchError),
        (OCI_LAYER_GZIP, b"not a tar at all" * 40, CompressionMismatchError),
        ("application/vnd.oci.image.layer.v1.tar+encrypted", TAR, LayerFormatError),
        ("application/octet-stream", TAR, LayerFormatError),
    ],
)
def test_detect_compression(media_type: str, blob: bytes, expected: object) -> None:
    if isinstance(expected, str):
        assert detect_compression(media_type, blob[:512]) == expected
        tar = b"" if not blob else TAR
        stream = LayerStream(io.BytesIO(blob), media_type, sha256(tar))
        assert stream.compression == expected
        assert stream.read() == tar and stream.verified
    else:
        with pytest.raises(expected):  # type: ignore[call-overload]
            detect_compression(media_type, blob[:512])
        with pytest.raises(expected):  # type: ignore[call-overload]
            LayerStream(io.BytesIO(blob), media_type, sha256(TAR))


@pytest.fixture(params=["isal", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Gzip layers read with ISA-L's inflate (isal) or with zlib's (the fallback)."""
    if request.param == "zlib":
        monkeypatch.setattr(compression, "_inflater", compression._zlib_inflater)
    elif compression._inflater is compression._zlib_inflater:
        pytest.skip("isal is not installed")
    return str(request.param)


def _gzip_with(data: bytes, offset: int, flip: int) -> bytes:
    blob = bytearray(gzip.compress(data, mtime=0))
    blob[offset] ^= flip
    return bytes(blob)


def test_layer_stream_edge_cases(inflater: str) -> None:
    digest = sha256(TAR)
    # Several gzip members, then zero padding: one tar.
    halves = gzip.compress(TAR[:700], mtime=0) + gzip.compress(TAR[700:], mtime=0) + bytes(99)
    assert LayerStream(io.BytesIO(halves), OCI_LAYER_GZIP, digest).read() == TAR
    # Several zstd frames.
    frames = compress(TAR[:1000], "zstd") + compress(TAR[1000:], "zstd")
    assert LayerStream(io.BytesIO(frames), OCI_LAYER_ZSTD, digest).read() == TAR
    # Small reads see every byte once, and the end is verified once.
    stream = LayerStream(io.BytesIO(compress(TAR, "gzip")), OCI_LAYER_GZIP, digest)
    pieces = []
    while piece := stream.read(7):
        pieces.append(piece)
    assert b"".join(pieces) == TAR and stream.read(7) == b""
    buffer = bytearray(10)
    assert stream.readinto(buffer) == 0
    stream.close()
    with pytest.raises(ValueError):
        stream.read(1)
    failures: list[tuple[bytes, str, type[Exception], str]] = [
        (compress(TAR, "gzip") + b"garbage", OCI_LAYER_GZIP, LayerFormatError, "not gzip"),
        (compress(TAR, "gzip")[:-30], OCI_LAYER_GZIP, LayerFormatError, "ends in the middle"),
        # Corrupt data: zlib says so at once, ISA-L reads on and finds the stream short.
        (compress(TAR, "gzip")[:40] + bytes(200), OCI_LAYER_GZIP, LayerFormatError, "invalid|ends"),
        (_gzip_with(TAR, -8, 1), OCI_LAYER_GZIP, LayerFormatError, "invalid"),  # CRC-32
        (_gzip_with(TAR, -1, 1), OCI_LAYER_GZIP, LayerFormatError, "invalid"),  # size
        (_gzip_with(TAR, 2, 7), OCI_LAYER_GZIP, LayerFormatError, "invalid"),  # method
        (compress(TAR, "zstd") + b"garbage!", OCI_LAYER_ZSTD, LayerFormatError, "zstd"),
        (TAR + b"x", OCI_LAYER_TAR, VerificationError, "diff_id mismatch"),
    ]
    for blob, media_type, error, message in failures:
        stream = LayerStream(io.BytesIO(blob), media_type, digest)
        with pytest.raises(error, match=message):
            stream.finish()
        with pytest.raises(error):  # the failure sticks
            stream.read(1)
    with pytest.raises(LimitExceededError) as info:
        LayerStream(io.BytesIO(TAR), OCI_LAYER_TAR, digest, max_bytes=1000).finish()
    assert info.value.limit == "max_total_bytes"
    with pytest.raises(ImageProxyError):
        LayerStream(io.BytesIO(TAR), OCI_LAYER_TAR, "md5:abc")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        UnpackLimits(max_entries=-1)
    with pytest.raises(ValueError, match="max_path_length"):
        UnpackLimits(max_path_length=0)
    assert UnpackLimits(max_total_bytes=None).max_total_bytes is None


# --------------------------------------------------------------------------- semantics


def apply_layers(dest: Path, *layers: bytes, rootless: bool = False, **limits: int) -> RootfsWriter:
    with RootfsWriter(dest, rootless=rootless, limits=UnpackLimits(**limits)) as writer:
        for tar in layers:
            writer.apply(io.BytesIO(tar))
    return writer


def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    lower = tar_bytes(
        [file("d/old"), file("d/sub/old"), file("e/old"), file("f/old"), file("g"), file("h/x")]
    )
    upper = tar_bytes(
        [
            opaque("d"),  # marker first
            file("d/new"),
            file("e/sub/new"),
            opaque("e"),  # marker last: same outcome
            file("f/new"),
            whiteout("f"),  # whiteout after the layer's own file in f
            whiteout("g"),
            whiteout("nothing"),  # hides nothing: fine
            whiteout("g/under-a-file"),
            file("h/.wh..wh.plnk"),  # AUFS metadata: ignored
            whiteout("h/x"),
        ]
    )
    apply_layers(tmp_path / "root", lower, upper)
    root = tmp_path / "root"
    listing = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert listing == {"d", "d/new", "e", "e/sub", "e/sub/new", "f", "f/new", "h"}


def test_entry_kinds_and_attributes(tmp_path: Path) -> None:
    tar = tar_bytes(
        [
            Entry("./", "dir", mode=0o750, mtime=1000),
            file("f", b"data", mode=0o640, uid=12, gid=34, pax={"mtime": "1234.5"}),
            symlink("abs", "/nowhere"),
            symlink("rel", "f"),
            hardlink("h", "f"),
            hardlink("h2", "/f"),  # archive-absolute: the same file
            hardlink("f", "f"),  # itself: nothing to do
            Entry("null", "chr", mode=0o666, device=(1, 3)),
            Entry("blk", "blk", mode=0o600, device=(7, 0)),
            Entry("odd", "file", xattrs={"bogus.name": b"1"}),  # a namespace nobody takes
            Entry("contiguous", "file", pax={"GNU.unknown": "x"}),
            file("./dir/./x", b"normalised"),
        ]
    )
    root = tmp_path / "root"
    writer = apply_layers(root, tar)
    assert (root / "f").read_bytes() == b"data"
    st = os.stat(root / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 1234_500_000_000
    assert os.stat(root / "h").st_ino == st.st_ino == os.stat(root / "h2").st_ino
    assert os.readlink(root / "abs") == "/nowhere" and os.readlink(root / "rel") == "f"
    assert (root / "dir/x").read_bytes() == b"normalised"
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o750 and os.stat(root).st_mtime == 1000
    assert any("bogus.name" in w for w in writer.warnings)
    odd = tarfile.TarInfo("volume-label")
    odd.type = b"V"  # a GNU volume header: not something a root filesystem holds
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as out:
        out.addfile(odd)
    skipped = apply_layers(tmp_path / "odd", buffer.getvalue())
    assert skipped.warnings == ["'volume-label': skipped an entry of unknown tar type b'V'"]
    assert os.listdir(tmp_path / "odd") == []
    if IS_ROOT:
        assert (st.st_uid, st.st_gid) == (12, 34)
        assert os.stat(root / "null").st_rdev == os.makedev(1, 3)
        assert stat.S_ISBLK(os.stat(root / "blk").st_mode)
    rootless = apply_layers(tmp_path / "rootless", tar, rootless=True)
    assert not (tmp_path / "rootless/null").exists()
    assert [w for w in rootless.warnings if "device" in w] == [
        "'null': skipped a character device (not running as root)",
        "'blk': skipped a block device (not running as root)",
    ]


NOT_ROOT_SCRIPT = """
import io, os, sys
from containers_image_proxy import RootfsWriter  # before /root is out of reach
os.setgid(65534)
os.setuid(65534)
with RootfsWriter(sys.argv[1]) as writer:
    for path in sys.argv[2:]:
        writer.apply(open(path, "rb"))
print(writer.rootless, len(writer.warnings))
"""


def test_not_root(tmp_path: Path) -> None:
    """Really not root: read-only directories are still filled and removed."""
    if not IS_ROOT:
        pytest.skip("runs a child as nobody, which needs root")
    layers = [
        tar_bytes(
            [
                directory("ro", mode=0o555),
                file("ro/a", mode=0o444),
                directory("ro/sub", mode=0o500),
                file("ro/sub/x"),
            ]
        ),
        tar_bytes(
            [
                file("ro/b"),
                directory("ro", mode=0o555),
                Entry("null", "chr", device=(1, 3)),
                Entry("p", "fifo"),
            ]
        ),
        tar_bytes(
            [
                whiteout("ro/sub"),
                file("ro/c", uid=5),
                directory("gone/deeper", mode=0o000),
                file("gone/f"),
            ]
        ),
        tar_bytes([whiteout("gone")]),
    ]
    # pytest's tmp_path is private to root: work in a directory nobody can reach.
    with tempfile.TemporaryDirectory(prefix="unpack-nobody-") as name:
        place = Path(name)
        place.chmod(0o755)
        paths = []
        for index, tar in enumerate(layers):
            paths.append(place / f"{index}.tar")
            paths[-1].write_bytes(tar)
        dest = place / "dest"
        dest.mkdir()
        os.chown(dest, 65534, 65534)
        run = subprocess.run(
            [sys.executable, "-c", NOT_ROOT_SCRIPT, str(dest), *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["True", "1"]  # rootless by default; the device skipped
        assert sorted(os.listdir(dest)) == ["p", "ro"]
        assert sorted(os.listdir(dest / "ro")) == ["a", "b", "c"]
        assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555
        assert os.stat(dest / "ro/c").st_uid == 65534


def test_malformed_tars(tmp_path: Path) -> None:
    good = tar_bytes([file("a", b"1" * 600), file("b", b"2")])
    bad_checksum = bytearray(good)
    bad_checksum[1536 + 148 : 1536 + 156] = b"0000000\0"  # the header of "b"
    cases: list[tuple[bytes, type[Exception], str]] = [
        (bytes(bad_checksum), LayerFormatError, "malformed tar header"),
        (good[:900], LayerFormatError, "ends inside the file"),
        (good[:1200], LayerFormatError, "unexpected end of data"),  # in the padding
        (b"x" * 1024, LayerFormatError, "not a tar"),
    ]
    for index, (tar, error, message) in enumerate(cases):
        with pytest.raises(error, match=message):
            apply_layers(tmp_path / str(index), tar)
    # An empty stream is an empty layer; data after the end-of-archive blocks is ignored.
    apply_layers(tmp_path / "empty", b"", good + b"junk after the end")
    assert sorted(os.listdir(tmp_path / "empty")) == ["a", "b"]


def test_tar_trailers(tmp_path: Path) -> None:
    entries = without_end(tar_bytes([file("a", b"1")]))
    header = tar_bytes([file("b")])[:512]
    refused = {
        "one zero block, then an entry": entries + bytes(512) + tar_bytes([file("b")]),
        "one zero block, then junk": entries + bytes(512) + b"junk" + bytes(508),
        "one zero block, then a partial block": entries + bytes(512) + b"x" * 100,
        "a header far after the end": entries + bytes(512 * 30) + header + bytes(1024),
        "a header after the end, zstd-sized chunks": entries + bytes(3 << 20) + header,
    }
    for index, (case, tar) in enumerate(refused.items()):
        with pytest.raises(TarTrailerError) as info:
            apply_layers(tmp_path / f"refused{index}", tar)
        assert info.value.offset >= len(entries) + 512, case
    accepted = {
        "a single zero block at the end": entries + bytes(512),
        "a single zero block and a partial zero block": entries + bytes(512 + 100),
        "junk after the end blocks": entries + bytes(1024) + b"junk" * 300,
        "zero padding to a record": tar_bytes([file("a", b"1")]),
        "no end blocks at all": entries,
    }
    for index, (case, tar) in enumerate(accepted.items()):
        dest = tmp_path / f"accepted{index}"
        apply_layers(dest, tar)
        assert os.listdir(dest) == ["a"], case


def test_umoci_refuses_or_hides_entries_after_a_zero_block(
    umoci: str, skopeo: str, tmp_path: Path
) -> None:
    """Why such layers are refused: tools disagree about what they hold."""
    for blocks in (1, 2):
        tar = continued_tar([file("a")], [file("hidden", b"x")], blocks)
        image = build(tmp_path / f"image{blocks}", raw_layer(tar, "gzip"))
        bundle = tmp_path / f"bundle{blocks}"
        run = subprocess.run(
            [umoci, "unpack", "--image", f"{image.path}:latest", str(bundle)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        with tarfile.open(fileobj=io.BytesIO(tar), ignore_zeros=True) as reader:
            assert reader.getnames() == ["a", "hidden"]  # what tar --ignore-zeros extracts
        if blocks == 1:
            assert run.returncode != 0 and "invalid tar header" in run.stderr
        else:
            assert run.returncode == 0, run.stderr
            assert sorted(os.listdir(bundle / "rootfs")) == ["a"]  # "hidden" is hidden
        with pytest.raises(TarTrailerError):
            unpack(image.ref, tmp_path / f"ours{blocks}")


_HEADER_FIELDS = (
    "name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname",
    "uname", "gname", "devmajor", "devminor",
)  # fmt: skip
#: Where a header's text fields are.
_TEXT_FIELDS = {"name": (0, 100), "linkname": (157, 257), "uname": (265, 297),
                "gname": (297, 329), "prefix": (345, 500)}  # fmt: skip
#: Where the header's fields start (and a few places just inside them).
_FIELD_STARTS = [0, 99, 100, 107, 108, 116, 124, 135, 136, 148, 154, 155, 156, 157, 257, 263,
                 265, 297, 329, 336, 337, 344, 345, 386, 482, 483, 500]  # fmt: skip
_KINDS = st.sampled_from(
    [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
     tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE, tarfile.GNUTYPE_LONGNAME,
     tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, b"x"]
)  # fmt: skip


def _parse_header(cls: type[tarfile.TarInfo], block: bytes) -> object:
    try:
        info = cls.frombuf(block, "utf-8", "surrogateescape")
    except Exception as exc:  # the same failure is expected from both parsers
        return (type(exc), str(exc))
    return {name: getattr(info, name) for name in _HEADER_FIELDS} | {
        "sparse": getattr(info, "_sparse_structs", None)
    }


def _with_checksum(block: bytearray, style: int, *, off: int = 0) -> bytes:
    block[148:156] = b" " * 8
    total = sum(block) + off
    block[148:156] = b"%06o\0 " % total if style == 0 else b"%07o\0" % total
    return bytes(block)


@settings(max_examples=1000, deadline=None)
@given(
    kind=_KINDS,
    numbers=st.tuples(*[st.integers(0, 0o7777777)] * 3, *[st.integers(0, 8**11 - 1)] * 2),
    devices=st.tuples(st.integers(0, 0o7777777), st.integers(0, 0o7777777)),
    fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]),
    texts=st.dictionaries(st.sampled_from(list(_TEXT_FIELDS)), st.binary(max_size=155)),
    edits=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 511), st.sampled_from(_FIELD_STARTS)),
            st.binary(min_size=1, max_size=3),
            st.sampled_from([1, 1, 2, 60, 200]),  # repeated: long runs of odd bytes too
        ),
        max_size=3,
    ),
    style=st.sampled_from([0, 1, None]),
)
def test_header_fast_path_parses_as_tarfile(
    kind: bytes,
    numbers: tuple[int, int, int, int, int],
    devices: tuple[int, int],
    fmt: Literal[0, 1, 2],
    texts: dict[str, bytes],
    edits: list[tuple[int, bytes, int]],
    style: int | None,
) -> None:
    """The writer's header parser gives exactly what tarfile's gives, or fails the same way."""
    info = tarfile.TarInfo("x")
    info.type = kind
    info.mode, info.uid, info.gid, info.size, info.mtime = numbers
    info.devmajor, info.devminor = devices
    if kind not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = 0
    block = bytearray(info.tobuf(fmt, "utf-8", "surrogateescape")[-512:])
    for field, data in texts.items():
        start, end = _TEXT_FIELDS[field]
        block[start:end] = data[: end - start].ljust(end - start, b"\0")
    for offset, data, repeat in edits:  # odd bytes anywhere; then (maybe) a checksum that fits
        block[offset : offset + len(data) * repeat] = data * repeat
        del block[512:]
    buf = _with_checksum(block, style) if style is not None else bytes(block)
    assert _parse_header(_Info, buf) == _parse_header(tarfile.TarInfo, buf)


def test_header_fast_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers as tar writers make them skip tarfile's slower parse."""
    high = bytearray(tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT))
    for start, end in _TEXT_FIELDS.values():  # non-zero bytes summing past 65521
        block_end = end - 1
        high[start:block_end] = b"\xff" * (block_end - start)
    blocks = [
        tarfile.TarInfo("a/b").tobuf(tarfile.USTAR_FORMAT),
        tarfile.TarInfo("d/" * 60).tobuf(tarfile.GNU_FORMAT)[-512:],
        _with_checksum(bytearray(tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT)), 1),
        _with_checksum(high, 0),
    ]
    expected = [_parse_header(tarfile.TarInfo, block) for block in blocks]
    slow: list[bytes] = []
    parse = tarfile.TarInfo.frombuf.__func__  # type: ignore[attr-defined]

    def counted(cls: type[tarfile.TarInfo], buf: bytes, encoding: str, errors: str) -> object:
        slow.append(buf)
        return parse(cls, buf, encoding, errors)

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(counted))
    assert [_parse_header(_Info, block) for block in blocks] == expected
    assert slow == []
    odd = bytearray(blocks[0])
    odd[100:108] = b"   644 \0"  # space-padded: tarfile's parse
    assert isinstance(_parse_header(_Info, _with_checksum(odd, 0)), dict) and len(slow) == 1
    # A checksum off by adler32's modulus is still a bad checksum.
    bad = _with_checksum(high, 0, off=-65521)
    invalid = tarfile.InvalidHeaderError  # type: ignore[attr-defined]  # not in typeshed
    assert _parse_header(_Info, bad) == (invalid, "bad checksum")


# --------------------------------------------------------------------------- hostile layers


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A sentinel directory next to ``dest``: no layer may change it."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "sentinel").write_bytes(b"precious\n")
    (place / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    before = snapshot(place)
    yield place
    assert diff(before, snapshot(place)) == []


Check = Callable[[Path, Path], None]


def _absolute_contained(root: Path, outside: Path) -> None:
    assert (root / str(outside).lstrip("/") / "sentinel").read_bytes() == b"pwned"


def _is_file(name: str, content: bytes) -> Check:
    def check(root: Path, outside: Path) -> None:
        assert not os.path.islink(root / name)
        assert (root / name).read_bytes() == content

    return check


def _symlink_hardlink(root: Path, outside: Path) -> None:
    assert os.readlink(root / "h") == f"{outside}/sentinel"
    assert os.lstat(root / "h").st_ino == os.lstat(root / "s").st_ino


def _link_replaced(root: Path, outside: Path) -> None:
    assert (root / "h").read_bytes() == b"pwned" and os.path.islink(root / "s")


def _gone(name: str) -> Check:
    def check(root: Path, outside: Path) -> None:
        assert not os.path.lexists(root / name)

    return check


def _deep(root: Path, outside: Path) -> None:
    assert os.listdir(root) == ["other"]


def _cases(outside: str) -> dict[str, tuple[list[TarLayer], object, dict[str, int]]]:
    sentinel = f"{outside}/sentinel"
    deep = "/".join(["d"] * 2000)
    return {
        "dotdot": ([layer(file("../outside/sentinel", b"pwned"))], UnsafeLayerError, {}),
        "dotdot-in-the-middle": (
            [layer(file("a/../../outside/sentinel", b"pwned"))],
            UnsafeLayerError,
            {},
        ),
        "absolute-path": ([layer(file(sentinel, b"pwned"))], _absolute_contained, {}),
        "symlink-at-dot": ([layer(symlink(".", outside))], UnsafeLayerError, {}),
        "symlink-at-root": ([layer(symlink("/", outside))], UnsafeLayerError, {}),
        "file-at-root": ([layer(file("./", b"pwned"))], UnsafeLayerError, {}),
        "hardlink-at-root": ([layer(file("a"), hardlink("/", "a"))], UnsafeLayerError, {}),
        "write-through-symlink": (
            [layer(symlink("x", outside), file("x/passwd", b"pwned"))],
            UnsafeLayerError,
            {},
        ),
        "write-through-symlink-of-a-lower-layer": (
            [layer(symlink("etc", outside)), layer(file("etc/passwd", b"pwned"))],
            UnsafeLayerError,
            {},
        ),
        "write-through-relative-symlink": (
            [layer(symlink("x", "../outside"), file("x/passwd", b"pwned"))],
            UnsafeLayerError,
            {},
        ),
        "two-hop-symlink-chain": (
            [layer(symlink("a", "b"), symlink("b", outside), file("a/passwd", b"pwned"))],
            UnsafeLayerError,
            {},
        ),
        "directory-over-symlink": (
            [layer(symlink("x", outside)), layer(directory("x"), file("x/passwd", b"mine"))],
            _is_file("x/passwd", b"mine"),
            {},
        ),
        "file-over-symlink": (
            [layer(symlink("s", sentinel)), layer(file("s", b"pwned"))],
            _is_file("s", b"pwned"),
            {},
        ),
        "hardlink-dotdot": (
            [layer(hardlink("h", "../outside/sentinel"))],
            UnsafeLayerError,
            {},
        ),
        "hardlink-absolute-outside": ([layer(hardlink("h", sentinel))], LayerFormatError, {}),
        "hardlink-through-symlink": (
            [layer(symlink("x", outside), hardlink("h", "x/sentinel"))],
            UnsafeLayerError,
            {},
        ),
        "hardlink-to-symlink": (
            [layer(symlink("s", sentinel), hardlink("h", "s"))],
            _symlink_hardlink,
            {},
        ),
        "write-over-hardlinked-symlink": (
            [layer(symlink("s", sentinel), hardlink("h", "s")), layer(file("h", b"pwned"))],
            _link_replaced,
            {},
        ),
        "hardlink-to-directory": (
            [layer(directory("d"), hardlink("h", "d"))],
            LayerFormatError,
            {},
        ),
        "hardlink-to-nothing": ([layer(hardlink("h", "missing"))], LayerFormatError, {}),
        "hardlink-to-the-root": ([layer(hardlink("h", "./"))], LayerFormatError, {}),
        "mtime-out-of-range": (
            [layer(file("a", pax={"mtime": "9" * 30}))],
            LayerFormatError,
            {},
        ),
        "directory-mtime-out-of-range": (
            [layer(directory("d", pax={"mtime": "9" * 30}))],
            LayerFormatError,
            {},
        ),
        "whiteout-on-symlink": (
            [layer(symlink("x", outside)), layer(whiteout("x"))],
            _gone("x"),
            {},
        ),
        "whiteout-through-symlink": (
            [layer(symlink("x", outside)), layer(whiteout("x/sentinel"))],
            UnsafeLayerError,
            {},
        ),
        "opaque-through-symlink": (
            [layer(symlink("x", outside)), layer(opaque("x"))],
            UnsafeLayerError,
            {},
        ),
        "whiteout-of-dot": ([layer(file("d/.wh.."))], UnsafeLayerError, {}),
        "whiteout-of-dotdot": ([layer(file("d/x"), file("d/.wh..."))], UnsafeLayerError, {}),
        "symlink-at-slash-dot": ([layer(symlink("/.", outside))], UnsafeLayerError, {}),
        "symlink-replaces-an-open-directory": (
            [layer(file("a/one"), symlink("a", outside), file("a/passwd", b"pwned"))],
            UnsafeLayerError,
            {},
        ),
        "symlink-replaces-a-lower-directory": (
            [
                layer(file("a/one"), file("a/b/two")),
                layer(whiteout("a"), symlink("a", outside), file("a/b/passwd", b"pwned")),
            ],
            UnsafeLayerError,
            {},
        ),
        "symlink-in-an-opaque-directory": (
            [
                layer(file("d/sub/x")),
                layer(opaque("d"), symlink("d/sub", outside), file("d/sub/passwd", b"pwned")),
            ],
            UnsafeLayerError,
            {},
        ),
        "bare-whiteout": ([layer(file("d/.wh."))], LayerFormatError, {}),
        "whiteout-as-directory": ([layer(file(".wh.x/y"))], LayerFormatError, {}),
        "file-as-parent": ([layer(file("f"), file("f/x"))], LayerFormatError, {}),
        "nul-in-name": ([layer(file("a", pax={"path": "a\0b"}))], LayerFormatError, {}),
        "empty-link-target": ([layer(symlink("s", ""))], LayerFormatError, {}),
        "duplicate-entries": (
            [
                layer(
                    file("a", b"first"),
                    file("a", b"second"),
                    directory("d"),
                    file("d/child"),
                    file("d", b"file now"),
                    symlink("l", sentinel),
                    file("l", b"last"),
                )
            ],
            lambda root, _: [
                _is_file("a", b"second")(root, _),
                _is_file("d", b"file now")(root, _),
                _is_file("l", b"last")(root, _),
            ],
            {},
        ),
        "deep-tree-whited-out": (
            [layer(file(f"{deep}/f"), file("other")), layer(whiteout("d"))],
            _deep,
            {},
        ),
        "size-bomb": (
            [layer(file("zeros", bytes(16 << 20)), compression="gzip")],
            LimitExceededError,
            {"max_total_bytes": 4 << 20},
        ),
        "zero-bomb-after-the-archive": (
            [raw_layer(tar_bytes([file("a")]) + bytes(16 << 20), "gzip")],
            LimitExceededError,
            {"max_total_bytes": 4 << 20},
        ),
        "entry-count-bomb": (
            [layer(*[file(f"f{i}") for i in range(3000)])],
            LimitExceededError,
            {"max_entries": 1000},
        ),
        "long-path": ([layer(file("p" * 5000))], LimitExceededError, {}),
        "long-name": ([layer(file("n" * 300))], LayerFormatError, {}),
        "long-link-target": ([layer(symlink("s", "t" * 5000))], LimitExceededError, {}),
        "long-hardlink-target": ([layer(hardlink("h", "t" * 5000))], LimitExceededError, {}),
        "header-bomb": (
            [layer(file("x", xattrs={"user.big": b"b" * (2 << 20)}))],
            LimitExceededError,
            {},
        ),
        "sparse-bomb": (
            [raw_layer(b"", "none")],  # replaced below: a GNU sparse file of 64 MiB
            LimitExceededError,
            {"max_total_bytes": 8 << 20},
        ),
        "diff-id-mismatch": (
            [
                TarLayer(
                    {},
                    "gzip",
                    entries=(file("a"),),
                    stored=compress(tar_bytes([file("b")]), "gzip"),
                )
            ],
            VerificationError,
            {},
        ),
        "gzip-labelled-zstd": (
            [layer(file("a"), compression="gzip", label=OCI_LAYER_ZSTD)],
            CompressionMismatchError,
            {},
        ),
        "zstd-labelled-plain": (
            [layer(file("a"), compression="zstd", label=OCI_LAYER_TAR)],
            CompressionMismatchError,
            {},
        ),
        "entries-after-one-zero-block": (
            [raw_layer(continued_tar([file("a")], [file("hidden", b"x")], 1), "gzip")],
            TarTrailerError,
            {},
        ),
        "entries-after-the-end-blocks": (
            [raw_layer(continued_tar([file("a")], [file("hidden", b"x")], 2), "none")],
            TarTrailerError,
            {},
        ),
    }


CASE_NAMES = list(_cases("/x"))


def _sparse_bomb(tmp_path: Path) -> bytes:
    source = tmp_path / "sparse-src"
    source.mkdir()
    with open(source / "huge", "wb") as f:
        f.truncate(64 << 20)
    archive = tmp_path / "huge.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-C", str(source), "-cf", str(archive), "huge"],
        check=True,
    )
    return archive.read_bytes()


@pytest.mark.reliability("bad input", "hostile layer")
@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_layer(
    case: str,
    proxy: ImageProxy,
    outside: Path,
    tmp_path: Path,
    observe: Callable[[str], None],
) -> None:
    layers, expected, limits = _cases(str(outside))[case]
    if case == "sparse-bomb":
        layers = [raw_layer(_sparse_bomb(tmp_path), "gzip")]
    image = build(tmp_path / "image", *layers)
    dest = tmp_path / "dest"
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            unpack(image.ref, dest, proxy=proxy, limits=UnpackLimits(**limits))
        observe(f"refused: {type(info.value).__name__}: {info.value}")
        assert isinstance(info.value, ImageProxyError)
        assert not dest.exists()  # nothing left behind
    else:
        result = unpack(image.ref, dest, proxy=proxy, limits=UnpackLimits(**limits))
        expected(dest, outside)  # type: ignore[operator]
        observe(f"contained: {result.entries} entries applied inside dest")


# --------------------------------------------------------------------------- errors


def test_unpack_errors(proxy: ImageProxy, oci_image: BuiltImage, tmp_path: Path) -> None:
    reference = oci_image.ref
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(FileExistsError):
        unpack(reference, busy, proxy=proxy)
    assert (busy / "x").exists()
    with pytest.raises(NotADirectoryError):
        unpack(reference, busy / "x", proxy=proxy)
    with pytest.raises(ImageNotFoundError):
        unpack(f"oci:{oci_image.path}:missing", tmp_path / "missing", proxy=proxy)
    assert not (tmp_path / "missing").exists()
    # An existing empty directory is emptied, not removed, on failure.
    empty = tmp_path / "empty"
    empty.mkdir()
    image = build(tmp_path / "bad", layer(file("a"), file("../b")))
    with pytest.raises(UnpackError):
        unpack(image.ref, empty, proxy=proxy)
    assert empty.is_dir() and os.listdir(empty) == []
    # A configuration whose diff_ids do not match the layers.
    image = build(tmp_path / "count", layer(file("a")), layer(file("b")))
    edit_config(image, lambda config: config["rootfs"]["diff_ids"].pop())
    with pytest.raises(InvalidDocumentError, match="2 layers"):
        unpack(image.ref, tmp_path / "count-dest", proxy=proxy)
    # The happy path into an existing empty directory, with its own proxy.
    result = unpack(reference, empty)
    assert result.dest == empty and (empty / "etc/os-release").exists()
