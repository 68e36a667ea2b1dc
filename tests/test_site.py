"""The book as a reader sees it: the strict, executed Jupyter Book build, opened page by page in headless Chromium.

One build per test session (module fixture ``site``): a copy of the book is built with the README's command,
``jupyter-book build --all -W -n --keep-going``, executing every chapter (this is also what fills the status page
with measured run times). The pages are then served on 127.0.0.1 and opened in Debian's Chromium through
Playwright, with every request that leaves 127.0.0.1 blocked and recorded. For every page in ``_toc.yml`` (and the
search and index pages) the tests check what a reader would notice:

* mathematics is typeset by the local MathJax (every ``.math`` element holds an ``mjx-container``, no MathJax
  error, no raw TeX left in the prose);
* every image is loaded (``naturalWidth > 0``), and every chapter shows figures;
* every internal link and cross-reference resolves (the target page exists, and so does its ``#anchor``); no
  unresolved reference (``???``) is shown;
* no JavaScript error, no request to another host (the site works offline, the badges at the top of each chapter
  included: they are served from the site's own static files);
* at a 1280 x 900 window, no code cell, library excerpt or printed output scrolls horizontally (its scroll width is
  at most its client width), and the header has one search field;
* the search page finds chapters; each chapter's Colab links point to a notebook that exists in the repository
  at the configured path and branch;
* the status page lists every chapter with a measured run time within the budget.

``VAEBOOK_SITE=<_build/html>`` checks an existing build instead of building. Screenshots of a few pages, and of one
library excerpt (``show_source``) per chapter, go to
``$VAEBOOK_ARTIFACTS/screenshots`` (default ``_build/artifacts``); CI keeps
them. Without Chromium or Playwright the browser tests are skipped, unless ``VAEBOOK_REQUIRE_BROWSER=1`` (set by
``.ci/run``), in which case they fail.
"""
from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ARTIFACTS = Path(os.environ.get("VAEBOOK_ARTIFACTS", ROOT / "_build" / "artifacts"))
REQUIRE_BROWSER = os.environ.get("VAEBOOK_REQUIRE_BROWSER", "") == "1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
# The two badges at the top of each chapter: absolute URLs in the notebooks (Colab and GitHub show the same cell),
# served from the site's own _static/badges on the site (book/_ext/offline_assets.py), so they load offline too.
REMOTE_BADGES = ("https://colab.research.google.com/assets/colab-badge.svg",
                 "https://img.shields.io/badge/view%20on-GitHub-black?logo=github")
SCREENSHOTS = ["book/intro", "book/ch01_vae", "book/ch02_mixtures", "book/status", "search"]


def _yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def toc_pages() -> list[str]:
    """Every document of ``_toc.yml`` (without suffix), root first."""
    toc = _yaml(ROOT / "_toc.yml")
    pages = [toc["root"]]

    def walk(entries):
        for e in entries:
            if "file" in e:
                pages.append(str(Path(e["file"]).with_suffix("")))
            walk(e.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return pages


PAGES = toc_pages() + ["search", "genindex"]
CHAPTERS = [p for p in PAGES if (ROOT / f"{p}.ipynb").is_file()]


def _skip_or_fail(msg: str):
    if REQUIRE_BROWSER:
        pytest.fail(msg + " (VAEBOOK_REQUIRE_BROWSER=1)")
    pytest.skip(msg)


# --------------------------------------------------------------------------------------------------------------
# the build


# True when the site fixture built the book while other pytest workers were running tests on the same cores: the
# chapter run times it measured then say more about that load than about the chapters (CI builds first, alone).
BUILT_BESIDE_OTHER_WORKERS = False


def _build_stamp():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_vaebook_build_stamp", BOOK / "_ext" / "build_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def current_build(html: Path = ROOT / "_build" / "html") -> tuple[Path | None, str]:
    """``(html, "")`` if ``html`` is the README's strict executed build of the sources as they are now; else
    ``(None, why not)``. Read from the stamp that ``book/_ext/build_stamp.py`` writes at the end of a build."""
    stamps = _build_stamp()
    path = html / stamps.STAMP
    if not path.is_file():
        return None, f"no finished build at {html}"
    stamp = json.loads(path.read_text())
    if stamp.get("fingerprint") != stamps.fingerprint(ROOT):
        return None, f"the sources changed since the build of {stamp.get('built')}"
    if stamp.get("execution_mode") != "force":
        return None, f"that build did not execute the chapters (execution mode {stamp.get('execution_mode')!r})"
    if not (stamp.get("strict") and stamp.get("nitpicky")):
        return None, "that build was not the strict one (-W -n)"
    if stamp.get("warnings") != 0:
        return None, f"that build had {stamp.get('warnings')} warning(s)"
    return html, ""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The README's strict executed build; returns its ``_build/html``.

    In order: ``VAEBOOK_SITE=path/to/_build/html`` (an existing build, for authors iterating on the checks); the
    README's first command's ``_build/html`` when it is current (:func:`current_build`: built strictly, every
    chapter executed, no warning, from the sources as they are now), so a test run after that command executes no
    chapter for the site; else the README's build command on a copy of the book, once per test run.
    """
    global BUILT_BESIDE_OTHER_WORKERS
    if os.environ.get("VAEBOOK_SITE"):
        return Path(os.environ["VAEBOOK_SITE"]).resolve()
    html, why = current_build()
    if html is not None:
        return html
    print(f"building the book for the browser tests: {why}")
    BUILT_BESIDE_OTHER_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
    jb = shutil.which("jupyter-book")
    if jb is None:
        _skip_or_fail("jupyter-book is not installed (pip install -e '.[book]')")
    src = tmp_path_factory.mktemp("site") / "book"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "_build", "data", "tests", "src",
                                                             ".pytest_cache", "__pycache__", ".ipynb_checkpoints",
                                                             ".hypothesis", "student"))
    env = {k: v for k, v in os.environ.items() if k != "VAEBOOK_BOOK_EXECUTE"}  # execute as configured: force
    proc = subprocess.run([jb, "build", "--all", "-W", "-n", "--keep-going", str(src)], env=env,
                          capture_output=True, text=True, timeout=2400)
    log = proc.stdout + proc.stderr
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "book_build.log").write_text(log)
    if proc.returncode != 0:
        reports = src / "_build" / "html" / "reports"
        if reports.is_dir():
            shutil.copytree(reports, ARTIFACTS / "reports", dirs_exist_ok=True)
        pytest.fail("the strict executed build failed:\n" + log[-8000:])
    return src / "_build" / "html"


def test_a_build_is_reused_only_while_it_is_current(tmp_path):
    """The stamp decides: same sources, executed, strict, no warning; anything else rebuilds (and says why)."""
    stamps = _build_stamp()
    good = {"fingerprint": stamps.fingerprint(ROOT), "execution_mode": "force", "warnings": 0,
            "strict": True, "nitpicky": True, "built": "now"}
    assert current_build(tmp_path)[0] is None and "no finished build" in current_build(tmp_path)[1]
    for change, why in [({}, ""), ({"fingerprint": "0" * 64}, "sources changed"),
                        ({"execution_mode": "off"}, "did not execute"), ({"nitpicky": False}, "strict"),
                        ({"warnings": 2}, "2 warning")]:
        (tmp_path / stamps.STAMP).write_text(json.dumps({**good, **change}))
        html, reason = current_build(tmp_path)
        assert (html is not None) == (not why) and why in reason, (change, reason)


def test_strict_executed_build(site):
    """``-W -n`` build with every chapter executed; MathJax 3 served locally, never from a CDN."""
    assert (site / "_static" / "mathjax" / "tex-mml-chtml.js").is_file(), "MathJax 3 is served locally"
    for page in CHAPTERS:
        text = (site / f"{page}.html").read_text()
        assert "tex-mml-chtml.js" in text and "cdn.jsdelivr.net/npm/mathjax" not in text, page
        assert "cell_output" in text, f"{page}: the chapter was not executed"


# --------------------------------------------------------------------------------------------------------------
# the browser


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed (pip install -e '.[test]')")
    exe = os.environ.get("VAEBOOK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        _skip_or_fail("Chromium not found (Debian: apt-get install chromium fonts-dejavu-core)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """One page opened in a fresh browser context, with its errors and blocked requests recorded."""

    def __init__(self, browser, base: str, page: str, query: str = ""):
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.external: list[str] = []
        self.failed: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        # "Failed to load resource" console errors are reported per request below (failed local requests, and
        # external requests, which are all blocked and recorded).
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})")
                     if r.url.startswith(base) else None)

        def route(r):
            if r.request.url.startswith(base) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                self.external.append(r.request.url)
                r.abort()

        self.context.route("**/*", route)
        self.url = f"{base}/{page}.html{query}"
        resp = self.page.goto(self.url, wait_until="load", timeout=60_000)
        assert resp is not None and resp.status == 200, f"{self.url}: HTTP {resp and resp.status}"
        # MathJax typesets after load; startup.promise resolves when the first typesetting pass is done.
        self.page.evaluate("""async () => {
            if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
        }""")

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def visits(browser, server):
    """Every page opened once; checks below read from these visits."""
    out = {}
    for page in PAGES:
        v = Visit(browser, server, page)
        v.info = v.page.evaluate(PAGE_PROBE)
        if page in SCREENSHOTS:
            (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
            v.page.screenshot(path=str(ARTIFACTS / "screenshots" / f"{page.replace('/', '_')}.png"), full_page=False)
        if page in CHAPTERS:  # one library excerpt (the output of the first show_source cell) per chapter
            excerpt = v.page.evaluate_handle("""() => {
                const cell = Array.from(document.querySelectorAll('div.cell'))
                    .find(c => (c.querySelector('.cell_input') || {textContent: ''}).textContent
                        .includes('show_source('));
                return cell ? cell.querySelector('.cell_output') : null; }""").as_element()
            if excerpt is not None:
                (ARTIFACTS / "excerpts").mkdir(parents=True, exist_ok=True)
                excerpt.screenshot(path=str(ARTIFACTS / "excerpts" / f"{page.replace('/', '_')}.png"))
        out[page] = v
    yield out
    for v in out.values():
        v.close()


# What a reader sees, collected in the page: math elements not typeset, images not loaded, raw TeX in the prose,
# links, and "???" placeholders of unresolved numbered references.
PAGE_PROBE = r"""async () => {
    const imgs = Array.from(document.querySelectorAll('img'));
    imgs.forEach(i => { i.loading = 'eager'; });
    await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
    const math = Array.from(document.querySelectorAll('.math'));
    const untypeset = math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80));
    const merrors = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error]')).map(e =>
        e.getAttribute('data-mjx-error') || e.textContent.slice(0, 80));
    const main = document.querySelector('main') || document.body;
    const clone = main.cloneNode(true);
    clone.querySelectorAll('pre, code, mjx-container, script, style, textarea, .highlight, .math, '
                           + 'mjx-assistive-mml').forEach(e => e.remove());
    const prose = clone.textContent;
    const tex = [];
    const re = /\\(frac|mathrm|mathbb|mathcal|mathbf|sum|int|log|left|right|begin|end|alpha|beta|tau|theta|phi|mid|le|ge|nabla|sqrt)\b|\$\$|\\\(|\\\[|\$[^\s$][^$\n]{0,60}\$/g;
    let m;
    while ((m = re.exec(prose)) !== null && tex.length < 5) {
        tex.push(prose.slice(Math.max(0, m.index - 30), m.index + 40).replace(/\s+/g, ' '));
    }
    const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
    const unresolved = [];
    const re2 = /\?\?\?/g;
    while ((m = re2.exec(prose)) !== null && unresolved.length < 5) {
        unresolved.push(prose.slice(Math.max(0, m.index - 40), m.index + 20).replace(/\s+/g, ' '));
    }
    return {
        title: document.title,
        h1: (document.querySelector('article h1') || {textContent: ''}).textContent.replace('#', '').trim(),
        nmath: math.length, untypeset, merrors, tex, unresolved, links,
        images: imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                                output: !!i.closest('.cell_output, figure')})),
        brokenXrefs: Array.from(main.querySelectorAll('span.xref, span.std-ref')).filter(s => !s.closest('a'))
            .map(s => s.textContent.slice(0, 60)),
        colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]')).map(a => a.href),
        badges: imgs.filter(i => /badge/i.test(i.src)).map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0})),
        // code cells, their outputs (library excerpts are printed outputs) and tables: scrolled horizontally?
        overflow: Array.from(main.querySelectorAll('div.cell_input pre, div.cell_output pre, div.cell_output table, '
                                                   + 'div.highlight pre, table'))
            .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
            .map(e => ({where: e.closest('.cell_output') ? 'output' : 'code',
                        over: e.scrollWidth - e.clientWidth,
                        text: (e.textContent.split('\n').reduce((a, b) => a.length >= b.length ? a : b, ''))
                            .slice(0, 120)})),
        searchFields: Array.from(document.querySelectorAll('.search-button-field, .search-button'))
            .filter(e => e.offsetParent !== null).length,
    };
}"""


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_math_images_and_runs_without_errors(visits, page):
    v = visits[page]
    info = v.info
    assert not info["untypeset"], f"{page}: math not typeset by MathJax: {info['untypeset'][:3]}"
    assert not info["merrors"], f"{page}: MathJax errors: {info['merrors'][:3]}"
    assert not info["tex"], f"{page}: raw TeX in the text: {info['tex']}"
    bad = [i["src"] for i in info["images"] if not i["ok"]]
    assert not bad, f"{page}: images not loaded: {bad[:5]}"
    assert not v.errors, f"{page}: JavaScript errors: {v.errors[:5]}"
    assert not v.failed, f"{page}: requests that failed: {v.failed[:5]}"
    assert not v.external, f"{page}: requests to other hosts (the site must work offline): {v.external[:5]}"
    assert not info["unresolved"], f"{page}: unresolved numbered references: {info['unresolved']}"
    assert not info["brokenXrefs"], f"{page}: cross-references without a target: {info['brokenXrefs'][:5]}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_code_and_outputs_fit_the_column(visits, page):
    """At 1280 x 900 no code cell, library excerpt or printed output needs horizontal scrolling."""
    over = visits[page].info["overflow"]
    assert not over, f"{page}: {len(over)} element(s) scroll horizontally, e.g. " + "; ".join(
        f"{o['where']} {o['over']} px too wide: {o['text']!r}" for o in over[:4])


@pytest.mark.parametrize("page", CHAPTERS)
def test_badges_load_from_the_site_and_one_search_field(visits, server, page):
    info = visits[page].info
    assert len(info["badges"]) >= 2, f"{page}: badges not found: {info['badges']}"
    for b in info["badges"]:
        assert b["ok"] and b["src"].startswith(server), f"{page}: badge not served by the site: {b}"
    assert info["searchFields"] == 1, f"{page}: {info['searchFields']} visible search fields"


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_shows_math_figures_and_a_numbered_title(visits, page):
    info = visits[page].info
    assert info["nmath"] >= 10, f"{page}: only {info['nmath']} formulas"
    figures = [i for i in info["images"] if i["output"]]
    assert figures, f"{page}: no figure among the outputs"
    assert re.match(r"^\d+\.\s", info["h1"]) or re.match(r"^[A-Z]\.\s", info["h1"]), \
        f"{page}: the chapter title is not numbered: {info['h1']!r}"


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, val in attrs:
            if k in ("id", "name") and val:
                self.ids.add(val)


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset:
    p = _Anchors()
    p.feed(path.read_text(errors="replace"))
    return frozenset(p.ids)


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_and_cross_references_resolve(site, server, visits, page):
    bad = []
    for href in set(visits[page].info["links"]):
        if not href.startswith(server):
            continue
        parts = urlsplit(href)
        rel = unquote(parts.path).lstrip("/") or "index.html"
        target = site / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            bad.append(f"{href} (no such file)")
            continue
        if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _anchors(target):
            bad.append(f"{href} (no #{parts.fragment} in {rel})")
    assert not bad, f"{page}: broken internal links: {sorted(bad)[:10]}"


def test_every_chapter_is_reachable_from_the_navigation(visits, server):
    root = PAGES[0]  # the root document of _toc.yml (book/intro)
    linked = {urlsplit(h).path.lstrip("/") for h in visits[root].info["links"] if h.startswith(server)}
    missing = [p for p in PAGES if p not in (root, "search", "genindex") and f"{p}.html" not in linked]
    assert not missing, f"pages not linked from the home page's navigation: {missing}"


@pytest.mark.parametrize("query, expected", [("Gumbel-Softmax", "book/ch03_concrete.html"),
                                             ("evidence lower bound", "book/ch01_vae.html"),
                                             ("Stein discrepancy", "book/ch06_svgd.html")])
def test_search_page_finds_chapters(browser, server, query, expected):
    v = Visit(browser, server, "search", f"?q={query.replace(' ', '+')}")
    try:
        v.page.wait_for_selector("#search-results ul.search li", timeout=30_000)
        v.page.wait_for_function("() => !document.querySelector('#search-progress') || "
                                 "document.querySelector('#search-progress').textContent.includes('Search finished')"
                                 " || document.querySelectorAll('#search-results ul.search li').length > 2",
                                 timeout=30_000)
        hits = v.page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
        assert any(expected in h for h in hits), f"{query!r}: {expected} not among the results {hits[:10]}"
        assert not v.errors, v.errors
    finally:
        v.close()


def _git_has(branch: str, path: str) -> bool | None:
    """Whether ``path`` exists on ``branch`` of this clone; None when git or the branch is not available."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    ok = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{branch}^{{commit}}"],
                        capture_output=True)
    if ok.returncode != 0:
        return None
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{branch}:{path}"],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("page", CHAPTERS)
def test_colab_links_open_an_existing_notebook(visits, page):
    cfg = _yaml(ROOT / "_config.yml")
    slug = cfg["repository"]["url"].rstrip("/").split("github.com/")[1]
    branch = cfg["repository"]["branch"]
    links = set(visits[page].info["colab"])
    assert links, f"{page}: no Colab link"
    pattern = re.compile(rf"^https://colab\.research\.google\.com/github/{re.escape(slug)}/blob/"
                         rf"{re.escape(branch)}/(?P<path>[\w/.-]+\.ipynb)$")
    for link in links:
        m = pattern.match(link)
        assert m, f"{page}: Colab link {link} does not point to {slug}@{branch}/….ipynb"
        path = m["path"]
        assert path == f"{page}.ipynb", f"{page}: Colab opens {path}"
        assert (ROOT / path).is_file(), f"{page}: {path} does not exist in the repository"
        on_branch = _git_has(branch, path)
        assert on_branch in (None, True), f"{page}: {path} is not on branch {branch!r} of this repository"


def test_status_page_lists_every_chapter_within_budget(visits):
    v = visits["book/status"]
    rows = v.page.eval_on_selector_all(
        "table.vaebook-status tbody tr", "rs => rs.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    assert len(rows) == len(CHAPTERS), f"status table has {len(rows)} rows for {len(CHAPTERS)} chapters: {rows}"
    limit = 180.0
    (ARTIFACTS / "status.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    for title, runtime, _target, _within_limit, _when in rows:
        assert re.fullmatch(r"\d+\.\d", runtime), f"{title}: no measured run time ({runtime!r})"
    if BUILT_BESIDE_OTHER_WORKERS:
        pytest.skip("the chapters were timed while other pytest workers shared the CPU; the budgets are checked on a "
                    "build that ran alone (.ci/run builds first and sets VAEBOOK_SITE)")
    for title, runtime, _target, within_limit, _when in rows:
        assert float(runtime) <= limit and within_limit == "✓ yes", \
            f"{title}: {runtime} s is over the {limit:g} s budget"
    summary = v.page.text_content("main")
    assert "within the book's budget" in summary


def test_results_page_shows_every_headline_number_from_the_checkpoints(visits):
    """The results page is generated at build time from the checkpoints' metadata: every row of
    vaebook.results, with our number as the chapters print it, beside the published one."""
    from vaebook import results

    v = visits["book/results"]
    cells = v.page.eval_on_selector_all(
        ".vaebook-results table tbody tr", "rs => rs.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    rows = results.rows()
    assert len(cells) == len(rows), f"{len(cells)} table rows on the page for {len(rows)} results"
    for shown, r in zip(cells, rows):
        assert shown[1] == r["ours_text"] and shown[2] == r["published_text"], (shown, r["result"])
    links = v.page.eval_on_selector_all(".vaebook-results a.reference.internal", "as => as.map(a => a.href)")
    assert len({unquote(urlsplit(h).path).rsplit("/", 1)[-1] for h in links}) == len({r["chapter"] for r in rows})
