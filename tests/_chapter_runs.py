"""The chapters under test: each executed exactly twice per test run, and every chapter check reuses those two runs.

Loaded by the repository's root ``conftest.py``. For each notebook in ``book/`` pytest collects three items, one
collector per file, so that ``--dist loadfile`` keeps them together on one worker and in this order:

``book/chNN.ipynb::runs``
    The first execution, in a fresh ``python3`` kernel in ``book/`` through the hardened client
    (:mod:`vaebook.tooling.nbexec`), with the network forbidden (:data:`_nbrun.NETWORK_GUARD`), 300 s per cell. Any error,
    including a chapter's own ``assert``, fails this item with the cell and its traceback. This is the check nbval
    used to make (``--nbval-lax``); nbval is still installed, and ``pytest --nbval-lax book/`` runs it instead of
    this plugin.
``book/chNN.ipynb::prints the same twice``
    The second execution, compared with the first after masking wall-clock timings only (see
    ``tests/_nbrun.py``). Skipped when the first execution failed (that failure is already reported).
``book/chNN.ipynb::shows the shipped numbers``
    For a chapter with rows on the results page (:data:`vaebook.results.ROWS`): each row's number, as the results
    page formats it from the shipped checkpoint's stored evaluation, appears in the chapter's printed outputs.
``book/chNN.ipynb::reference earns full marks``
    The chapter's graded checks, scored by :func:`vaebook.tooling.assignments.score_executed` on the first execution: the
    reference solution must earn every point. (The student edition is graded in ``tests/test_assignments.py``.)

So a test run executes each chapter twice; the browser test (``tests/test_site.py``) opens the book build, reusing
the README's first command's ``_build/html`` when it is current.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nbrun  # noqa: E402

BOOK = _nbrun.BOOK


def _nbval_requested(config) -> bool:
    opt = config.option
    return bool(getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False))


def pytest_collect_file(file_path: Path, parent):
    if (file_path.suffix == ".ipynb" and file_path.parent == BOOK and not _nbval_requested(parent.config)):
        return ChapterFile.from_parent(parent, path=file_path)
    return None


class ChapterFile(pytest.File):
    """A chapter: its two executions and the checks that read them."""

    first = None          # the executed notebook of the first run (nbformat node), if it succeeded
    first_error = None    # why the first run failed

    def collect(self):
        yield FirstRun.from_parent(self, name="runs")
        yield SecondRun.from_parent(self, name="prints the same twice")
        yield ReferenceGrade.from_parent(self, name="reference earns full marks")
        if _result_rows(self.path):
            yield ShowsShipped.from_parent(self, name="shows the shipped numbers")


def _result_rows(path: Path) -> list:
    """The rows of the results page (``vaebook.results.ROWS``) that belong to this chapter (``chNN_...``)."""
    from vaebook import results

    return [r for r in results.ROWS if path.name.startswith(r.chapter + "_")]


class _ChapterItem(pytest.Item):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_marker(pytest.mark.book)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}: {self.name}"

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, ChapterFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def _first(self):
        chapter = self.parent
        if chapter.first is None:
            pytest.skip(f"the first execution of {self.path.name} failed (reported by its 'runs' item)"
                        if chapter.first_error else "the first execution did not run")
        return chapter.first


class ChapterFailure(Exception):
    """A failure whose message is the whole report (no pytest traceback of this plugin)."""


class FirstRun(_ChapterItem):
    def runtest(self):
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        start = time.perf_counter()
        try:
            executed = _nbrun.execute(self.path)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            self.parent.first_error = str(e)
            raise ChapterFailure(f"{self.path.name} failed after {time.perf_counter() - start:.0f} s:\n{e}") from e
        self.parent.first = executed
        self.user_properties.append(("seconds", round(time.perf_counter() - start, 1)))
        if not any(c["stdout"] or c["results"] for c in _nbrun.printed(executed)):
            raise ChapterFailure(f"{self.path.name} printed nothing")


class SecondRun(_ChapterItem):
    def runtest(self):
        first = self._first()
        second = _nbrun.execute(self.path)
        report = _nbrun.compare(self.path.name, _nbrun.printed(first), _nbrun.printed(second))
        if report is not None:
            raise ChapterFailure("the two executions printed different outputs:\n\n" + report)


class ShowsShipped(_ChapterItem):
    def runtest(self):
        from vaebook import results

        text = "\n".join(
            c["stdout"] + "\n" + "\n".join(v for r in c["results"] for v in r.values())
            for c in _nbrun.printed(self._first())
        )
        chapter = _result_rows(self.path)[0].chapter
        missing = [f"{r['result']}: {r['ours_text']}" for r in results.rows(chapter) if r["ours_text"] not in text]
        if missing:
            raise ChapterFailure(
                f"{self.path.name} does not show these numbers of its shipped checkpoints (the results page does):\n"
                + "\n".join(missing))


class ReferenceGrade(_ChapterItem):
    def runtest(self):
        from vaebook.tooling import assignments

        result = assignments.score_executed(self._first())
        if not (result["max_total"] > 0 and result["total"] == result["max_total"]):
            raise ChapterFailure(f"{self.path.name}: the reference solution does not earn full marks: {result}")
