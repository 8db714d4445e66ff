"""Build small, deterministic container images on disk for the test suite.

Everything here is pure Python (stdlib only).  skopeo is used only to produce
``docker-archive`` tarballs and to read back what skopeo reports for them; the
OCI layout, ``oci-archive`` and ``dir`` formats are written directly.

No function here ever touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- media types

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

#: Fixed timestamp used for tar entries (2024-01-01T00:00:00Z).
FIXED_MTIME = 1_704_067_200
FIXED_CREATED = "2024-01-01T00:00:00Z"

DIR_TRANSPORT_VERSION = b"Directory Transport Version: 1.1\n"

HAVE_ZSTD = importlib.util.find_spec("zstandard") is not None

_LAYER_MEDIA_TYPES = {"gzip": OCI_LAYER_GZIP, "none": OCI_LAYER_TAR, "zstd": OCI_LAYER_ZSTD}


# --------------------------------------------------------------------------- helpers


def sha256_digest(data: bytes) -> str:
    """Return the ``sha256:<hex>`` digest of *data*."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(n: int, seed: int) -> bytes:
    """Return *n* deterministic, incompressible bytes derived from *seed*."""
    if n <= 0:
        return b""
    return hashlib.shake_256(f"random-bytes:{seed}".encode()).digest(n)


#: The files of the ``big_layers_image`` fixture, one per layer: each incompressible
#: and 3 MiB, more than a pipe holds, so that a transfer can be cut inside a layer.
BIG_LAYER_FILES: dict[str, bytes] = {
    "big/a.bin": random_bytes(3 << 20, seed=11),
    "big/b.bin": random_bytes(3 << 20, seed=12),
}


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def run_skopeo(
    *args: str, skopeo: str = "skopeo", check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run ``skopeo --insecure-policy ARGS...`` and capture its output (bytes)."""
    proc = subprocess.run(
        [skopeo, "--insecure-policy", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"skopeo {' '.join(args)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layer:
    """A filesystem layer: ``path -> content``; parent directories are implied."""

    files: dict[str, bytes]
    compression: str = "gzip"

    def __post_init__(self) -> None:
        if self.compression not in _LAYER_MEDIA_TYPES:
            raise ValueError(f"unknown compression {self.compression!r}")
        if self.compression == "zstd" and not HAVE_ZSTD:
            raise ValueError("zstd layers need the 'zstandard' module")

    @property
    def media_type(self) -> str:
        """OCI media type of the stored blob."""
        return _LAYER_MEDIA_TYPES[self.compression]

    def tar_bytes(self) -> bytes:
        """Return the uncompressed, byte-for-byte reproducible tar stream."""
        files: dict[str, bytes] = {}
        dirs: set[str] = set()
        for raw_name, content in self.files.items():
            name = raw_name.strip("/")
            if not name or any(part in ("", ".", "..") for part in name.split("/")):
                raise ValueError(f"bad layer path {raw_name!r}")
            files[name] = content
            parts = name.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
        clash = dirs & files.keys()
        if clash:
            raise ValueError(f"paths used both as file and directory: {sorted(clash)}")

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(dirs | files.keys()):
                info = tarfile.TarInfo(name)
                info.mtime = FIXED_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if name in files:
                    info.type = tarfile.REGTYPE
                    info.mode = 0o644
                    info.size = len(files[name])
                    tar.addfile(info, io.BytesIO(files[name]))
                else:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
        return buf.getvalue()

    def blob(self) -> tuple[bytes, bytes]:
        """Return ``(stored blob bytes, uncompressed tar bytes)``."""
        tar = self.tar_bytes()
        if self.compression == "none":
            return tar, tar
        if self.compression == "gzip":
            return gzip.compress(tar, compresslevel=6, mtime=0), tar
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(tar), tar


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BuiltImage:
    """Everything a test needs to know about an image written to disk.

    ``layers`` holds ``(digest, size, media_type, blob bytes as stored)`` tuples
    in manifest order.  ``index_digest`` is set when ``ref`` resolves to an
    index (multi-platform image); ``manifest`` is then one platform's manifest.
    """

    ref: str
    transport: str
    path: Path
    manifest_digest: str
    manifest: bytes
    manifest_media_type: str
    config: bytes
    config_digest: str
    layers: list[tuple[str, int, str, bytes]]
    diff_ids: list[str]
    index_digest: str | None = None
    platform: str | None = None
    tag: str | None = None
    source_layers: tuple[Layer, ...] = ()
    #: Where each layer blob lives on disk, when stored as a plain file.
    blob_paths: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def manifest_json(self) -> dict[str, Any]:
        """Parsed manifest."""
        result: dict[str, Any] = json.loads(self.manifest)
        return result

    @property
    def config_json(self) -> dict[str, Any]:
        """Parsed config."""
        result: dict[str, Any] = json.loads(self.config)
        return result

    @property
    def layer_digests(self) -> list[str]:
        """Layer blob digests in manifest order."""
        return [digest for digest, _, _, _ in self.layers]

    @property
    def blobs(self) -> dict[str, bytes]:
        """All blobs referenced by the manifest (config + layers), by digest."""
        out = {self.config_digest: self.config}
        out.update({digest: data for digest, _, _, data in self.layers})
        return out


@dataclass(frozen=True)
class MultiPlatformImage:
    """An OCI image index in a layout; ``images`` is keyed like ``"linux/arm64/v8"``."""

    ref: str
    path: Path
    tag: str
    index_digest: str
    index: bytes
    images: dict[str, BuiltImage]

    @property
    def index_json(self) -> dict[str, Any]:
        """Parsed index."""
        result: dict[str, Any] = json.loads(self.index)
        return result


def platform_key(os: str, architecture: str, variant: str | None = None) -> str:
    """Return ``"os/arch[/variant]"``."""
    return f"{os}/{architecture}/{variant}" if variant else f"{os}/{architecture}"


# --------------------------------------------------------------------------- OCI layout


class _Blobs:
    """Content-addressed writer for ``blobs/sha256`` of an OCI layout (or a dir: image)."""

    def __init__(self, root: Path, *, flat: bool = False) -> None:
        self.dir = root if flat else root / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / digest.removeprefix("sha256:")

    def put(self, data: bytes) -> str:
        digest = sha256_digest(data)
        target = self.path(digest)
        if not target.exists() or target.stat().st_size != len(data):
            target.write_bytes(data)
        return digest


@dataclass(frozen=True)
class _Parts:
    manifest: bytes
    manifest_digest: str
    config: bytes
    config_digest: str
    layers: list[tuple[str, int, str, bytes]]
    diff_ids: list[str]


def _make_image(
    layers: Sequence[Layer],
    *,
    architecture: str,
    os: str,
    variant: str | None,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
) -> _Parts:
    stored: list[tuple[str, int, str, bytes]] = []
    diff_ids: list[str] = []
    history: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        blob, tar = layer.blob()
        stored.append((sha256_digest(blob), len(blob), layer.media_type, blob))
        diff_ids.append(sha256_digest(tar))
        history.append(
            {
                "created": FIXED_CREATED,
                "created_by": f"images.py layer {i} ({layer.compression}, "
                f"{len(layer.files)} files)",
            }
        )

    config_obj: dict[str, Any] = {
        "created": FIXED_CREATED,
        "architecture": architecture,
        "os": os,
    }
    if variant:
        config_obj["variant"] = variant
    config_obj["config"] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
        "Labels": dict(labels or {}),
    }
    config_obj["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config_obj["history"] = history
    config = _canonical_json(config_obj)

    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": media_type, "digest": digest, "size": size}
            for digest, size, media_type, _ in stored
        ],
    }
    if annotations:
        manifest_obj["annotations"] = dict(annotations)
    manifest = _canonical_json(manifest_obj)
    return _Parts(
        manifest=manifest,
        manifest_digest=sha256_digest(manifest),
        config=config,
        config_digest=sha256_digest(config),
        layers=stored,
        diff_ids=diff_ids,
    )


def _write_parts(blobs: _Blobs, parts: _Parts) -> tuple[Path, ...]:
    blobs.put(parts.config)
    paths = []
    for _, _, _, data in parts.layers:
        paths.append(blobs.path(blobs.put(data)))
    blobs.put(parts.manifest)
    return tuple(paths)


def _add_to_index_json(dest: Path, descriptor: dict[str, Any], tag: str) -> None:
    """Add *descriptor* to ``index.json`` under *tag*, replacing any entry with that tag."""
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    index_path = dest / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_bytes())
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"] = [
        d
        for d in index.get("manifests", [])
        if d.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
    ]
    annotations = dict(descriptor.get("annotations", {}))
    annotations[REF_NAME_ANNOTATION] = tag
    index["manifests"].append({**descriptor, "annotations": annotations})
    index_path.write_bytes(_canonical_json(index))


def build_oci_layout(
    dest: Path,
    layers: Sequence[Layer],
    *,
    tag: str = "latest",
    architecture: str = "amd64",
    os: str = "linux",
    variant: str | None = None,
    labels: Mapping[str, str] | None = None,
    extra_annotations: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Write (or add to) an OCI image layout at *dest*; the image is tagged *tag*.

    ``extra_annotations`` go both into the manifest and onto its ``index.json``
    descriptor.  Calling again with another tag adds an image; the same tag
    replaces the previous entry.
    """
    dest = Path(dest)
    parts = _make_image(
        layers,
        architecture=architecture,
        os=os,
        variant=variant,
        labels=labels,
        annotations=extra_annotations,
    )
    blob_paths = _write_parts(_Blobs(dest), parts)
    descriptor: dict[str, Any] = {
        "mediaType": OCI_MANIFEST,
        "digest": parts.manifest_digest,
        "size": len(parts.manifest),
        "annotations": dict(extra_annotations or {}),
    }
    _add_to_index_json(dest, descriptor, tag)
    return BuiltImage(
        ref=f"oci:{dest}:{tag}",
        transport="oci",
        path=dest,
        manifest_digest=parts.manifest_digest,
        manifest=parts.manifest,
        manifest_media_type=OCI_MANIFEST,
        config=parts.config,
        config_digest=parts.config_digest,
        layers=parts.layers,
        diff_ids=parts.diff_ids,
        platform=platform_key(os, architecture, variant),
        tag=tag,
        source_layers=tuple(layers),
        blob_paths=blob_paths,
    )


def build_oci_index(
    dest: Path,
    platforms: list[tuple[str, str, str | None, list[Layer]]],
    *,
    tag: str = "multi",
    labels: Mapping[str, str] | None = None,
) -> MultiPlatformImage:
    """Write a multi-platform image (an index blob) into the OCI layout at *dest*.

    *platforms* holds ``(os, architecture, variant, layers)`` tuples.  ``index.json``
    gets one entry, tagged *tag*, pointing at the nested image index.
    """
    dest = Path(dest)
    blobs = _Blobs(dest)
    entries: list[dict[str, Any]] = []
    built: dict[str, tuple[_Parts, tuple[Path, ...], tuple[Layer, ...]]] = {}
    for os, architecture, variant, layers in platforms:
        key = platform_key(os, architecture, variant)
        if key in built:
            raise ValueError(f"duplicate platform {key}")
        parts = _make_image(
            layers,
            architecture=architecture,
            os=os,
            variant=variant,
            labels=labels,
            annotations=None,
        )
        built[key] = (parts, _write_parts(blobs, parts), tuple(layers))
        platform: dict[str, str] = {"architecture": architecture, "os": os}
        if variant:
            platform["variant"] = variant
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": parts.manifest_digest,
                "size": len(parts.manifest),
                "platform": platform,
            }
        )
    index = _canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    index_digest = blobs.put(index)
    _add_to_index_json(
        dest, {"mediaType": OCI_INDEX, "digest": index_digest, "size": len(index)}, tag
    )
    ref = f"oci:{dest}:{tag}"
    images = {
        key: BuiltImage(
            ref=ref,
            transport="oci",
            path=dest,
            manifest_digest=parts.manifest_digest,
            manifest=parts.manifest,
            manifest_media_type=OCI_MANIFEST,
            config=parts.config,
            config_digest=parts.config_digest,
            layers=parts.layers,
            diff_ids=parts.diff_ids,
            index_digest=index_digest,
            platform=key,
            tag=tag,
            source_layers=source_layers,
            blob_paths=paths,
        )
        for key, (parts, paths, source_layers) in built.items()
    }
    return MultiPlatformImage(
        ref=ref, path=dest, tag=tag, index_digest=index_digest, index=index, images=images
    )


# --------------------------------------------------------------------------- other transports


def build_oci_archive(
    path: Path,
    layers: Sequence[Layer],
    *,
    tag: str = "latest",
    labels: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Write an ``oci-archive`` tarball (a tarred OCI layout) at *path*."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".oci-archive-") as tmp:
        layout = Path(tmp) / "layout"
        image = build_oci_layout(layout, layers, tag=tag, labels=labels)
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for member in sorted(layout.rglob("*")):
                info = tar.gettarinfo(member, arcname=member.relative_to(layout).as_posix())
                info.mtime = FIXED_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o755 if member.is_dir() else 0o644
                if member.is_dir():
                    tar.addfile(info)
                else:
                    with member.open("rb") as fh:
                        tar.addfile(info, fh)
    return BuiltImage(
        ref=f"oci-archive:{path}:{tag}",
        transport="oci-archive",
        path=path,
        manifest_digest=image.manifest_digest,
        manifest=image.manifest,
        manifest_media_type=image.manifest_media_type,
        config=image.config,
        config_digest=image.config_digest,
        layers=image.layers,
        diff_ids=image.diff_ids,
        platform=image.platform,
        tag=tag,
        source_layers=image.source_layers,
    )


def build_dir(
    path: Path,
    layers: Sequence[Layer],
    *,
    labels: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Write a skopeo ``dir:`` image at *path* (must be absent or empty)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty")
    parts = _make_image(
        layers, architecture="amd64", os="linux", variant=None, labels=labels, annotations=None
    )
    blobs = _Blobs(path, flat=True)
    blobs.put(parts.config)
    blob_paths = tuple(blobs.path(blobs.put(data)) for _, _, _, data in parts.layers)
    (path / "manifest.json").write_bytes(parts.manifest)
    (path / "version").write_bytes(DIR_TRANSPORT_VERSION)
    return BuiltImage(
        ref=f"dir:{path}",
        transport="dir",
        path=path,
        manifest_digest=parts.manifest_digest,
        manifest=parts.manifest,
        manifest_media_type=OCI_MANIFEST,
        config=parts.config,
        config_digest=parts.config_digest,
        layers=parts.layers,
        diff_ids=parts.diff_ids,
        platform="linux/amd64",
        source_layers=tuple(layers),
        blob_paths=blob_paths,
    )


def build_docker_archive(
    path: Path,
    layers: Sequence[Layer],
    *,
    tag: str = "example.com/test:latest",
    labels: Mapping[str, str] | None = None,
    skopeo: str = "skopeo",
) -> BuiltImage:
    """Write a ``docker-archive`` tarball at *path* by having skopeo convert an OCI layout.

    The recorded manifest is the Docker schema 2 manifest that skopeo
    synthesises when reading the archive (layers are stored uncompressed,
    so layer digests equal the diff IDs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # docker-archive refuses to overwrite/append in skopeo 1.9
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".docker-archive-") as tmp:
        src = build_oci_layout(Path(tmp) / "layout", layers, labels=labels)
        run_skopeo("copy", "--quiet", src.ref, f"docker-archive:{path}:{tag}", skopeo=skopeo)
    ref = f"docker-archive:{path}:{tag}"
    manifest = run_skopeo("inspect", "--raw", ref, skopeo=skopeo).stdout
    config = run_skopeo("inspect", "--config", "--raw", ref, skopeo=skopeo).stdout
    manifest_obj = json.loads(manifest)

    # Read the blobs exactly as stored in the tarball.
    with tarfile.open(path) as tar:
        (entry,) = json.loads(_tar_read(tar, "manifest.json"))
        stored_config = _tar_read(tar, entry["Config"])
        stored_layers = [_tar_read(tar, name) for name in entry["Layers"]]
    if stored_config != config:
        raise AssertionError("docker-archive config differs from what skopeo reports")
    if len(stored_layers) != len(manifest_obj["layers"]):
        raise AssertionError("docker-archive layer count mismatch")
    recorded: list[tuple[str, int, str, bytes]] = []
    for desc, data in zip(manifest_obj["layers"], stored_layers, strict=True):
        if sha256_digest(data) != desc["digest"]:
            raise AssertionError(f"docker-archive layer {desc['digest']} does not match")
        recorded.append((desc["digest"], desc["size"], desc["mediaType"], data))
    return BuiltImage(
        ref=ref,
        transport="docker-archive",
        path=path,
        manifest_digest=sha256_digest(manifest),
        manifest=manifest,
        manifest_media_type=manifest_obj.get("mediaType", DOCKER_MANIFEST),
        config=config,
        config_digest=sha256_digest(config),
        layers=recorded,
        diff_ids=list(json.loads(config)["rootfs"]["diff_ids"]),
        platform=src.platform,
        tag=tag,
        source_layers=tuple(layers),
    )


def _tar_read(tar: tarfile.TarFile, name: str) -> bytes:
    fh = tar.extractfile(name)  # follows in-archive symlinks
    if fh is None:
        raise FileNotFoundError(name)
    with fh:
        return fh.read()


# --------------------------------------------------------------------------- mutation


def corrupt_blob(image: BuiltImage, layer_index: int = 0) -> None:
    """Flip one byte (same length) of a stored layer blob so its digest no longer matches.

    Works for images whose blobs are plain files (``oci:`` layouts and ``dir:``).
    """
    if not image.blob_paths:
        raise ValueError(f"cannot corrupt blobs of a {image.transport} image in place")
    blob_path = image.blob_paths[layer_index]
    data = bytearray(blob_path.read_bytes())
    if not data:
        raise ValueError("cannot corrupt an empty blob")
    pos = len(data) // 2
    data[pos] ^= 0xFF
    blob_path.write_bytes(bytes(data))


def skopeo_path() -> str | None:
    """Return the skopeo executable, or None if it is not installed."""
    return shutil.which("skopeo")
