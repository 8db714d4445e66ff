"""Generate the blocking twins (``_sync/``) from their asyncio sources (``_async/``).

Two pairs of directories: ``src/containers_image_proxy/_async`` -> ``_sync`` (the
client) and ``tests/_async`` -> ``tests/_sync`` (the tests that run against both
clients); each ``_async/NAME.py`` becomes ``_sync/NAME.py``. Run
``python tools/gen_sync.py`` after editing a source; ``python tools/gen_sync.py --check``
fails when a generated file is stale. Either way the script fails when one of its
substitutions was used nowhere: a rename in the source must not leave a rule that
silently stopped applying.

A source is copied into its twin word for word, comments and docstrings included,
so it must not speak of "this file": there it would name the generated twin. Name
the two paths instead (``_async/x.py`` is the source of ``_sync/x.py``).

``unasync`` drops ``async``/``await`` and renames tokens (``AsyncFoo`` becomes
``SyncFoo`` unless :data:`REPLACEMENTS` says otherwise); :data:`TEXT` then fixes
the wording of docstrings and comments, which token renaming does not reach.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import tokenize_rt
import unasync

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "containers_image_proxy"
#: Each asyncio source directory and the directory its blocking twins are written to.
PAIRS = [
    (PACKAGE / "_async", PACKAGE / "_sync"),
    (ROOT / "tests" / "_async", ROOT / "tests" / "_sync"),
]
#: Words that would make the generated twin call itself the source.
SELF_REFERENCE = re.compile(r"\bthis file\b", re.IGNORECASE)
HEADER = "# Generated from {name} by tools/gen_sync.py.\n# Edit the source, not this file.\n"

#: Token renames beyond unasync's own (which turns ``AsyncFoo`` into ``SyncFoo``).
REPLACEMENTS = {
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
    "_async_backend": "_backends",  # the module of AsyncBackend: asyncio only there
}

#: Wording in docstrings and comments, which token replacement does not reach.
TEXT = [
    ("AsyncImageProxy", "ImageProxy"),
    ("AsyncBlob", "Blob"),
    ("AsyncRawBlob", "RawBlob"),
    ("AsyncImageSource", "ImageSource"),
    ("AsyncResumingBlob", "ResumingBlob"),
    ("AsyncChannel", "SyncChannel"),
    ("``async with``", "``with``"),
    ("async with", "with"),
    ("the asyncio client", "the blocking client"),
    ("many tasks", "many threads"),
]


class _Rule(unasync.Rule):  # type: ignore[misc]
    """unasync's rule, remembering which of :data:`REPLACEMENTS` it applied."""

    def __init__(self) -> None:
        super().__init__("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)
        self.used: set[str] = set()

    def _unasync_name(self, name: str) -> str:
        if name in REPLACEMENTS:
            self.used.add(name)
        return str(super()._unasync_name(name))

    def convert(self, text: str) -> str:
        """``text`` with ``async``/``await`` dropped and names replaced."""
        tokens = tokenize_rt.src_to_tokens(text)
        return str(tokenize_rt.tokens_to_src(self._unasync_tokens(tokens)))


def generate(rule: _Rule, used_text: set[str], source: Path, target: Path) -> str:
    """The generated twin of ``source``, as it belongs at ``target``."""
    found = SELF_REFERENCE.search(source.read_text())
    if found:
        line = source.read_text().count("\n", 0, found.start()) + 1
        raise SystemExit(
            f"{source.relative_to(ROOT)}:{line}: {found.group()!r} would name the generated"
            f" {target.relative_to(ROOT)} too; name both paths instead"
        )
    text = rule.convert(source.read_text())
    for old, new in TEXT:
        if old in text:
            used_text.add(old)
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


def pairs() -> list[tuple[Path, Path]]:
    """Every asyncio source with the path of its blocking twin."""
    return sorted(
        (source, target / source.name) for origin, target in PAIRS for source in origin.glob("*.py")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if _sync/ is stale")
    args = parser.parse_args()
    rule, used_text = _Rule(), set[str]()
    stale = False
    for source, target in pairs():
        wanted = generate(rule, used_text, source, target)
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
            print(f"wrote {os.path.relpath(target, ROOT)}")
    unused = sorted(set(REPLACEMENTS) - rule.used) + sorted({old for old, _ in TEXT} - used_text)
    if unused:
        print(f"substitutions used nowhere (remove them): {', '.join(unused)}", file=sys.stderr)
        return 1
    if stale:
        print("_sync/ is stale: run python tools/gen_sync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
