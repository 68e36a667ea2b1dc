"""Property-based tests (hypothesis) for the core public functions of vaebook.

At extreme but valid inputs (logits in [-50, 50], temperatures in [0.01, 100], variances in [1e-6, 1e6], K from 2 to
1000, broadcasting batch shapes, float32 and float64) results are finite and satisfy each function's invariants
(KL >= 0 and = 0 at equality, bounds >= what they bound, samples on their support, densities equal to torch's where
torch has them); at invalid inputs a ``ValueError`` naming the argument is raised. Closed forms and custom backward
passes are checked with ``torch.autograd.gradcheck`` in float64.

Every test is ``derandomize=True`` so CI is reproducible. The number of examples tried per function is counted in
``COUNTS`` and printed at the end of the module (``-rA`` not needed: it goes through the terminal reporter).
"""
from __future__ import annotations

import collections
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.distributions import (Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal,
                                 RelaxedOneHotCategorical, kl_divergence)
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from vaebook import divergences as dv
from vaebook import relaxed as rl
from vaebook.distributions import IGR, IGRStickBreaking, igr_kl_mc
from vaebook.metrics import iwae_bound
from vaebook.mixtures import kl_gmm
from vaebook.svgd import ksd, svgd_direction, svgd_direction_dense

COUNTS: collections.Counter = collections.Counter()


def _count(name: str) -> None:
    COUNTS[name] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    lines = [f"  {k:<40s} {v:5d}" for k, v in sorted(COUNTS.items())]
    text = "\ncases tried per function (test_properties.py):\n" + "\n".join(lines)
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print(text)
    else:  # pragma: no cover
        print(text)


def cfg(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.integers(0, 2**31 - 1)
# batch shapes that broadcast against each other: (), (3,), (2, 1), (1, 3) ...
BATCHES = st.sampled_from([(), (1,), (3,), (2, 1), (1, 3), (2, 3)])
Ks = st.one_of(st.integers(2, 6), st.sampled_from([10, 100, 1000]))


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _tensor(draw, shape, lo, hi, dtype, seed=None):
    """A tensor of ``shape`` with entries in [lo, hi]: uniform, at the ends, or mixed (hypothesis picks the mode)."""
    mode = draw(st.sampled_from(["uniform", "ends", "mixed", "const", "one_hot"]))
    g = torch.Generator().manual_seed(draw(SEEDS) if seed is None else seed)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if mode == "uniform":
        t = lo + (hi - lo) * u
    elif mode == "ends":
        t = torch.where(u < 0.5, torch.full_like(u, lo), torch.full_like(u, hi))
    elif mode == "mixed":
        e = torch.where(u < 0.5, torch.full_like(u, lo), torch.full_like(u, hi))
        t = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, e, lo + (hi - lo) * u)
    elif mode == "const":
        t = torch.full_like(u, draw(st.floats(lo, hi)))
    else:  # one entry per row at hi, the rest at lo (a near-deterministic categorical)
        t = torch.full_like(u, lo)
        if len(shape):
            t[..., 0] = hi
    return t.to(dtype)


@st.composite
def logits_pair(draw, lo=-50.0, hi=50.0, ks=Ks):
    dtype = draw(DTYPES)
    K = draw(ks)
    bq, bp = draw(BATCHES), draw(BATCHES)
    q = _tensor(draw, (*bq, K), lo, hi, dtype)
    p = _tensor(draw, (*bp, K), lo, hi, dtype)
    return q, p


# ==================================================================================================================
# (1) vaebook.divergences
# ==================================================================================================================

LOGVAR = math.log(1e6)  # variances from 1e-6 to 1e6


@st.composite
def normal_args(draw):
    dtype = draw(DTYPES)
    D = draw(st.integers(1, 8))
    bq, bp = draw(BATCHES), draw(BATCHES)
    qm = _tensor(draw, (*bq, D), -100.0, 100.0, dtype)
    qv = _tensor(draw, (*bq, D), -LOGVAR, LOGVAR, dtype)
    pm = _tensor(draw, (*bp, D), -100.0, 100.0, dtype)
    pv = _tensor(draw, (*bp, D), -LOGVAR, LOGVAR, dtype)
    return qm, qv, pm, pv


@cfg(150)
@given(normal_args())
def test_kl_normal_diag_finite_nonnegative_matches_torch(args):
    _count("kl_normal_diag")
    qm, qv, pm, pv = args
    kl = dv.kl_normal_diag(qm, qv, pm, pv)
    assert kl.dtype == qm.dtype
    assert kl.shape == torch.broadcast_shapes(qm.shape, pm.shape)[:-1]
    assert _finite(kl) and bool((kl >= 0).all())
    # torch's closed form, in float64 (where it is accurate)
    ref = kl_divergence(Independent(Normal(qm.double(), (0.5 * qv.double()).exp()), 1),
                        Independent(Normal(pm.double(), (0.5 * pv.double()).exp()), 1))
    tol = 1e-4 if qm.dtype == torch.float32 else 1e-9
    torch.testing.assert_close(kl.double(), ref, rtol=tol, atol=tol)
    # = 0 at equality (exactly: expm1 / Taylor series, no cancellation)
    assert bool((dv.kl_normal_diag(qm, qv, qm, qv) == 0).all())


@cfg(30)
@given(st.sampled_from(["q_mean", "q_logvar", "p_mean", "p_logvar"]), st.sampled_from([math.nan, math.inf, -math.inf]),
       DTYPES)
def test_kl_normal_diag_invalid(name, bad, dtype):
    _count("kl_normal_diag")
    args = {n: torch.zeros(3, dtype=dtype) for n in ("q_mean", "q_logvar", "p_mean", "p_logvar")}
    args[name][1] = bad
    with pytest.raises(ValueError, match=name):
        dv.kl_normal_diag(**args)


def test_kl_normal_diag_invalid_shapes():
    _count("kl_normal_diag")
    with pytest.raises(ValueError, match="q_mean"):
        dv.kl_normal_diag(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="broadcast"):
        dv.kl_normal_diag(torch.zeros(3), torch.zeros(4))


@st.composite
def spd(draw, D, batch, dtype, log_range=LOGVAR):
    """A random SPD matrix with eigenvalues in [1e-6, 1e6] (random rotation)."""
    g = torch.Generator().manual_seed(draw(SEEDS))
    q, _ = torch.linalg.qr(torch.randn(*batch, D, D, generator=g, dtype=torch.float64))
    lo = draw(st.floats(-log_range, log_range))
    spread = draw(st.floats(0.0, 6.0))  # condition number up to e^6 (float32 Cholesky stays accurate)
    ev = torch.exp(lo + spread * torch.rand(*batch, D, generator=g, dtype=torch.float64)).clamp(1e-6, 1e6)
    c = q @ torch.diag_embed(ev) @ q.transpose(-1, -2)
    return (0.5 * (c + c.transpose(-1, -2))).to(dtype)


@st.composite
def mvn_args(draw):
    dtype = draw(DTYPES)
    D = draw(st.integers(1, 5))
    bq, bp = draw(BATCHES), draw(BATCHES)
    qm = _tensor(draw, (*bq, D), -10.0, 10.0, dtype)
    pm = _tensor(draw, (*bp, D), -10.0, 10.0, dtype)
    qc = draw(spd(D, bq, dtype))
    pc = draw(spd(D, bp, dtype))
    return qm, qc, pm, pc


@cfg(120)
@given(mvn_args())
def test_kl_mvn_finite_nonnegative_matches_torch(args):
    _count("kl_mvn")
    qm, qc, pm, pc = args
    kl = dv.kl_mvn(qm, qc, pm, pc)
    assert kl.shape == torch.broadcast_shapes(qm.shape[:-1], qc.shape[:-2], pm.shape[:-1], pc.shape[:-2])
    assert _finite(kl)
    ref = kl_divergence(MultivariateNormal(qm.double(), qc.double()), MultivariateNormal(pm.double(), pc.double()))
    # float32: the trace / log-det terms are each ~D * log(cond); absolute error relative to their size
    scale = 1.0 + ref.abs()
    tol = 1e-3 if qm.dtype == torch.float32 else 1e-7
    assert bool(((kl.double() - ref).abs() <= tol * scale * qm.shape[-1]).all()), (kl, ref)
    assert bool((kl >= 0).all()), kl
    # = 0 at equality, up to rounding of the Cholesky factor
    z = dv.kl_mvn(qm, qc, qm, qc)
    assert bool((z >= 0).all()) and bool((z <= (1e-4 if qm.dtype == torch.float32 else 1e-10) * qm.shape[-1]).all()), z


@cfg(20)
@given(st.sampled_from(["q_cov", "p_cov"]), st.sampled_from(["neg", "nan", "shape", "asym"]), DTYPES)
def test_kl_mvn_invalid(name, kind, dtype):
    _count("kl_mvn")
    args = {"q_mean": torch.zeros(2, dtype=dtype), "q_cov": torch.eye(2, dtype=dtype),
            "p_mean": torch.zeros(2, dtype=dtype), "p_cov": torch.eye(2, dtype=dtype)}
    if kind == "neg":
        args[name] = -torch.eye(2, dtype=dtype)
    elif kind == "nan":
        args[name] = torch.tensor([[1.0, math.nan], [math.nan, 1.0]], dtype=dtype)
    elif kind == "shape":
        args[name] = torch.eye(3, dtype=dtype)
    else:
        args[name] = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=dtype)
    with pytest.raises(ValueError, match=name):
        dv.kl_mvn(**args)


def test_kl_mvn_invalid_mean():
    _count("kl_mvn")
    with pytest.raises(ValueError, match="q_mean"):
        dv.kl_mvn(torch.tensor([0.0, math.nan]), torch.eye(2))
    with pytest.raises(ValueError, match="p_mean"):
        dv.kl_mvn(torch.zeros(2), torch.eye(2), torch.tensor([math.nan, 0.0]))
    with pytest.raises(ValueError, match="q_mean"):
        dv.kl_mvn(torch.tensor([math.inf, 0.0]), torch.eye(2))
    with pytest.raises(ValueError, match="q_cov"):
        dv.kl_mvn(torch.zeros(2), torch.tensor([[math.inf, 0.0], [0.0, 1.0]]))


@cfg(200)
@given(logits_pair())
def test_kl_categorical_finite_nonnegative_matches_torch(qp):
    _count("kl_categorical")
    q, p = qp
    kl = dv.kl_categorical(q, p)
    assert kl.shape == torch.broadcast_shapes(q.shape, p.shape)[:-1]
    assert _finite(kl) and bool((kl >= 0).all()), kl
    assert bool((dv.kl_categorical(q, q) == 0).all()) or bool((dv.kl_categorical(q, q).abs() < 1e-12).all())
    # invariant to a common shift of either argument
    torch.testing.assert_close(dv.kl_categorical(q + 3.0, p - 7.0), kl,
                               rtol=1e-4 if q.dtype == torch.float32 else 1e-9, atol=1e-3 if q.dtype == torch.float32 else 1e-9)
    ref = kl_divergence(Categorical(logits=q.double()), Categorical(logits=p.double()))
    if _finite(ref):
        torch.testing.assert_close(kl.double(), ref, rtol=1e-4 if q.dtype == torch.float32 else 1e-9,
                                   atol=1e-3 if q.dtype == torch.float32 else 1e-9)


@cfg(20)
@given(st.sampled_from(["q_logits", "p_logits"]), st.sampled_from(["nan", "+inf", "scalar", "K"]))
def test_kl_categorical_invalid(name, kind):
    _count("kl_categorical")
    args = {"q_logits": torch.zeros(3), "p_logits": torch.zeros(3)}
    if kind == "nan":
        args[name] = torch.tensor([0.0, math.nan, 1.0])
    elif kind == "+inf":
        args[name] = torch.tensor([0.0, math.inf, 1.0])
    elif kind == "scalar":
        args[name] = torch.tensor(0.0)
    else:
        args[name] = torch.zeros(4)
    with pytest.raises(ValueError, match=name if kind != "K" else "K"):
        dv.kl_categorical(**args)


@cfg(25)
@given(st.integers(1, 4), DTYPES, SEEDS)
def test_kl_mc_close_to_closed_form(D, dtype, seed):
    _count("kl_mc")
    g = torch.Generator().manual_seed(seed)
    qm, pm = torch.randn(D, generator=g, dtype=dtype), torch.randn(D, generator=g, dtype=dtype)
    qs, ps = torch.rand(D, generator=g, dtype=dtype) + 0.5, torch.rand(D, generator=g, dtype=dtype) + 0.5
    q, p = Independent(Normal(qm, qs), 1), Independent(Normal(pm, ps), 1)
    est, se = dv.kl_mc(q, p, num_samples=4000, generator=g, return_stderr=True)
    exact = dv.kl_normal_diag(qm, 2 * qs.log(), pm, 2 * ps.log())
    assert _finite(est) and _finite(se) and bool((se >= 0).all())
    assert bool(((est - exact).abs() <= 5 * se + 1e-6).all()), (est, exact, se)
    # at equality the log-ratio is exactly 0
    z, zse = dv.kl_mc(q, q, num_samples=10, generator=g, return_stderr=True)
    assert bool((z == 0).all()) and bool((zse == 0).all())


@pytest.mark.parametrize("n", [0, 1, -5, 2.5, True])
def test_kl_mc_invalid(n):
    _count("kl_mc")
    d = Normal(0.0, 1.0)
    with pytest.raises(ValueError, match="num_samples"):
        dv.kl_mc(d, d, num_samples=n)


def test_divergences_gradcheck():
    _count("gradcheck")
    g = torch.Generator().manual_seed(0)
    qm, qv, pm, pv = (torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(dv.kl_normal_diag, (qm, qv, pm, pv))
    # tiny |d| (Taylor branch) and the branch switch at |d| = 0.1
    qv2 = torch.tensor([1e-4, -0.05, 0.0999, 0.1001, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dv.kl_normal_diag(torch.zeros(5, dtype=torch.float64), v), (qv2,))
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def f(qm, a, pm, b):
        return dv.kl_mvn(qm, a @ a.T + torch.eye(3, dtype=a.dtype), pm, b @ b.T + torch.eye(3, dtype=b.dtype))

    assert torch.autograd.gradcheck(f, (qm[0].detach().requires_grad_(), a.requires_grad_(),
                                        pm[0].detach().requires_grad_(), b.requires_grad_()))
    ql = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    pl = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dv.kl_categorical, (ql, pl))


# ==================================================================================================================
# (2) vaebook.relaxed
# ==================================================================================================================

TAUS = st.one_of(st.sampled_from([0.01, 0.1, 1.0, 10.0, 100.0]), st.floats(0.01, 100.0))


@st.composite
def tau_for(draw, batch, dtype):
    """A float temperature or a tensor broadcastable to ``batch``."""
    if draw(st.booleans()) or not batch:
        return draw(TAUS)
    shape = batch[-1:] if draw(st.booleans()) else batch
    return torch.exp(_tensor(draw, shape, math.log(0.01), math.log(100.0), dtype))


@cfg(150)
@given(st.data(), st.booleans())
def test_gumbel_softmax_on_simplex(data, hard):
    _count("gumbel_softmax(hard)" if hard else "gumbel_softmax(soft)")
    dtype = data.draw(DTYPES)
    K = data.draw(Ks)
    batch = data.draw(BATCHES)
    logits = _tensor(data.draw, (*batch, K), -50.0, 50.0, dtype)
    tau = data.draw(tau_for(batch, dtype))
    gen = torch.Generator().manual_seed(data.draw(SEEDS))
    y = rl.gumbel_softmax(logits, tau, hard=hard, generator=gen)
    assert y.dtype == dtype and y.shape[-1] == K
    assert _finite(y) and bool((y >= 0).all()) and bool((y <= 1).all())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert bool(((y.sum(-1) - 1).abs() <= tol).all())
    if hard:
        assert bool(((y == 0) | (y == 1)).all()) and bool((y.sum(-1) == 1).all())
        # same noise: the hard sample is the one-hot of the soft sample's argmax and of gumbel_max
        g = rl.sample_gumbel(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        yh = rl.gumbel_softmax(logits, tau, hard=True, gumbel=g)
        torch.testing.assert_close(yh, rl.gumbel_max(logits.expand(y.shape), gumbel=g))


@cfg(20)
@given(st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf]), st.booleans())
def test_gumbel_softmax_invalid_tau(bad, as_tensor):
    _count("gumbel_softmax(invalid)")
    tau = torch.tensor([1.0, bad]) if as_tensor else bad
    with pytest.raises(ValueError, match="tau"):
        rl.gumbel_softmax(torch.zeros(2, 3), tau)


def test_gumbel_softmax_invalid_other():
    _count("gumbel_softmax(invalid)")
    with pytest.raises(ValueError, match="logits"):
        rl.gumbel_softmax(torch.tensor([0.0, math.nan]), 1.0)
    with pytest.raises(ValueError, match="logits"):
        rl.gumbel_softmax(torch.zeros(3, 1), 1.0)  # K = 1
    with pytest.raises(ValueError, match="tau"):
        rl.gumbel_softmax(torch.zeros(3, 4), torch.ones(2))  # tau does not broadcast to the batch (3,)
    with pytest.raises(ValueError, match="gumbel"):
        rl.gumbel_softmax(torch.zeros(3, 4), 1.0, gumbel=torch.zeros(3, 5))


@st.composite
def density_args(draw, max_k=50):
    dtype = torch.float64
    K = draw(st.integers(2, 6) | st.sampled_from([10, max_k]))
    batch = draw(BATCHES)
    logits = _tensor(draw, (*batch, K), -50.0, 50.0, dtype)
    tau = draw(TAUS)
    return logits, tau


@cfg(150)
@given(density_args(), SEEDS, DTYPES)
def test_concrete_log_prob_vs_torch(args, seed, dtype):
    _count("exp_concrete_log_prob")
    _count("concrete_log_prob")
    logits, tau = args
    gen = torch.Generator().manual_seed(seed)
    log_y = rl.exp_concrete_sample(logits.to(dtype), tau, generator=gen)
    assert _finite(log_y)
    lp = rl.exp_concrete_log_prob(log_y, logits.to(dtype), tau)
    assert _finite(lp), lp
    # log space ExpConcrete vs torch's, in float64 where torch is finite (renormalised: a float32 sample is on the
    # log-simplex only within float32 rounding)
    log_y = torch.log_softmax(log_y.double(), -1)
    ref = ExpRelaxedCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(log_y)
    mine = rl.exp_concrete_log_prob(log_y, logits, tau)
    ok = torch.isfinite(ref)
    scale = 1.0 + ref.abs()
    assert bool((((mine - ref).abs() <= 1e-8 * scale * logits.shape[-1]) | ~ok).all()), (mine, ref)
    # Concrete density on the simplex, where y has no exact zeros
    y = log_y.exp()
    y = y / y.sum(-1, keepdim=True)
    if bool((y > 0).all()):
        c = rl.concrete_log_prob(y, logits, tau)
        ref = RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(y)
        assert _finite(c)
        ok = torch.isfinite(ref)
        assert bool((((c - ref).abs() <= 1e-6 * (1.0 + ref.abs()) * logits.shape[-1]) | ~ok).all()), (c, ref)


@cfg(20)
@given(st.sampled_from(["nan", "inf", "notsimplex", "shape", "zero", "neg"]))
def test_concrete_log_prob_invalid(kind):
    _count("concrete_log_prob")
    _count("exp_concrete_log_prob")
    logits = torch.zeros(3)
    y = torch.full((3,), 1 / 3)
    if kind == "nan":
        y[0] = math.nan
    elif kind == "inf":
        y[0] = math.inf
    elif kind == "notsimplex":
        y = torch.full((3,), 0.5)
    elif kind == "shape":
        y = torch.full((4,), 0.25)
    elif kind == "zero":
        y = torch.tensor([0.0, 0.5, 0.5])
    else:
        y = torch.tensor([-0.5, 0.75, 0.75])
    with pytest.raises(ValueError, match="y"):
        rl.concrete_log_prob(y, logits, 1.0)
    with pytest.raises(ValueError, match="log_y"):
        rl.exp_concrete_log_prob(torch.log(y.clamp_min(0)) if kind not in ("nan", "notsimplex", "shape")
                                 else y, logits, 1.0)
    with pytest.raises(ValueError, match="tau"):
        rl.concrete_log_prob(torch.full((3,), 1 / 3), logits, -1.0)
    with pytest.raises(ValueError, match="tau"):
        rl.exp_concrete_log_prob(torch.full((3,), -math.log(3)), logits, 0.0)


@cfg(100)
@given(logits_pair(ks=st.integers(2, 6) | st.sampled_from([10, 100, 1000])))
def test_relaxed_bound_chain(qp):
    """kl_categorical <= relaxed KL (exact, equal tau) <= recab; all >= 0, = 0 at equality."""
    _count("relaxed_kl_equal_tau_exact")
    _count("recab")
    q, p = qp
    kc = dv.kl_categorical(q.double(), p.double())
    ex = rl.relaxed_kl_equal_tau_exact(q, p)
    rc = rl.recab(q, p)
    assert ex.dtype == q.dtype and rc.dtype == q.dtype
    assert _finite(ex) and _finite(rc)
    ex64 = rl.relaxed_kl_equal_tau_exact(q.double(), p.double())
    rc64 = rl.recab(q.double(), p.double())
    rtol = 1e-9
    assert bool((ex64 >= -1e-12).all()) and bool((rc64 >= 0).all())
    assert bool((kc <= ex64 * (1 + rtol) + 1e-9).all()), (kc, ex64)
    assert bool((ex64 <= rc64 * (1 + rtol) + 1e-9).all()), (ex64, rc64)
    assert bool((ex >= (-1e-5 if q.dtype == torch.float32 else -1e-12)).all())
    assert bool((rc >= 0).all()), rc
    assert bool((rl.recab(q, q) == 0).all())
    assert bool((rl.relaxed_kl_equal_tau_exact(q, q).abs() <= 1e-10).all())


@cfg(40)
@given(logits_pair(ks=st.integers(2, 8)), st.data())
def test_relaxed_kl_mc(qp, data):
    """Equal temperatures: the MC estimate agrees with the exact value within 5 SE (any tau); always finite."""
    _count("relaxed_kl")
    q, p = qp
    tau = data.draw(TAUS)
    tau_p = data.draw(st.none() | TAUS)
    gen = torch.Generator().manual_seed(data.draw(SEEDS))
    est, se = rl.relaxed_kl(q, p, tau, tau_p, num_samples=400, generator=gen, return_stderr=True)
    assert _finite(est) and _finite(se) and bool((se >= 0).all()), (est, se)
    if tau_p is None:
        ex = rl.relaxed_kl_equal_tau_exact(q.double(), p.double())
        tol = 5 * se.double() + (1e-3 * (1 + ex.abs()) if q.dtype == torch.float32 else 1e-7 * (1 + ex.abs()))
        assert bool(((est.double() - ex).abs() <= tol).all()), (est, ex, se)
    z = rl.relaxed_kl(q, q, tau, num_samples=3, generator=gen)
    assert bool((z == 0).all())


@cfg(20)
@given(st.sampled_from(["tau_q", "tau_p"]), st.sampled_from([0.0, -0.5, math.nan, math.inf]))
def test_relaxed_kl_invalid(name, bad):
    _count("relaxed_kl")
    kw = {"tau_q": 1.0, "tau_p": 1.0}
    kw[name] = bad
    with pytest.raises(ValueError, match=name):
        rl.relaxed_kl(torch.zeros(3), torch.zeros(3), **kw)
    with pytest.raises(ValueError, match="tau"):
        rl.recab(torch.zeros(3), torch.ones(3), **kw)


def test_relaxed_invalid_logits():
    _count("relaxed_kl_equal_tau_exact")
    _count("recab")
    for fn in (rl.relaxed_kl_equal_tau_exact, rl.recab, lambda q, p: rl.relaxed_kl(q, p, 1.0)):
        with pytest.raises(ValueError, match="q_logits"):
            fn(torch.tensor([0.0, math.nan]), torch.zeros(2))
        with pytest.raises(ValueError, match="p_logits"):
            fn(torch.zeros(2), torch.tensor([0.0, math.inf]))
        with pytest.raises(ValueError, match="categories"):
            fn(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="equal temperatures"):
        rl.recab(torch.zeros(3), torch.ones(3), tau_q=1.0, tau_p=2.0)


@cfg(200)
@given(st.integers(0, 10**9), st.floats(0.01, 100.0), st.floats(0.01, 100.0), st.floats(0.0, 1.0),
       st.integers(1, 5000))
def test_tau_schedule(step, tau0, tau_min, rate, every):
    _count("tau_schedule")
    t = rl.tau_schedule(step, tau0, tau_min, rate, every)
    assert isinstance(t, float) and math.isfinite(t)
    assert t >= tau_min and t <= max(tau0, tau_min)
    # piecewise constant on [kN, (k+1)N) and non-increasing in step
    assert rl.tau_schedule((step // every) * every, tau0, tau_min, rate, every) == t
    assert rl.tau_schedule(step + every, tau0, tau_min, rate, every) <= t


@pytest.mark.parametrize("name,value", [("step", -1), ("step", 1.5), ("tau0", 0.0), ("tau0", math.nan),
                                        ("tau_min", -1.0), ("tau_min", math.inf), ("rate", -1e-3),
                                        ("rate", math.nan), ("every", 0), ("every", 2.0)])
def test_tau_schedule_invalid(name, value):
    _count("tau_schedule")
    kw = {"step": 0, "tau0": 1.0, "tau_min": 0.5, "rate": 1e-5, "every": 1000}
    kw[name] = value
    with pytest.raises(ValueError, match=name):
        rl.tau_schedule(**kw)


def test_relaxed_gradcheck():
    _count("gradcheck")
    g = torch.Generator().manual_seed(0)
    ql = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    pl = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    gum = rl.sample_gumbel((2, 4), generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda l, t: rl.gumbel_softmax(l, t, gumbel=gum), (ql, tau))
    assert torch.autograd.gradcheck(lambda l, t: rl.exp_concrete_sample(l, t, gumbel=gum), (ql, tau))
    log_y = rl.exp_concrete_sample(ql.detach(), tau.detach(), gumbel=gum)
    assert torch.autograd.gradcheck(lambda l, t: rl.exp_concrete_log_prob(log_y, l, t), (ql, tau))
    assert torch.autograd.gradcheck(lambda l, t: rl.concrete_log_prob(log_y.exp(), l, t), (ql, tau))
    assert torch.autograd.gradcheck(rl.relaxed_kl_equal_tau_exact, (ql, pl))
    assert torch.autograd.gradcheck(rl.recab, (ql, pl))
    # recab's far branch (|d - mean d| >= 1)
    assert torch.autograd.gradcheck(rl.recab, (3 * ql.detach().requires_grad_(), pl))
    # straight-through custom backward: the gradient is the soft sample's
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    (gh,) = torch.autograd.grad((rl.gumbel_softmax(ql, tau, hard=True, gumbel=gum) * w).sum(), ql)
    (gs,) = torch.autograd.grad((rl.gumbel_softmax(ql, tau, hard=False, gumbel=gum) * w).sum(), ql)
    torch.testing.assert_close(gh, gs)
    # relaxed_kl with fixed noise (a generator with a fixed seed) is a deterministic function
    assert torch.autograd.gradcheck(
        lambda l, p: rl.relaxed_kl(l, p, 0.5, 2.0, num_samples=5, generator=torch.Generator().manual_seed(3)),
        (ql, pl))


# ==================================================================================================================
# (3) vaebook.mixtures.kl_gmm
# ==================================================================================================================


@st.composite
def gmm_pair(draw, equal_k=True):
    dtype = torch.float64
    d = draw(st.integers(1, 3))
    kq = draw(st.integers(1, 4))
    kp = kq if equal_k else draw(st.integers(1, 4))
    sep = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, 100.0]))  # overlapping to well separated
    g = torch.Generator().manual_seed(draw(SEEDS))
    full = draw(st.booleans())

    def mix(k):
        logits = 3 * torch.randn(k, generator=g, dtype=dtype)
        loc = sep * torch.randn(k, d, generator=g, dtype=dtype)
        lv = draw(st.floats(-4.0, 4.0)) + torch.randn(k, d, generator=g, dtype=dtype)
        if full:
            a = torch.randn(k, d, d, generator=g, dtype=dtype)
            cov = a @ a.transpose(-1, -2) * 0.3 + torch.diag_embed(lv.exp())
            comp = MultivariateNormal(loc, cov)
        else:
            comp = Independent(Normal(loc, (0.5 * lv).exp()), 1)
        return MixtureSameFamily(Categorical(logits=logits), comp)

    return mix(kq), mix(kp)


@cfg(40)
@given(gmm_pair(), SEEDS)
def test_kl_gmm_upper_bounds(qp, seed):
    _count("kl_gmm")
    q, p = qp
    mc, se = kl_gmm(q, p, "mc", num_samples=2000, seed=seed % 1000, return_stderr=True)
    matched = kl_gmm(q, p, "matched")
    opt = kl_gmm(q, p, "matched", matching="optimal")
    vub = kl_gmm(q, p, "variational_upper")
    for v in (mc, se, matched, opt, vub):
        assert _finite(v), v
    tol = 4 * se + 1e-9 * (1 + mc.abs())
    assert bool((matched >= mc - tol).all()), (matched, mc, se)
    assert bool((vub >= mc - tol).all()), (vub, mc, se)
    assert bool((opt <= matched + 1e-9 * (1 + matched.abs())).all())
    assert bool((matched >= 0).all()) and bool((vub >= -1e-9).all())
    # every iterate of variational_upper is a bound and they decrease from the convexity bound
    _, hist = kl_gmm(q, p, "variational_upper", return_history=True)
    assert bool((hist[1:] <= hist[:-1] + 1e-9 * (1 + hist[:-1].abs())).all())
    # = 0 at equality (variational_upper: only in the limit of its iteration, see the xfail test below)
    for m in ("matched", "variational", "product"):
        z = kl_gmm(q, q, m)
        assert bool((z.abs() <= 1e-9).all()), (m, z)
    z = kl_gmm(q, q, "variational_upper")
    assert bool((z >= -1e-12).all()) and bool((z <= kl_gmm(q, q, "variational_upper", num_iters=0) + 1e-12).all())


@pytest.mark.xfail(strict=True, reason="variational_upper converges slowly (50 iterations by default) for heavily "
                   "overlapping components, so kl_gmm(q, q, 'variational_upper') is ~2e-3, not 0; not fixable "
                   "without changing the algorithm's results")
def test_kl_gmm_variational_upper_zero_at_equality_overlapping():
    _count("kl_gmm")
    loc = torch.tensor([[0.0], [0.1]], dtype=torch.float64)
    q = MixtureSameFamily(Categorical(logits=torch.zeros(2, dtype=torch.float64)),
                          Independent(Normal(loc, torch.ones(2, 1, dtype=torch.float64)), 1))
    assert kl_gmm(q, q, "variational_upper").abs().item() <= 1e-9  # 0.00219 (0.0025 at iteration 0)


@cfg(15)
@given(gmm_pair(equal_k=False))
def test_kl_gmm_other_methods_finite(qp):
    _count("kl_gmm")
    q, p = qp
    from vaebook.mixtures import durrieu_bounds

    lo, hi = durrieu_bounds(q, p)
    for m in ("gaussian", "product", "variational", "variational_upper", "unscented", "goldberger", "min_pair"):
        v = kl_gmm(q, p, m)
        assert _finite(v), (m, v)
        if m in ("product", "variational"):
            assert bool((v >= lo - 1e-7 * (1 + lo.abs())).all() and (v <= hi + 1e-7 * (1 + hi.abs())).all()), (m, v)


def test_kl_gmm_invalid():
    _count("kl_gmm")
    q = MixtureSameFamily(Categorical(logits=torch.zeros(2)), Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1))
    p = MixtureSameFamily(Categorical(logits=torch.zeros(3)), Independent(Normal(torch.zeros(3, 3), torch.ones(3, 3)), 1))
    with pytest.raises(ValueError, match="method"):
        kl_gmm(q, q, "nope")
    with pytest.raises(ValueError, match="components"):
        kl_gmm(q, p, "matched")
    with pytest.raises(ValueError, match="num_samples"):
        kl_gmm(q, q, "mc", num_samples=0)
    with pytest.raises(ValueError, match="num_iters"):
        kl_gmm(q, q, "variational_upper", num_iters=-1)
    bad = MixtureSameFamily(Categorical(logits=torch.zeros(2)),
                            Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1))
    bad.component_distribution.base_dist.scale = -torch.ones(2, 3)  # bypass torch's own validation
    with pytest.raises(ValueError, match="scale"):
        kl_gmm(bad, q, "matched")


def test_kl_gmm_gradcheck():
    _count("gradcheck")
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    loc = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    ls = (0.3 * torch.randn(3, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    p = MixtureSameFamily(Categorical(logits=torch.randn(3, generator=g, dtype=torch.float64)),
                          Independent(Normal(torch.randn(3, 2, generator=g, dtype=torch.float64),
                                             torch.ones(3, 2, dtype=torch.float64)), 1))

    def f(method):
        return lambda lw, loc, ls: kl_gmm(MixtureSameFamily(Categorical(logits=lw), Independent(Normal(loc, ls.exp()), 1)),
                                          p, method)

    for m in ("matched", "variational", "product", "variational_upper"):
        assert torch.autograd.gradcheck(f(m), (lw, loc, ls)), m


# ==================================================================================================================
# (4) vaebook.distributions: IGR, IGRStickBreaking
# ==================================================================================================================


@st.composite
def igr_args(draw):
    dtype = draw(DTYPES)
    km1 = draw(st.integers(1, 6) | st.sampled_from([20, 99]))
    batch = draw(BATCHES)
    loc = _tensor(draw, (*batch, km1), -10.0, 10.0, dtype)
    scale = torch.exp(_tensor(draw, (*batch, km1), 0.5 * -LOGVAR, 0.5 * LOGVAR, dtype))  # variances 1e-6 .. 1e6
    tau = draw(tau_for(batch, dtype))
    delta = draw(st.sampled_from([1.0, 0.5, 2.0]))
    return loc, scale, tau, delta


@cfg(120)
@given(igr_args(), st.sampled_from([IGR, IGRStickBreaking]), SEEDS)
def test_igr_samples_on_simplex_log_prob_finite(args, cls, seed):
    _count(cls.__name__)
    loc, scale, tau, delta = args
    d = cls(loc, scale, tau, delta)
    gen = torch.Generator().manual_seed(seed)
    log_x = d.rsample_log((4,), generator=gen)
    assert log_x.shape == (4, *d.batch_shape, d.num_classes)
    assert _finite(log_x) and bool((log_x <= 0).all())
    tol = 1e-5 if loc.dtype == torch.float32 else 1e-12
    assert bool((torch.logsumexp(log_x, -1).abs() <= tol).all())
    x = log_x.exp()
    assert bool((x >= 0).all()) and bool(((x.sum(-1) - 1).abs() <= tol * d.num_classes).all())
    # log_prob_log is finite in float64 (float32: pre-softmax values in the 1e4 range lose all precision at
    # tau = 0.01 and scale 1e3, so the density's value there is meaningless; we check finiteness only)
    lp = d.log_prob_log(log_x)
    assert not bool(torch.isnan(lp).any())
    if loc.dtype == torch.float64:
        assert _finite(lp), lp
    # KL between two IGRs sharing the map: >= 0, = 0 at equality
    other = cls(loc.flip(-1), scale.flip(-1), tau, delta)
    kl = kl_divergence(d, other)
    assert _finite(kl) and bool((kl >= 0).all())
    assert bool((kl_divergence(d, d) == 0).all())


@cfg(15)
@given(st.sampled_from([IGR, IGRStickBreaking]), SEEDS)
def test_igr_log_prob_consistent_with_change_of_variables(cls, seed):
    """float64, moderate params: log q(x) at x = g(z) equals log N(z) - log|det dg/dz| (checked by the MC KL)."""
    _count(cls.__name__)
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(3, dtype=torch.float64, generator=g)
    q = cls(loc, torch.rand(3, dtype=torch.float64, generator=g) + 0.5, 0.7)
    p = cls(torch.randn(3, dtype=torch.float64, generator=g), torch.rand(3, dtype=torch.float64, generator=g) + 0.5, 0.7)
    est, se = igr_kl_mc(q, p, num_samples=4000, generator=g, return_stderr=True)
    assert bool(((est - kl_divergence(q, p)).abs() <= 5 * se + 1e-9).all()), (est, kl_divergence(q, p), se)


@cfg(30)
@given(st.sampled_from([IGR, IGRStickBreaking]), st.sampled_from(["scale", "temperature", "delta", "loc"]),
       st.sampled_from([0.0, -1.0, math.nan, math.inf]))
def test_igr_invalid(cls, name, bad):
    _count(cls.__name__)
    kw = {"loc": torch.zeros(3), "scale": torch.ones(3), "temperature": 1.0, "delta": 1.0}
    if name == "loc":
        if bad in (0.0, -1.0):
            kw["loc"] = torch.tensor(bad)  # a scalar loc
        else:
            kw["loc"] = torch.tensor([0.0, bad, 0.0])
    elif name == "scale":
        kw["scale"] = torch.tensor([1.0, bad, 1.0])
    else:
        kw[name] = bad
    with pytest.raises(ValueError, match=name):
        cls(**kw)


def test_igr_gradcheck():
    _count("gradcheck")
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(5, 3, generator=g, dtype=torch.float64)
    loc = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    ls = (0.3 * torch.randn(3, generator=g, dtype=torch.float64)).requires_grad_(True)
    tau = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    p_loc = torch.randn(3, generator=g, dtype=torch.float64)
    for cls in (IGR, IGRStickBreaking):
        def f(loc, ls, tau, cls=cls):
            d = cls(loc, ls.exp(), tau)
            log_x = d.log_x_from_gauss(loc + ls.exp() * eps)
            return d.log_prob_log(log_x), log_x

        assert torch.autograd.gradcheck(f, (loc, ls, tau)), cls
        assert torch.autograd.gradcheck(
            lambda a, b, cls=cls: kl_divergence(cls(a, b.exp(), 0.5), cls(p_loc, torch.ones(3, dtype=torch.float64), 0.5)),
            (loc, ls))


# ==================================================================================================================
# (5) vaebook.svgd: svgd_direction, ksd
# ==================================================================================================================


@st.composite
def particles(draw):
    dtype = draw(DTYPES)
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 4))
    batch = draw(st.sampled_from([(), (2,)]))
    g = torch.Generator().manual_seed(draw(SEEDS))
    spread = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = (spread * torch.randn(*batch, n, d, generator=g, dtype=torch.float64))
    if draw(st.booleans()) and n > 2:
        x[..., 1, :] = x[..., 0, :]  # duplicate particles
    bw = draw(st.none() | st.sampled_from([1e-2, 1.0, 1e2]))
    block = draw(st.integers(1, 16))
    return x.to(dtype), bw, block


@cfg(80)
@given(particles())
def test_svgd_direction_finite_blocked_equals_dense(args):
    _count("svgd_direction")
    x, bw, block = args
    score = lambda z: -z  # noqa: E731  (standard normal target)
    phi = svgd_direction(x, score, bw, block_size=block)
    dense = svgd_direction_dense(x, score, bw)
    assert phi.shape == x.shape and _finite(phi)
    scale = 1.0 + dense.abs().max()
    tol = 1e-4 if x.dtype == torch.float32 else 1e-10
    assert bool(((phi - dense).abs() <= tol * scale).all()), ((phi - dense).abs().max(), scale)
    if x.shape[-2] == 1:
        torch.testing.assert_close(phi, score(x))


@cfg(80)
@given(particles(), st.sampled_from(["u", "v"]))
def test_ksd_finite_blocked_equals_dense(args, stat):
    _count("ksd")
    x, bw, block = args
    assume(not (stat == "u" and x.shape[-2] < 2))
    score = lambda z: -z  # noqa: E731
    from vaebook.svgd import median_bandwidth, stein_kernel_matrix

    h = median_bandwidth(x, rule="ksd") if bw is None else torch.full(x.shape[:-2], bw, dtype=x.dtype)
    val = ksd(x, score, h, statistic=stat, block_size=block)
    assert val.shape == x.shape[:-2] and _finite(val)
    u = stein_kernel_matrix(x.double(), score, h.double())
    n = x.shape[-2]
    ref = u.sum((-1, -2)) / n**2 if stat == "v" else (u.sum((-1, -2)) - u.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    scale = 1.0 + u.abs().amax((-1, -2))
    tol = 1e-3 if x.dtype == torch.float32 else 1e-9
    assert bool(((val.double() - ref).abs() <= tol * scale).all()), (val, ref)
    if stat == "v":
        assert bool((val >= -tol * scale).all())


def test_svgd_invalid():
    _count("svgd_direction")
    _count("ksd")
    x = torch.randn(5, 2)
    for fn in (svgd_direction, ksd):
        with pytest.raises(ValueError, match="bandwidth"):
            fn(x, -x, -1.0)
        with pytest.raises(ValueError, match="bandwidth"):
            fn(x, -x, math.nan)
        with pytest.raises(ValueError, match="score"):
            fn(x, torch.zeros(5, 3), 1.0)
        with pytest.raises(ValueError, match="x"):
            fn(torch.zeros(5), torch.zeros(5), 1.0)
        with pytest.raises(ValueError, match="block_size"):
            fn(x, -x, 1.0, block_size=0)
    with pytest.raises(ValueError, match="statistic"):
        ksd(x, -x, 1.0, statistic="w")


# ==================================================================================================================
# (6) vaebook.metrics.iwae_bound
# ==================================================================================================================


class _ToyModel(torch.nn.Module):
    """Linear-Gaussian model p(z) = N(0, 1), p(x|z) = N(z, s^2) and a Gaussian q(z|x): log p(x) is known."""

    def __init__(self, s, qm, qs, seed):
        super().__init__()
        self.s, self.qm, self.qs = s, qm, qs
        # a fixed noise stream consumed in order (torch.randn's stream depends on the requested size)
        self.eps = torch.randn(4096, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.used = 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def log_weights(self, x, num_samples):
        dt = x.dtype
        n = num_samples * x.shape[0]
        if self.used + n > self.eps.numel():
            self.used = 0
        eps = self.eps[self.used:self.used + n].reshape(num_samples, x.shape[0]).to(dt)
        self.used += n
        z = self.qm * x + self.qs * eps
        one = torch.ones((), dtype=dt)
        lp = Normal(0 * one, one).log_prob(z) + Normal(z, self.s * one).log_prob(x)
        lq = Normal(self.qm * x, self.qs * one).log_prob(z)
        return lp - lq

    def log_px(self, x):
        one = torch.ones((), dtype=x.dtype)
        return Normal(0 * one, math.sqrt(1 + self.s**2) * one).log_prob(x)


@cfg(40)
@given(st.floats(0.1, 3.0), st.floats(-1.0, 1.0), st.floats(0.3, 2.0), st.integers(1, 64), st.integers(1, 40), SEEDS)
def test_iwae_bound_invariants(s, qm, qs, k, chunk, seed):
    _count("iwae_bound")
    x = torch.linspace(-2, 2, 3, dtype=torch.float64)
    m = _ToyModel(s, qm, qs, seed)
    b = iwae_bound(m, x, k=k, chunk_size=chunk)
    assert b.shape == (3,) and _finite(b)
    # chunking does not change the value (same noise stream): compare with a single chunk
    m2 = _ToyModel(s, qm, qs, seed)
    torch.testing.assert_close(b, iwae_bound(m2, x, k=k, chunk_size=k), rtol=1e-10, atol=1e-10)
    # with q the exact posterior every weight equals p(x): the bound is exact for every k
    post_var = s**2 / (1 + s**2)
    exact = _ToyModel(s, 1 / (1 + s**2), math.sqrt(post_var), seed)
    torch.testing.assert_close(iwae_bound(exact, x, k=k, chunk_size=chunk), exact.log_px(x), rtol=1e-9, atol=1e-9)
    # L_k <= log p(x) on average: its mean over many repeats is below log p(x) (+ a generous MC allowance)
    m3 = _ToyModel(s, qm, qs, seed + 1)
    m3.eps = torch.randn(20 * k * 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    reps = torch.stack([iwae_bound(m3, x, k=k) for _ in range(20)])
    assert bool((reps.mean(0) <= m.log_px(x) + 4 * reps.std(0) / math.sqrt(20) + 1e-9).all())
    assert m.training  # the model's mode is restored


@pytest.mark.parametrize("kw", [{"k": 0}, {"k": 2.5}, {"chunk_size": 0}, {"chunk_size": -3}])
def test_iwae_bound_invalid(kw):
    _count("iwae_bound")
    m = _ToyModel(1.0, 0.5, 1.0, 0)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        iwae_bound(m, torch.zeros(2, dtype=torch.float64), **kw)


def test_kl_mvn_invalid_batch_shapes():
    _count("kl_mvn")
    with pytest.raises(ValueError, match="broadcast"):
        dv.kl_mvn(torch.zeros(3, 2), torch.eye(2).expand(4, 2, 2))


@cfg(30)
@given(st.sampled_from(["kl_categorical", "recab", "exp_concrete_log_prob", "concrete_log_prob", "relaxed_kl",
                        "relaxed_kl_equal_tau_exact"]), st.sampled_from([((3, 4), (2, 4)), ((2, 3, 4), (4, 4))]))
def test_batch_shapes_that_do_not_broadcast(fn, shapes):
    """Non-broadcastable batch shapes: a ValueError that says so (not torch's RuntimeError)."""
    _count(fn)
    a, b = torch.zeros(shapes[0]), torch.zeros(shapes[1])
    K = a.shape[-1]
    call = {
        "kl_categorical": lambda: dv.kl_categorical(a, b),
        "recab": lambda: rl.recab(a, b),
        "relaxed_kl": lambda: rl.relaxed_kl(a, b, 1.0, num_samples=2),
        "relaxed_kl_equal_tau_exact": lambda: rl.relaxed_kl_equal_tau_exact(a, b),
        "exp_concrete_log_prob": lambda: rl.exp_concrete_log_prob(a - math.log(K), b, 1.0),
        "concrete_log_prob": lambda: rl.concrete_log_prob(a + 1.0 / K, b, 1.0),
    }[fn]
    with pytest.raises(ValueError, match="broadcast"):
        call()


def test_concrete_log_prob_tau_batch_mismatch():
    _count("concrete_log_prob")
    with pytest.raises(ValueError, match="tau"):
        rl.concrete_log_prob(torch.full((3, 4), 0.25), torch.zeros(4), torch.ones(2))


def test_kl_mc_event_shape_mismatch():
    _count("kl_mc")
    with pytest.raises(ValueError, match="event shape"):
        dv.kl_mc(Independent(Normal(torch.zeros(2), 1.0), 1), Independent(Normal(torch.zeros(3), 1.0), 1))


@cfg(30)
@given(st.sampled_from([1e-30, 1e-38, 1e-40, 1e-45, 1e-300]), DTYPES, st.booleans(), SEEDS)
def test_gumbel_softmax_tiny_tau_is_one_hot(tau, dtype, hard, seed):
    """Any tau > 0 is documented as valid; below ~1e-37 (float32) (l + g) / tau overflows: still a one-hot, no NaN."""
    _count("gumbel_softmax(hard)" if hard else "gumbel_softmax(soft)")
    _count("exp_concrete_sample")
    assume(torch.tensor(tau, dtype=dtype) > 0)
    logits = 50 * (2 * torch.rand(3, 5, generator=torch.Generator().manual_seed(seed), dtype=dtype) - 1)
    logits[0] = 50.0  # ties in the logits
    g = rl.sample_gumbel((3, 5), generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    y = rl.gumbel_softmax(logits, tau, hard=hard, gumbel=g)
    assert _finite(y) and bool((y.sum(-1) == 1).all())
    torch.testing.assert_close(y, rl.gumbel_max(logits, gumbel=g))
    log_y = rl.exp_concrete_sample(logits, tau, gumbel=g)
    assert not bool(torch.isnan(log_y).any()) and bool((log_y.amax(-1) == 0).all())


@cfg(20)
@given(st.sampled_from(["x", "score"]), st.sampled_from([math.nan, math.inf]), st.sampled_from(["svgd", "ksd"]))
def test_svgd_non_finite_inputs(name, bad, fn):
    _count("svgd_direction" if fn == "svgd" else "ksd")
    x, s = torch.randn(4, 2), torch.randn(4, 2)
    (x if name == "x" else s)[1, 0] = bad
    f = svgd_direction if fn == "svgd" else ksd
    with pytest.raises(ValueError, match=name):
        f(x, s, 1.0)


def test_svgd_bandwidth_shape():
    _count("svgd_direction")
    with pytest.raises(ValueError, match="bandwidth"):
        svgd_direction(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.ones(3))
