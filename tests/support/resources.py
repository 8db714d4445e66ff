"""What this process holds: its open descriptors and its child processes.

The ``no_leaks`` fixture (tests/conftest.py) compares them before and after a test.
"""

from __future__ import annotations

import os


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the descriptor of the listing itself, gone by now
    return fds


def child_pids() -> set[int]:
    """Pids of this process's children, zombies included."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids
