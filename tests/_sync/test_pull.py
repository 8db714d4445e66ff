# Generated from tests/_async/test_pull.py by tools/gen_sync.py.
# Edit the source, not this file.
"""Pulling images into OCI layouts, checked with the real skopeo.

Written once in ``tests/_async/``; the blocking twin in ``tests/_sync/`` is generated
from it by tools/gen_sync.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from containers_image_proxy import (
    Blob,
    BlobFinished,
    BlobProgress,
    ImageNotFoundError,
    ImageProxy,
    ImageProxyConfig,
    LayoutError,
    PullEvent,
    PullStarted,
    RequestError,
    pull,
    stream_layers,
)
from containers_image_proxy.oci import Descriptor
from tests.support.fakeproxy import fake_skopeo
from tests.support.images import (
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    REF_NAME_ANNOTATION,
    BuiltImage,
    run_skopeo,
)
from tests.support.registry import RegistryImage
from tests.support.resources import child_pids

pytestmark = pytest.mark.usefixtures("no_leaks")


def check_layout(dest: Path, tag: str, image: BuiltImage) -> None:
    """skopeo accepts the layout, and every blob in it is whole."""
    inspected = json.loads(run_skopeo("inspect", f"oci:{dest}:{tag}").stdout)
    assert inspected["Layers"] == image.layer_digests
    for path in (dest / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    stored = {digest: data for digest, _, _, data in image.layers}
    for digest, data in stored.items():
        assert (dest / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == data
    index = json.loads((dest / "index.json").read_bytes())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert tag in names
    assert json.loads((dest / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}


def test_pull_oci_layout(skopeo: str, big_layers_image: BuiltImage, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    events: list[PullEvent] = []
    result = pull(big_layers_image.ref, dest, jobs=2, progress=events.append)
    assert result.tag == "latest"
    assert result.source_digest == big_layers_image.manifest_digest
    # The manifest is stored unchanged, so its digest is the source's.
    assert result.manifest_digest == big_layers_image.manifest_digest
    check_layout(dest, "latest", big_layers_image)
    assert isinstance(events[0], PullStarted)
    assert events[0].total_bytes == sum(size for _, size, _, _ in big_layers_image.layers) + len(
        big_layers_image.config
    )
    finished = [e for e in events if isinstance(e, BlobFinished)]
    assert len(finished) == 3 and not any(e.skipped for e in finished)
    received = sum(e.advance for e in events if isinstance(e, BlobProgress))
    assert received == events[0].total_bytes
    assert result.bytes_fetched == events[0].total_bytes
    # skopeo can copy the result onwards.
    run_skopeo("copy", f"oci:{dest}:latest", f"docker-archive:{tmp_path / 'a.tar'}:x/y:latest")

    # A second pull fetches nothing.
    again = pull(big_layers_image.ref, dest)
    assert again.fetched == () and again.bytes_fetched == 0
    assert set(again.skipped) == {big_layers_image.config_digest, *big_layers_image.layer_digests}


def test_pull_docker_archive(skopeo: str, docker_archive_image: BuiltImage, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    result = pull(docker_archive_image.ref, dest, tag="v1")
    # The source's digest is the Docker manifest's; the layout stores the OCI conversion.
    assert result.source_digest == docker_archive_image.manifest_digest
    assert result.manifest_digest != result.source_digest
    stored = (dest / "blobs" / "sha256" / result.manifest_digest.encoded).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == result.manifest_digest.encoded
    check_layout(dest, "v1", docker_archive_image)


def files_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Inode, mtime and size of every file and directory under ``root``."""
    state = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return state


def test_repull_writes_nothing(
    skopeo: str, docker_archive_image: BuiltImage, oci_image: BuiltImage, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    first = pull(docker_archive_image.ref, dest)
    assert first.rewritten  # the case where the stored manifest is ours
    pull(oci_image.ref, dest, tag="other")
    before = files_state(dest)
    for reference, tag in ((docker_archive_image.ref, None), (oci_image.ref, "other")):
        again = pull(reference, dest, tag=tag)
        assert again.fetched == () and again.bytes_fetched == 0
        assert files_state(dest) == before  # not even the manifest blob or index.json
    assert again.manifest_digest == oci_image.manifest_digest
    # A damaged manifest blob is written again (it is not "present and correct").
    manifest = dest / "blobs" / "sha256" / first.manifest_digest.encoded
    manifest.write_bytes(b"{}")
    pull(docker_archive_image.ref, dest)
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == first.manifest_digest.encoded
    # An index entry with another tag adds to index.json, and only then.
    pull(docker_archive_image.ref, dest, tag="third")
    index = json.loads((dest / "index.json").read_bytes())
    assert sorted(m["annotations"][REF_NAME_ANNOTATION] for m in index["manifests"]) == [
        "latest",
        "other",
        "third",
    ]


def test_pull_archive_and_dir_sources(
    skopeo: str, oci_archive_image: BuiltImage, dir_image: BuiltImage, tmp_path: Path
) -> None:
    for image, tag in ((oci_archive_image, "arch"), (dir_image, "dir")):
        pull(image.ref, tmp_path / "out", tag=tag)
        check_layout(tmp_path / "out", tag, image)
    index = json.loads((tmp_path / "out" / "index.json").read_bytes())
    assert len(index["manifests"]) == 2


def test_pull_over_a_pool(skopeo: str, big_layers_image: BuiltImage, tmp_path: Path) -> None:
    seen: set[int] = set()

    def watch(event: PullEvent) -> None:
        if isinstance(event, BlobProgress):
            seen.update(child_pids())

    pull(big_layers_image.ref, tmp_path / "out", jobs=16, progress=watch)
    assert len(seen) >= 2  # jobs beyond one proxy's share (8) start a second proxy
    check_layout(tmp_path / "out", "latest", big_layers_image)


def test_one_proxy_serves_eight_streams(
    skopeo: str, big_layers_image: BuiltImage, tmp_path: Path
) -> None:
    before = child_pids()  # the session's own children (a registry...) do not count
    seen: set[int] = set()

    def watch(event: PullEvent) -> None:
        if isinstance(event, BlobProgress):
            seen.update(child_pids() - before)

    pull(big_layers_image.ref, tmp_path / "out", jobs=8, progress=watch)
    assert len(seen) == 1  # eight at once fit one proxy: no second skopeo
    check_layout(tmp_path / "out", "latest", big_layers_image)


def test_pull_errors(skopeo: str, oci_image: BuiltImage, tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError):
        pull(f"oci:{oci_image.path}:missing", tmp_path / "a")
    with pytest.raises(RequestError, match="transport"):
        pull("nosuch:thing", tmp_path / "b")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(LayoutError, match="not a directory"):
        pull(oci_image.ref, afile)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(LayoutError):
                pull(oci_image.ref, readonly / "x")
    finally:
        readonly.chmod(0o700)
    with pytest.raises(ValueError, match="jobs"):
        pull(oci_image.ref, tmp_path / "c", jobs=0)


def test_interrupted_pull_resumes(
    skopeo: str, big_layers_image: BuiltImage, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    script = (
        "import os, signal, sys\n"
        "from containers_image_proxy import pull, BlobProgress\n"
        "def progress(event):\n"
        "    if isinstance(event, BlobProgress) and event.received > 1 << 20:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "pull(sys.argv[1], sys.argv[2], jobs=1, progress=progress)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, big_layers_image.ref, str(dest)])
    assert run.returncode == -signal.SIGKILL
    # Killed mid-way: no index, and no wrong blob under a digest name.
    assert not (dest / "index.json").exists()
    partial = [p for p in (dest / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert partial  # the layer being written when the pull died
    for path in (dest / "blobs" / "sha256").iterdir():
        if not path.name.startswith("."):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    result = pull(big_layers_image.ref, dest)
    assert result.skipped  # the config, at least, was already there
    assert big_layers_image.layer_digests[0] in result.fetched
    check_layout(dest, "latest", big_layers_image)


def test_failed_pull_leaves_no_temporary_files(
    skopeo: str, big_layers_image: BuiltImage, tmp_path: Path
) -> None:
    class Stop(Exception):
        pass

    def progress(event: PullEvent) -> None:
        if isinstance(event, BlobProgress) and event.received > 1 << 20:
            raise Stop

    with pytest.raises(Stop):
        pull(big_layers_image.ref, tmp_path / "out", jobs=1, progress=progress)
    leftovers = [p for p in (tmp_path / "out" / "blobs" / "sha256").iterdir() if p.name[0] == "."]
    assert leftovers == []
    assert not (tmp_path / "out" / "index.json").exists()


def test_stream_layers_states_true_media_types(
    skopeo: str, docker_archive_image: BuiltImage, oci_image: BuiltImage
) -> None:
    heads: list[tuple[Descriptor, bytes]] = []

    def consume(layer: Descriptor, blob: Blob) -> None:
        heads.append((layer, blob.read(512)))

    # docker-archive: the proxy labels these plain tar layers gzip; the bytes win.
    layers = stream_layers(docker_archive_image.ref, consume)
    assert [str(layer.digest) for layer in layers] == docker_archive_image.layer_digests
    assert {layer.media_type for layer in layers} == {OCI_LAYER_TAR}
    assert [layer for layer, _ in heads] == layers
    for _, head in heads:
        assert not head.startswith(b"\x1f\x8b")
        assert tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape").name
    # A source whose labels are true: the manifest's own descriptors.
    heads.clear()
    layers = stream_layers(oci_image.ref, consume)
    assert [layer.media_type for layer in layers] == [t for _, _, t, _ in oci_image.layers]
    assert [head[:2] == b"\x1f\x8b" for _, head in heads] == [
        t == OCI_LAYER_GZIP for _, _, t, _ in oci_image.layers
    ]


def test_peek_leaves_the_bytes_for_reading(
    skopeo: str, big_layers_image: BuiltImage, tmp_path: Path
) -> None:
    digest, size, _, data = big_layers_image.layers[0]
    with ImageProxy() as proxy, proxy.open_image(big_layers_image.ref) as image:
        with proxy.get_blob(image, digest, size) as blob:
            assert blob.peek(10) == data[:10]
            assert blob.peek(512) == data[:512]
            assert blob.bytes_read == 0
            assert blob.read(5) == data[:5]
            assert blob.bytes_read == 5
            assert data[:5] + blob.readall() == data
        with proxy.get_blob(image, digest, size) as blob:
            blob.peek(100)
            seen: list[int] = []
            with open(tmp_path / "copy", "wb") as out:
                assert blob.copy_to(out, seen.append) == size
            assert (tmp_path / "copy").read_bytes() == data and sum(seen) == size
        # A blob shorter than the peek ends there, verified; reading still gives it all.
        config = big_layers_image.config
        with proxy.get_blob(image, big_layers_image.config_digest, len(config)) as blob:
            assert blob.peek(len(config) + 100) == config
            assert blob.read() == config
            assert blob.read(1) == b""


@pytest.mark.parametrize("version", ["0.2.5", "0.2.6", "0.2.7"])
def test_layer_info_of_many_layers_inline(
    version: str, many_layers_image: BuiltImage, tmp_path: Path
) -> None:
    # Inline (0.2.5, 0.2.6) the answer overflows its packet: the bytes tell the types.
    log = tmp_path / "log"
    config = ImageProxyConfig(skopeo_cmd=fake_skopeo(version, "--log", str(log)))
    result = pull(many_layers_image.ref, tmp_path / "out", config=config)
    assert result.manifest_digest == many_layers_image.manifest_digest
    assert not result.rewritten
    layers = stream_layers(many_layers_image.ref, no_op, config=config)
    assert [str(layer.digest) for layer in layers] == many_layers_image.layer_digests
    methods = [line.split(" ", 1)[0] for line in log.read_text().splitlines()]
    assert ("GetLayerInfoPiped" if version == "0.2.7" else "GetLayerInfo") in methods


def no_op(layer: Descriptor, blob: Blob) -> None:
    pass


def test_stream_layers(skopeo: str, big_layers_image: BuiltImage) -> None:
    seen: dict[str, bytes] = {}

    def consume(layer: Descriptor, blob: Blob) -> None:
        # Reads only the start: the rest is drained and verified for us.
        seen[layer.digest] = blob.read(100)

    layers = stream_layers(big_layers_image.ref, consume)
    assert [str(layer.digest) for layer in layers] == big_layers_image.layer_digests
    for digest, _, _, data in big_layers_image.layers:
        assert seen[digest] == data[:100]


def test_pull_from_registry(skopeo: str, registry_image: RegistryImage, tmp_path: Path) -> None:
    config = ImageProxyConfig(insecure_skip_tls_verification=True)
    for ref in (registry_image.ref, registry_image.digest_ref):
        dest = tmp_path / "out"
        result = pull(ref, dest, config=config, tag="pulled", jobs=4)
        assert result.source_digest == registry_image.image.manifest_digest
        check_layout(dest, "pulled", registry_image.image)
