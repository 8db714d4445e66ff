"""The generator of the blocking code refuses a substitution it never applies."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gen_sync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """tools/gen_sync.py, set to turn one small source into a file under ``tmp_path``."""
    spec = importlib.util.spec_from_file_location("gen_sync", ROOT / "tools" / "gen_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = ROOT / "src" / "containers_image_proxy" / "_async" / "image.py"
    monkeypatch.setattr(module, "pairs", lambda: [(source, tmp_path / "image.py")])
    monkeypatch.setattr(module, "REPLACEMENTS", {"AsyncImageProxy": "ImageProxy"})
    monkeypatch.setattr(module, "TEXT", [("``async with``", "``with``")])
    monkeypatch.setattr(sys, "argv", ["gen_sync.py"])
    return module


def test_generates_the_twin(gen_sync: ModuleType, tmp_path: Path) -> None:
    assert gen_sync.main() == 0
    text = (tmp_path / "image.py").read_text()
    assert text.startswith("# Generated from src/containers_image_proxy/_async/image.py")
    assert "class SyncOpenedImage(OpenedImage):" in text
    assert "def __exit__(" in text and "await" not in text and "async " not in text
    assert "from .proxy import ImageProxy" in text


@pytest.mark.parametrize("unused", ["token", "text"])
def test_an_unused_substitution_fails(
    gen_sync: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unused: str,
) -> None:
    if unused == "token":
        monkeypatch.setitem(gen_sync.REPLACEMENTS, "AsyncNoSuchName", "NoSuchName")
    else:
        gen_sync.TEXT.append(("no such wording", "other wording"))
    assert gen_sync.main() == 1
    error = capsys.readouterr().err
    assert "substitutions used nowhere" in error
    assert ("AsyncNoSuchName" if unused == "token" else "no such wording") in error


def test_check_finds_a_stale_twin(
    gen_sync: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "image.py").write_text("# edited by hand\n")
    monkeypatch.setattr(sys, "argv", ["gen_sync.py", "--check"])
    assert gen_sync.main() == 1
    assert (tmp_path / "image.py").read_text() == "# edited by hand\n"


def test_a_source_that_names_itself_is_refused(
    gen_sync: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A twin copied word for word would call itself the source."""
    source = tmp_path / "_async" / "thing.py"
    source.parent.mkdir()
    source.write_text('"""This file is the source of the blocking code."""\n')
    monkeypatch.setattr(gen_sync, "ROOT", tmp_path)
    monkeypatch.setattr(gen_sync, "pairs", lambda: [(source, tmp_path / "thing.py")])
    with pytest.raises(SystemExit, match="'This file' would name the generated"):
        gen_sync.main()
    assert not (tmp_path / "thing.py").exists()
