"""offline_assets: make the built book readable without a network connection.

Loaded from ``_config.yml`` with ``sphinx: local_extensions: {offline_assets: book/_ext}``
(Jupyter Book resolves that path relative to ``_config.yml`` and puts it on ``sys.path``).

* MathJax 3.2.2 is served from ``_static/mathjax`` (copied from the PyPI package
  ``django-static-mathjax``, import name ``mathjax``) instead of cdn.jsdelivr.net.
* Saved ipywidgets state is rendered by a vendored ``@jupyter-widgets/html-manager`` 1.0.15
  and ``require.js`` 2.3.7 (``book/_ext/static/vendor``, see ``LICENSES.txt`` there).
  MyST-NB adds these two scripts only to pages that contain widgets.
* ``$VAEBOOK_BOOK_EXECUTE`` (``off``, ``force``, ``cache`` or ``auto``) overrides
  ``execute.execute_notebooks`` (``off`` builds the text in seconds).
* Two JavaScript errors that every reader's console showed (found by ``tests/test_site.py``) are avoided: Jupyter
  Book 1.0.4 makes sphinx-thebe add its inline ``const THEBE_JS_URL = ...`` script twice to every page
  ("Identifier 'THEBE_JS_URL' has already been declared"), so identical inline scripts are dropped from each page;
  and pydata-sphinx-theme logs "Got invalid theme mode" when ``default_mode`` is empty, so it is set to ``light``
  (the figures have white backgrounds).
* The two badges at the top of each chapter ("Open in Colab", "View on GitHub") stay absolute URLs in the notebooks,
  where Colab and GitHub show them; on the site they are served from ``_static/badges`` (:data:`BADGES`).
* ``static/vaebook.css``: printed outputs (and the library excerpts that ``show_source`` prints) wrap at the column's
  edge instead of scrolling sideways; code cells are formatted to fit the column instead.
* ``static/widget_support.js``, loaded before the HTML manager on pages with widgets, fixes two things the manager
  did on this site: it typesets widget labels with MathJax 2's ``MathJax.Hub.Queue`` (MathJax 3 has no ``Hub``: every
  widget threw "Cannot read properties of undefined (reading 'Queue')"), and it looked for its fonts beside the page
  instead of in ``_static/vendor/html-manager`` (a require.js ``paths`` entry).

The vendored files live in ``book/_ext/static``, not in a ``_static/`` folder of the book: Jupyter
Book 1.x adds every ``*.js``/``*.css`` found under ``_static/`` to *every* page.
See build_pitfalls.md, section 3.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError
from sphinx.util import logging

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"  # book/_ext/static
MATHJAX_TARGET = "mathjax"  # -> <outdir>/_static/mathjax/tex-mml-chtml.js
EXECUTE_MODES = ("off", "force", "cache", "auto")


def _mathjax_es5() -> Path:
    """The ``es5/`` tree (MathJax 3 build) inside the installed ``mathjax`` package."""
    # django-static-mathjax; imported lazily so a missing package gives a
    # clear error
    import mathjax

    return (
        Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    )


def _on_config_inited(app: Sphinx, config: Config) -> None:
    # Extra static folder, copied into <outdir>/_static (html_static_path
    # is relative to confdir,
    # an absolute path avoids any doubt about where Jupyter Book puts confdir).
    if str(STATIC_DIR) not in config.html_static_path:
        config.html_static_path.append(str(STATIC_DIR))
    # Paths relative to _static are resolved by Sphinx's js-file
    # machinery on every page depth.
    config.mathjax_path = f"{MATHJAX_TARGET}/tex-mml-chtml.js"
    config.nb_ipywidgets_js = {
        # First: a require.js path to the manager's fonts, and
        # MathJax 2's Hub.Queue (which MathJax 3 lacks).
        "widget_support.js": {},
        "vendor/require.js": {},
        # The attribute tells the manager where to fetch
        # *third-party* widget modules; the core
        # controls and the Output widget are bundled, so nothing is
        # fetched for them.
        "vendor/html-manager/embed-amd.js": {
            "data-jupyter-widgets-cdn": "https://cdn.jsdelivr.net/npm/"
        },
    }
    # An empty default_mode makes pydata-sphinx-theme log a console error
    # on every page.
    # (pydata-sphinx-theme reads it from html_context, not from the theme
    # options.)
    if not (config.html_context or {}).get("default_mode"):
        config.html_context = {
            **(config.html_context or {}),
            "default_mode": "light",
        }
    # Execution mode override from the environment.
    mode = os.environ.get("VAEBOOK_BOOK_EXECUTE", "").strip().lower()
    if mode:
        if mode not in EXECUTE_MODES:
            raise ConfigError(
                f"VAEBOOK_BOOK_EXECUTE must be one of {EXECUTE_MODES}, got "
                f"{mode!r}"
            )
        config.nb_execution_mode = mode
        logger.info(
            f"[offline_assets] nb_execution_mode={mode!r} (from "
            "$VAEBOOK_BOOK_EXECUTE)"
        )


def _drop_duplicate_inline_scripts(
    app: Sphinx, pagename, templatename, context, doctree
) -> None:
    """Keep the first of identical inline scripts (sphinx-thebe's ``const`` declarations appear twice)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        body = (
            getattr(js, "attributes", {}).get("body")
            if not isinstance(js, str)
            else None
        )
        if body:
            if body in seen:
                continue
            seen.add(body)
        kept.append(js)
    scripts[:] = kept


# The chapters' badges are absolute URLs in the notebooks (Colab and GitHub
# show the same cell); on this site they
# are served from its own static files, so that they show offline.
BADGES = {
    "https://colab.research.google.com/assets/colab-badge.svg": "_static/badges/colab-badge.svg",
    "https://img.shields.io/badge/view%20on-GitHub-black?logo=github": "_static/badges/github-badge.svg",
}


def _local_badges(
    app: Sphinx, pagename, templatename, context, doctree
) -> None:
    """Point the badge images of a page at the site's own copies (``book/_ext/static/badges``)."""
    body = context.get("body")
    if not body or "pathto" not in context:
        return
    for remote, local in BADGES.items():
        for quoted in (remote, remote.replace("&", "&amp;")):
            if f'src="{quoted}"' in body:
                body = body.replace(
                    f'src="{quoted}"', f'src="{context["pathto"](local, 1)}"'
                )
    context["body"] = body


def _on_build_finished(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / MATHJAX_TARGET
    if (target / "tex-mml-chtml.js").is_file():
        return  # already copied by an earlier build
    shutil.copytree(_mathjax_es5(), target, dirs_exist_ok=True)
    logger.info(f"[offline_assets] copied MathJax 3 to {target}")


def setup(app: Sphinx) -> dict:
    # Priority 900: after Jupyter Book and MyST-NB have set their
    # defaults (500).
    app.connect("config-inited", _on_config_inited, priority=900)
    app.connect(
        "html-page-context", _drop_duplicate_inline_scripts, priority=900
    )
    app.connect("html-page-context", _local_badges, priority=900)
    app.add_css_file(
        "vaebook.css"
        # book/_ext/static/vaebook.css: printed outputs wrap at the column's
        # edge
    )
    app.connect("build-finished", _on_build_finished)
    return {
        "version": "1.0",
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
