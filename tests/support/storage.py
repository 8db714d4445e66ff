"""A private containers-storage store for the tests: the vfs driver, in a directory of its own.

The store has its own ``storage.conf`` and ``containers.conf``; podman and skopeo reach
it through ``CONTAINERS_STORAGE_CONF`` and ``CONTAINERS_CONF`` (``Store.environ``), or
through the explicit reference form ``containers-storage:[vfs@GRAPHROOT+RUNROOT]NAME``.
podman's own state (its database, locks, temporary files) stays inside the directory
too, and it never touches the system store. Everything here needs root: a rootless
podman would keep a pause process alive after it exits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.hostile_layers import TarLayer
from tests.support.images import BuiltImage, build_oci_archive, run_skopeo

TRANSPORT = "containers-storage:"


def podman_path() -> str | None:
    """The podman executable, or None if it is not installed."""
    return shutil.which("podman")


def _toml_string(value: Path | str) -> str:
    return json.dumps(str(value))


@dataclass(frozen=True)
class StoredImage:
    """An image put into a store, and the OCI layout image it was made from.

    ``how`` says how it got there; ``plain_manifest`` whether the manifest the store
    keeps names the uncompressed layers (the store serves only those) rather than the
    compressed blobs it was copied from.
    """

    name: str
    image_id: str
    source: BuiltImage
    how: str
    plain_manifest: bool
    #: The manifest the store keeps, as skopeo reads it back.
    manifest: bytes


class Store:
    """A containers-storage store under ``root`` (created), with the vfs driver."""

    driver = "vfs"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.graphroot = self.root / "graph"
        self.runroot = self.root / "run"
        self.storage_conf = self.root / "storage.conf"
        self.containers_conf = self.root / "containers.conf"
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.storage_conf.write_text(
            "[storage]\n"
            f"driver = {_toml_string(self.driver)}\n"
            f"graphroot = {_toml_string(self.graphroot)}\n"
            f"runroot = {_toml_string(self.runroot)}\n"
        )
        libpod = self.root / "libpod"
        # podman's defaults put its state under /run and /dev/shm: all of it comes here.
        self.containers_conf.write_text(
            "[engine]\n"
            f"tmp_dir = {_toml_string(libpod / 'tmp')}\n"
            f"static_dir = {_toml_string(libpod / 'static')}\n"
            f"volume_path = {_toml_string(libpod / 'volumes')}\n"
            f"image_copy_tmp_dir = {_toml_string(self.tmp)}\n"
            'lock_type = "file"\n'
            'events_logger = "none"\n'
            'cgroup_manager = "cgroupfs"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f"network_config_dir = {_toml_string(libpod / 'networks')}\n"
        )

    @property
    def env(self) -> dict[str, str]:
        """The variables that point podman and skopeo at this store."""
        return {
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "CONTAINERS_CONF": str(self.containers_conf),
        }

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this store."""
        return {**(os.environ if base is None else base), **self.env, "TMPDIR": str(self.tmp)}

    def reference(self, name: str, *, explicit: bool = False) -> str:
        """``containers-storage:NAME``, or with this store spelled out in the reference."""
        if explicit:
            return f"{TRANSPORT}[{self.driver}@{self.graphroot}+{self.runroot}]{name}"
        return f"{TRANSPORT}{name}"

    def podman(self, *args: str, timeout: float = 120) -> str:
        """Run ``podman ARGS`` against this store; its standard output."""
        podman = podman_path()
        if podman is None:
            raise RuntimeError("podman is not installed")
        proc = subprocess.run(
            [podman, *args],
            env=self.environ(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args)} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout.decode()

    def skopeo(self, *args: str, skopeo: str = "skopeo") -> bytes:
        """Run ``skopeo --insecure-policy ARGS`` against this store; its standard output."""
        proc = subprocess.run(
            [skopeo, "--insecure-policy", *args],
            env=self.environ(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"skopeo {' '.join(args)} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout

    def image_id(self, name: str) -> str:
        """The full ID (64 hex digits, no algorithm) of the image ``name``."""
        return self.podman("image", "inspect", "--format", "{{.Id}}", name).strip()

    def _stored(
        self, name: str, source: BuiltImage, how: str, *, plain_manifest: bool
    ) -> StoredImage:
        manifest = self.skopeo("inspect", "--raw", self.reference(name))
        return StoredImage(
            name=name,
            image_id=self.image_id(name),
            source=source,
            how=how,
            plain_manifest=plain_manifest,
            manifest=manifest,
        )

    def load_docker_archive(self, source: BuiltImage, name: str) -> StoredImage:
        """``podman load`` of a docker-archive of ``source`` (layers stored as plain tar).

        docker-archive cannot hold zstd layers: ``source`` must not have any.
        """
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            archive = Path(work) / "image.tar"
            run_skopeo("copy", "--quiet", source.ref, f"docker-archive:{archive}:{name}")
            loaded = self.podman("load", "--quiet", "--input", str(archive))
        if name not in loaded:
            raise RuntimeError(f"podman load did not report {name}: {loaded!r}")
        return self._stored(name, source, "podman load (docker-archive)", plain_manifest=True)

    def load_oci_archive(self, source: BuiltImage, name: str) -> StoredImage:
        """``podman load`` of an oci-archive of ``source``'s layers, as they were built."""
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            archive = Path(work) / "image.tar"
            # Built here: skopeo would compress the plain layers on the way to an OCI archive.
            # podman names the image after the archive's ref.name annotation.
            build_oci_archive(archive, list(source.source_layers), tag=name, labels=_labels(source))
            loaded = self.podman("load", "--quiet", "--input", str(archive))
        if name not in loaded:
            raise RuntimeError(f"podman load did not report {name}: {loaded!r}")
        return self._stored(
            name, source, "podman load (oci-archive)", plain_manifest=_all_plain(source)
        )

    def copy(self, source: BuiltImage, name: str) -> StoredImage:
        """``skopeo copy SOURCE containers-storage:NAME`` with Debian's skopeo."""
        self.skopeo("copy", "--quiet", source.ref, self.reference(name))
        return self._stored(name, source, "skopeo copy", plain_manifest=_all_plain(source))


def _labels(image: BuiltImage) -> dict[str, str]:
    labels: dict[str, str] = json.loads(image.config).get("config", {}).get("Labels") or {}
    return labels


def _all_plain(image: BuiltImage) -> bool:
    return all(layer.compression == "none" for layer in image.source_layers)


def implied_directories(image: BuiltImage) -> frozenset[str]:
    """Directories of ``image`` that no tar entry names (unpackers give them "now")."""
    import tarfile
    from io import BytesIO

    named: set[str] = set()
    parents: set[str] = set()
    for layer in image.source_layers:
        with tarfile.open(fileobj=BytesIO(layer.tar_bytes())) as tar:
            for member in tar:
                path = member.name.strip("/").removeprefix("./")
                if member.isdir():
                    named.add(path)
                parts = path.split("/")
                parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(parents - named - {""})


def storable(layers: list[TarLayer]) -> list[TarLayer]:
    """``layers`` without the entries that a whiteout in the same layer also names.

    A store applies a layer to a directory in tar order and rebuilds the layer's tar
    from there later: a file under a path that the layer's own whiteout removes is
    gone, so the store cannot serve that layer again ("no such file or directory";
    ``skopeo copy`` out of the store fails the same way).
    """
    out = []
    for layer in layers:
        hidden = set()
        for entry in layer.entries:
            head, _, name = entry.name.rpartition("/")
            if name.startswith(".wh.") and name != ".wh..wh..opq":
                hidden.add(f"{head}/{name[4:]}" if head else name[4:])
        kept = tuple(
            entry
            for entry in layer.entries
            if not any(entry.name == path or entry.name.startswith(path + "/") for path in hidden)
        )
        out.append(dataclasses.replace(layer, entries=kept))
    return out
