"""Tests for vaebook.relaxed (Chapter 3): Gumbel-max, Gumbel-Softmax / Concrete, ExpConcrete, the relaxed KL.

Reference values come from the relaxation notes (relaxations.md §1.10, §1.14, §4); independent references are
torch.distributions (densities), scipy quadrature (normalisation) and 50-digit mpmath (exact KL).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from torch.distributions import RelaxedOneHotCategorical, kl_divergence
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from vaebook import relaxed as R
from vaebook.divergences import kl_categorical

D64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ densities vs torch


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_log_probs_match_torch_float64(K, tau):
    logits = torch.randn(6, K, dtype=D64, generator=gen(K)) * 2
    t = torch.tensor(tau, dtype=D64)
    log_y = R.exp_concrete_sample(logits, tau, generator=gen(1))
    ours_exp = R.exp_concrete_log_prob(log_y, logits, tau)
    ref_exp = ExpRelaxedCategorical(t, logits=logits).log_prob(log_y)
    torch.testing.assert_close(ours_exp, ref_exp, rtol=1e-12, atol=1e-10)
    y = log_y.exp()
    ref = RelaxedOneHotCategorical(t, logits=logits).log_prob(y)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(R.concrete_log_prob(y, logits, tau), ref, rtol=1e-12, atol=1e-10)
    # the distribution classes accept a float temperature and give the same numbers
    torch.testing.assert_close(R.Concrete(tau, logits=logits).log_prob(y), ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(R.ExpConcrete(tau, logits=logits).log_prob(log_y), ref_exp, rtol=1e-12, atol=1e-10)


def test_batch_temperature_matches_torch():
    # our tau has the batch shape (B,); torch wants it broadcastable against (B, K), i.e. (B, 1)
    logits = torch.randn(4, 3, dtype=D64, generator=gen(0))
    tau = torch.tensor([0.2, 0.5, 1.0, 4.0], dtype=D64)
    y = R.gumbel_softmax(logits, tau, generator=gen(1))
    assert y.shape == (4, 3)
    ref = RelaxedOneHotCategorical(tau.unsqueeze(-1), logits=logits).log_prob(y)
    # torch's log_scale keeps the (B, 1) shape of its temperature; the diagonal is the per-row answer
    ref = ref.diagonal() if ref.dim() == 2 else ref
    torch.testing.assert_close(R.concrete_log_prob(y, logits, tau), ref, rtol=1e-12, atol=1e-10)


def test_binary_concrete_formula():  # notes §4 S3
    lam, a1, a2, x = 0.7, 1.3, -0.4, 0.3
    alpha = math.exp(a1 - a2)
    dens = lam * alpha * x ** (-lam - 1) * (1 - x) ** (-lam - 1) / (alpha * x ** (-lam) + (1 - x) ** (-lam)) ** 2
    ours = R.concrete_log_prob(torch.tensor([x, 1 - x], dtype=D64), torch.tensor([a1, a2], dtype=D64), lam)
    assert ours.item() == pytest.approx(math.log(dens), abs=1e-12)


# ------------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("tau", [0.5, 2 / 3, 1.0, 3.0])
def test_density_normalised_K2_on_simplex(tau):  # notes §4 S1, direct quadrature in x = y_1
    logits = torch.tensor([0.8, -0.3], dtype=D64)

    def dens(x):
        return math.exp(R.concrete_log_prob(torch.tensor([x, 1 - x], dtype=D64), logits, tau).item())

    total, _ = integrate.quad(dens, 0, 1, limit=200, epsabs=1e-10)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_density_normalised_K2_small_tau_logit_coordinate():  # notes §4 S1 at tau = 0.1: dx = x (1 - x) du
    tau = 0.1
    logits = torch.tensor([0.8, -0.3], dtype=D64)
    u = torch.linspace(-40 / tau, 40 / tau, 160001, dtype=D64)
    y = torch.stack([torch.sigmoid(u), torch.sigmoid(-u)], -1)
    f = torch.exp(R.concrete_log_prob(y, logits, tau)) * y[:, 0] * y[:, 1]
    assert torch.trapezoid(f, u).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_density_normalised_K3(tau):  # notes §4 S2, on a fine grid in logit coordinates
    # y = softmax(u1, u2, 0) maps R^2 onto the open 2-simplex with |d(y1, y2)/d(u1, u2)| = y1 y2 y3
    logits = torch.tensor([0.7, -0.4, 0.2], dtype=D64)
    L, n = 40.0 / tau, 1201
    u = torch.linspace(-L, L, n, dtype=D64)
    u1, u2 = torch.meshgrid(u, u, indexing="ij")
    y = torch.softmax(torch.stack([u1, u2, torch.zeros_like(u1)], -1), -1)
    f = torch.exp(R.concrete_log_prob(y, logits, tau)) * y.prod(-1)
    total = torch.trapezoid(torch.trapezoid(f, u, dim=-1), u).item()
    assert total == pytest.approx(1.0, abs=1e-3)
    # a Jacobian over K-1 coordinates instead of all K (the measure subtlety of notes §1.6) would not normalise
    wrong = torch.exp(R.concrete_log_prob(y, logits, tau) + torch.log(y[..., -1])) * y.prod(-1)
    assert abs(torch.trapezoid(torch.trapezoid(wrong, u, dim=-1), u).item() - 1) > 0.05


# ------------------------------------------------------------------------------------------------ float32, small tau


def test_log_space_finite_float32_small_tau_where_torch_is_not():  # notes §1.15 and §4 S17
    logits = (torch.rand(2000, 10, generator=gen(0)) * 100 - 50).float()
    logits[0] = torch.tensor([50.0, -50.0] * 5)
    tau = 0.01
    log_y = R.exp_concrete_sample(logits, tau, generator=gen(1))
    assert log_y.dtype == torch.float32 and torch.isfinite(log_y).all()
    lp = R.exp_concrete_log_prob(log_y, logits, tau)
    assert torch.isfinite(lp).all()
    # under another distribution's logits too (the relaxed-KL log ratio needs both)
    other = (torch.rand(2000, 10, generator=gen(2)) * 100 - 50).float()
    assert torch.isfinite(R.exp_concrete_log_prob(log_y, other, tau)).all()
    kl = R.relaxed_kl(logits[:50], other[:50], tau, num_samples=20, generator=gen(3))
    assert torch.isfinite(kl).all()
    # documentation: torch's simplex-space density of its own samples is not finite here
    torch.manual_seed(0)
    d = RelaxedOneHotCategorical(torch.tensor(tau), logits=logits, validate_args=False)
    y = d.rsample()
    assert (y == 0).any(-1).float().mean() > 0.9  # samples underflow to exact zeros
    assert (~torch.isfinite(d.log_prob(y))).float().mean() > 0.9
    with pytest.raises(ValueError):  # default validation rejects its own samples
        RelaxedOneHotCategorical(torch.tensor(tau), logits=logits).log_prob(y)
    with pytest.raises(ValueError, match="exp_concrete"):  # ours says what to do instead
        R.concrete_log_prob(y, logits, tau)


def test_torch_limitations_documented():  # notes §1.15, §4 S16
    logits = torch.tensor([1.0, 0.0, -1.0])
    a = RelaxedOneHotCategorical(torch.tensor(0.5), logits=logits)
    b = RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.zeros(3))
    with pytest.raises(NotImplementedError):
        kl_divergence(a, b)
    with pytest.raises(TypeError):  # a float temperature breaks torch's log_prob ...
        RelaxedOneHotCategorical(0.5, logits=logits).log_prob(a.sample())
    assert torch.isfinite(R.Concrete(0.5, logits=logits).log_prob(a.sample()))  # ... not ours


# ------------------------------------------------------------------------------------------------ sampling


def test_sample_gumbel_moments_and_reproducibility():
    n = 200_000
    g = R.sample_gumbel((n,), generator=gen(0), dtype=D64)
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772156649) < 4 * math.sqrt(math.pi**2 / 6 / n)
    assert g.var().item() == pytest.approx(math.pi**2 / 6, rel=0.02)
    assert torch.equal(R.sample_gumbel((5, 3), generator=gen(7)), R.sample_gumbel((5, 3), generator=gen(7)))
    g32 = R.sample_gumbel((10**6,), generator=gen(1), dtype=torch.float32)
    assert g32.dtype == torch.float32 and torch.isfinite(g32).all()


def test_sample_gumbel_extreme_uniforms(monkeypatch):
    # U = 0 (probability 2^-24 per draw in float32) and U just below 1 must still give finite noise
    for dtype in (torch.float32, D64):
        extremes = torch.tensor([0.0, torch.finfo(dtype).tiny, 0.5, 1.0 - torch.finfo(dtype).eps / 2, 1.0], dtype=dtype)
        monkeypatch.setattr(torch, "rand", lambda shape, **kw: extremes.clone())
        g = R.sample_gumbel((5,), dtype=dtype)
        monkeypatch.undo()
        assert torch.isfinite(g).all(), g
        assert g[2].item() == pytest.approx(-math.log(math.log(2)))


def test_gumbel_max_frequencies_match_softmax():
    n = 200_000
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, -3.0], dtype=D64)
    z = R.gumbel_max(logits.expand(n, 5), generator=gen(0))
    assert set(z.unique().tolist()) == {0.0, 1.0} and (z.sum(-1) == 1).all()
    freq = z.mean(0)
    pi = torch.softmax(logits, -1)
    se = torch.sqrt(pi * (1 - pi) / n)
    assert ((freq - pi).abs() < 4 * se).all(), (freq, pi)
    idx = R.gumbel_max(logits.expand(n, 5), generator=gen(0), return_index=True)
    assert torch.equal(F.one_hot(idx, 5).to(D64), z)


def test_gumbel_softmax_on_simplex_and_formula():
    logits = torch.randn(64, 7, generator=gen(0)) * 3
    for dtype in (torch.float32, D64):
        for tau in (0.1, 1.0, 5.0, torch.linspace(0.1, 3, 64)):
            y = R.gumbel_softmax(logits.to(dtype), tau, generator=gen(1))
            assert y.shape == (64, 7) and y.dtype == dtype
            assert (y >= 0).all()
            torch.testing.assert_close(y.sum(-1), torch.ones(64, dtype=dtype))
    g = R.sample_gumbel((64, 7), generator=gen(2))
    y = R.gumbel_softmax(logits, 0.7, gumbel=g)
    torch.testing.assert_close(y, torch.softmax((logits + g) / 0.7, -1), rtol=0, atol=0)
    torch.testing.assert_close(R.exp_concrete_sample(logits, 0.7, gumbel=g).exp(), y)
    # noise broadcast over a leading sample dimension
    assert R.gumbel_softmax(logits[0], 0.7, gumbel=g).shape == (64, 7)


def test_small_tau_approaches_gumbel_max_with_same_noise():
    K = 6
    logits = torch.randn(5000, K, dtype=D64, generator=gen(0))
    g = R.sample_gumbel(logits.shape, generator=gen(1), dtype=D64)
    z = R.gumbel_max(logits, gumbel=g)
    top2 = (logits + g).topk(2, -1).values
    gap = top2[:, 0] - top2[:, 1]
    prev = None
    for tau in (1.0, 0.1, 0.01, 0.001):
        err = (R.gumbel_softmax(logits, tau, gumbel=g) - z).abs().amax(-1)
        # |y - one_hot| <= (K-1) exp(-gap / tau): a deterministic bound
        assert (err <= (K - 1) * torch.exp(-gap / tau) + 1e-12).all()
        if prev is not None:
            assert err.mean() < prev
        prev = err.mean()
    assert (err < 1e-6).float().mean() > 0.97  # all but the ~1% of draws with a gap < 0.015


def test_straight_through_exact_one_hot_and_soft_gradient():
    logits = (torch.randn(500, 10, generator=gen(0)) * 2).requires_grad_()
    tau = torch.tensor(0.7, requires_grad=True)
    g = R.sample_gumbel(logits.shape, generator=gen(1))
    hard = R.gumbel_softmax(logits, tau, hard=True, gumbel=g)
    assert ((hard == 0.0) | (hard == 1.0)).all()
    assert (hard.sum(-1) == 1.0).all() and (hard.max(-1).values == 1.0).all()
    assert torch.equal(hard, R.gumbel_max(logits, gumbel=g))
    w = torch.randn(500, 10, generator=gen(2))
    gh = torch.autograd.grad((hard * w).sum(), (logits, tau))
    soft = R.gumbel_softmax(logits, tau, gumbel=g)
    gs = torch.autograd.grad((soft * w).sum(), (logits, tau))
    assert torch.equal(gh[0], gs[0]) and torch.equal(gh[1], gs[1])
    assert gh[0].abs().sum() > 0
    # same forward values and gradients as the textbook formula
    naive = F.one_hot(soft.argmax(-1), 10).to(soft.dtype) - soft.detach() + soft
    assert torch.equal(naive.detach(), hard.detach())


# ------------------------------------------------------------------------------------------------ relaxed KL


def test_relaxed_kl_zero_when_q_equals_p():
    logits = torch.randn(3, 8, generator=gen(0)) * 2
    kl, se = R.relaxed_kl(logits, logits, 0.3, return_stderr=True, num_samples=100, generator=gen(1))
    assert torch.equal(kl, torch.zeros(3)) and torch.equal(se, torch.zeros(3))
    assert torch.equal(R.relaxed_kl(logits, logits + 5.0, 0.3, 0.3, num_samples=10).abs() < 1e-4, torch.ones(3, dtype=bool))
    assert R.relaxed_kl_equal_tau_exact(logits, logits).abs().max() < 1e-12


def test_relaxed_kl_tau_invariance_and_exact():  # notes §1.14(i)-(ii), §4 S4-S6
    q = torch.tensor([2.0, 0.0, -1.0, 0.5], dtype=D64)
    p = torch.zeros(4, dtype=D64)
    n = 100_000
    m1, s1 = R.relaxed_kl(q, p, 0.5, num_samples=n, generator=gen(0), return_stderr=True)
    m2, s2 = R.relaxed_kl(q, p, 2.0, num_samples=n, generator=gen(1), return_stderr=True)
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2)
    exact = R.relaxed_kl_equal_tau_exact(q, p)
    assert abs(m1 - exact) < 4 * s1 and abs(m2 - exact) < 4 * s2
    assert exact.item() == pytest.approx(1.6179, abs=1e-4)  # notes §1.14(vi): MC 1.62
    # stronger: with common noise the estimate is the same function of the noise at every tau (pathwise invariance)
    a = R.relaxed_kl(q, p, 0.1, num_samples=1000, generator=gen(5))
    b = R.relaxed_kl(q, p, 5.0, num_samples=1000, generator=gen(5))
    assert abs(a - b) < 1e-9


def test_relaxed_kl_K2_exact_value():  # notes §1.14(iv), §4 S5
    q, p = torch.tensor([1.5, 0.0], dtype=D64), torch.tensor([-0.5, 0.0], dtype=D64)
    assert R.relaxed_kl_equal_tau_exact(q, p).item() == pytest.approx(0.62607057, abs=1e-8)
    m, s = R.relaxed_kl(q, p, 0.5, num_samples=200_000, generator=gen(0), return_stderr=True)
    assert abs(m.item() - 0.62607) < 0.005 and abs(m.item() - 0.62607) < 4 * s.item()
    for delta in (0.01, 0.3, 1.0, 4.0, 20.0):
        val = R.relaxed_kl_equal_tau_exact(torch.tensor([delta, 0.0], dtype=D64), torch.zeros(2, dtype=D64)).item()
        assert val == pytest.approx(delta / math.tanh(delta / 2) - 2, rel=1e-10, abs=1e-14)
    small = R.relaxed_kl_equal_tau_exact(torch.tensor([1e-3, 0.0], dtype=D64), torch.zeros(2, dtype=D64)).item()
    assert small == pytest.approx(1e-6 / 6, rel=1e-5)


def _hermite_genocchi_kl(q, p):  # notes §1.14(iii), in 50-digit arithmetic
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    d = [mpmath.mpf(x) for x in (torch.log_softmax(q, -1) - torch.log_softmax(p, -1)).tolist()]
    a = [mpmath.exp(-x) for x in d]
    K = len(a)
    s = mpmath.mpf(0)
    for i in range(K):
        den = mpmath.mpf(1)
        for j in range(K):
            if j != i:
                den *= a[i] - a[j]
        s += a[i] ** (K - 1) * mpmath.log(a[i]) / den
    return float(sum(d) + K * (s - sum(mpmath.mpf(1) / m for m in range(1, K))))


@pytest.mark.parametrize("K", [3, 5, 8, 30])
def test_exact_kl_matches_closed_form_and_mc(K):  # notes §4 S6
    q = torch.randn(K, dtype=D64, generator=gen(10 + K)) * 1.5
    p = torch.randn(K, dtype=D64, generator=gen(20 + K)) * 1.5
    exact = R.relaxed_kl_equal_tau_exact(q, p).item()
    assert exact == pytest.approx(_hermite_genocchi_kl(q, p), rel=1e-10)
    m, s = R.relaxed_kl(q, p, 0.7, num_samples=50_000, generator=gen(K), return_stderr=True)
    assert abs(m.item() - exact) < 4 * s.item()


def test_exact_kl_batched_float32_and_extreme_logits():
    q = (torch.rand(200, 10, generator=gen(0)) * 100 - 50).float()
    p = (torch.rand(200, 10, generator=gen(1)) * 100 - 50).float()
    out = R.relaxed_kl_equal_tau_exact(q, p)
    assert out.shape == (200,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = torch.stack([R.relaxed_kl_equal_tau_exact(q[i].double(), p[i].double()) for i in range(0, 200, 40)])
    torch.testing.assert_close(out[::40].double(), ref, rtol=1e-6, atol=1e-6)
    # broadcasting a single prior against a batch
    out2 = R.relaxed_kl_equal_tau_exact(q.double(), torch.zeros(10, dtype=D64))
    assert out2.shape == (200,)


def test_exact_kl_gradient():
    q = torch.randn(2, 4, dtype=D64, generator=gen(0)).requires_grad_()
    p = torch.randn(4, dtype=D64, generator=gen(1)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: R.relaxed_kl_equal_tau_exact(a, b), (q, p))


def test_kl_chain_categorical_relaxed_bounds():  # notes §1.14(v), §4 S7
    for trial in range(20):
        K = [2, 3, 5, 10][trial % 4]
        q = torch.randn(K, dtype=D64, generator=gen(100 + trial)) * 2
        p = torch.randn(K, dtype=D64, generator=gen(200 + trial)) * 2
        d = torch.log_softmax(q, -1) - torch.log_softmax(p, -1)
        cat = kl_categorical(q, p).item()
        rel = R.relaxed_kl_equal_tau_exact(q, p).item()
        am_gm = R.recab(q, p).item()  # ReCAB* of notes §3.2
        assert am_gm == pytest.approx((d.sum() + K * (torch.logsumexp(-d, -1) - math.log(K))).item(), rel=1e-12)
        gumbel_sum = (torch.exp(-d) + d - 1).sum().item()
        assert cat <= rel + 1e-12 <= am_gm + 2e-12 <= gumbel_sum + 3e-12, (trial, cat, rel, am_gm, gumbel_sum)
    # notes §1.14(v): K = 10, uniform prior, one logit raised by 2 -> 0.408 <= 1.055 <= 1.096 <= 2.03
    q = torch.zeros(10, dtype=D64)
    q[0] = 2.0
    assert kl_categorical(q, torch.zeros(10, dtype=D64)).item() == pytest.approx(0.408, abs=1e-3)
    assert R.relaxed_kl_equal_tau_exact(q, torch.zeros(10, dtype=D64)).item() == pytest.approx(1.055, abs=1e-3)
    m, s = R.relaxed_kl(q, torch.zeros(10, dtype=D64), 0.5, num_samples=20_000, generator=gen(0), return_stderr=True)
    assert m.item() > kl_categorical(q, torch.zeros(10, dtype=D64)).item() + 10 * s.item()


def test_unequal_temperatures_differ():  # notes §1.14(vi), §4 S8
    q = torch.tensor([2.0, 0.0, -1.0, 0.5], dtype=D64)
    p = torch.zeros(4, dtype=D64)
    exact = R.relaxed_kl_equal_tau_exact(q, p).item()
    n = 100_000
    expected = {(0.5, 0.5): 1.62, (2 / 3, 0.5): 1.19, (0.5, 2 / 3): 2.68, (1.0, 0.5): 1.32, (0.1, 0.5): 23.5}
    for (tq, tp), val in expected.items():
        m, s = R.relaxed_kl(q, p, tq, tp, num_samples=n, generator=gen(1), return_stderr=True)
        assert abs(m.item() - val) < 4 * s.item() + 0.005 * val, (tq, tp, m, s)
        if tq != tp:
            assert abs(m.item() - exact) > 10 * s.item()
    # the equal-tau AM/GM bound (1.94) fails for tau_q = 0.5, tau_p = 2/3
    m, s = R.relaxed_kl(q, p, 0.5, 2 / 3, num_samples=n, generator=gen(2), return_stderr=True)
    assert m.item() - 4 * s.item() > 1.94


def test_relaxed_kl_shapes_chunks_and_gradient():
    q = torch.randn(5, 3, 4, generator=gen(0))
    p = torch.zeros(4)
    tau = torch.tensor([0.3, 0.6, 1.0])  # batch shape (3,) broadcasts against (5, 3)
    m, s = R.relaxed_kl(q, p, tau, 2.0, num_samples=64, generator=gen(1), return_stderr=True)
    assert m.shape == (5, 3) and s.shape == (5, 3) and (s > 0).all()
    # chunked accumulation (Chan's update) gives the same mean and standard error as one chunk
    m1, s1 = R.relaxed_kl(q, p, tau, 2.0, num_samples=64, generator=gen(1), return_stderr=True, chunk_size=7)
    torch.testing.assert_close(m1, m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s, rtol=1e-4, atol=1e-6)
    ql = q.clone().requires_grad_()
    R.relaxed_kl(ql, p, 0.5, num_samples=4).sum().backward()
    assert torch.isfinite(ql.grad).all() and ql.grad.abs().sum() > 0


def test_recab_properties():  # notes §3.2
    z10 = torch.zeros(10, dtype=D64)
    for gap, bound, mc in ((0.5, 0.0986, 0.0912), (2.0, 1.096, 1.055), (5.0, 3.954, 3.900)):  # tightness table
        q = z10.clone()
        q[0] = gap
        assert R.recab(q, z10).item() == pytest.approx(bound, abs=6e-4)
        assert R.recab(q, z10).item() > R.relaxed_kl_equal_tau_exact(q, z10).item() == pytest.approx(mc, abs=4e-3)
    q = torch.randn(50, 6, dtype=D64, generator=gen(0)) * 2
    p = torch.randn(50, 6, dtype=D64, generator=gen(1)) * 2
    b = R.recab(q, p)
    assert (b >= 0).all() and not torch.allclose(b, R.recab(p, q))  # >= 0, not symmetric
    torch.testing.assert_close(R.recab(q + 3.0, p - 1.0), b)  # shift-invariant
    assert torch.equal(R.recab(q, q), torch.zeros(50, dtype=D64))  # exactly 0 at equality, float32 too
    assert torch.equal(R.recab(q.float(), q.float()), torch.zeros(50))
    for delta in (1e-4, 0.5, 3.0, 30.0):  # K = 2: 2 log cosh(delta / 2)
        val = R.recab(torch.tensor([delta, 0.0], dtype=D64), torch.zeros(2, dtype=D64)).item()
        assert val == pytest.approx(2 * math.log(math.cosh(delta / 2)), rel=1e-9)
    # near equality in float32 the expm1 form keeps ~1e-3 relative accuracy (a plain logsumexp form loses all digits)
    q32 = torch.randn(1000, 10, generator=gen(3))
    p32 = q32 + 1e-3 * torch.randn(1000, 10, generator=gen(4))
    ref = R.recab(q32.double(), p32.double())
    assert ((R.recab(q32, p32).double() - ref).abs() / ref).max() < 1e-2
    big = (torch.rand(20, 10, generator=gen(2)) * 100 - 50).float()  # logits in [-50, 50], float32
    assert torch.isfinite(R.recab(big, big.flip(0))).all()
    qg = q.clone().requires_grad_()
    R.recab(qg, p).sum().backward()
    assert torch.isfinite(qg.grad).all()
    assert R.recab(q, p, tau_q=0.5, tau_p=0.5).equal(b)
    with pytest.raises(ValueError, match="equal temperatures"):  # notes §4 S8: refuse unequal temperatures
        R.recab(q, p, tau_q=0.5, tau_p=2 / 3)
    from vaebook import divergences
    assert divergences.recab is R.recab


# ------------------------------------------------------------------------------------------------ distributions


def test_distribution_classes():
    logits = torch.randn(4, 5, dtype=D64, generator=gen(0))
    e = R.ExpConcrete(0.4, logits=logits)
    assert e.batch_shape == (4,) and e.event_shape == (5,)
    Y = e.rsample((3,))
    assert Y.shape == (3, 4, 5) and e.support.check(Y).all()
    assert not e.support.check(Y + 1.0).any()
    torch.testing.assert_close(e.log_prob(Y), R.exp_concrete_log_prob(Y, logits, 0.4))
    c = R.Concrete(0.4, probs=torch.softmax(logits, -1))
    y = c.rsample((2,))
    assert y.shape == (2, 4, 5) and torch.allclose(y.sum(-1), torch.ones(2, 4, dtype=D64))
    torch.testing.assert_close(c.log_prob(y), R.concrete_log_prob(y, logits, 0.4))
    assert e.expand((2, 4)).batch_shape == (2, 4) and c.expand((2, 4)).rsample().shape == (2, 4, 5)
    prior = R.ExpConcrete(0.4, logits=torch.zeros(5, dtype=D64))
    torch.testing.assert_close(kl_divergence(e, prior), R.relaxed_kl_equal_tau_exact(logits, torch.zeros(5, dtype=D64)))
    torch.testing.assert_close(kl_divergence(c, R.Concrete(0.4, logits=torch.zeros(5, dtype=D64))), kl_divergence(e, prior))
    with pytest.raises(NotImplementedError, match="relaxed_kl"):
        kl_divergence(e, R.ExpConcrete(0.5, logits=torch.zeros(5, dtype=D64)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        R.ExpConcrete(0.0, logits=logits)
    with pytest.raises(ValueError, match="value"):
        e.log_prob(Y + 1.0)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.5, 0.0])])
def test_bad_tau(bad):
    logits = torch.zeros(2, 3)
    for fn in (lambda: R.gumbel_softmax(logits, bad), lambda: R.exp_concrete_sample(logits, bad),
               lambda: R.exp_concrete_log_prob(torch.log_softmax(logits, -1), logits, bad),
               lambda: R.concrete_log_prob(torch.full((2, 3), 1 / 3), logits, bad)):
        with pytest.raises(ValueError, match=r"tau must be > 0.*0 < tau < inf"):
            fn()
    with pytest.raises(ValueError, match="tau_p must be > 0"):
        R.relaxed_kl(logits, logits, 1.0, bad)


def test_bad_logits_and_values():
    nan_logits = torch.tensor([0.0, float("nan"), 1.0])
    for fn in (lambda: R.gumbel_softmax(nan_logits, 1.0), lambda: R.gumbel_max(nan_logits),
               lambda: R.concrete_log_prob(torch.full((3,), 1 / 3), nan_logits, 1.0)):
        with pytest.raises(ValueError, match="logits contains NaN"):
            fn()
    with pytest.raises(ValueError, match="q_logits contains NaN"):
        R.relaxed_kl(nan_logits, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        R.gumbel_softmax(torch.zeros(4, 1), 1.0)
    with pytest.raises(ValueError, match="logits must be finite"):
        R.exp_concrete_log_prob(torch.full((3,), -math.log(3)), torch.tensor([0.0, -math.inf, 1.0]), 1.0)
    logits = torch.zeros(3, dtype=D64)
    for y, msg in ((torch.tensor([0.5, 0.6, -0.1], dtype=D64), ">= 0"), (torch.tensor([0.5, 0.4, 0.2], dtype=D64), "sum to 1"),
                   (torch.tensor([0.5, float("nan"), 0.5], dtype=D64), "NaN"), (torch.tensor([0.5, 0.5, 0.0], dtype=D64), "boundary")):
        with pytest.raises(ValueError, match=rf"^y .*{msg}|^y contains {msg}|^y has .*{msg}"):
            R.concrete_log_prob(y, logits, 1.0)
    with pytest.raises(ValueError, match="log_y must be the log of a point on the simplex"):
        R.exp_concrete_log_prob(torch.zeros(3), torch.zeros(3), 1.0)
    # masked categories: -inf logits are fine for sampling and never chosen
    z = R.gumbel_max(torch.tensor([0.0, -math.inf, 0.0]).expand(1000, 3), generator=gen(0))
    assert z[:, 1].sum() == 0


def test_exact_relaxed_kl_empty_batch_is_named():
    for q, p, name in ((torch.zeros(0, 3), torch.zeros(0, 3), "q_logits"),
                       (torch.zeros(3), torch.zeros(2, 0, 3), "p_logits")):
        with pytest.raises(ValueError, match=rf"^{name} has an empty batch .*every batch dimension >= 1"):
            R.relaxed_kl_equal_tau_exact(q, p)


# ------------------------------------------------------------------------------------------------ schedules


def test_tau_schedule_values():  # notes §1.10 table and §4 S15
    table = {1e-5: [1.0, 0.990, 0.951, 0.905, 0.819, 0.607, 0.5], 3e-5: [1.0, 0.970, 0.861, 0.741, 0.549, 0.5, 0.5],
             1e-4: [1.0, 0.905, 0.607, 0.5, 0.5, 0.5, 0.5]}
    steps = [0, 1000, 5000, 10_000, 20_000, 50_000, 100_000]
    for rate, row in table.items():
        got = [round(R.tau_schedule(t, rate=rate, every=1), 3) for t in steps]
        assert got == row, (rate, got)
    # floor reached at t = 69 315 for r = 1e-5 (unquantised)
    assert R.tau_schedule(69_314, rate=1e-5, every=1) > 0.5 and R.tau_schedule(69_315, rate=1e-5, every=1) == 0.5
    # piecewise constant between updates every N steps
    assert R.tau_schedule(0, rate=1e-4) == R.tau_schedule(999, rate=1e-4) == 1.0
    assert R.tau_schedule(1000, rate=1e-4) == R.tau_schedule(1999, rate=1e-4) == pytest.approx(math.exp(-0.1))
    assert R.tau_schedule(2500, rate=3e-5, every=2000) == pytest.approx(math.exp(-0.06))
    assert R.tau_schedule(10**7, tau0=2.0, tau_min=0.3) == 0.3
    assert R.constant_tau_schedule(12345, 0.7) == 0.7
    for kwargs in ({"step": -1}, {"step": 1, "tau_min": 0.0}, {"step": 1, "every": 0}, {"step": 1, "rate": -1.0}):
        with pytest.raises(ValueError):
            R.tau_schedule(**kwargs)
    with pytest.raises(ValueError, match="tau must be > 0"):
        R.constant_tau_schedule(0, 0.0)
