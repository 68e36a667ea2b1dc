"""The book's structure: notebooks committed without outputs, _toc.yml and book/ in agreement, Colab links and
setup cells consistent with _config.yml, every chapter verifying itself and offering exercises.

The strict (-W) build with every chapter executed, and what it looks like in a browser, are tested in
``tests/test_site.py``.
"""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def _yaml(path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def notebooks():
    return sorted(p for p in BOOK.glob("*.ipynb"))


def toc_files():
    toc = _yaml(ROOT / "_toc.yml")
    files = [toc["root"]]

    def walk(entries):
        for e in entries:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return files


def test_there_are_chapters():
    assert any(p.name.startswith("ch01") for p in notebooks())


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_notebook_committed_without_outputs(nb):
    data = json.loads(nb.read_text())
    for i, cell in enumerate(data["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{nb.name} cell {i} has stored outputs"
            assert cell.get("execution_count") is None, f"{nb.name} cell {i} has an execution count"


def test_toc_and_book_folder_list_the_same_pages():
    listed = {f.split("/", 1)[1] if f.startswith("book/") else f for f in toc_files()}
    on_disk = {p.stem for p in BOOK.glob("*.ipynb")} | {p.stem for p in BOOK.glob("*.md")}
    listed = {Path(f).with_suffix("").as_posix() for f in listed}
    assert on_disk == listed, f"only in book/: {on_disk - listed}; only in _toc.yml: {listed - on_disk}"


def test_colab_links_and_setup_cells_match_config():
    cfg = _yaml(ROOT / "_config.yml")
    repo = cfg["repository"]["url"].rstrip("/")
    slug = repo.split("github.com/")[1]
    branch = cfg["repository"]["branch"]
    for nb in notebooks():
        cells = json.loads(nb.read_text())["cells"]
        first_md = "".join(cells[0]["source"])
        colab = f"https://colab.research.google.com/github/{slug}/blob/{branch}/book/{nb.name}"
        assert colab in first_md, f"{nb.name}: the Colab badge must point to {colab}"
        setup = next(c for c in cells if c["cell_type"] == "code")
        src = "".join(setup["source"])
        assert '"google.colab" in sys.modules' in src, f"{nb.name}: the setup cell must be guarded"
        assert f"git+{repo}" in src, f"{nb.name}: the setup cell must install from {repo}"
        # never reinstall the heavy packages that Colab provides
        assert "--no-deps" in src and not re.search(r"install[^\n]*\b(torch|numpy|matplotlib)\b", src)
        assert "hide-cell" in setup.get("metadata", {}).get("tags", [])


def test_every_chapter_verifies_itself_and_has_exercises():
    for nb in notebooks():
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        assert code.count("assert ") >= 5, f"{nb.name}: a chapter checks its derivations with asserts"
        assert text.count("{exercise-start}") >= 3, f"{nb.name}: at least three exercises"
        assert text.count("{solution-start}") == text.count("{exercise-start}")
        assert ":class: dropdown" in text
