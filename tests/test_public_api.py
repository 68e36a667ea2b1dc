"""Meta-test: every public function and class of ``vaebook`` has a property test, or is exempt for a stated reason.

The public API is enumerated from the package itself: every module under ``src/vaebook`` (``vaebook.kernels``
included) whose name does not start with ``_``, and in each module the names in ``__all__`` (or, for a module
without ``__all__``, the functions and classes defined there whose names do not start with ``_``). Only callables
count: constants (tuples, dicts, tensors) are data, and re-exports (``vaebook.set_seed`` is
``vaebook.utils.set_seed``) are counted once, under the module that defines them.

A name is *covered* when a test in ``tests/test_properties.py`` or ``tests/test_gradcheck.py`` is decorated with
``@covers("module.name", ...)`` (names relative to ``vaebook``); the decorators are read from the source with
``ast``, so this file neither imports nor runs the property tests. Adding a public function or class without a
property test (or an entry in :data:`EXEMPT` with a reason) makes
:func:`test_every_public_callable_is_covered_or_exempt` fail; so does a stale entry (a covered or exempt name that no
longer exists, see :func:`test_no_stale_entries`).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import types
from pathlib import Path

import pytest

import vaebook

HERE = Path(__file__).resolve().parent
PROPERTY_FILES = (HERE / "test_properties.py", HERE / "test_gradcheck.py")

#: whole modules left out of the enumeration, with the reason
EXCLUDED_MODULES = {
    "vaebook.assignments": "course tooling (student editions and grading of the notebooks), not numerics; it reads "
                           "and writes notebooks and is tested end to end by tests/test_assignments.py",
    "vaebook.nbexec": "notebook-execution plumbing (a workaround for lost wake-ups in nbclient's message channels), "
                      "not numerics; tested with simulated channels and real kernels by tests/test_nbexec.py",
    "vaebook.bench": "a benchmark harness (`python -m vaebook.bench`: run / format_table / main) whose only outputs "
                     "are wall-clock timings; no invariant to check; smoke-tested by tests/test_bench.py",
}

_CHECKPOINT_TRAINING = ("a chapter's checkpoint recipe: a full MNIST training run with evaluation, written to disk "
                        "(minutes of CPU); the model it trains is property-tested through its class and builder")
_CHECKPOINT_TRAINING_TESTED = _CHECKPOINT_TRAINING + "; smoke-tested with tiny settings in tests/test_{}.py"

#: public callables without a property test, each with the reason
EXEMPT = {
    # plotting and widgets: rendering, no numbers to check
    "plot.use_book_style": "sets matplotlib rcParams (no output); smoke-tested in tests/test_plot_widgets_utils.py",
    "plot.image_grid": "matplotlib rendering, no numerical output; smoke-tested in tests/test_plot_widgets_utils.py",
    "plot.latent_map": "matplotlib rendering, no numerical output; smoke-tested in tests/test_plot_widgets_utils.py",
    "plot.latent_manifold": "matplotlib rendering, no numerical output; smoke-tested in "
                            "tests/test_plot_widgets_utils.py",
    "plot.curves": "matplotlib rendering, no numerical output; smoke-tested in tests/test_plot_widgets_utils.py",
    "plot.traversal_grid": "matplotlib rendering, no numerical output; smoke-tested in "
                           "tests/test_plot_widgets_utils.py",
    "widgets.latent_traversal": "an ipywidgets UI (sliders and an image) that needs a notebook frontend; smoke-tested "
                                "in tests/test_plot_widgets_utils.py",
    # checkpoint recipes and their command-line internals
    "pretrained.train": "the `python -m vaebook.pretrained train NAME` command: a full training run written to disk "
                        "(minutes); smoke-tested with tiny settings in tests/test_pretrained.py",
    "pretrained.load": "reads the shipped checkpoint files (or retrains them); tested against the files in "
                       "tests/test_pretrained.py",
    "pretrained.Recipe": "a frozen dataclass of settings with no behaviour; every recipe in RECIPES is built by the "
                         "property test of pretrained.build_model",
    "discrete_vae.train": _CHECKPOINT_TRAINING_TESTED.format("discrete_vae"),
    "recab_vae.train": _CHECKPOINT_TRAINING_TESTED.format("recab_vae"),
    "ldc.train": _CHECKPOINT_TRAINING_TESTED.format("ldc"),
    "introspective.train": _CHECKPOINT_TRAINING + " (24 toy models for ch08_toy2d); fit_toy2d, which trains each of "
                                                  "them, is property-tested",
    "introspective.train_mnist": _CHECKPOINT_TRAINING_TESTED.format("introspective"),
    "vrnn.train": _CHECKPOINT_TRAINING_TESTED.format("vrnn"),
    "vrnn.train_vrnn": _CHECKPOINT_TRAINING + "; vrnn.train('ch09_vrnn') under a fixed name (tests/test_vrnn.py)",
    "vrnn.train_lstm": _CHECKPOINT_TRAINING + "; vrnn.train('ch09_lstm') under a fixed name",
    "vrnn.train_gmvrnn_a": _CHECKPOINT_TRAINING + "; vrnn.train('ch09_gmvrnn_a') under a fixed name",
    "vrnn.train_gmvrnn_b": _CHECKPOINT_TRAINING + "; vrnn.train('ch09_gmvrnn_b') under a fixed name",
}


def _modules() -> list[types.ModuleType]:
    mods = [vaebook]
    for info in pkgutil.walk_packages(vaebook.__path__, "vaebook."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]) or info.name in EXCLUDED_MODULES:
            continue
        mods.append(importlib.import_module(info.name))
    return mods


def public_api() -> dict[str, object]:
    """``{"module.name": object}`` (module relative to ``vaebook``) for every public function and class."""
    mods = _modules()
    by_name = {m.__name__: m for m in mods}
    api: dict[str, object] = {}
    for m in mods:
        if hasattr(m, "__all__"):
            names = list(m.__all__)
        else:
            names = [n for n, v in vars(m).items() if not n.startswith("_") and (inspect.isfunction(v) or
                     inspect.isclass(v)) and v.__module__ == m.__name__]
        for n in names:
            obj = getattr(m, n)
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue  # submodules are enumerated themselves; constants are data
            home = getattr(obj, "__module__", m.__name__)
            if home != m.__name__ and home in by_name and getattr(by_name[home], n, None) is obj:
                continue  # a re-export: counted under the module that defines it
            rel = m.__name__[len("vaebook."):] if m.__name__ != "vaebook" else ""
            api[f"{rel}.{n}" if rel else n] = obj
    return api


def covered_names(files=PROPERTY_FILES) -> dict[str, list[str]]:
    """``{"module.name": [test names]}`` from the ``@covers(...)`` decorators of the property test files."""
    out: dict[str, list[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "covers":
                    for arg in dec.args:
                        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), \
                            f"{path.name}::{node.name}: @covers takes string literals"
                        out.setdefault(arg.value, []).append(f"{path.name}::{node.name}")
    return out


def missing(api, covered, exempt=EXEMPT) -> list[str]:
    return sorted(set(api) - set(covered) - set(exempt))


def test_every_public_callable_is_covered_or_exempt():
    api, covered = public_api(), covered_names()
    gaps = missing(api, covered)
    assert not gaps, ("public functions/classes without a property test: " + ", ".join(gaps)
                      + ". Add a test decorated with @covers(...) in tests/test_properties.py (or a gradcheck in "
                        "tests/test_gradcheck.py), or an EXEMPT entry with a reason in tests/test_public_api.py")


def test_no_stale_entries():
    api, covered = public_api(), covered_names()
    stale_cov = sorted(set(covered) - set(api))
    stale_ex = sorted(set(EXEMPT) - set(api))
    both = sorted(set(EXEMPT) & set(covered))
    assert not stale_cov, f"@covers names that are not public callables of vaebook: {stale_cov}"
    assert not stale_ex, f"EXEMPT names that are not public callables of vaebook: {stale_ex}"
    assert not both, f"names both covered and exempt (drop the exemption): {both}"
    assert all(len(r) > 20 for r in EXEMPT.values()) and all(len(r) > 20 for r in EXCLUDED_MODULES.values())
    for mod in EXCLUDED_MODULES:
        importlib.import_module(mod)  # an excluded module must exist


def test_the_meta_test_catches_a_new_public_function(monkeypatch):
    """Adding a function to a module's ``__all__`` without a test makes the meta-test fail (and only that name)."""
    import vaebook.metrics as metrics

    def brand_new_bound(model, x):  # pragma: no cover - never called
        return x

    monkeypatch.setattr(metrics, "brand_new_bound", brand_new_bound, raising=False)
    monkeypatch.setattr(metrics, "__all__", [*metrics.__all__, "brand_new_bound"])
    assert missing(public_api(), covered_names()) == ["metrics.brand_new_bound"]


def test_enumeration_sanity():
    api = public_api()
    mods = {k.rsplit(".", 1)[0] for k in api if "." in k}
    # every public module of the package contributes, the kernels' reference module included
    assert {"divergences", "relaxed", "distributions", "mixtures", "models", "metrics", "data", "svgd", "ldc", "vrnn",
            "introspective", "recab_vae", "mixture_vae", "igr_vae", "discrete_vae", "kernels", "kernels.reference",
            "train", "utils", "pretrained", "plot", "widgets"} <= mods
    assert "utils.set_seed" in api and "set_seed" not in api  # re-exports are counted once
    assert not any(k.startswith(("assignments.", "bench.")) for k in api)
    assert not any(k.split(".")[-1].startswith("_") for k in api)
    assert len(api) > 150


@pytest.mark.parametrize("name", sorted(EXEMPT))
def test_exempt_entries_are_public(name):
    assert name in public_api(), name
