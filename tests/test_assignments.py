"""Student editions and the autograder (vaebook.tooling.assignments)."""
import json
import os
from pathlib import Path

import pytest

from vaebook.tooling import assignments as A

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


# --- the exports for nbgrader and otter-grader (no chapter is executed here; tests/test_instructor_tools.py runs
# --- the real tools) --------------------------------------------------------------------------------------------

from vaebook.tooling import hidden_tests as H

BOOK = A.book_chapters()


def test_the_book_chapters_are_the_toc_chapters():
    assert [c.stem for c in BOOK][:1] == ["ch01_vae"] and BOOK[-1].stem == "appendix_kernels"
    assert all(c.exists() and c.parent == ROOT / "book" for c in BOOK)
    assert A._resolve_chapters(["ch03"]) == [ROOT / "book" / "ch03_concrete.ipynb"]
    with pytest.raises(ValueError, match="names no chapter"):
        A._resolve_chapters(["ch99"])


def test_every_code_exercise_of_every_chapter_has_a_hidden_test():
    """The registry is complete, has no entry for an exercise that no longer exists, and every entry compiles."""
    labels = {e.label for c in BOOK for e in A.find_exercises(c) if e.solution_cells}
    assert labels <= set(H.HIDDEN), f"code exercises without a hidden test: {sorted(labels - set(H.HIDDEN))}"
    assert set(H.HIDDEN) <= labels, f"hidden tests of no exercise: {sorted(set(H.HIDDEN) - labels)}"
    for label in H.HIDDEN:
        code = H.hidden_code(label)
        compile(code, label, "exec")
        assert H.BEGIN_HIDDEN not in code and H.END_HIDDEN not in code


def _toy_with_hidden(monkeypatch):
    monkeypatch.setitem(H.HIDDEN, "toy-square", "assert square(-4) == 16\n")
    return TOY


def test_nbgrader_notebook_of_the_toy(monkeypatch):
    nb = A.nbgrader_notebook(_toy_with_hidden(monkeypatch), "toy.ipynb")
    meta = {c["metadata"]["nbgrader"]["grade_id"]: (c, c["metadata"]["nbgrader"]) for c in nb["cells"]
            if "nbgrader" in c["metadata"]}
    sol, m = meta["toy-square-solution"]
    assert m["solution"] and not m["grade"] and not m["locked"] and A.BEGIN in sol["source"]
    check, m = meta["toy-square-check"]
    assert m["grade"] and m["locked"] and m["points"] == 2 and not m["solution"]
    visible, hidden = check["source"].split(H.BEGIN_HIDDEN)
    assert visible.startswith("assert square(3) == 9") and "assert square(-4) == 16" in hidden
    assert hidden.rstrip().endswith(H.END_HIDDEN)
    for label in ("toy-square", "toy-derive"):
        assert meta[f"{label}-statement"][1]["locked"] and meta[f"{label}-answer"][1]["points"] == 0
        assert meta[f"{label}-answer"][0]["cell_type"] == "markdown"
    assert "SECRET DERIVATION" in meta["toy-derive-answer"][0]["source"]
    assert meta["toy-cell-0"][1]["locked"] and meta["toy-cell-8"][1]["locked"]   # the chapter's own code
    text = json.dumps(nb)
    assert "exercise-start" not in text and "solution-start" not in text and "References" in text
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids)) and nb["nbformat_minor"] == 5
    nbgrader_format = pytest.importorskip("nbgrader.nbgraderformat")
    import nbformat
    nbgrader_format.MetadataValidator().validate_nb(nbformat.reads(json.dumps(nb), as_version=4))


def test_otter_master_notebook_of_the_toy(monkeypatch):
    import ast

    nb = A.otter_notebook(_toy_with_hidden(monkeypatch), "toy.ipynb")
    raws = [c["source"].splitlines()[0] for c in nb["cells"] if c["cell_type"] == "raw"]
    assert raws == ["# ASSIGNMENT CONFIG",
                    "# BEGIN QUESTION", "# BEGIN SOLUTION", "# END SOLUTION", "# BEGIN TESTS", "# END TESTS",
                    "# END QUESTION",
                    "# BEGIN QUESTION", "# BEGIN SOLUTION", "# END SOLUTION", "# END QUESTION"]
    questions = [c["source"] for c in nb["cells"] if c["source"].startswith("# BEGIN QUESTION")]
    assert "name: toy-square\npoints: 2\nall_or_nothing: true" in questions[0]
    assert "name: toy-derive\nmanual: true" in questions[1]
    code = [c["source"] for c in nb["cells"] if c["cell_type"] == "code"]
    sol = next(s for s in code if "def square" in s)
    assert "    # BEGIN SOLUTION\n" in sol and "###" not in sol
    tests = [s for s in code if "(env)" in s]
    assert len(tests) == 2 and "hidden: true" in tests[1] and "hidden" not in tests[0]
    for t in tests:   # otter's exception-based format: one function definition after the optional config
        body = ast.parse(t.split('""" # END TEST CONFIG\n')[-1]).body
        assert len(body) == 1 and isinstance(body[0], ast.FunctionDef)
    env = {"square": lambda v: v * v}
    exec(tests[0], env)
    env["test_graded_check"](env)   # the public test runs the graded check in the notebook's namespace


@pytest.mark.parametrize("chapter", BOOK, ids=lambda p: p.stem)
def test_every_chapter_exports_for_nbgrader_and_otter_without_touching_the_book(chapter, tmp_path):
    before = chapter.read_bytes()
    A.write_nbgrader_course(tmp_path / "course", [chapter])
    A.write_otter_assignments(tmp_path / "otter", [chapter])
    assert chapter.read_bytes() == before
    src = json.loads((tmp_path / "course" / "source" / chapter.stem / chapter.name).read_text())
    master = json.loads((tmp_path / "otter" / chapter.stem / chapter.name).read_text())
    assert (tmp_path / "course" / "nbgrader_config.py").exists()
    assert (tmp_path / "otter" / chapter.stem / "requirements.txt").exists()
    for ex in A.find_exercises(chapter):
        checks = [c for c in src["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == f"{ex.label}-check"]
        if ex.solution_cells:
            assert len(checks) == 1 and checks[0]["source"].count(H.BEGIN_HIDDEN) == 1
            assert sum(f"'<hidden test {ex.label}>'" in c["source"] for c in master["cells"]) == 1
        qs = [c for c in master["cells"] if c["source"].startswith(f"# BEGIN QUESTION\nname: {ex.label}\n")]
        assert len(qs) == 1


def test_differs_tells_a_recomputed_result_from_a_typed_in_one():
    import torch

    assert not H.differs({"a": (1.0, torch.tensor([2.0, 3.0]))}, {"a": (1.0, torch.tensor([2.0, 3.0]))})
    assert H.differs({"a": (1.0, torch.tensor([2.0, 3.5]))}, {"a": (1.0, torch.tensor([2.0, 3.0]))})
    assert H.differs([1.0, 2.0], [1.0]) and not H.differs([float("nan")], [float("nan")])


def test_rerun_and_isolation_in_an_ipython_shell():
    """:func:`rerun` finds the student's cell in the shell's history and runs it again on fresh inputs in a copy of
    the namespace; :func:`run` leaves the notebook's random state as it was."""
    import torch

    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        for src in ("import torch\ngen = torch.Generator().manual_seed(0)\nbase = torch.ones(3)",
                    "x = base + torch.randn(3, generator=gen)\ny = x.sum().item()   # the student's cell",
                    "z = 1"):
            assert shell.run_cell(src, store_history=True).success
        ns = shell.user_ns
        y, gen_state, torch_state = ns["y"], ns["gen"].get_state(), torch.get_rng_state()
        check = ("import vaebook.tooling.hidden_tests as ht\n"
                 "def t():\n"
                 "    global again\n"
                 "    again = ht.rerun(r'^y\\s*=', base=torch.zeros(3), gen=torch.Generator().manual_seed(1))\n"
                 "    torch.randn(5); gen.manual_seed(99)\n"
                 "ht.run(t)")
        assert shell.run_cell(check, store_history=True).success
        again = ns["again"]
        assert again["y"] != y and ns["y"] == y and ns["base"].sum() == 3    # the notebook's names are untouched
        assert torch.equal(ns["gen"].get_state(), gen_state) and torch.equal(torch.get_rng_state(), torch_state)
        r = shell.run_cell("ht.rerun(r'^nothing\\s*=')")
        assert isinstance(r.error_in_exec, AssertionError)
    finally:
        InteractiveShell.clear_instance()
