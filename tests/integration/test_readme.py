"""The README's Python examples run as written.

Every ```python block of README.md is run as its own program, in an empty working
directory, with one substitution: the image references the README uses (a public
registry image, a path under /srv) are replaced by a local OCI layout the suite
builds, through :data:`README_REFERENCES`. A block that names any other image
reference fails the test until it is added there, so no example is left unrun.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import BuiltImage

README = Path(__file__).resolve().parents[2] / "README.md"

#: The README's example references, and the fixture image each one stands for.
README_REFERENCES = {
    "docker://quay.io/fedora/fedora:latest": "oci_image",
    "oci:/srv/layout:latest": "oci_image",
}

_TRANSPORT = re.compile(
    r"(docker|oci|oci-archive|docker-archive|dir|containers-storage|docker-daemon):\S"
)
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return _BLOCK.findall(README.read_text())


def _references(code: str) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _TRANSPORT.match(node.value)
    }


def unused_imports(code: str) -> list[str]:
    """Names a block imports and never uses."""
    tree = ast.parse(code)
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                name = alias.asname or alias.name.partition(".")[0]
                imported[name] = alias.name
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return sorted(imported[name] for name in imported if name not in used)


def test_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_imports_only_what_it_uses(index: int) -> None:
    assert unused_imports(python_blocks()[index]) == []


def test_unused_imports_are_found() -> None:
    assert unused_imports("import os\nfrom a import b, c as d\nprint(b)\n") == ["c", "os"]


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(
    index: int, request: pytest.FixtureRequest, tmp_path: Path, skopeo: str
) -> None:
    code = python_blocks()[index]
    references = _references(code)
    unknown = references - README_REFERENCES.keys()
    assert not unknown, f"add {sorted(unknown)} to README_REFERENCES"
    images: dict[str, BuiltImage] = {}
    for reference in references:
        image: BuiltImage = request.getfixturevalue(README_REFERENCES[reference])
        images[reference] = image
        quoted = [f'"{reference}"', f"'{reference}'"]
        assert any(q in code for q in quoted), f"{reference} is not a plain string literal"
        for q in quoted:
            code = code.replace(q, repr(image.ref))
    assert _references(code) == {image.ref for image in images.values()}

    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    if not images:
        return
    (image,) = {id(image): image for image in images.values()}.values()
    # What each example says it does, checked on what it left behind or printed.
    if "pull(" in code:
        assert out.split()[0] == image.manifest_digest
        layout = json.loads((tmp_path / "fedora" / "index.json").read_text())
        assert [m["digest"] for m in layout["manifests"]] == [image.manifest_digest]
    if "get_descriptor(" in code and "asyncio" not in code:
        for digest, _, _, data in image.layers:
            assert (tmp_path / digest.removeprefix("sha256:")).read_bytes() == data
    if "asyncio.run(" in code:
        assert out.strip() == str([size for _, size, _, _ in image.layers])
    if "unpack(" in code:
        assert out.startswith(f"{len(image.layers)} layers,")
        assert (tmp_path / "rootfs" / "etc" / "hello.conf").read_bytes() == b"greeting=hi\n"
