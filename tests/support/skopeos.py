"""The two skopeos the fault tests run against.

Debian's skopeo (on PATH, protocol 0.2.3) and, when the environment variable
``CIP_TEST_SKOPEO_UPSTREAM`` names one, a newer upstream build (protocol 0.2.8),
whose containers/image reconnects by itself once after a cut and marks network
failures ``retryable``.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["SKOPEOS", "UPSTREAM_ENV", "skopeo_command"]

#: Environment variable with the path of a newer skopeo binary (protocol 0.2.8).
UPSTREAM_ENV = "CIP_TEST_SKOPEO_UPSTREAM"

#: Parameter values of tests that run against both.
SKOPEOS = ("debian", "upstream")


def skopeo_command(kind: str) -> list[str]:
    """The ``skopeo_cmd`` of ``kind`` ("debian" or "upstream"); skips when it is missing."""
    if kind == "upstream":
        path = os.environ.get(UPSTREAM_ENV)
        if not path:
            pytest.skip(f"{UPSTREAM_ENV} is not set (the path of a skopeo speaking 0.2.8)")
        return [path]
    path = shutil.which("skopeo")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("skopeo is required in CI")
        pytest.skip("skopeo is not installed (set CI=1 to make this a failure)")
    return [path]
