"""Benchmark: unpacking an image from containers-storage against the same image in an OCI layout.

    python bench/containers_storage.py              # the image of bench/unpack.py (125 MiB)
    python bench/containers_storage.py --smoke      # tiny sizes: checks that it works
    python bench/containers_storage.py --skopeo PATH
        # also the image stored from gzip layers, read by a skopeo with GetLayerInfo

The gzip image of bench/unpack.py is built as an OCI layout, and put into a private vfs
store (tests/support/storage.py) twice: by ``podman load`` of a docker-archive (the store's
manifest names its plain layers) and by ``skopeo copy`` from the gzip layout (the store
keeps the layers plain, its manifest names the gzip blobs). ``unpack`` then reads:

* the store: plain tar, rebuilt by skopeo from the store's files, nothing to decompress;
* the OCI layout with gzip layers, which ``unpack`` decompresses;
* the same layout with plain tar layers (the floor: no decompression, one file a layer).

Each run is its own process; the cases take turns for ``--repeat`` rounds and the best
run of each is kept. As root, dirty pages
are written back and the caches dropped before each run, then the inputs (layouts and
store) are read back into the page cache. Ratios are the layout's time over the store's:
above 1 means the store is faster; CPU seconds (the unpack and its skopeo) are shown
too, as they depend less on what else the machine is doing. Needs root and podman
(rootless podman leaves a pause process behind); prints a table and writes
bench/results/storage.json (a temporary directory with --smoke).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _table import markdown_table
from unpack import build_synthetic

from tests.support.hostile_layers import TarLayer, build
from tests.support.images import BuiltImage, build_oci_layout
from tests.support.storage import Store, podman_path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20

OURS = """
import sys
from containers_image_proxy import ImageProxyConfig, unpack
skopeo = sys.argv[3:] or None
result = unpack(sys.argv[1], sys.argv[2], rootless=True, config=ImageProxyConfig(skopeo_cmd=skopeo))
print(result.entries, *[layer.compression for layer in result.layers])
"""


@dataclasses.dataclass
class Row:
    case: str
    store: str
    store_seconds: float
    store_cpu: float
    layout: str
    layout_seconds: float
    layout_cpu: float

    @property
    def ratio(self) -> float:
        return self.layout_seconds / self.store_seconds

    @property
    def cpu_ratio(self) -> float:
        return self.layout_cpu / self.store_cpu


def warm(*roots: Path) -> bool:
    """As root: write back, drop the caches, then read every file under ``roots`` again."""
    if os.geteuid() != 0:
        return False
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for root in roots:
        for top, _, files in os.walk(root):
            for name in files:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    continue
                with contextlib.suppress(OSError), open(path, "rb") as f:
                    while f.read(8 * MiB):
                        pass
    return True


def timed_unpack(
    reference: str, dest: Path, env: dict[str, str], skopeo: list[str]
) -> tuple[float, float]:
    """Seconds one unpack takes in a fresh process, and the CPU seconds it and skopeo
    used; checks that nothing was decompressed where the store serves the layers."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", OURS, reference, str(dest), *skopeo],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if run.returncode != 0:
        raise SystemExit(f"unpack {reference} failed: {run.stderr.strip()}")
    compressions = set(run.stdout.split()[1:])
    if reference.startswith("containers-storage:") and compressions != {"none"}:
        raise SystemExit(f"{reference}: layers were {compressions}, expected plain tar")
    return elapsed, cpu


def paths(root: Path) -> set[str]:
    found = set()
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(top, name), root))
    return found


def plain_twin(image: BuiltImage, dest: Path) -> BuiltImage:
    """The same image with its layers stored as plain tar."""
    layers = [
        TarLayer({}, "none", raw=layer.tar_bytes())
        for layer in image.source_layers
        if isinstance(layer, TarLayer)
    ]
    return build(dest, *layers)


def table(rows: list[Row]) -> str:
    head = (
        "case",
        "from the store",
        "seconds (CPU)",
        "from an OCI layout",
        "seconds (CPU)",
        "ratio",
        "CPU ratio",
    )
    lines = [
        (
            r.case,
            r.store,
            f"{r.store_seconds:.2f} ({r.store_cpu:.2f})",
            r.layout,
            f"{r.layout_seconds:.2f} ({r.layout_cpu:.2f})",
            f"{r.ratio:.2f}",
            f"{r.cpu_ratio:.2f}",
        )
        for r in rows
    ]
    return markdown_table(head, lines)


def markdown_section(results: Path = HERE / "results") -> list[str]:
    """The latest results as a section of BENCHMARKS.md (nothing when there are none)."""
    path = results / "storage.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    options = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in data["options"].items()
        if k not in ("smoke", "skopeo")
    )
    return [
        "## Unpack from containers-storage",
        "",
        f"`python bench/containers_storage.py` ({data['skopeo']}, {data['cores']} cores,"
        f" options `{options}`, page cache dropped before each run; a ratio above 1"
        " means the store is faster):",
        "",
        data["table"],
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--layers", type=int, default=8, help="layers in the image")
    parser.add_argument("--files", type=int, default=1500, help="small files per layer")
    parser.add_argument("--file-kib", type=int, default=2, help="size of a small file")
    parser.add_argument("--big", type=int, default=2, help="big files per layer")
    parser.add_argument("--big-mib", type=int, default=6, help="size of a big file")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case (best kept)")
    parser.add_argument("--skopeo", default=None, help="a skopeo with GetLayerInfo (0.2.5+)")
    parser.add_argument("--out", type=Path, default=None, help="where storage.json goes")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.files, args.big, args.big_mib, args.repeat = 2, 200, 1, 1, 1
    if os.geteuid() != 0 or podman_path() is None:
        print("skipped: the private store needs root and podman", file=sys.stderr)
        return 0
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cip-storage-")))
        out = args.out or (work / "results" if args.smoke else HERE / "results")
        out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        layout = work / "layout"
        entries, tar_total = build_synthetic(layout, args)
        reference = f"oci:{layout}:latest"
        image = _built(layout, reference)
        plain = plain_twin(image, work / "plain")
        store = Store(work / "store")
        loaded = store.load_docker_archive(image, "localhost/bench/loaded:latest")
        env = store.environ()
        inputs = [layout, plain.path, store.root]
        dest = work / "rootfs"
        debian: list[str] = []
        size = f"{args.layers} layers, {entries} entries, {tar_total / MiB:.0f} MiB of tar"
        trees: dict[str, set[str]] = {}

        cases: dict[str, tuple[str, list[str]]] = {
            "layout": (reference, debian),
            "plain": (plain.ref, debian),
            "store": (store.reference(loaded.name), debian),
        }
        skopeo_versions = [_version(["skopeo", "--version"])]
        if args.skopeo:
            # Another configuration: the same one would make it the same image in the
            # store (the image ID is the configuration's digest), and its names would
            # all lead to the manifest stored last.
            twin = build_oci_layout(
                work / "copy-source", list(image.source_layers), labels={"bench": "copied"}
            )
            copied = store.copy(twin, "localhost/bench/copied:latest")
            cases["newer layout"] = (reference, [args.skopeo])
            cases["newer store"] = (store.reference(copied.name), [args.skopeo])
            skopeo_versions.append(_version([args.skopeo, "--version"]))
        # Round after round, each case once: a machine whose load changes during the
        # run slows every case alike. The best time of each case is kept.
        times: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}
        for _ in range(args.repeat):
            for case, (ref, skopeo) in cases.items():
                shutil.rmtree(dest, ignore_errors=True)
                warm(*inputs)
                times[case].append(timed_unpack(ref, dest, env, skopeo))
                trees.setdefault(ref, paths(dest))
        wall = {case: min(t for t, _ in values) for case, values in times.items()}
        cpu = {case: min(c for _, c in values) for case, values in times.items()}

        def row(case: str, how: str, store_case: str, layout: str, layout_case: str) -> Row:
            return Row(
                case, how, wall[store_case], cpu[store_case], layout, wall[layout_case],
                cpu[layout_case],
            )  # fmt: skip

        rows = [
            row(size, "podman load", "store", "gzip layers", "layout"),
            row(size, "podman load", "store", "plain tar layers", "plain"),
        ]
        if args.skopeo:
            name = f"{size}, {skopeo_versions[1]}"
            rows.append(row(name, "skopeo copy", "newer store", "gzip layers", "newer layout"))
        shutil.rmtree(dest, ignore_errors=True)
        first = next(iter(trees.values()))
        if any(tree != first for tree in trees.values()):
            raise SystemExit(f"the trees differ: {sorted((k, len(v)) for k, v in trees.items())}")
        elapsed = time.monotonic() - started
        text = table(rows)
        print(text)
        dropped = os.geteuid() == 0
        print(
            f"\n{os.cpu_count()} cores, Python {platform.python_version()},"
            f" {', '.join(skopeo_versions)}, caches {'dropped' if dropped else 'NOT dropped'}"
            f" before each run, {elapsed:.0f} s"
        )
        result: dict[str, Any] = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "skopeo": ", ".join(skopeo_versions),
            "caches_dropped": dropped,
            "seconds": elapsed,
            "options": {k: v for k, v in vars(args).items() if k not in ("out", "skopeo")},
            "entries": entries,
            "tar_bytes": tar_total,
            "rows": [
                dataclasses.asdict(r) | {"ratio": r.ratio, "cpu_ratio": r.cpu_ratio} for r in rows
            ],
            "table": text,
        }
        (out / "storage.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / 'storage.json'}")
        return 0


def _built(layout: Path, reference: str) -> BuiltImage:
    """The image bench/unpack.py built in ``layout``, described as the tests describe one.

    Built again from its own blobs (deterministic: the same digests, nothing rewritten).
    """
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_bytes())
    (entry,) = index["manifests"]
    manifest = json.loads((blobs / entry["digest"].split(":", 1)[1]).read_bytes())
    layers = []
    for descriptor in manifest["layers"]:
        stored = (blobs / descriptor["digest"].split(":", 1)[1]).read_bytes()
        layers.append(TarLayer({}, "gzip", raw=gzip.decompress(stored), stored=stored))
    image = build(layout, *layers)
    if image.ref != reference or image.manifest_digest != entry["digest"]:
        raise SystemExit(f"rebuilding {reference} gave another image")
    return image


def _version(command: list[str]) -> str:
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return f"{command[0]} not installed"
    return run.stdout.strip() or run.stderr.strip()


if __name__ == "__main__":
    sys.exit(main())
