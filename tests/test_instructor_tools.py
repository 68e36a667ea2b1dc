"""The instructor's own tools, run for real on courses written by ``python -m vaebook.assignments`` (issue 19).

* **nbgrader** (JupyterHub), for two chapters end to end: ``generate_assignment``, ``autograde`` of four
  submissions placed in ``submitted/`` (its SQLite gradebook), ``generate_feedback`` and ``export``;
* **otter-grader** (Gradescope), for one chapter: ``otter assign`` (student notebook and autograder zip), then
  ``otter run`` on four submissions;
* for every chapter, the course generates (``nbgrader generate_assignment``) and ``nbgrader validate`` passes on
  the reference solution. Validating executes the chapter, so it runs for every chapter only with
  ``VAEBOOK_GRADE_CHAPTERS=all`` (CI); otherwise for the cheapest chapter only.

The four submissions of each chapter: the reference solutions (full marks); the untouched release (zero for every
code exercise); one plausible wrong answer (loses exactly that exercise's points); and hard-coded outputs, typed in
from the reference run, that pass every *visible* graded check and fail the hidden tests (zero, and the failure
is raised inside the hidden test, :mod:`vaebook.tooling.hidden_tests`). The chapters are the cheapest to execute; every
nbgrader and otter command runs in a temporary folder with a time limit.
"""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaebook.tooling import assignments as A

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
NBGRADER = [sys.executable, "-m", "nbgrader"]
OTTER = [sys.executable, "-m", "otter"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GRADE_ALL = os.environ.get("VAEBOOK_GRADE_CHAPTERS", "ch01") == "all"
CHEAPEST = "appendix_kernels"   # about 15 s on one core


def _run(args, cwd, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _load(path) -> dict:
    return json.loads(Path(path).read_text())


def _save(path, nb) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(nb, indent=1))


def _dump_cell(path, expr: str) -> dict:
    """A cell appended to the reference submission: it records, with full precision, the values that the
    hard-coded submission types in (what a student would copy from a run of the reference)."""
    return {"cell_type": "code", "id": "record-for-hard-coding", "metadata": {}, "execution_count": None,
            "outputs": [], "source": f"import json as _json\nopen({str(path)!r}, 'w').write(_json.dumps({expr}))\n"}


# What each tested chapter needs: a plausible wrong answer for one exercise, the values to record from the
# reference run, and the hard-coded answers (typed-in numbers, no computation) built from them.
CHAPTERS = {
    "ch03_concrete": {
        "wrong": ("ch03-ex-k2", ("def kl_logistic(delta):\n"
                                 "    return delta / math.tanh(delta) - 2   # coth(delta), not coth(delta / 2)\n")),
        "record": '{"k2": kl_logistic(2.0), "exact": exact.tolist(), '
                  '"info": {k: [float(a) for a in v] for k, v in info.items()}}',
        "hard": {
            "ch03-ex-k2": lambda d: f"def kl_logistic(delta):\n    return {d['k2']!r}   # typed in\n",
            "ch03-ex-baseline": lambda d: (
                "def reinforce_loo():\n    # the exact gradient, typed in, and a little noise\n"
                f"    g = torch.tensor({d['exact']!r}, dtype=torch.float64)\n"
                "    g = g + 0.01 * torch.randn(6, dtype=torch.float64)\n    return (g * theta).sum()\n"),
            "ch03-ex-kl-choice": lambda d: f"info = {{k: tuple(v) for k, v in {d['info']!r}.items()}}   # typed in\n",
        },
    },
    "appendix_kernels": {
        "wrong": ("app-kern-ex-tiles", (
            "def svgd_tiled(x, s, h, block):\n"
            "    acc, ksum = torch.zeros_like(x), torch.zeros(x.shape[0], dtype=x.dtype)\n"
            "    for j0 in range(0, x.shape[0] - block + 1, block):   # forgets the ragged last tile\n"
            "        xj, sj = x[j0:j0 + block], s[j0:j0 + block]\n"
            "        k = torch.exp(-(x[:, None, :] - xj[None]).pow(2).sum(-1) / h)\n"
            "        acc += k @ (sj - 2 / h * xj)\n"
            "        ksum += k.sum(1)\n"
            "    return (acc + 2 / h * x * ksum[:, None]) / x.shape[0]\n")),
        "wrong_otter": ("app-kern-ex-uv", (
            "def v_from_u(su, s, h):\n    n, d = s.shape\n"
            "    return (n * (n - 1) * su + s.pow(2).sum() + 2 * d / h) / n**2   # the diagonal's 2d/h once\n")),
        "record": '{"sv": sv.item(), "expected": expected.tolist(), '
                  '"peaks": {str(n): [float(a) for a in v] for n, v in peaks.items()}}',
        "hard": {
            "app-kern-ex-uv": lambda d: (f"def v_from_u(su, s, h):\n"
                                         f"    return torch.tensor({d['sv']!r}, dtype=torch.float64)   # typed in\n"),
            "app-kern-ex-tiles": lambda d: (f"def svgd_tiled(x, s, h, block):\n"
                                            f"    return torch.tensor({d['expected']!r}, dtype=torch.float64)\n"),
            "app-kern-ex-memory": lambda d: (
                f"peaks = {{int(n): tuple(v) for n, v in {d['peaks']!r}.items()}}   # typed in\n"),
        },
    },
}


def _code_exercises(name: str) -> dict[str, float]:
    return {ex.label: ex.max_points for ex in A.find_exercises(ROOT / "book" / f"{name}.ipynb") if ex.solution_cells}


# --- nbgrader ---------------------------------------------------------------------------------------------------

def _nbgrader_submission(release: dict, source: dict, answers: dict[str, str]) -> dict:
    """The release with the solution cells of the exercises in ``answers`` filled in (``None``: the reference)."""
    ref = {c["metadata"]["nbgrader"]["grade_id"]: c["source"] for c in source["cells"]
           if c["metadata"].get("nbgrader", {}).get("solution") and c["cell_type"] == "code"}
    nb = json.loads(json.dumps(release))
    for c in nb["cells"]:
        gid = c["metadata"].get("nbgrader", {}).get("grade_id", "")
        label = gid[: -len("-solution")] if gid.endswith("-solution") else None
        if label in answers:
            c["source"] = ref[gid] if answers[label] is None else answers[label]
    return nb


def _nbgrader_scores(course: Path, name: str, student: str) -> dict[str, float]:
    """Points per exercise (its graded check cells) from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        grades = gb.find_submission_notebook(name, name, student).grades
        return {g.name[: -len("-check")]: float(g.score or 0.0) for g in grades if g.name.endswith("-check")}


def _failed_in_hidden_test(nb: dict) -> dict[str, bool]:
    """For each failing check cell of an autograded notebook: whether the error was raised in its hidden test."""
    out = {}
    for c in nb["cells"]:
        gid = c["metadata"].get("nbgrader", {}).get("grade_id", "")
        errors = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if gid.endswith("-check") and errors:
            tb = ANSI.sub("", "\n".join(errors[0].get("traceback", [])))
            out[gid[: -len("-check")]] = re.search(r"in _hidden_test_\w+", tb) is not None
    return out


@pytest.mark.parametrize("name", ["ch03_concrete", "appendix_kernels"])
def test_nbgrader_generate_autograde_feedback_export(name, tmp_path):
    spec, points = CHAPTERS[name], _code_exercises(name)
    total = sum(points.values())
    course = tmp_path / "course"
    _run([sys.executable, "-m", "vaebook.assignments", "nbgrader", str(course), name], cwd=tmp_path, timeout=120)
    _run(NBGRADER + ["generate_assignment", name], cwd=course, timeout=300)
    source = _load(course / "source" / name / f"{name}.ipynb")
    release = _load(course / "release" / name / f"{name}.ipynb")
    text = json.dumps(release)
    assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text and "_hidden_test_" not in text

    record = tmp_path / "recorded.json"
    reference = _nbgrader_submission(release, source, {label: None for label in points})
    reference["cells"].append(_dump_cell(record, spec["record"]))
    wrong_label, wrong_code = spec["wrong"]
    wrong = _nbgrader_submission(release, source, {label: None for label in points} | {wrong_label: wrong_code})
    for student, nb in (("reference", reference), ("release", release), ("wrong", wrong)):
        _save(course / "submitted" / student / name / f"{name}.ipynb", nb)
    _run(NBGRADER + ["autograde", name], cwd=course, timeout=1800)

    recorded = json.loads(record.read_text())
    hard = _nbgrader_submission(release, source, {label: spec["hard"][label](recorded) for label in points})
    _save(course / "submitted" / "hardcoded" / name / f"{name}.ipynb", hard)
    _run(NBGRADER + ["autograde", name, "--student", "hardcoded"], cwd=course, timeout=1800)
    _run(NBGRADER + ["generate_feedback", name], cwd=course, timeout=300)
    _run(NBGRADER + ["export"], cwd=course, timeout=300)

    scores = {s: _nbgrader_scores(course, name, s) for s in ("reference", "release", "wrong", "hardcoded")}
    print(name, json.dumps(scores))
    assert scores["reference"] == points, "the reference solutions earn full marks"
    assert scores["release"] == {label: 0.0 for label in points}, "the untouched release earns nothing"
    assert scores["wrong"] == points | {wrong_label: 0.0}, "one wrong answer loses exactly that exercise's points"
    assert scores["hardcoded"] == {label: 0.0 for label in points}, "hard-coded outputs earn nothing"
    autograded = _load(course / "autograded" / "hardcoded" / name / f"{name}.ipynb")
    assert _failed_in_hidden_test(autograded) == {label: True for label in points}, (
        "every hard-coded answer passes its visible check and fails in the hidden test")
    wrong_nb = _load(course / "autograded" / "wrong" / name / f"{name}.ipynb")
    assert set(_failed_in_hidden_test(wrong_nb)) == {wrong_label}

    for student in scores:
        assert (course / "feedback" / student / name / f"{name}.html").exists()
    rows = {r["student_id"]: r for r in csv.DictReader((course / "grades.csv").open())}
    expected = {"reference": total, "release": 0.0, "wrong": total - points[wrong_label], "hardcoded": 0.0}
    assert {s: float(r["score"]) for s, r in rows.items()} == expected
    assert all(float(r["max_score"]) == total for r in rows.values())


def test_every_chapter_generates_as_an_nbgrader_assignment(tmp_path):
    """The whole book as a course: nbgrader's generate_assignment accepts every chapter, and each release has the
    stubs, no solution code between the markers, no hidden test, and every graded check locked with its points."""
    course = tmp_path / "course"
    _run([sys.executable, "-m", "vaebook.assignments", "nbgrader", str(course)], cwd=tmp_path, timeout=300)
    _run(NBGRADER + ["generate_assignment", "*"], cwd=course, timeout=600)
    for chapter in A.book_chapters():
        name = chapter.stem
        release = _load(course / "release" / name / f"{name}.ipynb")
        text = json.dumps(release)
        assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text, name
        exercises = A.find_exercises(chapter)
        meta = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"] for c in release["cells"]
                if "nbgrader" in c["metadata"]}
        for ex in exercises:
            if ex.solution_cells:
                assert meta[f"{ex.label}-check"]["locked"] and meta[f"{ex.label}-check"]["points"] == ex.max_points
                stub = next(c for c in release["cells"]
                            if c["metadata"].get("nbgrader", {}).get("grade_id") == f"{ex.label}-solution")
                assert "raise NotImplementedError()" in "".join(stub["source"]), (name, ex.label)


@pytest.mark.parametrize("name", [c.stem for c in A.book_chapters()] if GRADE_ALL else [CHEAPEST])
def test_nbgrader_validate_passes_on_the_reference(name, tmp_path):
    """``nbgrader validate`` on the source notebook executes the chapter with its solutions: every graded check,
    hidden tests included, must pass. Every chapter with ``VAEBOOK_GRADE_CHAPTERS=all`` (CI), else the cheapest."""
    course = tmp_path / "course"
    _run([sys.executable, "-m", "vaebook.assignments", "nbgrader", str(course), name], cwd=tmp_path, timeout=120)
    r = _run(NBGRADER + ["validate", f"source/{name}/{name}.ipynb"], cwd=course, timeout=3000)
    assert "Success! Your notebook passes all the tests." in r.stdout, r.stdout[-4000:]


# --- otter-grader -----------------------------------------------------------------------------------------------

def _otter_answer_cells(nb: dict) -> dict[str, int]:
    """Exercise label -> index of its answer cell (the code cell just before its ``grader.check`` cell)."""
    out, last_code = {}, None
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code":
            continue
        m = re.fullmatch(r'grader\.check\("([^"]+)"\)\s*', "".join(c["source"]))
        if m:
            out[m.group(1)] = last_code
        last_code = i
    return out


def _otter_submission(student: dict, solved: dict, answers: dict[str, str]) -> dict:
    nb, cells_s, cells_r = json.loads(json.dumps(student)), _otter_answer_cells(student), _otter_answer_cells(solved)
    for label, code in answers.items():
        nb["cells"][cells_s[label]]["source"] = solved["cells"][cells_r[label]]["source"] if code is None else code
    return nb


def _otter_run(zip_path: Path, nb: dict, where: Path) -> dict:
    """``otter run`` on one submission: {question: (score, output)}."""
    sub, out = where / "submission", where / "results"
    _save(sub / f"{zip_path.name.split('-autograder')[0]}.ipynb", nb)
    out.mkdir(parents=True)
    _run(OTTER + ["run", "-a", str(zip_path), "-o", str(out), "--no-logo", str(next(sub.glob("*.ipynb")))],
         cwd=where, timeout=1800)
    results = _load(out / "results.json")
    return {t["name"]: (t.get("score"), t.get("output", "")) for t in results["tests"] if "score" in t}


def test_otter_assign_and_run(tmp_path):
    name = "appendix_kernels"
    spec, points = CHAPTERS[name], _code_exercises(name)
    _run([sys.executable, "-m", "vaebook.assignments", "otter", str(tmp_path / "otter"), name], cwd=tmp_path,
         timeout=120)
    folder = tmp_path / "otter" / name
    _run(OTTER + ["assign", f"{name}.ipynb", "dist"], cwd=folder, timeout=600)
    zip_path = next((folder / "dist" / "autograder").glob(f"{name}-autograder_*.zip"))
    student = _load(folder / "dist" / "student" / f"{name}.ipynb")
    solved = _load(folder / "dist" / "autograder" / f"{name}.ipynb")
    text = json.dumps(student)
    assert "_hidden_test_" not in text and "BEGIN SOLUTION" not in text
    assert set(_otter_answer_cells(student)) == set(points)

    record = tmp_path / "recorded.json"
    reference = _otter_submission(student, solved, {label: None for label in points})
    reference["cells"].append(_dump_cell(record, spec["record"]))
    results = {"reference": _otter_run(zip_path, reference, tmp_path / "reference"),
               "release": _otter_run(zip_path, student, tmp_path / "release")}
    wrong_label, wrong_code = spec["wrong_otter"]
    wrong = _otter_submission(student, solved, {label: None for label in points} | {wrong_label: wrong_code})
    results["wrong"] = _otter_run(zip_path, wrong, tmp_path / "wrong")
    recorded = json.loads(record.read_text())
    hard = _otter_submission(student, solved, {label: spec["hard"][label](recorded) for label in points})
    results["hardcoded"] = _otter_run(zip_path, hard, tmp_path / "hardcoded")

    scores = {s: {q: score for q, (score, _) in r.items()} for s, r in results.items()}
    print(name, json.dumps(scores))
    assert scores["reference"] == points
    assert scores["release"] == {label: 0.0 for label in points}
    assert scores["wrong"] == points | {wrong_label: 0.0}
    assert scores["hardcoded"] == {label: 0.0 for label in points}
    for _, output in results["hardcoded"].values():   # the public check passed, the hidden test failed
        cases = re.findall(r"(✅ Test case passed|❌ Test case failed)", output)
        assert cases == ["✅ Test case passed", "❌ Test case failed"], output
        assert "<hidden test" in output or "_hidden_test_" in output, output
