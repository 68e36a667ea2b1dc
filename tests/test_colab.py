"""Colab, simulated: every chapter's setup cell, unmodified, installs vaebook from a wheel and touches nothing else.

The simulated Colab runtime (no network, no GPU; pip writes in temporary folders only):

* **the package**: a wheel that ``pip wheel --no-deps --no-build-isolation`` builds, once per session, from the files
  a clone would have (``git ls-files -co --exclude-standard``: tracked, plus new files that are not ignored);
* **Colab's preinstalled packages** (torch, numpy, matplotlib, scipy, tqdm, IPython, ipywidgets, pip...): this
  environment's own, through a folder of symlinks to every entry of its site-packages except vaebook's (the editable
  install's ``.pth``, its dist-info), named as a plain path in a ``.pth`` of the runtime; plain paths in a ``.pth``
  do not process the ``.pth`` files they contain, so the editable vaebook cannot leak in;
* **the runtime**: a fresh ``venv`` without pip of its own (pip is one of the preinstalled packages, as on Colab),
  where ``pip install`` writes; a package installed there would shadow the preinstalled one;
* **the kernel**: ``tests/_colab_runner.py`` runs cells in an IPython ``InteractiveShell`` with cwd ``book/``, a stub
  ``google.colab`` in ``sys.modules`` (or not), and an audit hook that records every process a cell starts.

All the chapters' setup cells run in one runtime and one kernel (importing torch once, not ten times), with
``VAEBOOK_PIP_SPEC`` set to the wheel; between two cells the runner deletes what the cell installed and forgets the
modules imported from there, so every chapter goes through the real install path from a clean state. Checked per
chapter: the cell succeeds; vaebook was not importable before it; it ran pip exactly once, with the kernel's
interpreter, ``--no-deps`` and the given spec and nothing else to install; pip added vaebook and its dist-info to the
runtime and nothing else; no Colab package is shadowed; vaebook is then imported from the wheel, torch from the
preinstalled packages, whose files (every dist-info's RECORD, torch's own) are unchanged. The same cells without the
stub never call pip; with the stub and no ``VAEBOOK_PIP_SPEC`` they would install
``vaebook @ git+<repository.url>@<branch>`` of ``_config.yml``. Two synthetic mutants of a real setup cell (one
without ``--no-deps``, one without the guard) prove that these checks fail when they should.

Offline, a dropped ``--no-deps`` installs nothing more here (vaebook's requirements are all preinstalled), so it is
caught on the command line; the synthetic test shows that a requirement Colab does not satisfy is caught in the files.
"""
from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
RUNNER = Path(__file__).with_name("_colab_runner.py")
#: this environment's site-packages: Colab's preinstalled packages in the simulation
PARENT_SITES = tuple(dict.fromkeys(Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")))
#: what Colab provides and a setup cell must never replace or shadow
COLAB_PACKAGES = ("torch", "numpy", "matplotlib", "tqdm", "scipy", "IPython", "ipywidgets", "pip")
_OWN = re.compile(r"(?i)^(__editable__[._-]*)?vaebook([-_.]|$)")  # vaebook's entries in a site-packages
_TIMEOUT = 300
#: CI sets VAEBOOK_REQUIRE_COLAB=1: a missing build backend then fails these tests instead of skipping them
REQUIRE_COLAB = os.environ.get("VAEBOOK_REQUIRE_COLAB", "") == "1"


def _skip(msg: str):
    if REQUIRE_COLAB:
        pytest.fail(msg + " (VAEBOOK_REQUIRE_COLAB=1)")
    pytest.skip(msg)


# ----------------------------------------------------------------------------------------------------------------
# the book and the project
# ----------------------------------------------------------------------------------------------------------------

def notebooks():
    return sorted(BOOK.glob("*.ipynb"))


def setup_cell(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def guard_block(src: str) -> str:
    """The start of a setup cell up to the end of its ``if "google.colab" in sys.modules:`` block."""
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.If) and "google.colab" in ast.get_source_segment(src, node.test):
            return "\n".join(src.splitlines()[:node.end_lineno]) + "\n"
    raise AssertionError(f"no google.colab guard in\n{src}")


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text())


@pytest.fixture(scope="session")
def project() -> dict:
    return _toml(ROOT / "pyproject.toml")


@pytest.fixture(scope="session")
def version(project) -> str:
    return project["project"]["version"]


def _clean_env(**extra) -> dict:
    """The environment of every process started here: offline pip, no user config, nothing that edits sys.path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA_", "__PYVENV")) and k != "VAEBOOK_PIP_SPEC"}
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
               PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ----------------------------------------------------------------------------------------------------------------
# the wheel, the preinstalled packages and the runtime
# ----------------------------------------------------------------------------------------------------------------

def _clone_files() -> list[str]:
    """The files a clone would hold: tracked ones and new ones that are not ignored (what the next commit can add)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):  # not a git checkout: what the build reads
        return ["pyproject.toml", "README.md", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*")
                                                 if p.is_file() and "__pycache__" not in p.parts)]
    return [f for f in os.fsdecode(out).split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="session")
def clone(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("clone")
    for rel in _clone_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="session")
def wheel(project, clone, tmp_path_factory) -> Path:
    """``pip wheel`` of the clone, offline: the build backend must already be installed here."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy
        from pip._vendor.packaging.requirements import Requirement

    build = project["build-system"]
    missing, found = [], []
    for req in build.get("requires", []):
        r = Requirement(req)
        try:
            have = importlib.metadata.version(r.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
            continue
        if not r.specifier.contains(have, prereleases=True):
            missing.append(req)
            found.append(f"{r.name} {have}")
    if missing:
        _skip("the wheel is built offline, without build isolation: pip install "
                    + " ".join(f"'{m}'" for m in missing) + (f" (installed: {', '.join(found)})" if found else ""))
    backend = build.get("build-backend", "setuptools.build_meta:__legacy__").split(":")[0]
    try:
        importlib.import_module(backend)
    except ImportError as e:
        _skip(f"the build backend {backend} cannot be imported ({e}): pip install "
                    + " ".join(f"'{r}'" for r in build.get("requires", [])))
    out = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(clone), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], env=_clean_env(), capture_output=True, text=True, timeout=_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    wheels = sorted(out.glob("vaebook-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def preinstalled(tmp_path_factory) -> Path:
    """A folder of symlinks to this environment's site-packages entries, vaebook's own left out."""
    farm = tmp_path_factory.mktemp("colab-dist-packages")
    for site in PARENT_SITES:
        for entry in site.iterdir():
            if not _OWN.match(entry.name) and not (farm / entry.name).exists():
                (farm / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    assert (farm / "torch").exists() and (farm / "IPython").exists() and (farm / "pip").exists(), \
        "the test environment lacks torch, IPython or pip"
    return farm


@dataclass
class Runtime:
    root: Path
    python: Path
    site: Path


def new_runtime(root: Path, preinstalled: Path) -> Runtime:
    """A fresh venv, without pip, whose site-packages names the preinstalled packages in a ``.pth``."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt", clear=True).create(root)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          env=_clean_env(), capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    site = Path(site)
    (site / "colab-preinstalled.pth").write_text(f"{preinstalled}\n")
    return Runtime(root, python, site)


def run_cells(rt: Runtime, segments: list[tuple[str, list[str]]], tmp: Path, **env) -> dict:
    """Run the cells of ``segments`` (``(flags, cells)`` pairs, see tests/_colab_runner.py) one after the other in
    one kernel of ``rt`` (cwd ``book/``); the runner's report, plus the whole output."""
    args, n = [], 0
    for flags, cells in segments:
        args.append(f"--flags={flags}")
        for src in cells:
            path = tmp / f"cell{n}.py"
            path.write_text(src)
            args.append(str(path))
            n += 1
    out = tmp / "report.json"
    proc = subprocess.run([str(rt.python), str(RUNNER), str(out), *args], cwd=BOOK, env=_clean_env(**env),
                          capture_output=True, text=True, timeout=_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.is_file(), f"the runner failed (rc {proc.returncode}):\n{output[-6000:]}"
    report = json.loads(out.read_text())
    report["output"] = output
    return report


def parent_state() -> dict:
    """Colab's packages in this environment: their dist-infos' RECORD files and torch's own files, with their stats
    (only these: another session may install unrelated packages here meanwhile)."""
    state = {}
    for site in PARENT_SITES:
        for name in COLAB_PACKAGES:
            for info in sorted(site.glob("*.dist-info")):
                if info.name.lower().startswith(name.lower() + "-"):
                    state[str(info)] = _stat(info / "RECORD")
        for f in ("__init__.py", "version.py"):
            state[str(site / "torch" / f)] = _stat(site / "torch" / f)
    return state


def _stat(p: Path):
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _under(path, folders) -> bool:
    p = Path(path).resolve()
    return any(p.is_relative_to(Path(f).resolve()) for f in folders)


def pip_calls(cell: dict) -> list[list[str]]:
    calls = []
    for e in cell["events"]:
        if e["pip"] and (not calls or calls[-1] != e["argv"]):  # subprocess.Popen + os.posix_spawn: one call
            calls.append(e["argv"])
    return calls


def install_problems(report: dict, cell: dict, spec: str, version: str) -> list[str]:
    """What a setup cell did wrong on (simulated) Colab, from the runner's report on it."""
    problems = []
    if not cell["success"]:
        problems.append(f"the setup cell failed: {cell['error']}")
    if cell["before"]["vaebook"] != {"origin": None, "dists": []}:
        problems.append(f"not a clean state: vaebook was importable before the cell: {cell['before']['vaebook']}")
    calls = pip_calls(cell)
    if len(calls) != 1:
        problems.append(f"the setup cell must run pip once; it ran {calls}")
    for argv in calls:
        if Path(argv[0]) != Path(report["executable"]):
            problems.append(f"pip must run with the kernel's interpreter (sys.executable): {argv}")
        if argv[1:4] != ["-m", "pip", "install"]:
            problems.append(f"expected `python -m pip install ...`: {argv}")
        if "--no-deps" not in argv:
            problems.append(f"pip ran without --no-deps: {argv}")
        targets = [a for a in argv[4:] if not a.startswith("-")]
        if targets != [spec]:  # offline, pip cannot upgrade a named Colab package: the command line must not ask
            problems.append(f"pip must install $VAEBOOK_PIP_SPEC {spec!r} and nothing else; it was given {targets}")
    before, after = cell["site_before"], cell["site_after"]
    added = {k.split("/")[0] for k in after} - {k.split("/")[0] for k in before}
    expected = {"vaebook", f"vaebook-{version}.dist-info"}
    if added != expected:
        problems.append(f"pip added {sorted(added)} to the runtime's site-packages; only {sorted(expected)} may")
    changed = sorted(k for k in before if after.get(k) != before[k])
    if changed:
        problems.append(f"files of the runtime changed or vanished: {changed}")
    for name in COLAB_PACKAGES:
        where = cell["after"][name]
        if where["origin"] and not _under(where["origin"], PARENT_SITES):
            problems.append(f"{name} now imports from {where['origin']}, not from the preinstalled packages")
        for d in where["dists"]:
            if _under(d["location"], [report["site"]]):
                problems.append(f"{name} {d['version']} was installed into the runtime, beside Colab's")
    if cell.get("reset_left"):
        problems.append(f"the harness could not restore the runtime after the cell: {cell['reset_left']}")
    return problems


def plain_problems(cell: dict) -> list[str]:
    """What a setup cell did wrong outside Colab: it must succeed without ever starting pip."""
    problems = [] if cell["success"] else [f"the setup cell failed: {cell['error']}"]
    if pip_calls(cell):
        problems.append(f"the setup cell ran pip outside Colab: {pip_calls(cell)}")
    return problems


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str], requires=()) -> Path:
    """A minimal valid pure-Python wheel (for the synthetic tests)."""
    dist = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
    contents[f"{dist}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: tests/test_colab.py\nRoot-Is-Purelib: true\n"
                                 "Tag: py3-none-any\n")
    record = []
    for path, text in contents.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    contents[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in contents.items():
            z.writestr(p, text)
    return path


# ----------------------------------------------------------------------------------------------------------------
# the tests
# ----------------------------------------------------------------------------------------------------------------

def test_wheel_ships_the_whole_package_and_every_checkpoint(wheel, clone, version):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"vaebook-{version}.dist-info/METADATA").decode()
        heads = {n: z.open(n).read(4) for n in names if n.startswith("vaebook/checkpoints/")}
    shipped = {n.removeprefix("vaebook/") for n in names if n.startswith("vaebook/")}
    pkg = clone / "src" / "vaebook"
    source = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert shipped == source, f"only in src/vaebook: {sorted(source - shipped)}; only in the wheel: " \
                              f"{sorted(shipped - source)}"
    assert re.search(rf"^Version: {re.escape(version)}$", meta, re.M)
    from vaebook.pretrained import RECIPES

    for name in RECIPES:
        path = f"vaebook/checkpoints/{name}.pt"
        assert path in names, f"the wheel lacks the checkpoint {path}"
        assert heads[path] == b"PK\x03\x04", f"{path} is not a torch zip archive (a Git LFS pointer?)"


LOAD_ALL_CHECKPOINTS = """\
import json
from pathlib import Path
import vaebook
from vaebook import pretrained
pkg = Path(vaebook.__file__).resolve().parent
sizes = {}
for name in sorted(pretrained.RECIPES):
    assert Path(pretrained.checkpoint_path(name)).resolve().parent == pkg / "checkpoints", name
    model, meta = pretrained.load(name)
    sizes[name] = sum(p.numel() for p in model.parameters())
print("LOADED", json.dumps(sizes))
"""


@pytest.fixture(scope="module")
def colab_run(wheel, preinstalled, tmp_path_factory):
    """One fresh runtime and one kernel: every chapter's setup cell with the stub and ``VAEBOOK_PIP_SPEC`` = the
    wheel, the runtime restored after each cell but the last; then, with vaebook installed by that last cell, every
    setup cell again without the stub (pip blocked: a call would be recorded and fail the cell); then a cell that
    loads every shipped checkpoint. The chapters' results, the report, and the preinstalled packages before/after."""
    tmp = tmp_path_factory.mktemp("colab")
    rt = new_runtime(tmp / "runtime", preinstalled)
    cells = [setup_cell(nb) for nb in notebooks()]
    parent_before = parent_state()
    report = run_cells(rt, [("stub,reset", cells[:-1]), ("stub", cells[-1:]), ("block", cells),
                            ("block", [LOAD_ALL_CHECKPOINTS])], tmp, VAEBOOK_PIP_SPEC=wheel)
    n = len(cells)
    run = {"rt": rt, "report": report, "colab": dict(zip(notebooks(), report["cells"][:n])),
           "plain": dict(zip(notebooks(), report["cells"][n:2 * n])), "load_all": report["cells"][2 * n],
           "parent_before": parent_before, "parent_after": parent_state()}
    return run


def test_colab_runtime_starts_without_vaebook_and_with_colab_packages(colab_run):
    report = colab_run["report"]
    first = report["cells"][0]  # the first cell of a fresh kernel: nothing imported yet
    assert first["before"]["vaebook"] == {"origin": None, "dists": []}, first["before"]["vaebook"]
    assert set(first["site_before"]) == {"colab-preinstalled.pth"}, first["site_before"]
    for name in COLAB_PACKAGES:
        assert first["before"][name]["origin"] and _under(first["before"][name]["origin"], PARENT_SITES), name
    assert Path(report["executable"]).parent.parent == colab_run["rt"].root
    assert Path(report["site"]) == colab_run["rt"].site


def test_colab_runs_leave_the_preinstalled_packages_alone(colab_run):
    before, after = colab_run["parent_before"], colab_run["parent_after"]
    diff = sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))
    assert not diff, f"the preinstalled packages changed: {diff}"


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.stem)
def test_setup_cell_on_colab_installs_only_vaebook(nb, colab_run, wheel, version):
    import torch

    report, cell = colab_run["report"], colab_run["colab"][nb]
    assert cell["success"], f"{nb.name}: the setup cell failed on (simulated) Colab: {cell['error']}\n" \
                            + cell["output"][-6000:]
    problems = install_problems(report, cell, str(wheel), version)
    assert not problems, f"{nb.name}:\n" + "\n".join(problems)
    # the chapter imported the wheel's vaebook and Colab's torch
    mods = cell["modules"]
    assert _under(mods["vaebook"]["file"], [report["site"]]), mods["vaebook"]
    assert mods["vaebook"]["version"] == version
    assert [d["version"] for d in cell["after"]["vaebook"]["dists"]] == [version]
    assert _under(mods["torch"]["file"], PARENT_SITES) and mods["torch"]["version"] == torch.__version__, mods
    assert f"vaebook {version}, torch {torch.__version__}" in cell["output"]


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.stem)
def test_setup_cell_outside_colab_never_calls_pip(nb, colab_run):
    cell = colab_run["plain"][nb]
    problems = plain_problems(cell)
    assert not problems, f"{nb.name}:\n" + "\n".join(problems) + "\n" + cell["output"][-4000:]
    assert cell["site_after"] == cell["site_before"], f"{nb.name} changed the installed packages outside Colab"
    assert _under(cell["modules"]["vaebook"]["file"], [colab_run["report"]["site"]])


def test_shipped_checkpoints_load_from_the_installed_wheel(colab_run):
    cell = colab_run["load_all"]
    assert cell["success"], f"{cell['error']}\n{cell['output'][-6000:]}"
    assert _under(cell["modules"]["vaebook"]["file"], [colab_run["report"]["site"]])
    from vaebook.pretrained import RECIPES

    loaded = json.loads(re.search(r"^LOADED (.*)$", cell["output"], re.M).group(1))
    assert sorted(loaded) == sorted(RECIPES) and all(n > 0 for n in loaded.values())


def test_setup_cells_default_to_the_configured_repository(preinstalled, tmp_path):
    """Without VAEBOOK_PIP_SPEC the cell installs ``vaebook @ git+<repository.url>@<branch>`` (blocked here)."""
    yaml = pytest.importorskip("yaml")
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    expected = f"vaebook @ git+{repo['url'].rstrip('/')}@{repo['branch']}"
    rt = new_runtime(tmp_path / "runtime", preinstalled)
    nbs = notebooks()
    report = run_cells(rt, [("stub,block", [setup_cell(nb) for nb in nbs])], tmp_path)
    for nb, cell in zip(nbs, report["cells"]):
        calls = pip_calls(cell)
        assert len(calls) == 1 and [a for a in calls[0][4:] if not a.startswith("-")] == [expected] \
            and "--no-deps" in calls[0], \
            f"{nb.name}: expected one `pip install --no-deps {expected!r}`, got {calls}"
        assert "Blocked" in (cell["error"] or ""), cell["error"]  # stopped at pip: the spec was never installed
        assert cell["site_after"] == cell["site_before"]


def test_harness_catches_a_cell_that_installs_dependencies(preinstalled, version, tmp_path):
    """A real setup cell's guard, with and without ``--no-deps``, installing a dummy vaebook that requires a
    ``tqdm`` newer than Colab's, offered by a local folder: the checks must pass the first and fail the second."""
    guard = guard_block(setup_cell(notebooks()[0]))
    assert '"--no-deps", ' in guard
    mutant = guard.replace('"--no-deps", ', "")
    links = tmp_path / "links"
    make_wheel(links, "tqdm", "999.0", {"tqdm/__init__.py": "__version__ = '999.0'\n"})
    spec = str(make_wheel(tmp_path / "spec", "vaebook", version,
                          {"vaebook/__init__.py": f"__version__ = {version!r}\n"}, requires=["tqdm>=999"]))
    rt = new_runtime(tmp_path / "runtime", preinstalled)
    parent_before = parent_state()
    report = run_cells(rt, [("stub,reset", [guard, mutant])], tmp_path, VAEBOOK_PIP_SPEC=spec,
                       PIP_FIND_LINKS=links)
    assert parent_state() == parent_before, "pip changed the preinstalled packages"  # it installs beside them
    problems = {label: install_problems(report, cell, spec, version)
                for label, cell in zip(("guard", "mutant"), report["cells"])}
    assert problems["guard"] == [], problems["guard"]
    text = "\n".join(problems["mutant"])
    assert "without --no-deps" in text and "tqdm-999.0.dist-info" in text and "tqdm now imports from" in text, text


def test_harness_catches_an_unguarded_cell(preinstalled, tmp_path):
    guard = guard_block(setup_cell(notebooks()[0]))
    unguarded = re.sub(r'if "google\.colab" in sys\.modules:', "if True:", guard)
    assert unguarded != guard
    rt = new_runtime(tmp_path / "runtime", preinstalled)
    report = run_cells(rt, [("block", [guard, unguarded])], tmp_path,
                       VAEBOOK_PIP_SPEC=tmp_path / "does-not-exist.whl")
    assert plain_problems(report["cells"][0]) == []
    assert any("ran pip outside Colab" in p for p in plain_problems(report["cells"][1]))
