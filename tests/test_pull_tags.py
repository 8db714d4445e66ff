"""The tag a pull gives the image in its layout when none is asked for."""

from __future__ import annotations

import pytest

from containers_image_proxy._sync.pull import default_tag


@pytest.mark.parametrize(
    ("reference", "tag"),
    [
        ("docker://quay.io/fedora/fedora:40", "40"),
        ("docker://quay.io/fedora/fedora", "latest"),
        ("docker://localhost:5000/x/y", "latest"),
        ("docker://localhost:5000/x/y:v1", "v1"),
        ("docker://quay.io/x@sha256:" + "0" * 64, "latest"),
        ("oci:/srv/layout:stable", "stable"),
        ("oci:/srv/layout", None),
        ("oci-archive:/srv/a.tar:v2", "v2"),
        ("docker-archive:/srv/a.tar:example.com/x:v3", "v3"),
        ("docker-archive:/srv/a.tar", None),
        ("dir:/srv/image", None),
        ("containers-storage:quay.io/x:v1", None),
    ],
)
def test_default_tag(reference: str, tag: str | None) -> None:
    assert default_tag(reference) == tag
