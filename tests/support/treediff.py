"""Compare two unpacked root filesystems: what umoci made and what we made.

A snapshot records, for every path under a root (never following symlinks): its
type, permission bits, ownership, symlink target, content hash, device number,
xattrs and mtime, plus which paths share an inode (hardlink groups). ``diff`` lists
the differences as readable lines; an empty list means the trees agree.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    target: str | None = None
    sha256: str | None = None
    rdev: int | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    nodes: dict[str, Node]
    links: frozenset[frozenset[str]]
    """Groups of two or more regular files that share an inode."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown"


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    values = []
    for name in sorted(names):
        if name.startswith("security.selinux"):
            continue
        try:
            values.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(values)


def snapshot(root: Path) -> Snapshot:
    """Record the tree under ``root`` (the root itself is the path ``"."``)."""
    nodes: dict[str, Node] = {}
    inodes: dict[tuple[int, int], set[str]] = {}
    pending = [(root, ".")]
    while pending:
        path, rel = pending.pop()
        st = os.lstat(path)
        kind = _kind(st.st_mode)
        target = sha = rdev = None
        if kind == "symlink":
            target = os.readlink(path)
        elif kind == "file":
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            sha = digest.hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
        elif kind in ("chr", "blk"):
            rdev = st.st_rdev
        nodes[rel] = Node(
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            target,
            sha,
            rdev,
            _xattrs(path),
        )
        if kind == "dir":
            for name in os.listdir(path):
                pending.append((path / name, name if rel == "." else f"{rel}/{name}"))
    links = frozenset(frozenset(group) for group in inodes.values() if len(group) > 1)
    return Snapshot(nodes, links)


def diff(
    expected: Snapshot,
    actual: Snapshot,
    *,
    ownership: bool = True,
    mtimes: bool = True,
    xattrs: bool = True,
    root: bool = False,
    ignore: frozenset[str] = frozenset(),
) -> list[str]:
    """Differences between two snapshots, one line each (empty when they agree).

    ``ownership``, ``mtimes`` and ``xattrs`` choose what is compared beyond paths,
    types, modes, link targets, contents, devices and hardlink groups. Symlink
    mtimes and directory mtimes of directories without a tar entry are compared
    too when ``mtimes``: pass ``ignore`` for paths whose attributes may differ.
    The root's own attributes are compared only with ``root``.
    """
    lines = []
    for path in sorted(expected.nodes.keys() - actual.nodes.keys()):
        lines.append(f"missing: {path} ({expected.nodes[path].kind})")
    for path in sorted(actual.nodes.keys() - expected.nodes.keys()):
        lines.append(f"extra: {path} ({actual.nodes[path].kind})")
    for path in sorted(expected.nodes.keys() & actual.nodes.keys()):
        a, b = expected.nodes[path], actual.nodes[path]
        if a.kind != b.kind:
            lines.append(f"type of {path}: {a.kind} != {b.kind}")
            continue
        if a.target != b.target:
            lines.append(f"target of {path}: {a.target!r} != {b.target!r}")
        if a.sha256 != b.sha256:
            lines.append(f"content of {path} differs")
        if a.rdev != b.rdev:
            lines.append(f"device of {path}: {a.rdev} != {b.rdev}")
        if (path == "." and not root) or path in ignore:
            continue
        if a.kind != "symlink" and a.mode != b.mode:
            lines.append(f"mode of {path}: {oct(a.mode)} != {oct(b.mode)}")
        if ownership and (a.uid, a.gid) != (b.uid, b.gid):
            lines.append(f"owner of {path}: {a.uid}:{a.gid} != {b.uid}:{b.gid}")
        if mtimes and a.mtime_ns != b.mtime_ns:
            lines.append(f"mtime of {path}: {a.mtime_ns} != {b.mtime_ns}")
        if xattrs and a.xattrs != b.xattrs:
            lines.append(f"xattrs of {path}: {a.xattrs} != {b.xattrs}")
    for group in sorted(expected.links ^ actual.links, key=sorted):
        side = "expected" if group in expected.links else "actual"
        lines.append(f"hardlink group only in {side}: {sorted(group)}")
    return lines
