"""Reading references: transports, registry hosts, stores and image IDs (``_reference``)."""

from __future__ import annotations

import pytest

from containers_image_proxy._reference import (
    is_storage,
    split_domain,
    split_transport,
    storage_image_id,
    strip_store,
)

IMAGE_ID = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("docker://quay.io/x:1", ("docker", "//quay.io/x:1")),
        ("oci:/srv/layout:tag", ("oci", "/srv/layout:tag")),
        ("containers-storage:", ("containers-storage", "")),
        ("quay.io/x", None),
        ("", None),
    ],
)
def test_split_transport(reference: str, parts: tuple[str, str] | None) -> None:
    assert split_transport(reference) == parts


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("busybox", ("docker.io", "busybox")),
        ("library/busybox:1", ("docker.io", "library/busybox:1")),
        ("quay.io/fedora/fedora", ("quay.io", "fedora/fedora")),
        ("localhost/x", ("localhost", "x")),
        ("localhost:5000/x", ("localhost:5000", "x")),
        ("index.docker.io/library/x", ("docker.io", "library/x")),
        ("quay.io", ("docker.io", "quay.io")),  # no slash: a repository, not a host
    ],
)
def test_split_domain(name: str, parts: tuple[str, str]) -> None:
    assert split_domain(name) == parts


@pytest.mark.parametrize(
    ("rest", "image"),
    [
        ("quay.io/x", "quay.io/x"),
        ("[vfs@/g+/r]quay.io/x", "quay.io/x"),
        ("[/g]", ""),
        ("[vfs@/g", None),
    ],
)
def test_strip_store(rest: str, image: str | None) -> None:
    assert strip_store(rest) == image


@pytest.mark.parametrize(
    ("reference", "image_id"),
    [
        (f"containers-storage:{IMAGE_ID}", IMAGE_ID),
        (f"containers-storage:@{IMAGE_ID}", IMAGE_ID),
        (f"containers-storage:[overlay@/g]{IMAGE_ID}", IMAGE_ID),
        (f"containers-storage:[overlay@/g{IMAGE_ID}", None),
        (f"containers-storage:x@{IMAGE_ID}", None),
        ("containers-storage:" + IMAGE_ID[:12], None),
        (f"docker-daemon:{IMAGE_ID}", None),
    ],
)
def test_storage_image_id(reference: str, image_id: str | None) -> None:
    assert storage_image_id(reference) == image_id
    assert is_storage(reference) == reference.startswith("containers-storage:")
