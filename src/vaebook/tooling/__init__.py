"""The machinery around the book, not what it teaches: executing, benchmarking and grading the chapters.

* :mod:`vaebook.tooling.nbexec` -- notebook execution without nbclient's lost wake-ups (the book build, the tests and
  the grader use it).
* :mod:`vaebook.tooling.bench` -- ``python -m vaebook.bench``: the hot paths against their alternatives, with
  memory peaks and the GPU roofline estimates.
* :mod:`vaebook.tooling.assignments` -- ``python -m vaebook.assignments``: nbgrader courses, otter-grader master
  notebooks, student editions and a grader; :mod:`vaebook.tooling.hidden_tests` holds the hidden tests of the
  exercises.

The old names ``vaebook.nbexec``, ``vaebook.bench`` and ``vaebook.assignments`` (and ``python -m`` on them) still
work: they are aliases of these modules (see ``vaebook/__init__.py``).
"""
