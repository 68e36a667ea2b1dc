"""build_stamp: what a build was made from, so that the test suite can reuse a build that is still current.

Loaded from ``_config.yml`` (``sphinx: local_extensions``). When a build finishes without an exception, it writes
``_vaebook_build.json`` into the output folder (``_build/html``):

* ``fingerprint``: a SHA-256 over every file the pages are made from (``_config.yml``, ``_toc.yml``,
  ``pyproject.toml``, everything under ``book/`` and ``src/vaebook/``, caches excluded), see :func:`fingerprint`;
* ``execution_mode`` (MyST-NB's, after ``$VAEBOOK_BOOK_EXECUTE``), ``warnings`` (Sphinx's count, errors included),
  ``strict`` (``-W``) and ``nitpicky`` (``-n``): whether this was the README's strict build, and whether it passed;
* ``built``: when.

``tests/test_site.py`` opens ``_build/html`` instead of building again only when the stamp says: the same
fingerprint as the sources now, every notebook executed (``force``), strict, and no warning.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

STAMP = "_vaebook_build.json"
SOURCES = ("_config.yml", "_toc.yml", "pyproject.toml", "book", "src/vaebook")
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", "_build"}


def fingerprint(root) -> str:
    """SHA-256 over the relative path and the bytes of every source file of the book under ``root``."""
    root = Path(root)
    digest = hashlib.sha256()
    for name in SOURCES:
        top = root / name
        files = (
            [top]
            if top.is_file()
            else sorted(p for p in top.rglob("*") if p.is_file())
            if top.is_dir()
            else []
        )
        for path in files:
            rel = path.relative_to(root)
            if SKIP_PARTS.intersection(rel.parts) or path.suffix == ".pyc":
                continue
            digest.update(
                rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0"
            )
    return digest.hexdigest()


def _start(app) -> None:
    app._vaebook_fingerprint = fingerprint(
        app.srcdir
    )  # the sources as they were when the build started


def _write(app, exception) -> None:
    if exception is not None:
        return
    stamp = {
        "fingerprint": app._vaebook_fingerprint,
        "execution_mode": app.config.nb_execution_mode,
        "warnings": int(getattr(app, "_warncount", -1)),
        # -W: Sphinx 7.3+ with --keep-going keeps warningiserror
        # False and sets keep_going (only given with -W)
        "strict": bool(
            app.warningiserror or getattr(app, "keep_going", False)
        ),
        "nitpicky": bool(app.config.nitpicky),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (Path(app.outdir) / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def setup(app) -> dict:
    app.connect("builder-inited", _start)
    app.connect(
        "build-finished", _write, priority=900
    )  # after the other extensions' handlers
    return {
        "version": "1.0",
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
