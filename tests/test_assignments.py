"""Student editions and the autograder (vaebook.assignments)."""
import json
import os
from pathlib import Path

import pytest

from vaebook import assignments as A

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))


def _nb(cells):
    out = []
    for kind, src, *meta in cells:
        c = {"cell_type": kind, "metadata": meta[0] if meta else {}, "source": src}
        if kind == "code":
            c.update(outputs=[], execution_count=None)
        out.append(c)
    return {"cells": out, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 4}


TOY = _nb([
    ("code", "x = 2\n"),
    ("markdown", "## Exercises\n\n```{exercise-start}\n:label: toy-square\n```\nWrite `square(v)`.\n```{exercise-end}\n```\n"),
    ("markdown", "```{solution-start} toy-square\n:class: dropdown\n```\nSECRET PROSE: multiply v by itself.\n"),
    ("code", "def square(v):\n    ### BEGIN SOLUTION\n    return v * v  # SECRET CODE\n    ### END SOLUTION\n"),
    ("code", "assert square(3) == 9\n", {"tags": ["graded"], "points": 2}),
    ("markdown", "```{solution-end}\n```\n\n```{exercise-start}\n:label: toy-derive\n```\nDerive it.\n"
                 "```{exercise-end}\n```\n"),
    ("markdown", "```{solution-start} toy-derive\n:class: dropdown\n```\nSECRET DERIVATION.\n"),
    ("markdown", "```{solution-end}\n```\n\n## References\n"),
    ("code", "raise RuntimeError('an unrelated failing cell')\n"),
    ("code", "assert x == 2\n"),
])


def test_find_exercises_on_toy():
    ex = A.find_exercises(TOY)
    assert [e.label for e in ex] == ["toy-square", "toy-derive"]
    assert ex[0].solution_cells == [3] and ex[0].graded_cells == [4] and ex[0].max_points == 2
    assert ex[1].graded_cells == [] and ex[1].max_points == 0


def test_student_edition_removes_solutions_and_keeps_checks():
    st = A.student_edition(TOY, "toy.ipynb")
    text = json.dumps(st)
    assert "SECRET" not in text and A.BEGIN not in text and "solution-start" not in text
    assert "assert square(3) == 9" in text and "References" in text and "Derive it." in text
    stub = next(c for c in st["cells"] if "answer" in c["metadata"].get("tags", []))
    assert "def square(v):" in stub["source"] and "NotImplementedError" in stub["source"]
    ex = A.find_exercises(st)  # the structure survives in the cells' metadata
    assert [e.label for e in ex] == ["toy-square"] and ex[0].max_points == 2


def test_stub_keeps_indentation_and_rejects_unclosed_markers():
    code = "def f():\n    a = 1\n    ### BEGIN SOLUTION\n    return a\n    ### END SOLUTION\n"
    assert A._stub(code, "e") == ('def f():\n    a = 1\n    # YOUR CODE HERE\n'
                                  '    raise NotImplementedError("exercise e")\n')
    with pytest.raises(ValueError, match="without"):
        A._stub("### BEGIN SOLUTION\nx = 1\n", "e")


def test_grading_toy_reference_student_and_tampering(tmp_path):
    ref = tmp_path / "toy.ipynb"
    ref.write_text(json.dumps(TOY))
    full = A.grade(ref, cell_timeout=60)
    assert full["total"] == full["max_total"] == 2.0
    assert full["errors_outside_checks"] == 1  # the failing cell did not stop the run
    A.write_student_editions(tmp_path / "student", [ref])
    stud = tmp_path / "student" / "toy.ipynb"
    zero = A.grade(stud, reference=ref, cell_timeout=60)
    assert zero["total"] == 0.0 and zero["max_total"] == 2.0
    assert zero["exercises"][0]["checks"][0]["error"] == "NotImplementedError: exercise toy-square"
    # a student who edits the graded check gets no points: the reference's check is used
    tampered = json.loads(stud.read_text())
    for c in tampered["cells"]:
        if "graded" in c["metadata"].get("tags", []):
            c["source"] = "assert True\n"
    stud.write_text(json.dumps(tampered))
    assert A.grade(stud, reference=ref, cell_timeout=60)["total"] == 0.0
    assert A.grade(stud, cell_timeout=60)["total"] == 2.0  # without a reference the edit would pass


def test_grading_time_limit(tmp_path):
    nb = _nb([("code", "import time\ntime.sleep(30)\n"),
              ("markdown", "```{solution-start} t\n```\n"),
              ("code", "pass\n", {"tags": ["graded"]}),
              ("markdown", "```{solution-end}\n```\n")])
    path = tmp_path / "slow.ipynb"
    path.write_text(json.dumps(nb))
    r = A.grade(path, cell_timeout=2, timeout=60)
    assert r["exercises"][0]["points"] == 1.0  # the slow cell timed out, the check still ran
    r = A.grade(path, cell_timeout=60, timeout=1)
    assert r["exercises"][0]["points"] == 0.0 and "time limit" in r["exercises"][0]["checks"][0]["error"]


def test_a_stalled_kernel_is_restarted_and_the_notebook_graded_again(tmp_path):
    """A kernel idle during a cell (what a stranded execute request looks like) is killed after ``stall_timeout``.

    ``time.sleep`` keeps the kernel idle like a stall. The first attempt is killed after ~3 s instead of waiting for
    the 60 s cell timeout; the retry stalls again, so the check after it fails with the stall named, and the whole
    run takes far less than the sleeps would. A kernel that computes for longer than ``stall_timeout`` is left alone.
    """
    nb = _nb([("code", "import time\ntime.sleep(40)\n"),
              ("markdown", "```{solution-start} t\n```\n"),
              ("code", "pass\n", {"tags": ["graded"]}),
              ("markdown", "```{solution-end}\n```\n")])
    path = tmp_path / "stall.ipynb"
    path.write_text(json.dumps(nb))
    r = A.grade(path, cell_timeout=60, stall_timeout=3, retries=1)
    assert r["attempts"] == 2 and r["seconds"] < 35, r
    assert r["exercises"][0]["points"] == 0.0
    assert "stalled" in r["exercises"][0]["checks"][0]["error"]
    busy = _nb([("code", "import time\nt = time.time()\nwhile time.time() - t < 7:\n    sum(range(10000))\n"),
                ("markdown", "```{solution-start} t\n```\n"),
                ("code", "pass\n", {"tags": ["graded"]}),
                ("markdown", "```{solution-end}\n```\n")])
    path.write_text(json.dumps(busy))
    r = A.grade(path, cell_timeout=60, stall_timeout=3, retries=1)
    assert r["attempts"] == 1 and r["total"] == 1.0, r
    with pytest.raises(ValueError, match="stall_timeout"):
        A.grade(path, stall_timeout=-1)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_has_graded_code_exercises_and_a_clean_student_edition(chapter):
    nb = json.loads(chapter.read_text())
    ex = A.find_exercises(nb)
    assert len(ex) >= 3, "at least three exercises"
    code_ex = [e for e in ex if e.solution_cells]
    assert code_ex, "at least one exercise asks for code"
    for e in code_ex:
        assert e.graded_cells, f"{e.label}: a code exercise needs a graded check"
    st = A.student_edition(nb, chapter.name)
    text = json.dumps(st)
    assert "solution-start" not in text and A.BEGIN not in text
    sol_lines = set()
    for e in code_ex:
        for i in e.solution_cells:
            src = A._src(nb["cells"][i])
            body = src.split(A.BEGIN, 1)[1].split(A.END, 1)[0] if A.BEGIN in src else src
            sol_lines |= {ln.strip() for ln in body.splitlines() if len(ln.strip()) > 25}
    solution_idx = {i for e in code_ex for i in e.solution_cells}
    elsewhere = "\n".join(A._src(c) for i, c in enumerate(nb["cells"]) if i not in solution_idx)
    leaked = [ln for ln in sol_lines if ln in text and ln not in elsewhere]
    assert not leaked, f"solution code left in the student edition: {leaked[:3]}"


def test_student_editions_are_excluded_from_the_book_and_tests():
    cfg = (ROOT / "_config.yml").read_text()
    assert "student" in cfg
    assert "student" in (ROOT / "pyproject.toml").read_text()
    assert "/student/" in (ROOT / ".gitignore").read_text()


@pytest.mark.book
@pytest.mark.skipif(os.environ.get("VAEBOOK_GRADE_CHAPTERS", "ch01") == "none", reason="VAEBOOK_GRADE_CHAPTERS=none")
@pytest.mark.parametrize("chapter", [c for c in CHAPTERS
                                     if os.environ.get("VAEBOOK_GRADE_CHAPTERS", "ch01") in ("all", c.stem[:4])],
                         ids=lambda p: p.name)
def test_grading_a_real_student_edition(chapter, tmp_path, mnist_test):
    """The untouched student edition of a chapter gets zero and does not crash.

    The reference solution's full marks are checked on the chapter's own first execution
    (``book/<chapter>.ipynb::reference earns full marks``, ``tests/_chapter_runs.py``), so the reference is not
    executed again here. CI grades every chapter's student edition (``VAEBOOK_GRADE_CHAPTERS=all`` in ``.ci/run``);
    a plain ``pytest`` grades Chapter 1 only, ``ch03`` one chapter, ``none`` none.
    """
    max_total = A.score_executed(json.loads(chapter.read_text()))["max_total"]
    A.write_student_editions(tmp_path, [chapter])
    zero = A.grade(tmp_path / chapter.name, reference=chapter, cwd=chapter.parent, timeout=900)
    assert zero["total"] == 0.0 and zero["max_total"] == max_total > 0, zero


def test_score_executed_reads_errors_and_unrun_cells():
    """Scoring an executed notebook: a graded cell passes only if it ran without an error output."""
    nb = json.loads(json.dumps(TOY))
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["execution_count"] = 1
    assert A.score_executed(nb)["total"] == 2.0
    graded = next(c for c in nb["cells"] if "graded" in c["metadata"].get("tags", []))
    graded["outputs"] = [{"output_type": "error", "ename": "AssertionError", "evalue": "", "traceback": []}]
    r = A.score_executed(nb)
    assert r["total"] == 0.0 and r["exercises"][0]["checks"][0]["error"] == "AssertionError: "
    graded["outputs"], graded["execution_count"] = [], None
    r = A.score_executed(nb)
    assert r["total"] == 0.0 and r["exercises"][0]["checks"][0]["error"] == "not run"
