"""Build layer tars entry by entry, benign or hostile, and wrap them into images.

``images.Layer`` only knows regular files under implied directories; the unpack tests
need every kind of tar entry (symlinks, hardlinks, whiteouts, devices, xattrs) and
entries that no honest tool writes (``..``, absolute paths, write-through symlinks,
bombs). :class:`TarLayer` is a ``Layer`` whose tar is given entry by entry, so the
images are built by ``images.build_oci_layout`` and friends like any other, and stay
byte-for-byte deterministic.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.images import (
    FIXED_MTIME,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    BuiltImage,
    Layer,
    build_oci_layout,
)

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True)
class Entry:
    """One tar entry. ``kind`` is a key of ``_TYPES``; ``link`` is a link's target."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    device: tuple[int, int] = (0, 0)
    pax: Mapping[str, str] = field(default_factory=dict)

    def info(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = _TYPES[self.kind]
        info.mode = self.mode if self.mode is not None else (0o755 if self.kind == "dir" else 0o644)
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.linkname = self.link
        info.devmajor, info.devminor = self.device
        info.size = len(self.data) if self.kind == "file" else 0
        pax = dict(self.pax)
        for key, value in self.xattrs.items():
            pax[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        return info


def file(name: str, data: bytes = b"", **kw: object) -> Entry:
    return Entry(name, "file", data, **kw)  # type: ignore[arg-type]


def directory(name: str, **kw: object) -> Entry:
    return Entry(name, "dir", **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> Entry:
    return Entry(name, "symlink", link=target, **kw)  # type: ignore[arg-type]


def hardlink(name: str, target: str, **kw: object) -> Entry:
    return Entry(name, "hardlink", link=target, **kw)  # type: ignore[arg-type]


def whiteout(path: str) -> Entry:
    """The whiteout of ``path`` (``dir/.wh.name``)."""
    head, _, name = path.rpartition("/")
    return file(f"{head}/.wh.{name}" if head else f".wh.{name}")


def opaque(directory_path: str) -> Entry:
    """The opaque marker of a directory."""
    return file(f"{directory_path.rstrip('/')}/.wh..wh..opq")


def tar_bytes(entries: Iterable[Entry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A deterministic tar of ``entries``, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for entry in entries:
            tar.addfile(entry.info(), io.BytesIO(entry.data) if entry.kind == "file" else None)
    return buffer.getvalue()


def without_end(tar: bytes) -> bytes:
    """``tar`` without its end-of-archive blocks and padding (its entries only)."""
    end = len(tar)
    while end >= 512 and not any(tar[end - 512 : end]):
        end -= 512
    return tar[:end]


def continued_tar(first: Iterable[Entry], then: Iterable[Entry], zero_blocks: int) -> bytes:
    """A tar of ``first``, ``zero_blocks`` zero blocks, then a whole tar of ``then``.

    With one zero block, Go's archive/tar (umoci) refuses the stream; with two, it
    stops at them and never sees ``then``, while ``tar --ignore-zeros`` extracts it.
    """
    return without_end(tar_bytes(first)) + bytes(512 * zero_blocks) + tar_bytes(then)


def compress(tar: bytes, compression: str) -> bytes:
    if compression == "none":
        return tar
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(tar)


_LABELS = {"none": OCI_LAYER_TAR, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}


@dataclass(frozen=True)
class TarLayer(Layer):
    """A layer made of explicit entries (or of raw tar bytes).

    ``label`` overrides the media type (to lie about the compression); ``stored``
    replaces the stored blob bytes outright (the diff_id stays that of the tar).
    """

    entries: tuple[Entry, ...] = ()
    raw: bytes | None = None
    label: str | None = None
    stored: bytes | None = None

    @property
    def media_type(self) -> str:
        return self.label or _LABELS[self.compression]

    def tar_bytes(self) -> bytes:
        return self.raw if self.raw is not None else tar_bytes(self.entries)

    def blob(self) -> tuple[bytes, bytes]:
        tar = self.tar_bytes()
        return (self.stored if self.stored is not None else compress(tar, self.compression)), tar


def layer(*entries: Entry, compression: str = "gzip", **kw: object) -> TarLayer:
    return TarLayer({}, compression, entries=tuple(entries), **kw)  # type: ignore[arg-type]


def raw_layer(tar: bytes, compression: str = "none", **kw: object) -> TarLayer:
    return TarLayer({}, compression, raw=tar, **kw)  # type: ignore[arg-type]


def build(dest: Path, *layers: TarLayer, tag: str = "latest") -> BuiltImage:
    """An OCI layout at ``dest`` holding one image of ``layers``."""
    return build_oci_layout(dest, list(layers), tag=tag)


# --------------------------------------------------------------------------- rich images


def rich_layers(compressions: tuple[str, str, str] = ("gzip", "none", "gzip")) -> list[TarLayer]:
    """Three layers exercising every rule umoci and we must agree on.

    Layer 0 lays a base tree (modes, owners, symlinks, hardlinks, xattrs, a fifo);
    layer 1 removes and replaces (whiteouts, an opaque directory whose marker comes
    last, a directory turned file and back, attributes changed on a directory);
    layer 2 links across layers and whites out a path it also rewrites.
    """
    base = layer(
        directory("./", mode=0o755),
        directory("etc", mode=0o755),
        file("etc/os-release", b'NAME="Rich"\n'),
        file("etc/shadow", b"root:*:19000::::::\n", mode=0o640, gid=42),
        directory("usr", mode=0o755),
        directory("usr/bin", mode=0o755),
        file("usr/bin/tool", b"#!/bin/sh\necho tool\n" * 50, mode=0o4755),
        hardlink("usr/bin/tool-link", "usr/bin/tool", mode=0o4755),
        symlink("usr/bin/sh", "/bin/busybox"),
        symlink("bin", "usr/bin"),
        directory("home", mode=0o755),
        directory("home/user", mode=0o700, uid=1000, gid=1000),
        file("home/user/.profile", b"export A=1\n", mode=0o600, uid=1000, gid=1000),
        directory("tmp", mode=0o1777),
        directory("srv", mode=0o555),
        file("srv/readonly", b"ro\n", mode=0o444),
        directory("var/cache/app", mode=0o750, uid=7, gid=7),
        file("var/cache/app/one", b"1" * 3000),
        file("var/cache/app/two", b"2" * 3000),
        directory("opt/old", mode=0o755),
        file("opt/old/keep-not", b"old\n"),
        file("opt/old/sub/deep", b"deep\n"),
        file("opt/turns-dir", b"file first\n"),
        directory("opt/turns-file", mode=0o755),
        file("opt/turns-file/child", b"child\n"),
        symlink("opt/link-replaced", "/etc"),
        file("caps", b"ping\n", mode=0o755, xattrs={"user.comment": b"hello \xff\x00 world"}),
        Entry("dev-fifo", "fifo", mode=0o600),
        directory("attrs", mode=0o700, mtime=FIXED_MTIME - 86400),
        file("attrs/inner", b"inner\n"),
        compression=compressions[0],
    )
    middle = layer(
        whiteout("etc/shadow"),
        whiteout("var/cache/app"),
        file("opt/old/new", b"new\n"),
        opaque("opt/old"),
        directory("opt/turns-dir", mode=0o711),
        file("opt/turns-dir/inside", b"now a dir\n"),
        file("opt/turns-file", b"now a file\n", mode=0o600),
        file("opt/link-replaced", b"no longer a link\n"),
        directory("attrs", mode=0o751, mtime=FIXED_MTIME + 86400, uid=3, gid=4),
        file("etc/os-release", b'NAME="Rich"\nVERSION=2\n', mtime=FIXED_MTIME + 60),
        compression=compressions[1],
    )
    top = layer(
        hardlink("etc/os-release-link", "etc/os-release"),
        file("var/cache/app", b"a file where a whited-out directory was\n"),
        file("usr/bin/tool", b"replaced: breaks the hardlink\n", mode=0o755),
        file("opt/rewritten/kept", b"kept\n"),
        whiteout("opt/rewritten"),
        file("a b/ç name with spaces", b"unicode\n"),
        compression=compressions[2],
    )
    return [base, middle, top]


def many_files_layers(
    layers: int, files_per_layer: int, file_size: int, big_files: int, big_size: int, *, seed: int
) -> list[TarLayer]:
    """Layers of many small files in nested directories plus a few big ones (benchmarks)."""
    import hashlib

    out = []
    for index in range(layers):
        entries: list[Entry] = []
        for n in range(files_per_layer):
            name = f"l{index}/d{n % 37:02d}/e{n % 11}/f{n:06d}"
            data = hashlib.shake_256(f"{seed}-{index}-{n}".encode()).digest(file_size)
            entries.append(file(name, data, mode=0o644 if n % 5 else 0o755))
        for n in range(big_files):
            data = hashlib.shake_256(f"{seed}-{index}-big{n}".encode()).digest(big_size)
            entries.append(file(f"big/l{index}-{n}.bin", data))
        out.append(layer(*entries, compression="gzip"))
    return out


def edit_config(image: BuiltImage, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the configuration of an image in an OCI layout (and its manifest)."""
    import hashlib
    import json

    blobs = image.path / "blobs" / "sha256"

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    config = json.loads(image.config)
    edit(config)
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest = json.loads(image.manifest)
    manifest["config"]["digest"] = put(config_bytes)
    manifest["config"]["size"] = len(config_bytes)
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    index_path = image.path / "index.json"
    index = json.loads(index_path.read_bytes())
    for entry in index["manifests"]:
        if entry["digest"] == image.manifest_digest:
            entry["digest"] = put(manifest_bytes)
            entry["size"] = len(manifest_bytes)
    index_path.write_bytes(json.dumps(index).encode())
