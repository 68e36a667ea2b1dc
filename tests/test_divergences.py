"""Closed-form divergences of Chapter 1 against independent references (torch.distributions, Monte Carlo)."""
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal, kl_divergence

from vaebook import divergences as dv

F64 = torch.float64


def spd(d, g, batch=()):
    a = torch.randn(*batch, d, d, generator=g, dtype=F64)
    return a @ a.transpose(-1, -2) + 0.3 * torch.eye(d, dtype=F64)


def test_kl_normal_diag_matches_torch():
    g = torch.Generator().manual_seed(0)
    qm, pm = torch.randn(2, 50, 6, generator=g, dtype=F64)
    qv, pv = 4 * torch.randn(2, 50, 6, generator=g, dtype=F64)
    ours = dv.kl_normal_diag(qm, qv, pm, pv)
    ref = kl_divergence(Independent(Normal(qm, (qv / 2).exp()), 1), Independent(Normal(pm, (pv / 2).exp()), 1))
    assert ours.shape == (50,)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_kl_normal_diag_standard_prior_example():
    # Kingma & Welling, Appendix B: -KL = 1/2 sum(1 + log s^2 - mu^2 - s^2)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    logvar = torch.tensor([0.1, -0.7, 0.3], dtype=F64)
    expected = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum()
    torch.testing.assert_close(dv.kl_normal_diag(mu, logvar), expected)


def test_kl_normal_diag_broadcasting_and_zero():
    qm = torch.randn(4, 3, 5)
    qv = torch.randn(4, 3, 5)
    out = dv.kl_normal_diag(qm, qv, torch.zeros(5), torch.zeros(1))
    assert out.shape == (4, 3)
    assert (dv.kl_normal_diag(qm, qv, qm, qv) == 0).all()
    assert (out >= 0).all()


def test_kl_normal_diag_extreme_variances_float32():
    lv = torch.linspace(math.log(1e-6), math.log(1e6), 25)
    for p_lv in (-13.8, 0.0, 13.8):
        k32 = dv.kl_normal_diag(torch.zeros(25, 1), lv[:, None], 0.0, p_lv)
        k64 = dv.kl_normal_diag(torch.zeros(25, 1, dtype=F64), lv[:, None].double(), 0.0, p_lv)
        assert torch.isfinite(k32).all()
        torch.testing.assert_close(k32.double(), k64, rtol=1e-5, atol=1e-6)


def test_kl_normal_diag_tiny_difference_is_accurate():
    d = torch.tensor([[1e-4]])
    exact = 0.5 * (math.expm1(1e-4) - 1e-4)
    got = dv.kl_normal_diag(torch.zeros(1, 1), d).item()
    assert abs(got - exact) < 1e-5 * exact
    naive = 0.5 * (torch.tensor(1e-4).exp() - 1 - 1e-4).item()  # the textbook form cancels in float32
    assert abs(naive - exact) > 0.1 * exact
    # both branches of the stable form agree where they meet
    d = torch.tensor([0.0999999, 0.1000001], dtype=F64)
    k = dv.kl_normal_diag(torch.zeros(2, 1, dtype=F64), d[:, None])
    torch.testing.assert_close(k, 0.5 * (torch.expm1(d) - d), rtol=1e-9, atol=0)


def test_kl_normal_diag_gradcheck():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(dv.kl_normal_diag, args)
    # analytic gradients against the standard normal (Nat-D/GMVAE's hand-coded ones)
    mu, lv = args[0].detach().requires_grad_(), args[1].detach().requires_grad_()
    dv.kl_normal_diag(mu, lv).sum().backward()
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(lv.grad, 0.5 * (lv.detach().exp() - 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_kl_normal_diag_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="q_logvar"):
        dv.kl_normal_diag(torch.zeros(2), torch.tensor([0.0, bad]))


def test_kl_normal_diag_rejects_bad_shapes():
    with pytest.raises(ValueError, match="broadcast"):
        dv.kl_normal_diag(torch.zeros(3), torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="q_mean"):
        dv.kl_normal_diag(torch.tensor(0.0), torch.tensor(0.0))


def test_kl_mvn_matches_torch_and_monte_carlo():
    g = torch.Generator().manual_seed(2)
    for d in (1, 2, 4):
        qm, pm = torch.randn(2, d, generator=g, dtype=F64)
        qc, pc = spd(d, g), spd(d, g)
        ours = dv.kl_mvn(qm, qc, pm, pc)
        ref = kl_divergence(MultivariateNormal(qm, qc), MultivariateNormal(pm, pc))
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        est, se = dv.kl_mc(MultivariateNormal(qm, qc), MultivariateNormal(pm, pc), 100_000, g, return_stderr=True)
        assert abs(est.item() - ours.item()) < 4 * se.item()


def test_kl_mvn_notes_example_value():
    # the full-covariance example of the technical notes (float64): 1.3174683682608808 is torch's value too;
    # we rebuild an independent example and compare with the formula written out with explicit inverses
    g = torch.Generator().manual_seed(3)
    qm, pm = torch.randn(2, 3, generator=g, dtype=F64)
    qc, pc = spd(3, g), spd(3, g)
    inv = torch.linalg.inv(pc)
    diff = pm - qm
    explicit = 0.5 * (torch.trace(inv @ qc) + diff @ inv @ diff - 3 + torch.logdet(pc) - torch.logdet(qc))
    torch.testing.assert_close(dv.kl_mvn(qm, qc, pm, pc), explicit, rtol=1e-10, atol=1e-12)


def test_kl_mvn_batched_and_default_prior():
    g = torch.Generator().manual_seed(4)
    qm = torch.randn(5, 3, generator=g, dtype=F64)
    qc = spd(3, g, (5,))
    ours = dv.kl_mvn(qm, qc)
    ref = kl_divergence(MultivariateNormal(qm, qc), MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)))
    assert ours.shape == (5,)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    # diagonal matrices reduce to kl_normal_diag
    lv = torch.randn(5, 3, generator=g, dtype=F64)
    torch.testing.assert_close(dv.kl_mvn(qm, torch.diag_embed(lv.exp())), dv.kl_normal_diag(qm, lv))


def test_kl_mvn_gradcheck():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 3, generator=g, dtype=F64, requires_grad=True)
    qm = torch.randn(3, generator=g, dtype=F64, requires_grad=True)

    def f(qm, a):
        return dv.kl_mvn(qm, a @ a.T + torch.eye(3, dtype=F64))

    assert torch.autograd.gradcheck(f, (qm, a))


def test_kl_mvn_errors():
    with pytest.raises(ValueError, match="q_cov.*positive definite"):
        dv.kl_mvn(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="p_cov"):
        dv.kl_mvn(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        dv.kl_mvn(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="q_mean"):
        dv.kl_mvn(torch.tensor([float("nan"), 0.0]), torch.eye(2))


def test_kl_categorical_matches_torch_and_is_shift_invariant():
    g = torch.Generator().manual_seed(6)
    ql, pl = 3 * torch.randn(2, 20, 7, generator=g, dtype=F64)
    ref = kl_divergence(Categorical(logits=ql), Categorical(logits=pl))
    torch.testing.assert_close(dv.kl_categorical(ql, pl), ref)
    torch.testing.assert_close(dv.kl_categorical(ql + 5.0, pl - 3.0), ref)
    assert (dv.kl_categorical(ql, ql).abs() < 1e-12).all()


def test_kl_categorical_zero_probabilities():
    q = torch.tensor([0.0, -math.inf, 1.0])
    p = torch.tensor([0.0, 0.0, 0.0])
    expected = sum(w * math.log(w / (1 / 3)) for w in torch.softmax(q, 0).tolist() if w > 0)
    assert abs(dv.kl_categorical(q, p).item() - expected) < 1e-6
    assert dv.kl_categorical(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -math.inf])).item() == math.inf


def test_kl_categorical_errors():
    with pytest.raises(ValueError, match="same number of categories"):
        dv.kl_categorical(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="q_logits"):
        dv.kl_categorical(torch.tensor([0.0, float("nan")]), torch.zeros(2))


def test_kl_mc_standard_error_is_honest():
    # repeated estimates scatter around the closed form with roughly the reported standard error
    q, p = Normal(torch.tensor(0.3), torch.tensor(0.7)), Normal(torch.tensor(-0.2), torch.tensor(1.4))
    exact = kl_divergence(q, p).item()
    g = torch.Generator().manual_seed(7)
    z = []
    for _ in range(40):
        est, se = dv.kl_mc(q, p, 2000, g, return_stderr=True)
        z.append((est.item() - exact) / se.item())
    z = torch.tensor(z)
    assert abs(z.mean().item()) < 4 / math.sqrt(40)
    assert 0.5 < z.std().item() < 1.6
    with pytest.raises(ValueError, match="num_samples"):
        dv.kl_mc(q, p, 1)


# ------------------------------------------------------------------------------------------------------------
# the dtype's smallest variances (review 2026-12, section 4): finite, exact at q = p, finite gradients
# ------------------------------------------------------------------------------------------------------------
def _kl_exact(qm, qv, pm, pv) -> float:
    """The diagonal Gaussian KL from the inputs' exact binary values in 60-digit decimal arithmetic (no overflow:
    decimal exponents are unbounded), summed over the last dimension of 1-D inputs."""
    import decimal

    ctx = decimal.Context(prec=60, Emax=10**6, Emin=-10**6)
    D = decimal.Decimal
    total = D(0)
    for a, u, b, v in zip(qm.tolist(), qv.tolist(), pm.tolist(), pv.tolist()):
        a, u, b, v = D(a), D(u), D(b), D(v)
        d = ctx.subtract(u, v)
        sq = ctx.multiply(ctx.power(ctx.subtract(a, b), 2), ctx.exp(ctx.minus(v)))
        total = ctx.add(total, ctx.add(ctx.subtract(ctx.subtract(ctx.exp(d), 1), d), sq))
    return float(total / 2)


# p_logvar just above the log of the smallest subnormal variance (-103.28 in float32, -744.44 in float64), and the
# values the review tried (-88.7 / -709 is where exp(-p_logvar) overflows)
EXTREME = [(torch.float32, -88.8), (torch.float32, -100.0), (torch.float32, -103.0),
           (torch.float64, -709.8), (torch.float64, -720.0), (torch.float64, -744.0)]


@pytest.mark.parametrize("dtype,v", EXTREME)
def test_kl_normal_diag_smallest_variances_q_equals_p_is_exactly_zero_with_finite_gradient(dtype, v):
    qm = torch.tensor([0.0, 1.5, -3.0], dtype=dtype, requires_grad=True)
    qv = torch.full((3,), v, dtype=dtype, requires_grad=True)
    pm, pv = qm.detach().clone().requires_grad_(True), qv.detach().clone().requires_grad_(True)
    kl = dv.kl_normal_diag(qm, qv, pm, pv)
    assert kl.item() == 0.0
    grads = torch.autograd.grad(kl, (qm, qv, pm, pv))
    assert all(bool(torch.isfinite(g).all()) and bool((g == 0).all()) for g in grads), grads
    # the IGR KL (Chapter 4) goes through it: scales below 6e-20 gave NaN in float32
    from vaebook.distributions import IGR

    scale = torch.full((3,), math.exp(0.5 * v), dtype=dtype, requires_grad=True)
    loc = torch.tensor([0.3, -1.0, 2.0], dtype=dtype, requires_grad=True)
    d = IGR(loc, scale, 0.5)
    kl_igr = kl_divergence(d, IGR(loc, scale, 0.5))
    assert kl_igr.item() == 0.0
    assert all(bool(torch.isfinite(g).all()) for g in torch.autograd.grad(kl_igr, (loc, scale)))


@pytest.mark.parametrize("dtype,v", EXTREME)
@pytest.mark.parametrize("t", [1e-3, 0.7, 5.0])
def test_kl_normal_diag_smallest_variances_value_and_gradient(dtype, v, t):
    # mean differences of t prior standard deviations, q's variance a little different: KL of order t^2
    sd = math.exp(0.5 * v)
    pm = torch.tensor([0.0, 2.0, -1.0], dtype=dtype)
    pv = torch.tensor([v, v + 0.5, v + 20.0], dtype=dtype)
    qm = pm + torch.tensor([t * sd, -t * sd, 0.0], dtype=dtype)
    qv = pv + torch.tensor([0.0, -0.25, 1e-3], dtype=dtype)
    args = [a.clone().requires_grad_(True) for a in (qm, qv, pm, pv)]
    kl = dv.kl_normal_diag(*args)
    ref = _kl_exact(qm, qv, pm, pv)  # from the float inputs as they are (the rounding of qm included)
    assert math.isfinite(ref) and 0 < ref < 1e3
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert abs(kl.item() - ref) <= tol * ref, (kl.item(), ref)
    grads = torch.autograd.grad(kl, args)
    assert all(bool(torch.isfinite(g).all()) for g in grads), grads
    # d KL / d q_mean = (q_mean - p_mean) exp(-p_logvar), from the same exact inputs
    expect = [(float(a) - float(b)) * math.exp(-float(c)) if float(c) > -700 else None
              for a, b, c in zip(qm.tolist(), pm.tolist(), pv.tolist())]
    for g, e in zip(grads[0].tolist(), expect):
        if e is not None:
            assert abs(g - e) <= 1e-4 * abs(e) + 1e-30, (g, e)


def test_kl_normal_diag_overflow_is_inf_not_nan():
    # a true KL beyond float32's range is inf (never NaN): unit mean difference at variance 1e-44
    kl = dv.kl_normal_diag(torch.ones(1), torch.full((1,), -101.0), torch.zeros(1), torch.full((1,), -101.0))
    assert kl.item() == math.inf


# ------------------------------------------------------------------------------------------------------------
# bad input: clear errors naming the argument
# ------------------------------------------------------------------------------------------------------------
def test_kl_mvn_empty_batch_and_half_precision_errors():
    with pytest.raises(ValueError, match=r"q_mean is empty \(shape \(0, 3\)\).*batch dimension >= 1"):
        dv.kl_mvn(torch.zeros(0, 3), torch.eye(3).expand(0, 3, 3))
    with pytest.raises(ValueError, match=r"p_cov is empty"):
        dv.kl_mvn(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(3).expand(0, 3, 3))
    for dt in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=r"q_mean has dtype .*float32 and float64"):
            dv.kl_mvn(torch.zeros(3, dtype=dt), torch.eye(3, dtype=dt))


def test_kl_mc_with_a_tensor_says_what_it_expects():
    with pytest.raises(TypeError, match=r"q must be a torch.distributions.Distribution.*got Tensor"):
        dv.kl_mc(torch.zeros(3), Normal(0.0, 1.0))
    with pytest.raises(TypeError, match=r"p must be a torch.distributions.Distribution"):
        dv.kl_mc(Normal(0.0, 1.0), torch.zeros(3))
