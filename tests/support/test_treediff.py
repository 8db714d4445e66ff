"""Tests of tests/support/treediff.py: every difference the unpack tests rely on is seen.

The unpack and interoperability tests call two trees the same when ``diff`` returns
nothing; a comparison that missed a kind of difference would make them pass
whatever the trees hold. Each case here changes one thing in a copy of a small tree
and checks that ``diff`` names it, and that the options skip only what they say.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.treediff import diff, snapshot


def make_tree(root: Path) -> Path:
    """A directory, a file, a symlink, two hardlinked files, fixed times."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_bytes(b"a=1\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"\x7fELF")
    os.link(root / "bin" / "tool", root / "bin" / "tool-alias")
    (root / "bin" / "other").write_bytes(b"other")
    os.symlink("tool", root / "bin" / "link")
    for path, mode in ((root, 0o755), (root / "etc", 0o755), (root / "bin", 0o755)):
        os.chmod(path, mode)
    for name, mode in (("etc/conf", 0o644), ("bin/tool", 0o755), ("bin/other", 0o644)):
        os.chmod(root / name, mode)
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)
    return root


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    return make_tree(tmp_path / "a"), make_tree(tmp_path / "b")


def test_same_trees_have_no_differences(trees: tuple[Path, Path]) -> None:
    a, b = trees
    assert diff(snapshot(a), snapshot(b)) == []
    assert snapshot(a).links == frozenset({frozenset({"bin/tool", "bin/tool-alias"})})


def _write(path: Path, data: bytes) -> None:
    """Change a file's bytes, keeping its mtime."""
    st = path.lstat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _retarget(path: Path, target: str) -> None:
    """Point a symlink elsewhere, keeping its mtime."""
    st = path.lstat()
    path.unlink()
    os.symlink(target, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _unlink_alias(root: Path) -> None:
    """Make bin/tool-alias a copy instead of a hardlink, keeping times."""
    alias = root / "bin" / "tool-alias"
    st = alias.lstat()
    alias.unlink()
    shutil.copyfile(root / "bin" / "tool", alias)
    os.chmod(alias, 0o755)
    os.utime(alias, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(root / "bin", ns=(st.st_atime_ns, st.st_mtime_ns))


def _file_to_directory(root: Path) -> None:
    (root / "bin" / "other").unlink()
    (root / "bin" / "other").mkdir()


def _keep_dir_time(change: Callable[[Path], object]) -> Callable[[Path], None]:
    def changed(root: Path) -> None:
        st = (root / "bin").lstat()
        change(root)
        os.utime(root / "bin", ns=(st.st_atime_ns, st.st_mtime_ns))

    return changed


CHANGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "content": (lambda r: _write(r / "etc" / "conf", b"a=2\n"), "content of etc/conf differs"),
    "mode": (lambda r: os.chmod(r / "etc" / "conf", 0o600), "mode of etc/conf: 0o644 != 0o600"),
    "mtime": (
        lambda r: os.utime(r / "etc" / "conf", ns=(0, 7)),
        "mtime of etc/conf: 1000000000 != 7",
    ),
    "symlink target": (
        _keep_dir_time(lambda r: _retarget(r / "bin" / "link", "other")),
        "target of bin/link: 'tool' != 'other'",
    ),
    "missing": (
        _keep_dir_time(lambda r: (r / "bin" / "other").unlink()),
        "missing: bin/other (file)",
    ),
    "extra": (
        _keep_dir_time(lambda r: (r / "bin" / "new").write_bytes(b"")),
        "extra: bin/new (file)",
    ),
    "type": (
        _keep_dir_time(_file_to_directory),
        "type of bin/other: file != dir",
    ),
    "hardlink group": (
        _unlink_alias,
        "hardlink group only in expected: ['bin/tool', 'bin/tool-alias']",
    ),
}


@pytest.mark.parametrize("kind", CHANGES)
def test_each_difference_is_named(trees: tuple[Path, Path], kind: str) -> None:
    a, b = trees
    change, expected = CHANGES[kind]
    change(b)
    assert diff(snapshot(a), snapshot(b)) == [expected]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_ownership_is_compared_unless_asked_not_to(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.chown(b / "etc" / "conf", 1234, 5678)
    assert diff(snapshot(a), snapshot(b)) == ["owner of etc/conf: 0:0 != 1234:5678"]
    assert diff(snapshot(a), snapshot(b), ownership=False) == []


def test_xattrs_are_compared_unless_asked_not_to(trees: tuple[Path, Path]) -> None:
    a, b = trees
    try:
        os.setxattr(b / "etc" / "conf", "user.note", b"x")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    assert diff(snapshot(a), snapshot(b)) == ["xattrs of etc/conf: () != (('user.note', b'x'),)"]
    assert diff(snapshot(a), snapshot(b), xattrs=False) == []


def test_options_skip_only_attributes(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.utime(b / "etc" / "conf", ns=(0, 7))
    os.chmod(b / "etc" / "conf", 0o600)
    assert diff(snapshot(a), snapshot(b), mtimes=False) == ["mode of etc/conf: 0o644 != 0o600"]
    # An ignored path still has its content and type compared, not its attributes.
    _write(b / "etc" / "conf", b"changed")
    assert diff(snapshot(a), snapshot(b), ignore=frozenset({"etc/conf"})) == [
        "content of etc/conf differs"
    ]


def test_root_attributes_only_with_root(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.chmod(b, 0o700)
    assert diff(snapshot(a), snapshot(b)) == []
    assert diff(snapshot(a), snapshot(b), root=True) == ["mode of .: 0o755 != 0o700"]
