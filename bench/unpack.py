"""Benchmark: unpacking an image into a root filesystem, ours against the alternatives.

    python bench/unpack.py            # synthetic + Debian image, tmpfs and disk: a few min
    python bench/unpack.py --smoke    # tiny sizes, seconds: checks that the benchmark works
    python bench/unpack.py --images synthetic --targets disk --repeat 3
    python bench/unpack.py --layers 4 --files 5000 --file-kib 4 --big 1 --big-mib 64

Images (``--images``, comma-separated):

* ``synthetic``: an OCI layout built here, deterministic: ``--layers`` gzip layers of
  ``--files`` small files and ``--big`` big ones each;
* ``debian-gzip`` and ``debian-zstd``: the Debian image of ``bench/realimage.py``
  (debootstrap minbase plus upgrade, opaque/hardlink and application layers), built
  once and cached; the first run needs root, debootstrap and the network. With
  ``--smoke`` the same recipe runs on a small stand-in tree instead.

Each image is unpacked into each target (``--targets``: ``tmpfs`` under
``--tmpfs-dir``, ``disk`` under ``--disk-dir``) by:

* ours: ``containers_image_proxy.unpack`` (rootless, like umoci's mode below), and
  ``unpack_async`` over an ``AsyncImageProxy``;
* ``umoci unpack --rootless`` reading the layout directly (skipped for an image this
  umoci cannot read: Debian's umoci 0.4.7 knows no zstd);
* ``skopeo copy`` of the image to ``dir:`` (in the target), then ``tar -x
  --no-same-owner`` of each layer in order (a floor more than a rival: it ignores
  whiteouts and checks nothing; GNU tar decompresses in a second process).

Each command runs as its own process. The contenders take turns, round after round
(``--repeat`` rounds, the order rotating), and each keeps its best round. As root,
before every run the earlier outputs are removed, dirty pages written back, the
caches dropped, and the layout and every contender's programs read again (see
``WARM``), so that every contender starts the same way: the layout and the programs
in the page cache, the target clean. Without root the caches stay
as they are (the report says so). Ours, async and umoci must make the same tree
(compared as ``tests/support/treediff.py`` does, less ownership, which rootless modes do not
apply). Prints a table of ratios (alternative's time over ours: above 1 means ours is
faster) and writes JSON to bench/results/unpack.json (to a temporary directory with
--smoke) and redraws the chart from both result files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _chart import draw
from _table import markdown_table
from realimage import COMPRESSIONS, RealImage, real_image, smoke_image

from tests.support import treediff
from tests.support.hostile_layers import TarLayer, build, file, tar_bytes

HERE = Path(__file__).resolve().parent
MiB = 1 << 20

OURS = """
import sys
from containers_image_proxy import unpack
result = unpack(sys.argv[1], sys.argv[2], rootless=True)
print(result.entries)
"""

OURS_ASYNC = """
import asyncio, sys
from containers_image_proxy import AsyncImageProxy, unpack_async
async def main():
    async with AsyncImageProxy() as proxy:
        result = await unpack_async(sys.argv[1], sys.argv[2], proxy=proxy, rootless=True)
    print(result.entries)
asyncio.run(main())
"""


@dataclasses.dataclass
class Row:
    case: str
    ours_name: str
    ours: float
    other_name: str
    other: float
    goal: float | None
    family: str = ""  # the chart's panel (the case)

    @property
    def ratio(self) -> float:
        return self.other / self.ours

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal


@dataclasses.dataclass
class Image:
    """An image to unpack: an OCI layout and how the report names it."""

    key: str  # synthetic, debian-gzip, debian-zstd
    short: str  # for the chart: "synthetic", "Debian gzip"
    label: str  # for the table
    layout: Path
    compression: str
    real: bool

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:latest"


# The goals: vs umoci on the synthetic image; on the real one (into tmpfs, where the
# disk does not drown the figures) vs umoci and vs skopeo copy + tar -x.
GOALS: dict[tuple[bool, str, str, str], float] = {
    (False, "tmpfs", "unpack", "umoci"): 1.0,
    (False, "disk", "unpack", "umoci"): 1.0,
    (False, "tmpfs", "unpack_async", "umoci"): 1.0,
    (False, "disk", "unpack_async", "umoci"): 1.0,
    (True, "tmpfs", "unpack", "umoci"): 2.0,
    (True, "tmpfs", "unpack", "tar"): 1.5,
}

NAMES = {
    "unpack": "unpack",
    "unpack_async": "unpack_async (AsyncImageProxy)",
    "umoci": "umoci unpack --rootless",
    "tar": "skopeo copy + tar -x",
}


def build_synthetic(root: Path, args: argparse.Namespace) -> tuple[int, int]:
    """The synthetic image; returns its entry count and its tar bytes."""
    layers = []
    entries = tar_total = 0
    for index in range(args.layers):
        items = []
        for n in range(args.files):
            # Half random, half repeated: compresses about 2:1, like real files.
            half = hashlib.shake_256(f"{index}-{n}".encode()).digest(args.file_kib * 512)
            items.append(file(f"l{index}/d{n % 37:02d}/e{n % 11}/f{n:06d}", half * 2))
        for n in range(args.big):
            size = args.big_mib * MiB
            half = hashlib.shake_256(f"{index}-big{n}".encode()).digest(size // 2)
            items.append(file(f"big/l{index}-{n}.bin", half + bytes(size - len(half))))
        tar = tar_bytes(items)
        entries += len(items)
        tar_total += len(tar)
        layers.append(TarLayer({}, "gzip", raw=tar, stored=gzip.compress(tar, 1, mtime=0)))
    build(root, *layers)
    return entries, tar_total


def real_images(real: RealImage, keys: list[str]) -> list[Image]:
    found = []
    for compression in COMPRESSIONS:
        key = f"debian-{compression}"
        if key in keys:
            found.append(
                Image(
                    key,
                    f"{real.info.get('name', 'Debian').split(' minbase')[0]} {compression}",
                    real.describe(compression),
                    real.layouts[compression],
                    compression,
                    True,
                )
            )
    return found


def fs_type(path: Path) -> str:
    """The file system type ``path`` is on (from /proc/self/mounts)."""
    best_point, kind = "", "unknown"
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best_point):
                best_point, kind = point, fields[2]
    return kind


#: Whether settle() drops the caches (as root); the smoke run leaves them.
DROP_CACHES = True


#: Commands that load every contender's programs (and, for ours, the package's
#: modules) into the page cache again after the caches are dropped: each contender
#: then starts as it does on a machine that has run it before, none from the disk.
WARM: list[list[str]] = [
    [sys.executable, "-c", "import containers_image_proxy"],
    ["skopeo", "--version"],
    ["tar", "--version"],
    ["gzip", "--version"],
    ["zstd", "--version"],
    ["umoci", "--version"],
]


def compile_package() -> None:
    """Write the package's bytecode, as an installed wheel has it.

    Without it (a checkout, or ``PYTHONDONTWRITEBYTECODE`` set) every run of ours
    would compile its modules again, which an installed package never does.
    """
    import compileall

    import containers_image_proxy

    compileall.compile_dir(Path(containers_image_proxy.__file__).parent, quiet=1)


def settle(layout: Path, *trash: Path) -> bool:
    """Remove earlier outputs, then (as root) write back, drop caches, re-read the
    layout and load the contenders' programs again (:data:`WARM`)."""
    for path in trash:
        shutil.rmtree(path, ignore_errors=True)
    if os.geteuid() != 0 or not DROP_CACHES:
        return False
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for blob in (layout / "blobs" / "sha256").iterdir():
        with open(blob, "rb") as f:
            while f.read(8 * MiB):
                pass
    for command in WARM:
        with contextlib.suppress(OSError):
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return True


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.perf_counter() - started


def skopeo_and_tar(layout: Path, work: Path) -> float:
    """``skopeo copy`` to ``dir:`` under ``work``, then ``tar -x`` of each layer."""
    started = time.perf_counter()
    copy = work / "copy"
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:latest", f"dir:{copy}"],
        check=True,
    )
    root = work / "tar-root"
    root.mkdir()
    manifest = json.loads((copy / "manifest.json").read_bytes())
    for item in manifest["layers"]:
        media = item["mediaType"]
        flags = (
            ["-xzf"]
            if media.endswith("gzip")
            else ["--zstd", "-xf"]
            if "zstd" in media
            else ["-xf"]
        )
        blob = copy / item["digest"].split(":", 1)[1]
        subprocess.run(["tar", "--no-same-owner", *flags, str(blob), "-C", str(root)], check=True)
    return time.perf_counter() - started


def umoci_reads(umoci: str, image: Image, scratch: Path) -> bool:
    """Whether this umoci can unpack the image (Debian's 0.4.7 knows no zstd)."""
    if image.compression == "gzip":
        return True
    bundle = scratch / "probe"
    run = subprocess.run(
        [umoci, "unpack", "--rootless", "--image", f"{image.layout}:latest", str(bundle)],
        capture_output=True,
    )
    shutil.rmtree(bundle, ignore_errors=True)
    return run.returncode == 0


def contest(
    image: Image, work: Path, repeat: int, umoci: str | None
) -> tuple[dict[str, float], list[str]]:
    """Each contender's best time unpacking ``image`` under ``work``, taking turns;
    and the differences between the trees ours, async and umoci made."""
    outputs = {
        "unpack": work / "ours",
        "unpack_async": work / "ours-async",
        "umoci": work / "bundle",
        "tar": work / "tar",
    }
    python = sys.executable
    runs: dict[str, Callable[[], float]] = {
        "unpack": lambda: timed([python, "-c", OURS, image.ref, str(outputs["unpack"])]),
        "unpack_async": lambda: timed(
            [python, "-c", OURS_ASYNC, image.ref, str(outputs["unpack_async"])]
        ),
    }
    if umoci is not None:
        command = [umoci, "unpack", "--rootless", "--image", f"{image.layout}:latest"]
        runs["umoci"] = lambda: timed([*command, str(outputs["umoci"])])
    runs["tar"] = lambda: skopeo_and_tar(image.layout, outputs["tar"])
    trees = {"unpack": outputs["unpack"], "unpack_async": outputs["unpack_async"]}
    trees["umoci"] = outputs["umoci"] / "rootfs"
    times: dict[str, list[float]] = {name: [] for name in runs}
    snapshots: dict[str, treediff.Snapshot] = {}
    names = list(runs)
    for turn in range(repeat):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            settle(image.layout, *outputs.values())
            if name == "tar":
                outputs["tar"].mkdir()
            times[name].append(runs[name]())
            if turn == repeat - 1 and name in trees:
                snapshots[name] = treediff.snapshot(trees[name])
    settle(image.layout, *outputs.values())
    differences = []
    for name, snap in snapshots.items():
        if name != "unpack":
            # The synthetic image's directories have no tar entries: their times are
            # those of the run.
            found = treediff.diff(
                snapshots["unpack"], snap, ownership=False, xattrs=False, mtimes=image.real
            )
            differences += [f"{name}: {line}" for line in found]
    return {name: min(values) for name, values in times.items()}, differences


def rows_for(image: Image, target: str, kind: str, best: dict[str, float]) -> list[Row]:
    where = target if kind == target else f"{target} ({kind})"
    case = f"unpack {image.label}, into {where}"
    pairs = [("unpack", "umoci"), ("unpack_async", "umoci"), ("unpack", "tar")]
    return [
        Row(
            case,
            NAMES[ours],
            best[ours],
            NAMES[other],
            best[other],
            GOALS.get((image.real, target, ours, other)),
            case,
        )
        for ours, other in pairs
        if other in best
    ]


def table(rows: list[Row]) -> str:
    head = ("case", "ours", "seconds", "alternative", "seconds", "ratio", "goal", "met")
    lines: list[tuple[str, ...]] = []
    for r in rows:
        lines.append(
            (
                r.case,
                r.ours_name,
                f"{r.ours:.2f}",
                r.other_name,
                f"{r.other:.2f}",
                f"{r.ratio:.2f}",
                "-" if r.goal is None else f">= {r.goal:.1f}",
                "-" if r.met is None else ("yes" if r.met else "NO"),
            )
        )
    return markdown_table(head, lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument(
        "--images",
        default="synthetic,debian-gzip,debian-zstd",
        help="comma-separated: synthetic, debian-gzip, debian-zstd",
    )
    parser.add_argument(
        "--targets", default=None, help="comma-separated: tmpfs, disk (default both; smoke: tmpfs)"
    )
    parser.add_argument("--tmpfs-dir", type=Path, default=Path("/dev/shm"), help="a tmpfs")
    parser.add_argument(
        "--disk-dir", type=Path, default=None, help="a disk file system (default: $TMPDIR)"
    )
    parser.add_argument("--layers", type=int, default=8, help="synthetic: layers in the image")
    parser.add_argument("--files", type=int, default=1500, help="synthetic: small files a layer")
    parser.add_argument("--file-kib", type=int, default=2, help="synthetic: small file size")
    parser.add_argument("--big", type=int, default=2, help="synthetic: big files per layer")
    parser.add_argument("--big-mib", type=int, default=6, help="synthetic: size of a big file")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each keeps its best)")
    parser.add_argument("--out", type=Path, default=None, help="where unpack.json goes")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.files, args.big, args.big_mib, args.repeat = 2, 100, 1, 1, 1
        args.targets = args.targets or "tmpfs"
        global DROP_CACHES
        DROP_CACHES = False
    keys = [k for k in args.images.split(",") if k]
    unknown = set(keys) - {"synthetic", "debian-gzip", "debian-zstd"}
    if unknown:
        parser.error(f"unknown images: {', '.join(sorted(unknown))}")
    names = (args.targets or "tmpfs,disk").split(",")
    targets = {name: _target_dir(name, args) for name in names if name}
    umoci = shutil.which("umoci")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cip-unpack-")))
        out = args.out or (work / "results" if args.smoke else HERE / "results")
        out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        images: list[Image] = []
        real: RealImage | None = None
        if "synthetic" in keys:
            entries, tar_total = build_synthetic(work / "layout", args)
            label = (
                f"synthetic, {args.layers} gzip layers, {entries} entries,"
                f" {tar_total / MiB:.0f} MiB of tar"
            )
            images.append(Image("synthetic", "synthetic", label, work / "layout", "gzip", False))
        if any(k.startswith("debian-") for k in keys):
            real = smoke_image(work) if args.smoke else real_image(log=_stderr)
            images += real_images(real, keys)
        compile_package()
        dropped = settle(images[0].layout) if images else False
        rows: list[Row] = []
        notes: list[str] = []
        described: dict[str, Any] = {}
        for image in images:
            readable = umoci is not None and umoci_reads(umoci, image, work)
            if umoci is not None and not readable:
                notes.append(
                    f"This umoci cannot read {image.compression} layers: no umoci rows"
                    f" for the {image.short} image."
                )
            for target, base in targets.items():
                kind = fs_type(base)
                scratch = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="cip-unpack-", dir=base))
                )
                best, differences = contest(
                    image, scratch, args.repeat, umoci if readable else None
                )
                shutil.rmtree(scratch, ignore_errors=True)
                if differences:
                    raise SystemExit(
                        f"the trees of {image.key} differ:\n" + "\n".join(differences[:20])
                    )
                rows += rows_for(image, target, kind, best)
                described[f"{image.key} {target}"] = {"fs": kind, "seconds": best}
                print(
                    f"{image.key} into {target} ({kind}): "
                    + ", ".join(f"{name} {value:.2f} s" for name, value in best.items()),
                    file=sys.stderr,
                )
        elapsed = time.monotonic() - started
        text = table(rows)
        print(text)
        for note in notes:
            print(note)
        print(
            f"\n{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{_version(['skopeo', '--version'])}, {_version([umoci or 'umoci', '--version'])}, "
            f"caches {'dropped' if dropped else 'not dropped'} before each run, "
            f"{elapsed:.0f} s"
        )
        result: dict[str, Any] = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "skopeo": _version(["skopeo", "--version"]),
            "umoci": _version([umoci or "umoci", "--version"]),
            "caches_dropped": dropped,
            "seconds": elapsed,
            "options": {
                k: v for k, v in vars(args).items() if k not in ("out", "tmpfs_dir", "disk_dir")
            },
            "images": {image.key: image.label for image in images},
            "real_image": None if real is None else real.info,
            "runs": described,
            "notes": notes,
            "rows": [dataclasses.asdict(r) | {"ratio": r.ratio, "met": r.met} for r in rows],
            "table": text,
        }
        (out / "unpack.json").write_text(json.dumps(result, indent=2) + "\n")
        draw(out)
        print(f"wrote {out / 'unpack.json'} and {out / 'results.png'}")
        return 0


def _target_dir(name: str, args: argparse.Namespace) -> Path:
    if name == "tmpfs":
        base = args.tmpfs_dir
        if fs_type(base) != "tmpfs":
            raise SystemExit(f"--tmpfs-dir {base} is not a tmpfs ({fs_type(base)})")
        return Path(base)
    if name == "disk":
        if args.disk_dir is not None:
            return Path(args.disk_dir)
        base = Path(tempfile.gettempdir())
        # Where $TMPDIR is a tmpfs, the disk case runs in the repository's bench/.
        return HERE if fs_type(base) in ("tmpfs", "ramfs") else base
    raise SystemExit(f"unknown target {name!r} (tmpfs, disk)")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _version(command: list[str]) -> str:
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return f"{command[0]} not installed"
    return run.stdout.strip() or run.stderr.strip()


if __name__ == "__main__":
    sys.exit(main())
