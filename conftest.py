"""pytest settings that belong to the project, so that the README's test command runs the same for everyone.

* Each pytest worker gets its share of the cores for torch: ``VAEBOOK_THREADS`` = cores // workers (at least 1),
  unless it is already set. The chapters' kernels inherit it (``vaebook.get_device`` applies it), so two workers on
  two cores run one torch thread each instead of oversubscribing the machine with two threads each.
* No network at test time (``VAEBOOK_OFFLINE=1``), and Triton kernels through the interpreter on the CPU
  (``TRITON_INTERPRET=1``), both before anything imports vaebook or triton.
* The chapters in ``book/`` are collected by ``tests/_chapter_runs.py``: two executions each, every chapter check
  reading them.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VAEBOOK_OFFLINE", "1")


def worker_threads(workers: int, cores: int | None) -> int:
    """Torch threads per pytest worker: the cores shared among the workers, at least one."""
    return max(1, (cores or 1) // max(1, workers))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pytest_configure(config):
    # In an xdist worker, PYTEST_XDIST_WORKER_COUNT says how many share the machine. The controller (which runs no
    # test) sets nothing: its environment is what the workers inherit, and a user's own VAEBOOK_THREADS wins.
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        os.environ.setdefault("VAEBOOK_THREADS", str(worker_threads(workers, _cores())))

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
pytest_plugins = ["_chapter_runs"]


# Files that take minutes run first, so that `-n 2 --dist loadfile` (which keeps a file on one worker) does not end
# with one of them running alone while the other worker idles. The order within a file is kept.
LONG_FIRST = (
    "tests/test_instructor_tools.py",
    "tests/test_site.py",
    "tests/test_colab.py",
    "tests/test_assignments.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # a stable sort
