"""The code a reader sees fits the book's content column: the library and the chapters are formatted by ruff with
the line length configured in pyproject.toml (79), and no chapter code line is longer.

The browser test (tests/test_site.py) checks the rendered result (no code cell or output scrolls sideways at a
1280 x 900 window); these checks run in a second, without a build.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 79


def _ruff():
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).is_file():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return exe


def test_the_line_length_is_configured_once():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["tool"]["ruff"]["line-length"] == LIMIT


def test_library_and_chapters_are_formatted():
    proc = subprocess.run([_ruff(), "format", "--check", "src/vaebook", "book"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, "run `ruff format src/vaebook book`:\n" + proc.stdout[-3000:] + proc.stderr[-2000:]


def test_the_check_fails_on_unformatted_code(tmp_path):
    """The formatter check can fail: a badly formatted copy of a module is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("x = {  'a':1,\n'b' : [1,2,3]}\n")
    proc = subprocess.run([_ruff(), "format", "--check", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "bad.py" in proc.stdout + proc.stderr


def test_chapter_code_lines_fit_the_column():
    long = []
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                long += [f"{nb.name} cell {i}: {len(line)}: {line}" for line in "".join(cell["source"]).splitlines()
                         if len(line) > LIMIT]
    assert not long, f"{len(long)} code line(s) longer than {LIMIT}:\n" + "\n".join(long[:10])
