"""Generate the blocking twins (``_sync/``) from their asyncio sources (``_async/``).

Two pairs of directories: ``src/containers_image_proxy/_async`` -> ``_sync`` (the
client) and ``tests/_async`` -> ``tests/_sync`` (the tests that run against both
clients); each ``_async/NAME.py`` becomes ``_sync/NAME.py``. Run
``python tools/gen_sync.py`` after editing a source; ``python tools/gen_sync.py --check``
fails when a generated file is stale.

A source is copied into its twin word for word, comments and docstrings included,
so it must not speak of "this file": there it would name the generated twin. Name
the two paths instead (``_async/x.py`` is the source of ``_sync/x.py``).
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parent.parent
#: Each asyncio source directory and the directory its blocking twins are written to.
PAIRS = [
    (
        ROOT / "src" / "containers_image_proxy" / "_async",
        ROOT / "src" / "containers_image_proxy" / "_sync",
    ),
    (ROOT / "tests" / "_async", ROOT / "tests" / "_sync"),
]
#: Words that would make the generated twin call itself the source.
SELF_REFERENCE = re.compile(r"\bthis file\b", re.IGNORECASE)
HEADER = "# Generated from {name} by tools/gen_sync.py.\n# Edit the source, not this file.\n"

REPLACEMENTS = {
    "AsyncBackend": "SyncBackend",
    "AsyncStreamBase": "SyncStreamBase",
    "_AsyncChannel": "_SyncChannel",
    "_AsyncChannelLock": "_SyncChannelLock",
    "AsyncBlobStream": "BlobStream",
    "AsyncBlob": "Blob",
    "AsyncRawBlob": "RawBlob",
    "AsyncImageProxy": "ImageProxy",
    "AsyncImageSource": "ImageSource",
    "AsyncResumingBlob": "ResumingBlob",
    "aclose": "close",
    "AsyncExitStack": "ExitStack",
    "enter_async_context": "enter_context",
    "pull_async": "pull",
    "stream_layers_async": "stream_layers",
    "unpack_async": "unpack",
}

# Wording in docstrings and comments, which token replacement does not reach.
TEXT = [
    ("AsyncImageProxy", "ImageProxy"),
    ("AsyncBlob", "Blob"),
    ("AsyncRawBlob", "RawBlob"),
    ("AsyncImageSource", "ImageSource"),
    ("AsyncResumingBlob", "ResumingBlob"),
    ("``async with``", "``with``"),
    ("async with", "with"),
    ("the asyncio client", "the blocking client"),
    ("many tasks", "many threads"),
]


def generate(source: Path, target: Path) -> str:
    found = SELF_REFERENCE.search(source.read_text())
    if found:
        line = source.read_text().count("\n", 0, found.start()) + 1
        raise SystemExit(
            f"{source.relative_to(ROOT)}:{line}: {found.group()!r} would name the generated"
            f" {target.relative_to(ROOT)} too; name both paths instead"
        )
    with tempfile.TemporaryDirectory() as tmp:
        src_dir = Path(tmp) / "_async"
        src_dir.mkdir()
        (src_dir / source.name).write_text(source.read_text())
        rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(src_dir / source.name)], rules=[rule])
        text = (Path(tmp) / "_sync" / source.name).read_text()
    for old, new in TEXT:
        text = text.replace(old, new)
    text = HEADER.format(name=source.relative_to(ROOT)) + text
    for command in (["check", "--select", "I", "--fix-only", "--quiet"], ["format"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(target), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if _sync/ is stale")
    args = parser.parse_args()
    stale = False
    pairs = [
        (source, target / source.name) for origin, target in PAIRS for source in origin.glob("*.py")
    ]
    for source, target in sorted(pairs):
        wanted = generate(source, target)
        current = target.read_text() if target.exists() else ""
        if current == wanted:
            continue
        if args.check:
            stale = True
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(True), wanted.splitlines(True), str(target), "generated"
                )
            )
        else:
            target.write_text(wanted)
            print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print("_sync/ is stale: run python tools/gen_sync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
