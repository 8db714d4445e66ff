"""An OCI image layout directory being written: blobs, index.json, oci-layout.

Every blob is written to a temporary file in ``blobs/<algorithm>/`` and renamed to
its digest only once it has been verified, so a file under a digest name is always
whole and right; ``index.json`` is replaced atomically, after the blobs. Each file
is flushed to disk before it is renamed, blobs included: ``index.json`` commits the
pull, and a crash must not leave it naming a blob whose data never reached the disk.
(On a local 256 MiB pull to ext4 this costs about a tenth of the pull's time, and
nothing once the data has to reach the disk anyway.)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ._fd import CHUNK_SIZE, atomic_file
from .errors import LayoutError
from .oci import ANNOTATION_REF_NAME, MEDIA_TYPE_IMAGE_INDEX, Digest

__all__ = ["SOURCE_DIGEST", "Layout", "LayoutError"]

#: Annotation of a manifest that a pull corrected (see ``pull``): the digest of the
#: source's own manifest.
SOURCE_DIGEST = "containers-image-proxy.source.digest"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[BinaryIO]:
    """Return an :func:`~containers_image_proxy._fd.atomic_file` for ``path``.

    It is named ``.PID-...``, so that a later writer can remove it if this process
    dies. A file that cannot even be created raises :class:`LayoutError`.
    """
    with contextlib.ExitStack() as stack:
        try:
            out = stack.enter_context(atomic_file(path, prefix=f".{os.getpid()}-"))
        except OSError as exc:
            raise LayoutError(f"cannot write into {path.parent}: {exc.strerror or exc}") from exc
        yield out


class Layout:
    """An OCI image layout at ``root``, created if needed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            if self.root.exists() and not self.root.is_dir():
                raise LayoutError(f"destination {self.root} exists and is not a directory")
            (self.root / "blobs").mkdir(parents=True, exist_ok=True)
            self._remove_orphans()
            marker = self.root / "oci-layout"
            if not marker.exists():
                self._replace(marker, b'{"imageLayoutVersion":"1.0.0"}')
        except LayoutError:
            raise
        except OSError as exc:
            raise LayoutError(
                f"cannot use {self.root} as an OCI layout: {exc.strerror or exc}"
            ) from exc

    def _remove_orphans(self) -> None:
        """Remove temporary files left by writers that died (named ``.PID-...``)."""
        for directory in (self.root, *(self.root / "blobs").iterdir()):
            if not directory.is_dir():
                continue
            for path in directory.glob(".*-*"):
                pid = path.name[1:].split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)

    def blob_path(self, digest: Digest) -> Path:
        """Return where the blob with ``digest`` lives."""
        return self.root / "blobs" / digest.algorithm / digest.encoded

    def has_blob(self, digest: Digest, size: int) -> bool:
        """Return whether the blob is present, with the right size and content."""
        path = self.blob_path(digest)
        try:
            if path.stat().st_size != size:
                return False
            hasher = digest.hasher()
            with path.open("rb") as f:
                while chunk := f.read(CHUNK_SIZE):
                    hasher.update(chunk)
        except OSError:
            return False
        return hasher.hexdigest() == digest.encoded

    @contextlib.contextmanager
    def new_blob(self, digest: Digest) -> Iterator[BinaryIO]:
        """Return a temporary file that becomes the blob ``digest`` if the block succeeds."""
        path = self.blob_path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LayoutError(f"cannot write into {path.parent}: {exc.strerror or exc}") from exc
        with _new_file(path) as f:
            yield f

    def write_blob(self, digest: Digest, data: bytes) -> None:
        """Store ``data`` (already verified) as the blob ``digest``."""
        with self.new_blob(digest) as f:
            f.write(data)

    def put_blob(self, digest: Digest, data: bytes) -> bool:
        """Store ``data`` as the blob ``digest`` unless it is already there, whole.

        Returns whether it was written.
        """
        if self.has_blob(digest, len(data)):
            return False
        self.write_blob(digest, data)
        return True

    def read_head(self, digest: Digest, size: int) -> bytes:
        """Return the first ``size`` bytes of a stored blob (fewer for a shorter blob)."""
        path = self.blob_path(digest)
        try:
            with path.open("rb") as f:
                return f.read(size)
        except OSError as exc:
            raise LayoutError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def add_manifest(self, descriptor: dict[str, Any], tag: str | None) -> bool:
        """Name a manifest in index.json (replacing the entry of the same tag).

        index.json is left alone when it already holds exactly that entry; returns
        whether it was written.
        """
        index_path = self.root / "index.json"
        try:
            index = json.loads(index_path.read_bytes())
        except FileNotFoundError:
            index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_IMAGE_INDEX, "manifests": []}
        except (OSError, ValueError) as exc:
            raise LayoutError(f"cannot read {index_path}: {exc}") from exc
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise LayoutError(f"cannot read {index_path}: not an OCI image index")
        entry = dict(descriptor)
        if tag is not None:
            entry["annotations"] = {**entry.get("annotations", {}), ANNOTATION_REF_NAME: tag}
        kept = [
            m
            for m in index.get("manifests", [])
            if (tag is None and m.get("digest") != entry["digest"])
            or (tag is not None and m.get("annotations", {}).get(ANNOTATION_REF_NAME) != tag)
        ]
        if entry in index.get("manifests", []) and len(kept) + 1 == len(index["manifests"]):
            return False
        index["manifests"] = [*kept, entry]
        self._replace(index_path, json.dumps(index, separators=(",", ":")).encode())
        return True

    def _replace(self, path: Path, data: bytes) -> None:
        with _new_file(path) as f:
            f.write(data)
