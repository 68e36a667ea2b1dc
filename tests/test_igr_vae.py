"""Tests for vaebook.igr_vae (Chapter 4): IGR latents plugged into Chapter 3's CategoricalVAE."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import kl_divergence

from vaebook import igr_vae
from vaebook.discrete_vae import CategoricalLatent, CategoricalVAE
from vaebook.distributions import IGR, igr_limit_probs


def _x(n=8, seed=0):
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


@pytest.mark.parametrize("family", igr_vae.FAMILIES)
def test_igr_vae_trains_and_evaluates(family):
    torch.manual_seed(0)
    model = igr_vae.build(family, num_vars=4, num_classes=5, hidden=(32,), tau=0.1)
    assert isinstance(model, CategoricalVAE) and isinstance(model.latent, CategoricalLatent)
    assert model.latent.param_dim == 8 and model.latent.latent_dim == 20
    x = _x()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss, logs = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item()) and logs["kl"] >= (-1.0 if family == "planar" else 0.0)
    if family == "planar":  # the flow is learned
        assert model.latent.flow.u.grad is not None
    model.eval()
    with torch.no_grad():
        terms = model.elbo(x)  # the discrete ELBO
        lw = model.log_weights(x, 5)
    assert terms["elbo"].shape == (8,) and torch.isfinite(terms["elbo"]).all()
    assert (terms["kl"] >= 0).all() and lw.shape == (5, 8) and torch.isfinite(lw).all()


def test_closed_form_kl_term_matches_distributions():
    lat = igr_vae.IGRLatent(3, 6, "I")
    params = torch.randn(4, 3, 10, generator=torch.Generator().manual_seed(1))
    kl = lat.kl(params, None, 0.3)
    loc, scale = lat.loc_scale(params)
    ref = kl_divergence(IGR(loc, scale, 0.3), IGR(lat.prior_loc, lat.prior_scale, 0.3)).sum(-1)
    assert torch.allclose(kl, ref)
    # the prior's zero-temperature categorical is uniform
    p = igr_limit_probs(lat.prior_loc.double(), lat.prior_scale.double())
    assert torch.allclose(p, torch.full((6,), 1 / 6, dtype=torch.float64), atol=1e-5)


def test_discrete_logits_mc_agrees_with_quadrature_and_is_cached():
    params = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(2))
    mc = igr_vae.IGRLatent(3, 5, "I", limit_samples=4000)
    exact = igr_vae.IGRLatent(3, 5, "I", exact_limit=True)
    a, b = mc.discrete_logits(params).exp(), exact.discrete_logits(params).exp()
    assert torch.allclose(a.sum(-1), torch.ones(2, 3)) and (a - b).abs().max() < 0.03
    assert mc.discrete_logits(params) is mc.discrete_logits(params)  # same params: cached, consistent


def test_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        igr_vae.IGRLatent(2, 3, "gumbel")
    with pytest.raises(ValueError, match="delta"):
        igr_vae.IGRLatent(2, 3, "I", delta=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        igr_vae.IGRLatent(2, 1, "I")
