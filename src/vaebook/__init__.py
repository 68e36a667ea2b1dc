"""vaebook: divergences for variational autoencoders, the library behind the book.

Modules match the book's chapters:

* :mod:`vaebook.divergences` -- closed-form divergences (Chapter 1: Gaussian KL; later chapters add more).
* :mod:`vaebook.data` -- MNIST (IDX files, offline-first) and 2-D toy data sets.
* :mod:`vaebook.models` -- MLP encoders/decoders and the VAE (Chapter 1), built to be composed.
* :mod:`vaebook.train` -- the one training loop every chapter uses, with checkpoints.
* :mod:`vaebook.metrics` -- ELBO and the importance-weighted bound.
* :mod:`vaebook.plot`, :mod:`vaebook.widgets` -- figures in the book's style and small explorers.
* :mod:`vaebook.pretrained` -- small shipped checkpoints and the commands that reproduce them.
"""
from __future__ import annotations

from . import data, divergences, metrics, models, train, utils
from .utils import get_device, set_seed

__version__ = "0.1.0"
__all__ = ["data", "divergences", "metrics", "models", "train", "utils", "get_device", "set_seed", "__version__"]
