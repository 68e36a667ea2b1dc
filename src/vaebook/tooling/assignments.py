"""Course assignments: every chapter as an nbgrader and an otter-grader assignment, student editions, a grader.

Conventions in the chapters (nbgrader's where they overlap, so that an instructor who knows nbgrader reads them at
once):

* An exercise is a gated sphinx-exercise block, ``{exercise-start}`` with a ``:label:`` ... ``{exercise-end}``, followed
  by its solution, ``{solution-start} LABEL`` ... ``{solution-end}``.
* Inside the solution, a code cell tagged ``graded`` is a **graded check** (``metadata.points``, default 1): it passes
  on the reference solution and fails on the stub.
* Every other code cell inside a solution is **solution code**; the lines a student writes sit between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's markers). Solution prose is the rest of the solution.
* Every code exercise has a **hidden test** in :mod:`vaebook.tooling.hidden_tests` (keyed by the exercise's label): it
  recomputes the answer from the student's own objects on fresh inputs, so that typed-in numbers fail. The chapters
  in ``book/`` do not contain them and render and run as they are; the exports below add them.

Commands::

    python -m vaebook.assignments nbgrader COURSE_DIR [chapters ...]   # an nbgrader course (JupyterHub)
    python -m vaebook.assignments otter OUT_DIR [chapters ...]         # otter-grader master notebooks (Gradescope)
    python -m vaebook.assignments student --out student/ [book/ch01_vae.ipynb ...]
    python -m vaebook.assignments grade student/ch01_vae.ipynb --reference book/ch01_vae.ipynb --json result.json

Chapters are paths or names (``ch03``, ``ch03_concrete``); the default is every chapter of the book.

* ``nbgrader`` writes ``COURSE_DIR/source/<chapter>/<chapter>.ipynb`` with nbgrader's cell metadata (solution cells,
  autograder-test cells with points and the hidden test between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN
  TESTS``, read-only cells for the chapter's own code and the exercise statements, a 0-point manually graded
  answer cell for each solution's prose) and a ``nbgrader_config.py`` (cell time limit). Then nbgrader's own
  commands run as usual: ``generate_assignment``, ``validate``, ``release_assignment``, ``collect``, ``autograde``
  (its SQLite gradebook), ``generate_feedback``, ``export``.
* ``otter`` writes ``OUT_DIR/<chapter>/<chapter>.ipynb`` in otter-grader's master-notebook format (one question per
  exercise, all or nothing; exception-based tests: the graded check is public, the hidden test hidden) and the
  ``requirements.txt`` of the Gradescope image. Then ``otter assign`` writes the student notebook and the
  autograder zip, and ``otter run`` grades a submission locally.

What the home-made part still does, and why (neither nbgrader nor otter-grader does it):

* ``student`` writes **student editions**: plain notebooks, without nbgrader metadata or otter's client cells, that
  a reader working through the book alone (Jupyter, Colab) opens with nothing else installed and no course set up.
* ``grade`` grades **one notebook with no course**: no course directory or gradebook (nbgrader), no autograder zip
  built first (otter); it takes the visible checks straight from the book's chapter, so a self-taught reader or a
  CI job can score a student edition in one command. It is also the only grader here that restarts a stalled
  kernel (see ``_StallWatch``) instead of waiting out the cell time limit. It has no hidden tests: a course grades
  with nbgrader or otter.
* :func:`score_executed` scores a notebook that **was already executed**, without executing it again: the test suite
  scores each chapter's reference from the run it makes anyway (``tests/_chapter_runs.py``). Both tools always
  execute the notebook themselves.

Grading with ``grade`` executes the notebook top to bottom in a fresh kernel with a time limit, never stops at a
failing cell, takes the graded checks from the reference chapter when one is given (so that an edited check cannot
pass), and reports a score per exercise and in total (text, and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Exercise",
    "find_exercises",
    "student_edition",
    "write_student_editions",
    "grade",
    "score_executed",
    "book_chapters",
    "nbgrader_notebook",
    "otter_notebook",
    "write_nbgrader_course",
    "write_otter_assignments",
    "main",
]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_EX_START = re.compile(
    r"```\{exercise-start\}[^\n]*\n(?::[^\n]*\n)*?:label:\s*(\S+)[^\n]*\n(?::[^\n]*\n)*```[ \t]*\n?"
)
_EX_END = re.compile(r"```\{exercise-end\}[^\n]*\n```[ \t]*\n?")
_SOL_START = re.compile(
    r"```\{solution-start\}\s+(\S+)[^\n]*\n(?::[^\n]*\n)*```[ \t]*\n?"
)
_SOL_END = re.compile(r"```\{solution-end\}[^\n]*\n```[ \t]*\n?")
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Exercise:
    """One exercise: its label, the indices of its solution code cells and of its graded checks, and its points."""

    label: str
    solution_cells: list[int] = field(default_factory=list)
    graded_cells: list[int] = field(default_factory=list)
    points: list[float] = field(default_factory=list)

    @property
    def max_points(self) -> float:
        return float(sum(self.points))


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _load(nb_or_path) -> dict:
    if isinstance(nb_or_path, dict):
        return nb_or_path
    return json.loads(Path(nb_or_path).read_text())


def find_exercises(nb) -> list[Exercise]:
    """The exercises of a notebook (dict or path), in order, with their solution and graded cells."""
    nb = _load(nb)
    exercises: dict[str, Exercise] = {}
    current = None
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            text = _src(cell)
            for m in _EX_START.finditer(text):
                exercises.setdefault(m.group(1), Exercise(m.group(1)))
            # walk the solution fences in order: a cell may close
            # one solution and open the next
            events = sorted(
                [
                    (m.start(), "start", m.group(1))
                    for m in _SOL_START.finditer(text)
                ]
                + [(m.start(), "end", None) for m in _SOL_END.finditer(text)]
            )
            for _, kind, label in events:
                if kind == "start":
                    current = exercises.setdefault(label, Exercise(label))
                else:
                    current = None
        elif cell["cell_type"] == "code" and cell.get("metadata", {}).get(
            "exercise"
        ):
            # a student edition: the fences are gone, the cells
            # carry their exercise's label
            ex = exercises.setdefault(
                cell["metadata"]["exercise"],
                Exercise(cell["metadata"]["exercise"]),
            )
            if "graded" in _tags(cell):
                ex.graded_cells.append(i)
                ex.points.append(float(cell["metadata"].get("points", 1)))
            else:
                ex.solution_cells.append(i)
        elif cell["cell_type"] == "code" and current is not None:
            if "graded" in _tags(cell):
                current.graded_cells.append(i)
                current.points.append(
                    float(cell.get("metadata", {}).get("points", 1))
                )
            else:
                current.solution_cells.append(i)
    return list(exercises.values())


def _stub(code: str, label: str) -> str:
    """Replace each BEGIN/END SOLUTION region by a ``raise NotImplementedError`` at the region's indentation."""
    lines = code.splitlines()
    out, inside = [], False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(
                f'{indent}raise NotImplementedError("exercise {label}")'
            )
            continue
        if stripped == END:
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ValueError(f"exercise {label}: '{BEGIN}' without '{END}'")
    return "\n".join(out) + ("\n" if code.endswith("\n") else "")


def _strip_markdown(text: str, in_solution: bool) -> tuple[str, bool]:
    """Remove solution prose and turn exercise fences into plain headings; return (text, still in a solution)."""
    out, pos = [], 0
    while pos <= len(text):
        if in_solution:
            m = _SOL_END.search(text, pos)
            if m is None:
                return "".join(out), True
            pos, in_solution = m.end(), False
            continue
        m = _SOL_START.search(text, pos)
        if m is None:
            out.append(text[pos:])
            break
        out.append(text[pos : m.start()])
        pos, in_solution = m.end(), True
    body = "".join(out)
    body = _EX_START.sub(lambda m: f"**Exercise `{m.group(1)}`.** ", body)
    body = _EX_END.sub("", body)
    return body, in_solution


def student_edition(nb, source_name: str = "") -> dict:
    """A copy of the notebook with solution code stubbed, solution prose removed and graded checks kept."""
    nb = copy.deepcopy(_load(nb))
    exercises = find_exercises(nb)
    stub_cells = {i: ex.label for ex in exercises for i in ex.solution_cells}
    graded = {i: ex.label for ex in exercises for i in ex.graded_cells}
    cells, in_solution = [], False
    for i, cell in enumerate(nb["cells"]):
        cell = copy.deepcopy(cell)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if i in stub_cells:
                code = _src(cell)
                if BEGIN in code:
                    cell["source"] = _stub(code, stub_cells[i])
                else:
                    cell["source"] = (
                        f"# Exercise {stub_cells[i]}: write your code here.\n"
                        'raise NotImplementedError("exercise '
                        f'{stub_cells[i]}")\n'
                    )
                cell.setdefault("metadata", {})["tags"] = [
                    t for t in _tags(cell) if t != "solution"
                ] + ["answer"]
                cell["metadata"]["exercise"] = stub_cells[i]
            elif i in graded:
                cell["source"] = _src(cell)
                cell.setdefault("metadata", {})["exercise"] = graded[i]
            cells.append(cell)
            continue
        if cell["cell_type"] == "markdown":
            text, in_solution = _strip_markdown(_src(cell), in_solution)
            if text.strip():
                cell["source"] = text
                cells.append(cell)
            continue
        cells.append(cell)
    header = {
        "cell_type": "markdown",
        "metadata": {},
        "source": f"*Student edition of `{source_name or 'this chapter'}`, generated by `python -m vaebook.assignments "
        "student`: the solutions are removed. Replace each `raise "
        "NotImplementedError` with your code; the cells "
        'marked "Graded check" are run by the grader and must not be edited.*',
    }
    nb["cells"] = [header] + cells
    for c in nb["cells"]:
        c.pop("id", None)
    nb["nbformat"], nb["nbformat_minor"] = 4, 4
    nb.setdefault("metadata", {})["vaebook_assignment"] = {
        "source": source_name,
        "exercises": [
            {"label": ex.label, "max_points": ex.max_points}
            for ex in exercises
        ],
    }
    return nb


def _chapters(paths) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    return sorted((ROOT / "book").glob("*.ipynb"))


def write_student_editions(out, chapters=None) -> list[Path]:
    """Write the student edition of each chapter (default: every chapter in ``book/``) into the folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _chapters(chapters):
        nb = student_edition(path, source_name=path.name)
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, seconds) of a process, from /proc; None where that is not available."""
    try:
        fields = (
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        )
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _StallWatch(threading.Thread):
    """Kills the kernel when a cell has been running for ``stall_timeout`` s while the kernel used no CPU.

    Why: we saw a cell "run" until its timeout with both the client and the kernel idle. The cause we found and
    reproduced (one ``interact`` cell in 300, see :mod:`vaebook.tooling.nbexec`) is a lost wake-up in nbclient's asyncio
    channel: the reply had arrived and sat unread until the poll's timeout; the grader's client is now hardened
    against it. This watch stays as the second line of defence against a kernel that is really stuck (a wedged
    kernel, a deadlock in a student's code that does not spin): waiting for the cell timeout would cost up to
    ``cell_timeout`` seconds and then fail the student's exercise for nothing.
    A kernel that is really computing uses CPU; one that waits for nothing for two minutes is stuck, so it is killed
    and the notebook is graded again from the start in a fresh kernel (at most ``retries`` times). A cell that
    legitimately sleeps or waits on I/O longer than ``stall_timeout`` would be taken for a stall: set it to 0 to
    disable the watch.
    """

    def __init__(self, pid: int, stall_timeout: float, poll: float = 2.0):
        super().__init__(daemon=True)
        self.pid, self.stall_timeout, self.poll = pid, stall_timeout, poll
        self.busy = threading.Event()  # set while a cell executes
        self.stop = threading.Event()
        self.stalled = False

    def run(self) -> None:
        last_cpu, last_change = None, time.monotonic()
        while not self.stop.wait(self.poll):
            cpu = _cpu_seconds(self.pid)
            now = time.monotonic()
            if cpu is None:
                # no /proc (not Linux) or the kernel is gone:
                # nothing to watch
                return
            if (
                not self.busy.is_set()
                or last_cpu is None
                or cpu - last_cpu > 0.02
            ):
                last_cpu, last_change = cpu, now
                continue
            if now - last_change > self.stall_timeout:
                self.stalled = True
                try:
                    os.kill(
                        self.pid, signal.SIGKILL
                    )  # nbclient notices the dead kernel within a second
                except OSError:
                    pass
                return


def _execute(
    nb,
    path: Path,
    timeout: float,
    cell_timeout: float,
    kernel_name: str,
    cwd,
    stall_timeout: float,
):
    """Run every code cell of ``nb`` in a fresh kernel. Returns ({cell index: (passed, error)}, seconds, stalled)."""
    from nbclient.exceptions import (
        CellExecutionError,
        CellTimeoutError,
        DeadKernelError,
    )

    from vaebook.tooling.nbexec import (
        HardenedNotebookClient as NotebookClient,
    )  # no lost wake-ups

    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=int(cell_timeout),
        kernel_name=kernel_name,
        allow_errors=False,
        interrupt_on_timeout=True,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    status: dict[int, tuple[bool, str]] = {}
    watch = None
    start = time.perf_counter()
    with client.setup_kernel():
        pid = getattr(
            getattr(getattr(client.km, "provisioner", None), "process", None),
            "pid",
            None,
        )
        if stall_timeout and stall_timeout > 0 and pid is not None:
            watch = _StallWatch(pid, stall_timeout)
            watch.start()
        try:
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                if time.perf_counter() - start > timeout:
                    status[i] = (
                        False,
                        "not run: the notebook exceeded its time limit of "
                        f"{timeout:.0f} s",
                    )
                    continue
                if watch is not None:
                    watch.busy.set()
                try:
                    client.execute_cell(cell, i)
                    status[i] = (True, "")
                except CellTimeoutError:
                    status[i] = (
                        False,
                        f"cell timed out after {cell_timeout:.0f} s",
                    )
                except CellExecutionError as e:
                    msg = (
                        re.sub(r"\x1b\[[0-9;]*m", "", str(e))
                        .strip()
                        .splitlines()
                    )
                    status[i] = (False, msg[-1] if msg else "error")
                except DeadKernelError:
                    status[i] = (False, "the kernel died")
                    break
                finally:
                    if watch is not None:
                        watch.busy.clear()
        finally:
            if watch is not None:
                watch.stop.set()
    return status, time.perf_counter() - start, bool(watch and watch.stalled)


def grade(
    path,
    reference=None,
    timeout: float = 1200.0,
    cell_timeout: float = 600.0,
    kernel_name: str = "python3",
    cwd=None,
    stall_timeout: float = 120.0,
    retries: int = 1,
) -> dict:
    """Execute a (student) notebook and score its graded checks.

    Args:
        path: the notebook to grade. reference: the official chapter; its graded checks replace the submission's
            (matched by exercise label and order), so that editing a check cannot make it pass.
        timeout: wall-clock limit for the whole notebook (s); cells not reached count as failed.
        cell_timeout: limit per cell (s). cwd: working directory (default: the notebook's folder).
        stall_timeout: a kernel that used no CPU for this long while a cell was running is taken as stuck (see
            ``_StallWatch``), killed, and the notebook is run again from the start, at most ``retries`` times.
            0 disables this.

    Returns:
        ``{"notebook", "exercises": [{"label", "points", "max_points", "checks": [{"cell", "passed", "error"}]}],
        "total", "max_total", "seconds", "errors_outside_checks", "attempts"}``. A failing cell never stops the run.
    """
    import nbformat

    if timeout <= 0 or cell_timeout <= 0:
        raise ValueError(
            f"timeout and cell_timeout must be > 0 seconds, got {timeout} and "
            f"{cell_timeout}"
        )
    if stall_timeout < 0 or retries < 0:
        raise ValueError(
            "stall_timeout must be >= 0 s and retries >= 0, got "
            f"{stall_timeout} and {retries}"
        )
    path = Path(path)
    nb_dict = _load(path)
    exercises = find_exercises(nb_dict)
    if reference is not None:
        ref_ex = {ex.label: ex for ex in find_exercises(reference)}
        ref_nb = _load(reference)
        for ex in exercises:
            if ex.label in ref_ex:
                for k, i in enumerate(ex.graded_cells):
                    if k < len(ref_ex[ex.label].graded_cells):
                        nb_dict["cells"][i]["source"] = _src(
                            ref_nb["cells"][ref_ex[ex.label].graded_cells[k]]
                        )
    seconds, attempts = 0.0, 0
    while True:
        attempts += 1
        nb = nbformat.reads(json.dumps(nb_dict), as_version=4)
        status, took, stalled = _execute(
            nb, path, timeout, cell_timeout, kernel_name, cwd, stall_timeout
        )
        seconds += took
        if not stalled or attempts > retries:
            break
        print(
            f"{path.name}: the kernel stalled (no CPU for {stall_timeout:.0f} "
            "s during a cell); grading again "
            "in a fresh kernel",
            file=sys.stderr,
        )
    missing = "not run"
    if stalled:
        why = f"the kernel stalled (no CPU for {stall_timeout:.0f} s during a cell) in every attempt"
        status = {
            i: (ok, why if err == "the kernel died" else err)
            for i, (ok, err) in status.items()
        }
        missing = f"not run: {why}"
    elif any(err == "the kernel died" for _, err in status.values()):
        missing = "not run: the kernel died"
    return _score(str(path), exercises, status, seconds, attempts, missing)


def _score(
    name: str,
    exercises,
    status: dict,
    seconds: float,
    attempts: int,
    missing: str = "not run",
) -> dict:
    """The result dict of :func:`grade` from each code cell's ``(passed, error)`` (cells absent: ``missing``)."""
    graded_idx = {i for ex in exercises for i in ex.graded_cells}
    other_errors = sum(
        1 for i, (ok, _) in status.items() if not ok and i not in graded_idx
    )
    result = {
        "notebook": name,
        "exercises": [],
        "total": 0.0,
        "max_total": 0.0,
        "seconds": round(seconds, 1),
        "errors_outside_checks": other_errors,
        "attempts": attempts,
    }
    for ex in exercises:
        checks = []
        for i, pts in zip(ex.graded_cells, ex.points):
            ok, err = status.get(i, (False, missing))
            checks.append(
                {"cell": i, "points": pts, "passed": ok, "error": err}
            )
        points = float(sum(c["points"] for c in checks if c["passed"]))
        result["exercises"].append(
            {
                "label": ex.label,
                "points": points,
                "max_points": ex.max_points,
                "checks": checks,
            }
        )
        result["total"] += points
        result["max_total"] += ex.max_points
    return result


def score_executed(nb, name: str = "") -> dict:
    """Score a notebook that was already executed (for instance by the test suite), without running it again.

    A graded check passes when its cell ran (it has an execution count) and has no ``error`` output; a cell that
    did not run fails with "not run". Returns the same dict as :func:`grade` (``seconds`` 0, ``attempts`` 0).
    """
    nb = _load(nb) if isinstance(nb, (str, Path)) else nb
    status: dict[int, tuple[bool, str]] = {}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or cell.get("execution_count") is None:
            continue
        errors = [
            o
            for o in cell.get("outputs", [])
            if o.get("output_type") == "error"
        ]
        status[i] = (
            (False, f"{errors[0].get('ename')}: {errors[0].get('evalue')}")
            if errors
            else (True, "")
        )
    return _score(name, find_exercises(nb), status, 0.0, 0)


# -----------------------------------------------------------------------------
# Exports for the instructor's own tools: nbgrader (JupyterHub) and
# otter-grader (Gradescope)
# -----------------------------------------------------------------------------

NBGRADER_CONFIG = """\
# nbgrader configuration of a course written by `python -m vaebook.assignments nbgrader` (edit freely; the
# command does not overwrite this file). Run nbgrader's commands from this folder.
c = get_config()
c.CourseDirectory.course_id = "vaebook"
# The chapters train small models on a CPU: allow each cell up to 15 minutes (nbgrader's default is 30 seconds).
c.Execute.timeout = 900
"""

OTTER_REQUIREMENTS = """\
# What the Gradescope autograder image installs besides otter-grader (CPU build of PyTorch, then the book's library)
--extra-index-url https://download.pytorch.org/whl/cpu
torch
vaebook @ git+https://github.com/vaebook/vaebook@main
"""


def book_chapters() -> list[Path]:
    """The chapters of the book in the order of ``_toc.yml`` (every ``book/*.ipynb`` if there is no toc)."""
    toc = ROOT / "_toc.yml"
    if toc.exists():
        names = re.findall(r"^\s*-\s*file:\s*(\S+)\s*$", toc.read_text(), re.M)
        paths = [ROOT / f"{n}.ipynb" for n in names]
        paths = [p for p in paths if p.exists()]
        if paths:
            return paths
    return sorted((ROOT / "book").glob("*.ipynb"))


def _resolve_chapters(args) -> list[Path]:
    """Chapter arguments: paths, or names/prefixes of the book's chapters (``ch03``, ``ch03_concrete``)."""
    if not args:
        return book_chapters()
    out = []
    for a in args:
        p = Path(a)
        if p.suffix == ".ipynb" and p.exists():
            out.append(p)
            continue
        hits = [c for c in book_chapters() if c.stem == a] or [
            c for c in book_chapters() if c.stem.startswith(a)
        ]
        if len(hits) != 1:
            raise ValueError(
                f"{a!r} names no chapter of the book (or several): "
                f"{[c.stem for c in hits]}"
            )
        out.append(hits[0])
    return out


def _split_markdown(
    text: str, state: tuple
) -> tuple[list[tuple[str, str | None, str]], tuple]:
    """Split a markdown cell at the exercise and solution fences: ``[(kind, label, text)]`` with kind ``text``,
    ``statement`` (an exercise's statement) or ``answer`` (solution prose), and the state after the cell."""
    events = sorted(
        [
            (m.start(), m.end(), "statement", m.group(1))
            for m in _EX_START.finditer(text)
        ]
        + [(m.start(), m.end(), "text", None) for m in _EX_END.finditer(text)]
        + [
            (m.start(), m.end(), "answer", m.group(1))
            for m in _SOL_START.finditer(text)
        ]
        + [(m.start(), m.end(), "text", None) for m in _SOL_END.finditer(text)]
    )
    parts, pos = [], 0
    for start, end, kind, label in events:
        parts.append((*state, text[pos:start]))
        state, pos = (kind, label), end
    parts.append((*state, text[pos:]))
    merged: list[tuple[str, str | None, str]] = []
    for kind, label, body in parts:
        if not body.strip():
            continue
        if merged and merged[-1][:2] == (kind, label):
            merged[-1] = (
                kind,
                label,
                merged[-1][2].rstrip() + "\n\n" + body.strip(),
            )
        else:
            merged.append((kind, label, body.strip()))
    return merged, state


@dataclass
class _Part:
    kind: str  # text | statement | answer | code | solution | check
    source: str
    label: str | None = None
    points: float = 0.0
    metadata: dict = field(default_factory=dict)
    index: int = -1  # the cell's index in the chapter


def _course_parts(nb: dict) -> tuple[list[_Part], list[Exercise]]:
    """The chapter as a sequence of parts for the course exports (markdown split at the exercise fences)."""
    exercises = find_exercises(nb)
    role = {}
    for ex in exercises:
        role.update(
            {i: ("solution", ex.label, 0.0) for i in ex.solution_cells}
        )
        role.update(
            {
                i: ("check", ex.label, p)
                for i, p in zip(ex.graded_cells, ex.points)
            }
        )
    parts, state = [], ("text", None)
    for i, cell in enumerate(nb["cells"]):
        meta = {
            k: v
            for k, v in cell.get("metadata", {}).items()
            if k not in ("exercise", "points", "nbgrader")
        }
        if cell["cell_type"] == "markdown":
            segments, state = _split_markdown(_src(cell), state)
            for kind, label, body in segments:
                if kind == "statement":
                    body = f"**Exercise `{label}`.** {body}"
                parts.append(
                    _Part(
                        kind,
                        body,
                        label,
                        0.0,
                        meta if kind == "text" else {},
                        i,
                    )
                )
        elif cell["cell_type"] == "code":
            kind, label, points = role.get(i, ("code", None, 0.0))
            parts.append(_Part(kind, _src(cell), label, points, meta, i))
        else:
            parts.append(_Part("raw", _src(cell), None, 0.0, meta, i))
    return parts, exercises


def _check_hidden(exercises) -> None:
    from vaebook.tooling.hidden_tests import HIDDEN

    missing = [
        ex.label
        for ex in exercises
        if ex.solution_cells and ex.label not in HIDDEN
    ]
    if missing:
        raise ValueError(
            f"no hidden test for the code exercise(s) {missing}: add them to "
            "vaebook.tooling.hidden_tests.HIDDEN"
        )


def _cell(kind: str, source: str, metadata: dict, cell_id: str) -> dict:
    cell = {
        "cell_type": kind,
        "id": re.sub(r"[^A-Za-z0-9_-]", "-", cell_id)[:64],
        "metadata": metadata,
        "source": source,
    }
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _notebook(nb: dict, cells: list[dict]) -> dict:
    meta = {
        k: v
        for k, v in nb.get("metadata", {}).items()
        if k in ("kernelspec", "language_info")
    }
    meta.setdefault(
        "kernelspec",
        {"name": "python3", "display_name": "Python 3", "language": "python"},
    )
    return {
        "cells": cells,
        "metadata": meta,
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _nbgrader_meta(
    grade_id: str, *, grade=False, solution=False, locked=False, points=0.0
) -> dict:
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = points
    return meta


def nbgrader_notebook(nb, name: str = "") -> dict:
    """The chapter as an nbgrader *source* notebook (the instructor's version, with solutions and hidden tests).

    * solution code cells are nbgrader "autograded answer" cells; nbgrader's ``generate_assignment`` replaces the
      lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (already in the chapter) by a stub;
    * graded checks are "autograder tests" cells, locked, worth their ``metadata.points``, with the exercise's
      hidden test (:mod:`vaebook.tooling.hidden_tests`) between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
    * solution prose becomes a "manually graded answer" cell worth 0 points (students write their derivation
      there; raise the points in nbgrader's toolbar to grade it by hand);
    * every other code cell and each exercise statement is read-only (locked): nbgrader restores them from the
      source when it autogrades, so that the checks always see the chapter's own set-up.
    """
    from vaebook.tooling.hidden_tests import hidden_code

    nb = _load(nb)
    stem = Path(name).stem or "chapter"
    parts, exercises = _course_parts(nb)
    _check_hidden(exercises)
    last_check = {
        ex.label: ex.graded_cells[-1] for ex in exercises if ex.graded_cells
    }
    cells, counts = [], {}

    def gid(label, what):
        counts[(label, what)] = counts.get((label, what), 0) + 1
        k = counts[(label, what)]
        return f"{label}-{what}" + (f"-{k}" if k > 1 else "")

    for k, part in enumerate(parts):
        meta = copy.deepcopy(part.metadata)
        if part.kind == "text":
            cells.append(_cell("markdown", part.source, meta, f"md-{k}"))
        elif part.kind == "raw":
            cells.append(_cell("raw", part.source, meta, f"raw-{k}"))
        elif part.kind == "statement":
            g = gid(part.label, "statement")
            cells.append(
                _cell(
                    "markdown",
                    part.source,
                    {"nbgrader": _nbgrader_meta(g, locked=True)},
                    g,
                )
            )
        elif part.kind == "answer":
            g = gid(part.label, "answer")
            meta = {
                "nbgrader": _nbgrader_meta(
                    g, grade=True, solution=True, points=0.0
                )
            }
            cells.append(_cell("markdown", part.source, meta, g))
        elif part.kind == "solution":
            g = gid(part.label, "solution")
            meta["nbgrader"] = _nbgrader_meta(g, solution=True)
            cells.append(_cell("code", part.source, meta, g))
        elif part.kind == "check":
            g = gid(part.label, "check")
            source = part.source.rstrip("\n") + "\n"
            if part.index == last_check[part.label] and any(
                e.label == part.label and e.solution_cells for e in exercises
            ):
                from vaebook.tooling.hidden_tests import (
                    BEGIN_HIDDEN,
                    END_HIDDEN,
                )

                source += f"\n{BEGIN_HIDDEN}\n{hidden_code(part.label)}{END_HIDDEN}\n"
            meta["nbgrader"] = _nbgrader_meta(
                g, grade=True, locked=True, points=part.points
            )
            cells.append(_cell("code", source, meta, g))
        else:  # the chapter's own code: read-only
            g = f"{stem}-cell-{part.index}"
            meta["nbgrader"] = _nbgrader_meta(g, locked=True)
            cells.append(_cell("code", part.source, meta, g))
    header = _cell(
        "markdown",
        (
            f"*Assignment generated from the book's chapter `{name or stem}` "
            "by `python -m vaebook.assignments "
            "nbgrader`. Replace each `raise NotImplementedError()` with your "
            'code and each "YOUR ANSWER HERE" with '
            "your derivation; the read-only cells set up what the graded "
            "checks use.*"
        ),
        {},
        "vaebook-header",
    )
    return _notebook(nb, [header] + cells)


def _otter_solution_code(code: str) -> str:
    """otter-grader's solution markers are ``# BEGIN SOLUTION`` / ``# END SOLUTION`` (the book uses ``###``)."""
    return re.sub(
        r"^(\s*)###\s*(BEGIN|END) SOLUTION\s*$",
        r"\1# \2 SOLUTION",
        code,
        flags=re.M,
    )


def _otter_test(source: str, label: str, hidden: bool) -> str:
    what = "hidden test" if hidden else "graded check"
    head = (
        '""" # BEGIN TEST CONFIG\nhidden: true\n""" # END TEST CONFIG\n'
        if hidden
        else ""
    )
    name = "test_hidden" if hidden else "test_graded_check"
    return (
        f"{head}def {name}(env):\n"
        f"    # the chapter's {what} of {label}, run in the notebook's "
        "namespace\n"
        f"    exec(compile({source!r}, {f'<{what} {label}>'!r}, 'exec'), "
        "env)\n"
    )


def otter_notebook(nb, name: str = "") -> dict:
    """The chapter as an otter-grader master notebook (``otter assign`` format, exception-based tests).

    Each exercise is a question named by its label: the statement is the prompt, solution prose and code form
    the solution block (code between ``# BEGIN SOLUTION`` / ``# END SOLUTION``), and the tests block holds the
    graded check (public) and the hidden test (:mod:`vaebook.tooling.hidden_tests`), both run in the notebook's namespace.
    A question is worth the points of its graded checks, all or nothing. Exercises without code are manually
    graded questions worth 0 points.
    """
    from vaebook.tooling.hidden_tests import hidden_code

    nb = _load(nb)
    stem = Path(name).stem or "chapter"
    parts, exercises = _course_parts(nb)
    _check_hidden(exercises)
    by_label = {ex.label: ex for ex in exercises}
    config = (
        f"# ASSIGNMENT CONFIG\nname: {stem}\nrequirements: "
        "requirements.txt\nrun_tests: false\n"
        "init_cell: true\ncheck_all_cell: false\nexport_cell:\n  pdf: false\n "
        " run_tests: false\n"
        "generate:\n  pdf: false\n  filtering: false\ntests:\n  ok_format: "
        "false\n  files: false\n"
    )
    cells = [
        _cell("raw", config, {}, "assignment-config"),
        _cell(
            "markdown",
            f"*Assignment generated from the book's chapter `{name or stem}` "
            "by `python -m "
            "vaebook.assignments otter`.*",
            {},
            "vaebook-header",
        ),
    ]
    raw = lambda src, cid: cells.append(_cell("raw", src, {}, cid))
    k = 0
    while k < len(parts):
        part = parts[k]
        if part.kind not in ("statement", "answer", "solution", "check"):
            if part.kind == "text":
                cells.append(
                    _cell(
                        "markdown",
                        part.source,
                        copy.deepcopy(part.metadata),
                        f"md-{k}",
                    )
                )
            elif part.kind == "raw":
                cells.append(
                    _cell(
                        "raw",
                        part.source,
                        copy.deepcopy(part.metadata),
                        f"raw-{k}",
                    )
                )
            else:
                cells.append(
                    _cell(
                        "code",
                        part.source,
                        copy.deepcopy(part.metadata),
                        f"code-{k}",
                    )
                )
            k += 1
            continue
        label = part.label
        group = []
        while (
            k < len(parts)
            and parts[k].label == label
            and parts[k].kind in ("statement", "answer", "solution", "check")
        ):
            group.append(parts[k])
            k += 1
        ex = by_label[label]
        code_ex = bool(ex.solution_cells)
        qconf = (
            f"# BEGIN QUESTION\nname: {label}\npoints: "
            f"{ex.max_points:g}\nall_or_nothing: true\n"
            if code_ex
            else f"# BEGIN QUESTION\nname: {label}\nmanual: true\npoints: 0\n"
        )
        raw(qconf, f"{label}-begin-question")
        for p in group:
            if p.kind == "statement":
                cells.append(
                    _cell("markdown", p.source, {}, f"{label}-statement")
                )
        sol = [p for p in group if p.kind in ("answer", "solution")]
        if sol:
            raw("# BEGIN SOLUTION", f"{label}-begin-solution")
            for j, p in enumerate(sol):
                if p.kind == "answer":
                    cells.append(
                        _cell("markdown", p.source, {}, f"{label}-answer-{j}")
                    )
                else:
                    cells.append(
                        _cell(
                            "code",
                            _otter_solution_code(p.source),
                            copy.deepcopy(p.metadata),
                            f"{label}-solution-{j}",
                        )
                    )
            raw("# END SOLUTION", f"{label}-end-solution")
        checks = [p for p in group if p.kind == "check"]
        if checks:
            raw("# BEGIN TESTS", f"{label}-begin-tests")
            for j, p in enumerate(checks):
                cells.append(
                    _cell(
                        "code",
                        _otter_test(p.source, label, hidden=False),
                        {},
                        f"{label}-test-{j}",
                    )
                )
            if code_ex:
                cells.append(
                    _cell(
                        "code",
                        _otter_test(hidden_code(label), label, hidden=True),
                        {},
                        f"{label}-hidden-test",
                    )
                )
            raw("# END TESTS", f"{label}-end-tests")
        raw("# END QUESTION", f"{label}-end-question")
    return _notebook(nb, cells)


def _write_json(path: Path, nb: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def write_nbgrader_course(course_dir, chapters=None) -> list[Path]:
    """Write ``course_dir/source/<chapter>/<chapter>.ipynb`` (nbgrader source notebooks) for each chapter
    (default: every chapter of the book), and ``course_dir/nbgrader_config.py`` if there is none."""
    course = Path(course_dir)
    course.mkdir(parents=True, exist_ok=True)
    cfg = course / "nbgrader_config.py"
    if not cfg.exists():
        cfg.write_text(NBGRADER_CONFIG)
    written = []
    for path in _resolve_chapters(chapters):
        target = course / "source" / path.stem / path.name
        _write_json(target, nbgrader_notebook(path, path.name))
        written.append(target)
    return written


def write_otter_assignments(out_dir, chapters=None) -> list[Path]:
    """Write ``out_dir/<chapter>/<chapter>.ipynb`` (otter-grader master notebooks) and a ``requirements.txt``
    for Gradescope's autograder image beside each, for each chapter (default: every chapter of the book)."""
    out = Path(out_dir)
    written = []
    for path in _resolve_chapters(chapters):
        target = out / path.stem / path.name
        _write_json(target, otter_notebook(path, path.name))
        (target.parent / "requirements.txt").write_text(OTTER_REQUIREMENTS)
        written.append(target)
    return written


def _print_result(r: dict) -> None:
    print(
        f"{r['notebook']}: {r['total']:g} / {r['max_total']:g} points "
        f"({r['seconds']} s)"
    )
    for ex in r["exercises"]:
        if ex["max_points"] == 0:
            print(f"  {ex['label']}: not auto-graded (no graded check)")
            continue
        print(f"  {ex['label']}: {ex['points']:g} / {ex['max_points']:g}")
        for c in ex["checks"]:
            if not c["passed"]:
                print(f"    cell {c['cell']}: {c['error'][:200]}")
    if r["errors_outside_checks"]:
        print(f"  ({r['errors_outside_checks']} other cell(s) raised errors)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vaebook.assignments",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "student", help="write student editions (solutions removed)"
    )
    s.add_argument(
        "chapters",
        nargs="*",
        help="chapter notebooks (default: every book/*.ipynb)",
    )
    s.add_argument(
        "--out",
        required=True,
        help="output folder (e.g. student/, which the book build excludes)",
    )
    g = sub.add_parser(
        "grade", help="execute a notebook and score its graded checks"
    )
    g.add_argument("notebook")
    g.add_argument(
        "--reference",
        default=None,
        help="the official chapter; its graded checks are used",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="limit for the whole notebook (s)",
    )
    g.add_argument(
        "--cell-timeout", type=float, default=600.0, help="limit per cell (s)"
    )
    g.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="a kernel idle (no CPU) this long during a cell is restarted and "
        "the notebook rerun (0: off)",
    )
    g.add_argument(
        "--json",
        default=None,
        help="also write the result as JSON to this file",
    )
    n = sub.add_parser(
        "nbgrader",
        help="write an nbgrader course: "
        "COURSE_DIR/source/<chapter>/<chapter>.ipynb",
    )
    n.add_argument("course_dir")
    n.add_argument(
        "chapters",
        nargs="*",
        help="chapters (paths or names such as ch03; default: every chapter)",
    )
    o = sub.add_parser(
        "otter",
        help="write otter-grader master notebooks: "
        "OUT_DIR/<chapter>/<chapter>.ipynb",
    )
    o.add_argument("out_dir")
    o.add_argument(
        "chapters",
        nargs="*",
        help="chapters (paths or names such as ch03; default: every chapter)",
    )
    args = p.parse_args(argv)
    if args.cmd == "student":
        for path in write_student_editions(args.out, args.chapters):
            print(path)
        return 0
    if args.cmd in ("nbgrader", "otter"):
        write = (
            write_nbgrader_course
            if args.cmd == "nbgrader"
            else write_otter_assignments
        )
        for path in write(
            args.course_dir if args.cmd == "nbgrader" else args.out_dir,
            args.chapters,
        ):
            print(path)
        return 0
    result = grade(
        args.notebook,
        reference=args.reference,
        timeout=args.timeout,
        cell_timeout=args.cell_timeout,
        stall_timeout=args.stall_timeout,
    )
    _print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
