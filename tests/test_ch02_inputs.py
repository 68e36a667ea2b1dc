"""Bad input to the mixture KLs of Chapter 2 (moved from the chapter, where it demonstrated the error messages).

``kl_gmm`` refuses mixtures of different dimensions, non-positive component scales (which ``torch.distributions``
already refuses at construction unless ``validate_args=False``) and an unknown method, each with a ``ValueError``
that names the argument.
"""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaebook.divergences import kl_gmm


def mixture(w, loc, scale, dtype=torch.float64):
    """A mixture of diagonal Gaussians, as in the chapter: w (..., K), loc and scale (..., K, d)."""
    t = lambda v: torch.as_tensor(v, dtype=dtype)
    return MixtureSameFamily(Categorical(probs=t(w)), Independent(Normal(t(loc), t(scale)), 1))


@pytest.fixture
def pair():
    """The chapter's reference pair of 1-D mixtures (f, g)."""
    f = mixture([0.35, 0.65], [[-1.0], [1.25]], [[0.35**0.5], [0.8**0.5]])
    g = mixture([0.55, 0.45], [[-0.4], [2.0]], [[0.6**0.5], [1.1**0.5]])
    return f, g


def test_different_dimensions(pair):
    f, _ = pair
    g2 = mixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"q and p must have the same event dimension, got q: 1, p: 2"):
        kl_gmm(f, g2)


def test_non_positive_scale(pair):
    _, g = pair
    comps = Independent(Normal(torch.zeros(1, 1), torch.zeros(1, 1), validate_args=False), 1)
    bad = MixtureSameFamily(Categorical(torch.ones(1)), comps)
    with pytest.raises(ValueError, match=r"q: component scale must be finite and > 0"):
        kl_gmm(bad, g)


def test_unknown_method(pair):
    f, g = pair
    with pytest.raises(ValueError, match=r"method must be one of 'mc', .*; got 'exact'"):
        kl_gmm(f, g, method="exact")
