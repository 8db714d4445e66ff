"""Benchmark: unpacking an image into a root filesystem, ours against the alternatives.

    python bench/unpack.py            # 8 layers of 1500 small files + 2 x 6 MiB: < 1 min, 2 cores
    python bench/unpack.py --smoke    # tiny sizes, seconds: checks that the benchmark works
    python bench/unpack.py --layers 4 --files 5000 --file-kib 4 --big 1 --big-mib 64 --repeat 3

The same gzip image (an OCI layout built here, deterministic) is unpacked by:

* ours: ``containers_image_proxy.unpack`` (rootless, like umoci's mode below), and
  ``unpack_async`` over an ``AsyncImageProxy``;
* ``umoci unpack --rootless`` (Debian's umoci) reading the layout directly;
* ``skopeo copy`` of the image to ``dir:``, then ``tar -xzf`` of each layer in order
  (a floor more than a rival: it ignores whiteouts and checks nothing).

Each command runs as its own process; the best of ``--repeat`` runs is kept. As root,
dirty pages are written back and the caches dropped before each run (the layout is
then read again so that every contender starts from it in the page cache): removing
a big tree leaves the file system slower for the next one otherwise, which would
favour whoever runs first. Prints a table of ratios (alternative's time over ours:
above 1 means ours is faster) and writes JSON to bench/results/unpack.json (to a
temporary directory with --smoke).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _table import markdown_table  # noqa: E402
from hostile_layers import TarLayer, build, file, tar_bytes  # noqa: E402

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
    other: float | None
    goal: float | None

    @property
    def ratio(self) -> float | None:
        return None if self.other is None else self.other / self.ours

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio >= self.goal


def build_image(root: Path, args: argparse.Namespace) -> tuple[str, int, int]:
    """The benchmark image; returns its reference, its entry count and its tar bytes."""
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
    image = build(root, *layers)
    return image.ref, entries, tar_total


def settle(layout: Path, *trash: Path) -> bool:
    """Remove earlier outputs, then (as root) write back, drop caches, re-read the layout."""
    for path in trash:
        shutil.rmtree(path, ignore_errors=True)
    if os.geteuid() != 0:
        return False
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for blob in (layout / "blobs" / "sha256").iterdir():
        with open(blob, "rb") as f:
            while f.read(8 * MiB):
                pass
    return True


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.perf_counter() - started


def skopeo_and_tar(layout: Path, work: Path) -> None:
    copy = work / "copy"
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:latest", f"dir:{copy}"],
        check=True,
    )
    root = work / "tar-root"
    root.mkdir()
    manifest = json.loads((copy / "manifest.json").read_bytes())
    for item in manifest["layers"]:
        flag = "-xzf" if item["mediaType"].endswith("gzip") else "-xf"
        blob = copy / item["digest"].split(":", 1)[1]
        subprocess.run(["tar", flag, str(blob), "-C", str(root)], check=True)


def best(
    repeat: int,
    prepare: Callable[[], object],
    run: Callable[[], float],
    after: Callable[[], object] | None = None,
) -> float:
    """Best of ``repeat`` timed runs; ``after`` looks at the last one's output, untimed."""
    times = []
    for _ in range(repeat):
        prepare()
        times.append(run())
    if after is not None:
        after()
    return min(times)


def paths(root: Path) -> set[str]:
    found = set()
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(top, name), root))
    return found


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
                "-" if r.other is None else f"{r.other:.2f}",
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                "-" if r.goal is None else f">= {r.goal:.1f} vs umoci",
                "-" if r.met is None else ("yes" if r.met else "NO"),
            )
        )
    return markdown_table(head, lines)


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
    parser.add_argument("--repeat", type=int, default=2, help="runs per contender (best kept)")
    parser.add_argument("--out", type=Path, default=None, help="where unpack.json goes")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.files, args.big, args.big_mib, args.repeat = 2, 200, 1, 1, 1
    umoci = shutil.which("umoci")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cip-unpack-")))
        out = args.out or (work / "results" if args.smoke else HERE / "results")
        out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        layout = work / "layout"
        reference, entries, tar_total = build_image(layout, args)
        ours_dest, async_dest = work / "ours", work / "ours-async"
        bundle, tar_work = work / "bundle", work / "tar"
        outputs = (ours_dest, async_dest, bundle, tar_work)
        dropped = settle(layout, *outputs)

        def prepare() -> None:
            settle(layout, *outputs)
            tar_work.mkdir()

        python = sys.executable
        trees: dict[str, set[str]] = {}
        ours = best(
            args.repeat,
            prepare,
            lambda: timed([python, "-c", OURS, reference, str(ours_dest)]),
            lambda: trees.setdefault("ours", paths(ours_dest)),
        )
        ours_async = best(
            args.repeat,
            prepare,
            lambda: timed([python, "-c", OURS_ASYNC, reference, str(async_dest)]),
            lambda: trees.setdefault("async", paths(async_dest)),
        )
        theirs: float | None = None
        if umoci is not None:
            command = [umoci, "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)]
            theirs = best(
                args.repeat,
                prepare,
                lambda: timed(command),
                lambda: trees.setdefault("umoci", paths(bundle / "rootfs")),
            )
        floor = best(args.repeat, prepare, lambda: _time(skopeo_and_tar, layout, tar_work))
        settle(layout, *outputs)
        # Sanity: the contenders made the same tree.
        if any(tree != trees["ours"] for tree in trees.values()):
            raise SystemExit(f"the trees differ: {sorted((k, len(v)) for k, v in trees.items())}")

        size = f"{args.layers} gzip layers, {entries} entries, {tar_total / MiB:.0f} MiB of tar"
        rows = [
            Row(f"unpack ({size})", "unpack", ours, "umoci unpack --rootless", theirs, 1.0),
            Row(
                f"unpack ({size})",
                "unpack_async (AsyncImageProxy)",
                ours_async,
                "umoci unpack --rootless",
                theirs,
                1.0,
            ),
            Row(f"unpack ({size})", "unpack", ours, "skopeo copy + tar -x", floor, None),
        ]
        elapsed = time.monotonic() - started
        text = table(rows)
        print(text)
        print(
            f"\n{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{_version(['skopeo', '--version'])}, {_version([umoci or 'umoci', '--version'])}, "
            f"caches {'dropped' if dropped else 'NOT dropped (not root)'} before each run, "
            f"{elapsed:.0f} s"
        )
        result: dict[str, Any] = {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "skopeo": _version(["skopeo", "--version"]),
            "umoci": _version([umoci or "umoci", "--version"]),
            "caches_dropped": dropped,
            "seconds": elapsed,
            "options": {k: v for k, v in vars(args).items() if k != "out"},
            "entries": entries,
            "tar_bytes": tar_total,
            "rows": [dataclasses.asdict(r) | {"ratio": r.ratio, "met": r.met} for r in rows],
            "table": text,
        }
        (out / "unpack.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / 'unpack.json'}")
        return 0


def _time(function: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def _version(command: list[str]) -> str:
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return f"{command[0]} not installed"
    return run.stdout.strip() or run.stderr.strip()


if __name__ == "__main__":
    sys.exit(main())
