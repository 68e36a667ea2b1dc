"""Tests for vaebook.distributions (Chapter 4): the IGR family.

Independent references: scipy quadrature (normalisation), autograd Jacobians (change of variables), Monte Carlo
through ``log_prob`` (closed-form KL), Monte Carlo argmax frequencies (zero-temperature probabilities).
Reference values from the relaxation notes (relaxations.md §2.3, §2.7, §2.8, §4 S9-S13).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from torch.distributions import Normal, kl_divergence

from vaebook import distributions as Dn
from vaebook.distributions import IGR, IGRPlanar, IGRStickBreaking, PlanarFlow

D64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flow(dim, seed=0, big=3.0):
    f = PlanarFlow(dim, 2, generator=gen(seed)).double()
    with torch.no_grad():
        f.u.mul_(big * 10)
        f.b.add_(0.3)
    return f


def _make(family, loc, scale, tau, flow=None):
    if family == "I":
        return IGR(loc, scale, tau)
    if family == "sb":
        return IGRStickBreaking(loc, scale, tau)
    return IGRPlanar(loc, scale, tau, flow)


# --------------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("family, tau", [("I", 0.1), ("I", 0.5), ("I", 1.0), ("sb", 0.1), ("sb", 1.0),
                                         ("planar", 0.5)])
def test_density_integrates_to_one_k2(family, tau):
    # K = 2: integrate over the logit coordinate u, x = (sigmoid(u), sigmoid(-u)), dx_1 = x_1 x_2 du
    d = _make(family, torch.tensor([0.3], dtype=D64), torch.tensor([0.8], dtype=D64), tau, _flow(1))

    def f(u):
        u = torch.tensor(u, dtype=D64)
        lx = torch.stack([F.logsigmoid(u), F.logsigmoid(-u)])
        return (d.log_prob_log(lx) + lx.sum()).exp().item()

    val, _ = integrate.quad(f, -60 / tau, 60 / tau, limit=500, points=[0.0])
    assert abs(val - 1) < 1e-6


@pytest.mark.parametrize("family", ["I", "sb"])
def test_density_integrates_to_one_k3_grid(family):
    # K = 3 at tau = 1: midpoint rule in the additive-logratio coordinates v (x = softmax(v, 0)),
    # dx_1 dx_2 = x_1 x_2 x_3 dv
    d = _make(family, torch.tensor([0.2, -0.4], dtype=D64), torch.tensor([0.7, 1.1], dtype=D64), 1.0)
    h = 0.05
    g = torch.arange(-12 + h / 2, 12, h, dtype=D64)
    v = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    lx = torch.log_softmax(torch.cat([v, torch.zeros(len(v), 1, dtype=D64)], -1), -1)
    total = ((d.log_prob_log(lx) + lx.sum(-1)).exp().sum() * h * h).item()
    assert abs(total - 1) < 1e-4


# --------------------------------------------------------------------------------------------- change of variables


def _forward_map(d):
    """x_{1:K-1} as a function of the Gaussian point z (the map whose Jacobian enters the density)."""
    return lambda z: d.log_x_from_gauss(z).exp()[..., :-1]


@pytest.mark.parametrize("family", ["I", "sb", "planar"])
@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_log_prob_equals_autograd_jacobian(family, tau):
    K = 5
    loc = torch.randn(K - 1, dtype=D64, generator=gen(1))
    scale = torch.rand(K - 1, dtype=D64, generator=gen(2)) + 0.5
    d = _make(family, loc, scale, tau, _flow(K - 1, seed=3))
    for s in range(3):
        z = loc + scale * torch.randn(K - 1, dtype=D64, generator=gen(10 + s))
        J = torch.autograd.functional.jacobian(_forward_map(d), z)
        logdet = torch.linalg.slogdet(J).logabsdet
        ref = Normal(loc, scale).log_prob(z).sum() - logdet  # independent: torch Normal + autograd
        ours = d.log_prob(d.log_x_from_gauss(z).exp())
        assert abs(ours.item() - ref.item()) < 1e-8


def test_analytic_logdet_formula_igr_i():
    # notes §2.3: log|det d z / d x| = (K-1) log tau - sum_k log x_k
    K, tau = 6, 0.4
    d = IGR(torch.zeros(K - 1, dtype=D64), torch.ones(K - 1, dtype=D64), tau)
    x = torch.softmax(torch.randn(K, dtype=D64, generator=gen(0)), -1)
    J = torch.autograd.functional.jacobian(lambda xs: tau * Dn.inverse_softmax_pp(
        torch.log(torch.cat([xs, 1 - xs.sum(-1, keepdim=True)]))), x[:-1])
    assert abs(torch.linalg.slogdet(J).logabsdet.item() - ((K - 1) * math.log(tau) - x.log().sum().item())) < 1e-10


def test_sb_map_unit_jacobian_and_inverse():
    z = torch.randn(7, dtype=D64, generator=gen(0)) * 2
    J = torch.autograd.functional.jacobian(Dn.sb_map, z)
    assert abs(torch.linalg.slogdet(J).logabsdet.item()) < 1e-12
    assert torch.allclose(torch.tril(J, -1), torch.zeros_like(J))  # upper triangular, unit diagonal
    zz = torch.randn(50, 7, dtype=D64, generator=gen(1)) * 3
    assert torch.allclose(Dn.sb_map_inverse(Dn.sb_map(zz)), zz, atol=1e-9)
    log_pi = Dn.stick_breaking(zz)
    assert torch.allclose(log_pi.exp().sum(-1), torch.ones(50, dtype=D64))
    assert torch.allclose(Dn.inverse_stick_breaking(log_pi), zz, atol=1e-9)
    # lambda = log pi_k - log pi_K
    assert torch.allclose(Dn.sb_map(zz), log_pi[..., :-1] - log_pi[..., -1:], atol=1e-10)


def test_planar_flow_inverse_and_invertibility_condition():
    f = _flow(4, seed=5)
    assert ((f.w * f.u_tilde()).sum(-1) > -1).all()
    z = torch.randn(100, 4, dtype=D64, generator=gen(2)) * 2
    assert torch.allclose(f.inverse(f(z)[0]), z, atol=1e-8)


# --------------------------------------------------------------------------------------------- KL


def test_kl_registered_and_closed_form_vs_mc():
    K = 10
    loc = torch.randn(K - 1, dtype=D64, generator=gen(0))
    scale = torch.exp(0.5 * torch.randn(K - 1, dtype=D64, generator=gen(1)))
    p_loc, p_scale = Dn.uniform_prior(K, math.exp(-0.26), dtype=D64)
    for tau in (0.1, 1.0):
        q, p = IGR(loc, scale, tau), IGR(p_loc, p_scale, tau)
        closed = kl_divergence(q, p)
        ref = kl_divergence(Normal(loc, scale), Normal(p_loc, p_scale)).sum()
        assert abs(closed.item() - ref.item()) < 1e-10
        torch.manual_seed(tau.__hash__() % 1000)
        mc, se = Dn.igr_kl_mc(q, p, 40000, generator=gen(3), return_stderr=True)
        assert abs(mc.item() - closed.item()) < 4 * se.item()


def test_kl_sb_closed_form_vs_mc_and_batch_shapes():
    loc = torch.randn(3, 5, dtype=D64, generator=gen(4))
    q = IGRStickBreaking(loc, 0.7, 0.5)
    p = IGRStickBreaking(torch.zeros(5, dtype=D64), 1.0, 0.5)
    closed = kl_divergence(q, p)
    assert closed.shape == (3,)
    mc, se = Dn.igr_kl_mc(q, p, 40000, generator=gen(5), return_stderr=True)
    assert ((mc - closed).abs() < 4 * se).all()


def test_kl_without_shared_map_raises():
    loc = torch.zeros(4, dtype=D64)
    with pytest.raises(NotImplementedError, match="igr_kl_mc"):
        kl_divergence(IGR(loc, 1.0, 0.5), IGR(loc, 1.0, 0.6))
    with pytest.raises(NotImplementedError):
        kl_divergence(IGRStickBreaking(loc, 1.0, 0.5), IGR(loc, 1.0, 0.5))
    with pytest.raises(NotImplementedError):
        kl_divergence(IGRPlanar(loc, 1.0, 0.5, _flow(4)), IGR(loc, 1.0, 0.5))
    f = _flow(4)
    assert kl_divergence(IGRPlanar(loc, 1.0, 0.5, f), IGRPlanar(loc + 1, 1.0, 0.5, f)).item() == pytest.approx(2.0)


def test_planar_kl_mc_matches_lambda_space_estimate():
    K, f = 5, _flow(4, seed=7)
    loc = torch.randn(K - 1, dtype=D64, generator=gen(8))
    q, p = IGRPlanar(loc, 0.8, 0.5, f), IGR(*Dn.uniform_prior(K, dtype=D64), 0.5)
    mc, se = Dn.igr_kl_mc(q, p, 3000, generator=gen(9), return_stderr=True)
    z = q.rsample_gauss((20000,), generator=gen(10))
    lam, logdet = f(z)
    lr = q._gauss_log_prob(z) - logdet - p._gauss_log_prob(lam)  # KL in the pre-softmax space
    assert abs(mc.item() - lr.mean().item()) < 4 * math.hypot(se.item(), lr.std().item() / math.sqrt(len(lr)))


# --------------------------------------------------------------------------------------------- samples and numerics


@pytest.mark.parametrize("family", ["I", "sb", "planar"])
def test_samples_on_simplex_and_finite_at_small_tau_float32(family):
    loc = torch.randn(200, 9, generator=gen(0)) * 4
    scale = torch.rand(200, 9, generator=gen(1)) + 0.05
    flow = PlanarFlow(9, 2, generator=gen(2)) if family == "planar" else None
    d = _make(family, loc, scale, 0.01, flow)
    x = d.rsample((5,))
    assert x.dtype == torch.float32 and x.shape == (5, 200, 10)
    assert torch.isfinite(x).all() and (x >= 0).all()
    assert torch.allclose(x.sum(-1), torch.ones(5, 200), atol=1e-5)
    log_x = d.rsample_log((5,))
    assert torch.isfinite(log_x).all()
    if family != "planar":  # planar log_prob inverts the flow by bisection: checked in float64 above
        lp = d.log_prob_log(log_x)
        assert torch.isfinite(lp).all()
    kl = kl_divergence(d, _make(family, torch.zeros(9), 1.0, 0.01, flow))
    assert torch.isfinite(kl).all()
    # gradients stay finite too
    loc_r = loc.clone().requires_grad_(True)
    _make(family, loc_r, scale, 0.01, flow).rsample_log().sum().backward()
    assert torch.isfinite(loc_r.grad).all()


def test_log_prob_of_underflowed_sample_raises_clearly():
    d = IGR(torch.full((9,), 5.0), 0.1, 0.01)
    x = d.rsample((10,))
    assert (x == 0).any()
    with pytest.raises(ValueError, match="log_prob_log"):
        d.log_prob(x)


def test_softmax_pp_roundtrip_and_delta():
    v = torch.randn(20, 4, dtype=D64, generator=gen(0)) * 3
    for delta in (0.1, 1.0, 3.0):
        lx = Dn.log_softmax_pp(v, delta)
        assert torch.allclose(lx.exp().sum(-1), torch.ones(20, dtype=D64))
        assert torch.allclose(Dn.inverse_softmax_pp(lx, delta), v, atol=1e-10)
        ref = torch.exp(v) / (torch.exp(v).sum(-1, keepdim=True) + delta)
        assert torch.allclose(lx[..., :-1].exp(), ref)


# --------------------------------------------------------------------------------------------- discrete limit


def test_limit_probs_quadrature_reference_and_small_tau_argmax():
    mu = torch.tensor([0.5, -0.2, 0.1], dtype=D64)
    sd = torch.tensor([1.0, 0.6, 1.3], dtype=D64)
    p = Dn.igr_limit_probs(mu, sd)
    ref = torch.tensor([0.4708, 0.1057, 0.3322, 0.0913], dtype=D64)  # notes §2.7
    assert torch.allclose(p, ref, atol=1e-4) and abs(p.sum().item() - 1) < 1e-9
    n = 100000
    x = IGR(mu, sd, 0.02, delta=0.5).rsample((n,), generator=gen(1))
    freq = F.one_hot(x.argmax(-1), 4).double().mean(0)
    se = torch.sqrt(p * (1 - p) / n)
    assert ((freq - p).abs() < 4 * se + 2e-3).all()  # delta != 1: the argmax tends to the limit as tau -> 0


def test_limit_probs_batched_and_differentiable():
    loc = torch.randn(4, 3, 6, dtype=D64, generator=gen(0)).requires_grad_(True)
    p = IGR(loc, 0.9, 0.5).limit_probs()
    assert p.shape == (4, 3, 7)
    assert torch.allclose(p.sum(-1), torch.ones(4, 3, dtype=D64), atol=1e-8)
    p[..., 0].sum().backward()
    assert torch.isfinite(loc.grad).all()


@pytest.mark.parametrize("K", [2, 10, 50])
def test_uniform_prior_gives_uniform_categorical(K):
    loc, scale = Dn.uniform_prior(K, 0.77, dtype=D64)
    if K == 10:
        assert abs(loc[0].item() / 0.77 + 0.7530) < 1e-4  # notes §2.8
    p = IGR(loc, scale, 0.5).limit_probs()
    assert torch.allclose(p, torch.full((K,), 1.0 / K, dtype=D64), atol=1e-6)
    # sampled argmax frequencies at a moderate temperature (delta = 1: exact at every tau), within 4 SE
    n = 40000
    x = IGR(loc, scale, 0.7).rsample((n,), generator=gen(K))
    freq = F.one_hot(x.argmax(-1), K).double().mean(0)
    assert ((freq - 1.0 / K).abs() < 4 * math.sqrt((1 / K) * (1 - 1 / K) / n)).all()


def test_calibrated_sb_prior_is_close_to_uniform():
    loc, scale = Dn.calibrate_uniform_prior(6, "sb", num_steps=200, num_samples=3000)
    p = IGRStickBreaking(loc, scale, 0.1).limit_probs(num_samples=40000, generator=gen(0))
    assert (p - 1 / 6).abs().max() < 0.03


# --------------------------------------------------------------------------------------------- stick-breaking truncation


def test_truncation_rule():
    # deterministic pieces: pi = (0.5, 0.3, 0.15, 0.04, 0.01) -> cumulative (0.5, 0.8, 0.95, 0.99, 1.0)
    pi = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.009, 0.001]], dtype=D64)
    assert Dn.sb_truncation_level(pi.log(), threshold=0.9) == 3
    assert Dn.sb_truncation_level(pi.log(), threshold=0.5) == 2  # strictly more than the threshold
    assert Dn.sb_truncation_level(pi.log(), threshold=0.999) == 5  # capped at K-1
    # the quantile: 100 samples needing 1..100 pieces
    many = torch.full((100, 101), -1e4, dtype=D64)
    many[torch.arange(100), torch.arange(100)] = 0.0
    many = torch.log_softmax(many, -1)
    assert Dn.sb_truncation_level(many, 0.99, 70) == 70
    assert Dn.sb_truncation_level(many, 0.99, 100) == 100


def test_truncation_of_distribution_covers_threshold_and_is_a_marginal():
    K1 = 60
    loc = torch.full((K1,), -1.5, dtype=D64)
    d = IGRStickBreaking(loc, 0.5, 0.3, threshold=0.95, quantile=80)
    level = d.truncation_level(4000, generator=gen(0))
    assert 1 < level < K1
    log_pi = d.stick_pieces_log((4000,), generator=gen(1))
    covered = log_pi[..., :level].exp().sum(-1) > 0.95
    assert covered.double().mean().item() > 0.78
    t = d.truncate(level)
    assert t.num_classes == level + 1
    # same Gaussian coordinates: the truncated pieces are the first pieces plus the rest
    z = d.rsample_gauss((10,), generator=gen(2))
    a, b = Dn.stick_breaking(z), Dn.stick_breaking(z[..., :level])
    assert torch.allclose(a[..., :level], b[..., :level])
    assert torch.allclose(a[..., level:].logsumexp(-1), b[..., -1])
    with pytest.raises(ValueError, match="level"):
        d.truncate(0)


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, name", [
    (dict(scale=0.0), "scale"), (dict(scale=-1.0), "scale"), (dict(scale=float("nan")), "scale"),
    (dict(temperature=0.0), "temperature"), (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(delta=0.0), "delta"),
    (dict(loc=torch.tensor(1.0)), "loc"), (dict(loc=torch.tensor([0.0, float("nan")])), "loc"),
    (dict(scale=torch.ones(3)), "scale"), (dict(temperature=torch.ones(5)), "temperature"),
])
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(loc=torch.zeros(2, 2), scale=1.0, temperature=0.5, delta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        IGR(**args)


def test_bad_values_and_other_arguments():
    d = IGR(torch.zeros(3), 1.0, 0.5)
    with pytest.raises(ValueError, match="shape"):
        d.log_prob(torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="sum to 1"):
        d.log_prob(torch.full((4,), 0.3))
    with pytest.raises(ValueError, match="flow"):
        IGRPlanar(torch.zeros(3), 1.0, 0.5, PlanarFlow(4))
    with pytest.raises(ValueError, match="threshold"):
        IGRStickBreaking(torch.zeros(3), 1.0, 0.5, threshold=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        Dn.uniform_prior(1)
