"""vaebook: divergences for variational autoencoders, the library behind the book.

Modules match the book's chapters:

* :mod:`vaebook.divergences` -- closed-form divergences (Chapter 1: Gaussian KL; later chapters add more).
* :mod:`vaebook.data` -- MNIST (IDX files, offline-first) and 2-D toy data sets.
* :mod:`vaebook.models` -- MLP encoders/decoders and the VAE (Chapter 1), built to be composed.
* :mod:`vaebook.train` -- the one training loop every chapter uses, with checkpoints.
* :mod:`vaebook.metrics` -- ELBO and the importance-weighted bound.
* :mod:`vaebook.plot`, :mod:`vaebook.widgets` -- figures in the book's style and small explorers.
* :mod:`vaebook.pretrained` -- small shipped checkpoints and the commands that reproduce them.
* Chapter by chapter: :mod:`vaebook.mixtures`, :mod:`vaebook.mixture_vae` (2); :mod:`vaebook.relaxed`,
  :mod:`vaebook.discrete_vae` (3); :mod:`vaebook.distributions`, :mod:`vaebook.igr_vae` (4);
  :mod:`vaebook.recab_vae` (5); :mod:`vaebook.svgd` (6); :mod:`vaebook.ldc` (7); :mod:`vaebook.introspective` (8);
  :mod:`vaebook.vrnn` (9); :mod:`vaebook.kernels` (the GPU appendix).

The machinery that executes, benchmarks and grades the book is apart, in :mod:`vaebook.tooling`.
"""

from __future__ import annotations

from . import data, divergences, metrics, models, train, utils
from .utils import get_device, set_seed

__version__ = "0.1.0"
__all__ = [
    "data",
    "divergences",
    "metrics",
    "models",
    "train",
    "utils",
    "get_device",
    "set_seed",
    "__version__",
]

# -----------------------------------------------------------------------------
# The tooling that builds, executes, benchmarks and grades the book lives in
# vaebook.tooling; the old names
# (vaebook.assignments, vaebook.bench, vaebook.nbexec, and `python -m` on
# them) stay importable as aliases of the
# same module objects.
import importlib.abc as _abc
import importlib.machinery as _machinery
import sys as _sys

_TOOLING = ("assignments", "bench", "nbexec")


class _ToolingAlias(_machinery.SourceFileLoader):
    """Loads ``vaebook.<name>`` as the module ``vaebook.tooling.<name>`` (one module object, two names)."""

    def create_module(self, spec):
        import importlib

        return importlib.import_module(
            f"{__name__}.tooling.{spec.name.rsplit('.', 1)[1]}"
        )

    def exec_module(self, module):
        pass  # already executed under its own name


class _ToolingFinder(_abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in _TOOLING:
            return None
        import importlib.util
        from pathlib import Path

        file = str(Path(__file__).resolve().parent / "tooling" / f"{name}.py")
        return importlib.util.spec_from_file_location(
            fullname, file, loader=_ToolingAlias(fullname, file)
        )


if not any(isinstance(f, _ToolingFinder) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _ToolingFinder())
