"""A realistic image for the benchmarks: a Debian root filesystem and layers on top.

    python bench/realimage.py             # build the image once (or find it), print where
    python bench/realimage.py --rebuild   # build the layers again from the cached rootfs
    python bench/realimage.py --refetch   # run debootstrap again, then build the layers

From another benchmark (a script in bench/, whose directory Python puts on the path)::

    from realimage import real_image
    image = real_image()          # builds on first use, then reuses the cache
    image.layouts["gzip"]         # an OCI layout directory (tag "latest"); also "zstd"
    image.ref("zstd")             # "oci:<layout>:latest"

The base is a Debian root filesystem made by ``debootstrap --variant=minbase`` (as
root) from the Debian mirror this machine's apt sources name, for the running
release. Three layers follow it, made from that tree the way image builds make
theirs: an upgrade (shared libraries and configuration replaced, documentation and
manual pages deleted through whiteouts), a layer with an opaque directory and
hardlinks (a multi-call binary, a hardlinked copy of a library tree), and an
application layer of many small files and symlinks. Every layer is written twice,
compressed with gzip and with zstd, as two OCI layouts of the same image.

The cache lives in ``$CIP_BENCH_CACHE`` if set, else
``$XDG_CACHE_HOME/containers-image-proxy-bench`` (``~/.cache/...`` without
``XDG_CACHE_HOME``). It holds the debootstrap tree (``<release>-<arch>/rootfs``, kept
so that a new layer recipe needs no network) and the layouts
(``<release>-<arch>/image-v<N>/{gzip,zstd}``), built under a lock and renamed into
place, so that concurrent benchmarks share one build.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

MiB = 1 << 20
#: Bumped whenever the layers built from the rootfs change.
RECIPE = 1
#: The compressions every layer is written with; one OCI layout each.
COMPRESSIONS = ("gzip", "zstd")
GZIP_LEVEL = 6  # what `gzip` and most image builders use
ZSTD_LEVEL = 3  # zstd's default, what podman and buildah use


# --------------------------------------------------------------------------- the cache


def cache_root() -> Path:
    """Where built images are kept (see the module docstring)."""
    if explicit := os.environ.get("CIP_BENCH_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "containers-image-proxy-bench"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the mirror


@dataclasses.dataclass(frozen=True)
class AptSource:
    """One ``deb`` line (or one URI/suite pair of a deb822 stanza) of the apt sources."""

    uri: str
    suite: str
    origin: str  # the file it came from


def _one_line_sources(text: str, origin: str) -> Iterator[AptSource]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield AptSource(words[0].rstrip("/"), words[1], origin)


def _deb822_sources(text: str, origin: str) -> Iterator[AptSource]:
    stanzas: list[dict[str, str]] = [{}]
    key = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanzas[-1]:
                stanzas.append({})
            continue
        if line[0] in " \t" and key:  # a continuation line
            stanzas[-1][key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        stanzas[-1][key] = value.strip()
    for fields in stanzas:
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield AptSource(uri.rstrip("/"), suite, origin)


def apt_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` source the apt configuration under ``etc`` enables, in apt's order."""
    found: list[AptSource] = []
    main = etc / "sources.list"
    if main.is_file():
        found += _one_line_sources(main.read_text(errors="replace"), str(main))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.name.endswith(".list"):
                found += _one_line_sources(path.read_text(errors="replace"), str(path))
            elif path.name.endswith(".sources"):
                found += _deb822_sources(path.read_text(errors="replace"), str(path))
    return found


def os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    """The fields of os-release(5)."""
    fields = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def debian_mirror(
    etc: Path = Path("/etc/apt"), release_file: Path = Path("/etc/os-release")
) -> tuple[str, str]:
    """The configured Debian mirror and the running release: ``(uri, codename)``.

    The mirror is the first ``deb`` source whose suite is the release's codename itself
    (not ``-updates`` or ``-security``). Raises ``RuntimeError`` when the machine does
    not name one (not Debian, or no such source).
    """
    release = os_release(release_file)
    if release.get("ID") != "debian" and "debian" not in release.get("ID_LIKE", "").split():
        raise RuntimeError(f"not a Debian system ({release_file}: ID={release.get('ID')})")
    codename = release.get("VERSION_CODENAME", "")
    if not codename:
        raise RuntimeError(f"{release_file} names no VERSION_CODENAME")
    for source in apt_sources(etc):
        if source.suite == codename and source.uri.startswith(("http://", "https://", "file:")):
            return source.uri, codename
    raise RuntimeError(f"no apt source under {etc} serves the suite {codename!r}")


# --------------------------------------------------------------------------- debootstrap


def _architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


def debootstrap_rootfs(dest: Path, mirror: str, suite: str, arch: str) -> None:
    """``debootstrap --variant=minbase`` of ``suite`` into ``dest`` (needs root)."""
    if os.geteuid() != 0:
        raise RuntimeError("building the Debian image needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--arch={arch}", suite, str(dest), mirror],
        check=True,
        stdout=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- layer entries

#: The time stamp of everything the recipe writes itself.
RECIPE_MTIME = 1_700_000_000
#: Directories whose contents stay out of an image (what container runtimes mount).
_MOUNTED = ("dev", "proc", "sys")


@dataclasses.dataclass
class Item:
    """One tar entry of a layer: its header and where its data comes from."""

    info: tarfile.TarInfo
    source: Path | bytes | None = None


def _header(name: str, kind: bytes, mode: int, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = RECIPE_MTIME
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def new_file(name: str, data: bytes, mode: int = 0o644) -> Item:
    """A regular file the recipe makes up."""
    return Item(_header(name, tarfile.REGTYPE, mode, size=len(data)), data)


def new_dir(name: str, mode: int = 0o755) -> Item:
    """A directory the recipe makes up."""
    return Item(_header(name, tarfile.DIRTYPE, mode))


def new_symlink(name: str, target: str) -> Item:
    """A symbolic link the recipe makes up."""
    return Item(_header(name, tarfile.SYMTYPE, 0o777, linkname=target))


def new_hardlink(name: str, target: str) -> Item:
    """A hardlink to ``target``, an earlier entry of the same layer."""
    return Item(_header(name, tarfile.LNKTYPE, 0o644, linkname=target))


def whiteout(path: str) -> Item:
    """The whiteout that deletes ``path`` of a lower layer."""
    head, _, name = path.rpartition("/")
    return new_file(f"{head}/.wh.{name}" if head else f".wh.{name}", b"", 0o600)


def opaque(directory: str) -> Item:
    """The marker that hides everything lower layers put in ``directory``."""
    return new_file(f"{directory}/.wh..wh..opq", b"", 0o600)


def from_tree(root: Path, path: Path, name: str | None = None) -> Item | None:
    """An entry copying ``path`` (under ``root``) as it is: type, mode, owner, time.

    ``name`` renames it in the layer. Devices and sockets give ``None`` (no image
    carries them; the runtime makes /dev).
    """
    st = path.lstat()
    arcname = name if name is not None else path.relative_to(root).as_posix()
    fields: dict[str, Any] = {"uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return Item(_header(arcname, tarfile.REGTYPE, mode, size=st.st_size, **fields), path)
    if stat.S_ISDIR(st.st_mode):
        return Item(_header(arcname, tarfile.DIRTYPE, mode, **fields))
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return Item(_header(arcname, tarfile.SYMTYPE, 0o777, linkname=target, **fields))
    if stat.S_ISFIFO(st.st_mode):
        return Item(_header(arcname, tarfile.FIFOTYPE, mode, **fields))
    return None


def walk(root: Path, top: Path) -> Iterator[Path]:
    """``top`` and everything under it, parents first, names sorted."""
    yield top
    if top.is_dir() and not top.is_symlink():
        for child in sorted(top.iterdir()):
            yield from walk(root, child)


def parents(root: Path, relative: str) -> Iterator[Item]:
    """Entries for the directories above ``relative``, copied from the tree."""
    parts = relative.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        item = from_tree(root, root.joinpath(*parts[:depth]))
        if item is not None:
            yield item


def copy_tree(
    root: Path, top: str, dest: str | None = None, keep: Callable[[str], bool] | None = None
) -> Iterator[Item]:
    """``top`` (relative to ``root``; ``"."`` for all of it) and everything under it,
    renamed to ``dest`` if given, less the names ``keep`` refuses; files hardlinked
    together stay hardlinked within the copy."""
    seen: dict[tuple[int, int], str] = {}
    base = root / top
    if not base.exists():
        return
    prefix = top if dest is None else dest
    for path in walk(root, base):
        relative = path.relative_to(base).as_posix()
        if relative == ".":
            if prefix in ("", "."):
                continue
            name = prefix
        else:
            name = relative if prefix in ("", ".") else f"{prefix}/{relative}"
        if keep is not None and not keep(name):
            continue
        item = from_tree(root, path, name)
        if item is None:
            continue
        st = path.lstat()
        if item.info.type == tarfile.REGTYPE and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                link = new_hardlink(name, seen[key])
                link.info.mode, link.info.mtime = item.info.mode, item.info.mtime
                link.info.uid, link.info.gid = item.info.uid, item.info.gid
                item = link
            else:
                seen[key] = name
        yield item


def _triplet(root: Path) -> str:
    """The multiarch library directory under usr/lib (e.g. ``x86_64-linux-gnu``)."""
    lib = root / "usr" / "lib"
    found = sorted(p.name for p in lib.iterdir() if p.is_dir() and "-linux-" in p.name)
    return found[0] if found else "x86_64-linux-gnu"


def _changed(data: bytes, tag: str) -> bytes:
    """``data`` as an upgrade would leave it: same size, a different tail."""
    mark = hashlib.sha256(tag.encode() + data[-64:]).digest()[: min(16, len(data))]
    return data[: len(data) - len(mark)] + mark


# --------------------------------------------------------------------------- the recipe


def base_layer(root: Path) -> Iterator[Item]:
    """The debootstrap tree, without device nodes and downloaded packages."""
    hidden = (*(f"{name}/" for name in _MOUNTED), "var/cache/apt/archives/")
    yield from copy_tree(root, ".", keep=lambda name: not name.startswith(hidden))


def upgrade_layer(root: Path) -> Iterator[Item]:
    """An upgrade and clean-up: replaces libraries and configuration, deletes
    documentation, manual pages, package lists and logs."""
    triplet = _triplet(root)
    done_dirs: set[str] = set()

    def with_parents(relative: str) -> Iterator[Item]:
        for item in parents(root, relative):
            if item.info.name not in done_dirs:
                done_dirs.add(item.info.name)
                yield item

    libdir = root / "usr" / "lib" / triplet
    tops = [p for p in sorted(libdir.iterdir()) if p.is_file() and not p.is_symlink()]
    tops = [p for p in tops if ".so" in p.name]
    configs = [p for p in walk(root, root / "etc") if p.is_file() and not p.is_symlink()]
    for path in sorted(tops + configs):
        relative = path.relative_to(root).as_posix()
        yield from with_parents(relative)
        item = from_tree(root, path)
        assert item is not None
        data = _changed(path.read_bytes(), relative)
        item.info.mtime = RECIPE_MTIME
        yield Item(item.info, data)
    doomed: list[str] = []
    for top in ("usr/share/doc", "var/lib/apt/lists", "var/log"):
        if (root / top).is_dir():
            doomed += [f"{top}/{p.name}" for p in sorted((root / top).iterdir())]
    if (root / "usr/share/man").is_dir():
        doomed.append("usr/share/man")
    for relative in sorted(doomed):
        yield from with_parents(relative)
        yield whiteout(relative)
    yield from with_parents("etc/image-upgraded")
    yield new_file("etc/image-upgraded", b"upgraded\n")


def links_layer(root: Path) -> Iterator[Item]:
    """An opaque directory and hardlinks: locales hidden but two, a multi-call binary
    under every name of /usr/bin, a library tree and its hardlinked twin."""
    triplet = _triplet(root)
    locale = "usr/share/locale"
    if (root / locale).is_dir():
        yield from parents(root, f"{locale}/x")
        yield opaque(locale)
        for keep in ("de", "fr"):
            yield from copy_tree(root, f"{locale}/{keep}")
    yield new_dir("opt")
    yield new_dir("opt/multicall")
    yield new_dir("opt/multicall/bin")
    program = root / "usr/bin/bash"
    data = program.read_bytes() if program.is_file() else b"\x7fELF" + bytes(1 << 20)
    yield new_file("opt/multicall/bin/multicall", data, 0o755)
    names = sorted(p.name for p in (root / "usr/bin").iterdir())
    for name in names:
        yield new_hardlink(f"opt/multicall/bin/{name}", "opt/multicall/bin/multicall")
    library = f"usr/lib/{triplet}/perl-base"
    if (root / library).is_dir():
        yield new_dir("opt/perl")
        twins: list[tuple[str, str]] = []
        for item in copy_tree(root, library, "opt/perl/lib"):
            yield item
            if item.info.type == tarfile.REGTYPE:
                twins.append((item.info.name, item.info.name.replace("/lib/", "/lib-compat/", 1)))
            elif item.info.type == tarfile.DIRTYPE:
                twin = item.info.name.replace("opt/perl/lib", "opt/perl/lib-compat", 1)
                yield Item(_header(twin, tarfile.DIRTYPE, item.info.mode, mtime=item.info.mtime))
        for target, name in twins:
            yield new_hardlink(name, target)


def app_layer(root: Path) -> Iterator[Item]:
    """An application: many small files copied in, symlinks into them, a launcher."""
    yield new_dir("opt")
    yield new_dir("opt/app")
    yield new_dir("opt/app/share")
    for top, dest in (
        ("usr/share/perl5", "opt/app/lib"),
        ("usr/share/zoneinfo", "opt/app/share/zoneinfo"),
    ):
        yield from copy_tree(root, top, dest)
    yield new_dir("opt/app/bin")
    modules = (
        sorted(
            p.relative_to(root / "usr/share/perl5").as_posix()
            for p in (root / "usr/share/perl5").rglob("*.pm")
        )
        if (root / "usr/share/perl5").is_dir()
        else []
    )
    for n, module in enumerate(modules):
        yield new_symlink(f"opt/app/bin/tool{n:03d}", f"../lib/{module}")
    yield new_file("opt/app/bin/app", b'#!/bin/sh\nexec perl -I/opt/app/lib "$@"\n', 0o755)
    yield new_dir("usr/local", 0o755)
    yield new_dir("usr/local/bin", 0o755)
    yield new_symlink("usr/local/bin/app", "/opt/app/bin/app")


LAYERS: tuple[tuple[str, Callable[[Path], Iterable[Item]]], ...] = (
    ("debootstrap --variant=minbase", base_layer),
    ("upgrade: libraries and /etc replaced; docs, man, lists, logs deleted", upgrade_layer),
    ("opaque locale dir; hardlinks (multi-call binary, twin library tree)", links_layer),
    ("application: small files, symlinks", app_layer),
)


# --------------------------------------------------------------------------- the layouts


def write_tar(items: Iterable[Item], path: Path) -> int:
    """Write the layer's tar to ``path``; returns how many entries it holds."""
    count = 0
    with (
        path.open("wb") as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for item in items:
            if isinstance(item.source, Path):
                with item.source.open("rb") as data:
                    tar.addfile(item.info, data)
            elif isinstance(item.source, bytes):
                tar.addfile(item.info, io.BytesIO(item.source))
            else:
                tar.addfile(item.info)
            count += 1
    return count


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def compress_file(source: Path, dest: Path, compression: str) -> None:
    """``source`` compressed into ``dest`` (deterministically: no name, no time)."""
    with source.open("rb") as src, dest.open("wb") as out:
        if compression == "gzip":
            with gzip.GzipFile(
                filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=out, mtime=0
            ) as z:
                shutil.copyfileobj(src, z, 4 * MiB)
        elif compression == "zstd":
            import zstandard

            zstandard.ZstdCompressor(level=ZSTD_LEVEL).copy_stream(
                src, out, size=source.stat().st_size
            )
        else:
            raise ValueError(f"unknown compression {compression!r}")


def _store(layout: Path, path: Path) -> dict[str, Any]:
    """Move ``path`` into the layout's blobs; its descriptor's digest and size."""
    digest = _sha256_file(path)
    size = path.stat().st_size
    path.rename(layout / "blobs" / "sha256" / digest.split(":", 1)[1])
    return {"digest": digest, "size": size}


def _store_bytes(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


_MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def build_image(
    rootfs: Path,
    dest: Path,
    about: dict[str, Any],
    layers: tuple[tuple[str, Callable[[Path], Iterable[Item]]], ...] = LAYERS,
    log: Callable[[str], object] = print,
) -> RealImage:
    """The layers of ``layers`` made from ``rootfs``, as one OCI layout per compression
    under ``dest`` (which must not exist), with ``image.json`` describing them."""
    from concurrent.futures import ThreadPoolExecutor

    dest.mkdir(parents=True)
    scratch = dest / "scratch"
    scratch.mkdir()
    for compression in COMPRESSIONS:
        (dest / compression / "blobs" / "sha256").mkdir(parents=True)
    described = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for index, (what, recipe) in enumerate(layers):
            started = time.monotonic()
            tar = scratch / f"layer{index}.tar"
            entries = write_tar(recipe(rootfs), tar)
            outputs = {c: scratch / f"layer{index}.{c}" for c in COMPRESSIONS}
            jobs = [pool.submit(compress_file, tar, outputs[c], c) for c in COMPRESSIONS]
            for job in jobs:
                job.result()
            layer: dict[str, Any] = {
                "description": what,
                "entries": entries,
                "tar_bytes": tar.stat().st_size,
                "diff_id": _sha256_file(tar),
            }
            for compression, path in outputs.items():
                layer[compression] = _store(dest / compression, path)
            tar.unlink()
            described.append(layer)
            log(
                f"layer {index}: {entries} entries, {layer['tar_bytes'] / MiB:.1f} MiB of tar, "
                + ", ".join(f"{c} {layer[c]['size'] / MiB:.1f} MiB" for c in COMPRESSIONS)
                + f" ({time.monotonic() - started:.0f} s)"
            )
    scratch.rmdir()
    config = json.dumps(
        {
            "architecture": about.get("arch", "amd64"),
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["bash"],
            },
            "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in described]},
            "history": [{"created_by": layer["description"]} for layer in described],
        },
        sort_keys=True,
    ).encode()
    for compression in COMPRESSIONS:
        layout = dest / compression
        config_desc = _store_bytes(layout, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
                "layers": [
                    {"mediaType": _MEDIA[compression], **layer[compression]} for layer in described
                ],
            }
        ).encode()
        manifest_desc = _store_bytes(layout, manifest)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            **manifest_desc,
                            "annotations": {"org.opencontainers.image.ref.name": "latest"},
                        }
                    ],
                }
            )
        )
    info = dict(about) | {"recipe": RECIPE, "built": time.strftime("%Y-%m-%d"), "layers": described}
    (dest / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    return RealImage(dest, info)


@dataclasses.dataclass(frozen=True)
class RealImage:
    """A built image: one OCI layout per compression, and what ``image.json`` says."""

    root: Path
    info: dict[str, Any]

    @property
    def layouts(self) -> dict[str, Path]:
        """The OCI layout directory of each compression (``"gzip"``, ``"zstd"``)."""
        return {c: self.root / c for c in COMPRESSIONS}

    def ref(self, compression: str) -> str:
        """The ``oci:`` reference of the image in the given compression."""
        return f"oci:{self.root / compression}:latest"

    @property
    def entries(self) -> int:
        """Tar entries over all layers."""
        return sum(layer["entries"] for layer in self.info["layers"])

    def stored(self, compression: str) -> int:
        """Bytes of the compressed layers."""
        return sum(layer[compression]["size"] for layer in self.info["layers"])

    def describe(self, compression: str) -> str:
        """A short label, e.g. ``Debian bookworm, 4 gzip layers, 8,512 entries, 91 MiB``."""
        return (
            f"{self.info.get('name', 'image')}, {len(self.info['layers'])} {compression} layers,"
            f" {self.entries:,} entries, {self.stored(compression) / MiB:.0f} MiB"
        )


def real_image(
    *, rebuild: bool = False, refetch: bool = False, log: Callable[[str], object] = print
) -> RealImage:
    """The Debian benchmark image, built on first use and cached (see module docstring).

    The first build needs root, debootstrap and the network (a minute or two on two
    cores); later calls return the cached layouts at once. Raises ``RuntimeError`` when
    the image is not cached and cannot be built here.
    """
    root = cache_root()
    arch = _architecture()
    release = os_release().get("VERSION_CODENAME", "unknown")
    home = root / f"{release}-{arch}"
    image_dir = home / f"image-v{RECIPE}"
    with _locked(root / f"{release}-{arch}.lock"):
        rootfs = home / "rootfs"
        if refetch and rootfs.exists():
            shutil.rmtree(rootfs)
        if rebuild or refetch:
            shutil.rmtree(image_dir, ignore_errors=True)
        if (image_dir / "image.json").is_file():
            return RealImage(image_dir, json.loads((image_dir / "image.json").read_text()))
        mirror, suite = debian_mirror()
        about_path = home / "rootfs.json"
        if not rootfs.is_dir():
            partial = home / "rootfs.partial"
            shutil.rmtree(partial, ignore_errors=True)
            home.mkdir(parents=True, exist_ok=True)
            log(f"debootstrap --variant=minbase {suite} from {mirror} ...")
            debootstrap_rootfs(partial, mirror, suite, arch)
            about_path.write_text(
                json.dumps({"mirror": mirror, "suite": suite, "arch": arch}) + "\n"
            )
            partial.rename(rootfs)
        about = json.loads(about_path.read_text()) if about_path.is_file() else {}
        about = {"mirror": mirror, "suite": suite, "arch": arch} | about
        distribution = os_release().get("NAME", "Debian").split()[0]
        about["name"] = f"{distribution} {about['suite']} minbase"
        partial_image = home / f"image-v{RECIPE}.partial"
        shutil.rmtree(partial_image, ignore_errors=True)
        log(f"building the layers into {image_dir} ...")
        image = build_image(rootfs, partial_image, about, log=log)
        partial_image.rename(image_dir)
        return RealImage(image_dir, image.info)


# --------------------------------------------------------------------------- a tiny stand-in


def fake_rootfs(dest: Path) -> None:
    """A small tree shaped like a Debian one (for the smoke runs: no network, no root)."""

    def put(relative: str, data: bytes, mode: int = 0o644) -> Path:
        path = dest / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def text(seed: str, size: int) -> bytes:
        words = hashlib.shake_256(seed.encode()).hexdigest(size // 4)
        return " ".join(words[i : i + 7] for i in range(0, len(words), 7)).encode()[:size]

    for name in ("bash", "ls", "cat", "cp", "mv", "sh", "gzip"):
        put(f"usr/bin/{name}", b"\x7fELF" + text(name, 20_000), 0o755)
    os.link(dest / "usr/bin/gzip", dest / "usr/bin/gunzip")
    triplet = "usr/lib/x86_64-linux-gnu"
    for n in range(12):
        put(f"{triplet}/libfake{n}.so.1.0.0", b"\x7fELF" + text(f"lib{n}", 30_000))
        (dest / f"{triplet}/libfake{n}.so.1").symlink_to(f"libfake{n}.so.1.0.0")
    for n in range(30):
        put(f"{triplet}/perl-base/Mod{n % 5}/Part{n}.pm", text(f"pm{n}", 3_000))
        put(f"usr/share/perl5/Lib{n % 4}/Thing{n}.pm", text(f"p5{n}", 2_000))
        put(f"usr/share/zoneinfo/Region{n % 3}/City{n}", text(f"tz{n}", 1_000))
    for n in range(15):
        put(f"usr/share/doc/pkg{n}/copyright", text(f"doc{n}", 1_500))
        put(f"usr/share/man/man1/tool{n}.1.gz", gzip.compress(text(f"man{n}", 4_000), mtime=0))
        put(f"etc/conf{n}.conf", text(f"etc{n}", 500))
    for lang in ("de", "fr", "es", "it"):
        put(f"usr/share/locale/{lang}/LC_MESSAGES/tools.mo", text(lang, 5_000))
    put("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")
    put("var/lib/apt/lists/mirror_Packages", text("packages", 200_000))
    put("var/log/dpkg.log", text("log", 10_000))
    put("var/cache/apt/archives/fake_1.0_amd64.deb", text("deb", 10_000))
    for top in ("dev", "proc", "sys", "tmp"):
        (dest / top).mkdir(exist_ok=True)


def smoke_image(work: Path) -> RealImage:
    """The recipe's image on :func:`fake_rootfs` (seconds; for the smoke runs)."""
    fake_rootfs(work / "fake-rootfs")
    about = {"mirror": "none", "suite": "fake", "arch": "amd64", "name": "stand-in tree"}
    return build_image(work / "fake-rootfs", work / "fake-image", about, log=lambda _: None)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rebuild", action="store_true", help="build the layers again")
    parser.add_argument("--refetch", action="store_true", help="run debootstrap again too")
    args = parser.parse_args()
    image = real_image(rebuild=args.rebuild, refetch=args.refetch)
    for compression, layout in image.layouts.items():
        print(f"{image.describe(compression)}: {layout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
