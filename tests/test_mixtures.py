"""Tests for vaebook.mixtures (KL between Gaussian mixtures; notes gaussians_and_mixtures.md §3)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import integrate
from torch.distributions import (Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal,
                                 kl_divergence)

from vaebook.divergences import kl_gmm, kl_mvn
from vaebook.mixtures import METHODS, durrieu_bounds, log_overlaps, log_responsibilities, pairwise_kl

DT = torch.float64
CLOSED = ("gaussian", "product", "matched", "variational", "variational_upper", "unscented", "goldberger",
          "min_pair")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def diag_mix(w, loc, scale):
    """Mixture with diagonal components; w (..., K), loc/scale (..., K, d)."""
    return MixtureSameFamily(Categorical(probs=torch.as_tensor(w, dtype=DT)),
                             Independent(Normal(torch.as_tensor(loc, dtype=DT), torch.as_tensor(scale, dtype=DT)), 1))


def full_mix(w, loc, tril):
    return MixtureSameFamily(Categorical(probs=torch.as_tensor(w, dtype=DT)),
                             MultivariateNormal(torch.as_tensor(loc, dtype=DT), scale_tril=torch.as_tensor(tril, dtype=DT)))


def as_full(mix):
    """The same mixture with full-covariance (MultivariateNormal) components."""
    c = mix.component_distribution
    return full_mix(mix.mixture_distribution.probs, c.base_dist.loc, torch.diag_embed(c.base_dist.scale))


def random_mix(gen, batch, k, d, full, spread=2.0):
    w = torch.rand(*batch, k, generator=gen, dtype=DT) + 0.2
    w = w / w.sum(-1, keepdim=True)
    loc = spread * torch.randn(*batch, k, d, generator=gen, dtype=DT)
    if full:
        a = 0.4 * torch.randn(*batch, k, d, d, generator=gen, dtype=DT)
        tril = torch.tril(a, -1) + torch.diag_embed(torch.exp(0.4 * torch.randn(*batch, k, d, generator=gen, dtype=DT)))
        return full_mix(w, loc, tril)
    scale = torch.exp(0.4 * torch.randn(*batch, k, d, generator=gen, dtype=DT))
    return diag_mix(w, loc, scale)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: one intra-op thread is faster, and much faster on a loaded shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# The 1-D reference pair of the notes §3.6 (second arguments are variances).
def pair_1d(full=False):
    f = diag_mix([0.35, 0.65], [[-1.0], [1.25]], [[math.sqrt(0.35)], [math.sqrt(0.8)]])
    g = diag_mix([0.55, 0.45], [[-0.4], [2.0]], [[math.sqrt(0.6)], [math.sqrt(1.1)]])
    return (as_full(f), as_full(g)) if full else (f, g)


EXACT_1D = 0.1129823940300846
BOUND_1D = 0.3882883155
GAP_1D = 0.2753059215


def quad_1d(fn):
    val, _ = integrate.quad(fn, -30.0, 30.0, epsabs=1e-13, epsrel=1e-13, limit=500, points=[-1.0, 0.0, 1.25, 2.0])
    return val


def logpdf_1d(mix, x):
    return mix.log_prob(torch.tensor([[x]], dtype=DT)).item()


# ---------------------------------------------------------------------------------------------------------------
# reference values of the notes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full", [False, True])
def test_reference_1d_values(full):
    f, g = pair_1d(full)
    expected = {"gaussian": 0.02243, "product": 0.12117, "matched": 0.38829, "variational": 0.30805,
                "variational_upper": 0.38829, "unscented": -0.02587, "goldberger": 0.38829, "min_pair": 0.27855}
    for m, v in expected.items():
        assert kl_gmm(f, g, m).item() == pytest.approx(v, abs=6e-6), m
    assert kl_gmm(f, g, "matched", matching="optimal").item() == pytest.approx(0.38829, abs=6e-6)
    assert kl_gmm(f, g, "matched", matching=torch.tensor([1, 0])).item() == pytest.approx(3.0230, abs=6e-5)
    lo, up = durrieu_bounds(f, g)
    assert lo.item() == pytest.approx(-0.10500, abs=6e-6) and up.item() == pytest.approx(0.53422, abs=6e-6)
    conv = kl_gmm(f, g, "variational_upper", num_iters=0).item()
    assert conv == pytest.approx(1.65104, abs=6e-6)


def test_matched_gap_identity_by_quadrature():
    f, g = pair_1d()
    exact = quad_1d(lambda x: math.exp(logpdf_1d(f, x)) * (logpdf_1d(f, x) - logpdf_1d(g, x)))
    assert exact == pytest.approx(EXACT_1D, rel=1e-10)

    def gap_integrand(x):
        xt = torch.tensor([[x]], dtype=DT)
        lf, lg = log_responsibilities(f, xt)[0], log_responsibilities(g, xt)[0]
        return math.exp(logpdf_1d(f, x)) * float((lf.exp() * (lf - lg)).sum())

    gap = quad_1d(gap_integrand)
    bound = kl_gmm(f, g, "matched").item()
    assert bound == pytest.approx(exact + gap, abs=1e-9)
    assert bound == pytest.approx(BOUND_1D, abs=1e-9)
    assert gap == pytest.approx(GAP_1D, abs=1e-9)


def test_mc_against_quadrature():
    f, g = pair_1d()
    est, se = kl_gmm(f, g, "mc", num_samples=100_000, seed=1, return_stderr=True)
    assert abs(est.item() - EXACT_1D) < 4 * se.item()
    assert 0 < se.item() < 0.01


def test_mc_reproducible_and_generator():
    f, g = pair_1d()
    a = kl_gmm(f, g, "mc", num_samples=2000, seed=3)
    b = kl_gmm(f, g, "mc", num_samples=2000, seed=3)
    c = kl_gmm(f, g, "mc", num_samples=2000, generator=gen(3))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, kl_gmm(f, g, "mc", num_samples=2000, seed=4))


def test_mc_chunked_statistics():
    # A batch of 64 copies of the 1-D pair with 100,000 samples each is drawn in 4 chunks; Chan's combination of
    # the chunk means and sums of squares must give an unbiased estimate and the usual standard error.
    f, g = pair_1d()
    cf, cg = f.component_distribution.base_dist, g.component_distribution.base_dist
    fb = diag_mix(f.mixture_distribution.probs.expand(64, 2), cf.loc.expand(64, 2, 1), cf.scale.expand(64, 2, 1))
    gb = diag_mix(g.mixture_distribution.probs.expand(64, 2), cg.loc.expand(64, 2, 1), cg.scale.expand(64, 2, 1))
    est, se = kl_gmm(fb, gb, "mc", num_samples=100_000, seed=0, return_stderr=True)
    assert ((est - EXACT_1D).abs() < 4.5 * se).all()
    assert len(set(est.tolist())) == 64  # independent samples per batch element
    assert torch.allclose(se, torch.full_like(se, 0.00130), rtol=0.1)
    # the average over the batch is a 6.4M-sample estimate
    assert abs(est.mean().item() - EXACT_1D) < 4 * se.mean().item() / 8


# ---------------------------------------------------------------------------------------------------------------
# single Gaussians and q == p
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("d", [1, 3])
def test_single_component_exact(full, d):
    g_ = gen(10 + d)
    q, p = random_mix(g_, (), 1, d, full), random_mix(g_, (), 1, d, full)
    qc, pc = q.component_distribution, p.component_distribution
    if full:
        exact = kl_mvn(qc.loc[0], qc.covariance_matrix[0], pc.loc[0], pc.covariance_matrix[0])
    else:
        exact = kl_mvn(qc.base_dist.loc[0], torch.diag(qc.base_dist.scale[0] ** 2),
                       pc.base_dist.loc[0], torch.diag(pc.base_dist.scale[0] ** 2))
    assert exact.item() > 0.1
    for m in ("gaussian", "matched", "variational", "variational_upper", "unscented", "goldberger", "min_pair"):
        assert kl_gmm(q, p, m).item() == pytest.approx(exact.item(), abs=1e-10), m
    assert kl_gmm(q, p, "matched", matching="optimal").item() == pytest.approx(exact.item(), abs=1e-10)
    assert kl_gmm(q, p, "unscented", sigma_points="cholesky").item() == pytest.approx(exact.item(), abs=1e-10)
    est, se = kl_gmm(q, p, "mc", num_samples=20_000, seed=0, return_stderr=True)
    assert abs(est.item() - exact.item()) < 4 * se.item()
    # The product of Gaussians is not exact for single Gaussians: it is log z_11 - log t_11.
    prod = kl_gmm(q, p, "product").item()
    expected_prod = (log_overlaps(q, q) - log_overlaps(q, p)).item()
    assert prod == pytest.approx(expected_prod, abs=1e-12)
    assert abs(prod - exact.item()) > 1e-3


@pytest.mark.parametrize("full", [False, True])
def test_zero_for_identical_mixtures(full):
    q = random_mix(gen(5), (3,), 3, 2, full)
    for m in ("gaussian", "product", "matched", "variational", "unscented", "goldberger", "mc"):
        assert kl_gmm(q, q, m).abs().max().item() < 1e-12, m
    assert kl_gmm(q, q, "matched", matching="optimal").abs().max().item() < 1e-12
    # VUB reaches 0 only asymptotically, decreasing monotonically.
    val, hist = kl_gmm(q, q, "variational_upper", num_iters=200, tol=0, return_history=True)
    assert (hist[1:] <= hist[:-1] + 1e-12).all()
    assert val.abs().max().item() < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# certified bounds against a Monte-Carlo reference on many random pairs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_bounds_hold_on_random_pairs(full, d):
    n_pairs = 20
    for k in (2, 3, 4):
        g_ = gen(100 * d + 10 * k + full)
        q, p = random_mix(g_, (n_pairs,), k, d, full), random_mix(g_, (n_pairs,), k, d, full)
        ref, se = kl_gmm(q, p, "mc", num_samples=10_000, generator=g_, return_stderr=True)
        lower = ref - 3 * se
        given = kl_gmm(q, p, "matched")
        opt, perm = kl_gmm(q, p, "matched", matching="optimal", return_matching=True)
        vub, hist = kl_gmm(q, p, "variational_upper", num_iters=500, tol=0, return_history=True)
        assert (given >= lower).all() and (opt >= lower).all()
        assert (hist >= lower).all()  # every iterate is an upper bound
        assert (opt <= given + 1e-12).all()
        assert (hist[1:] <= hist[:-1] + 1e-10).all()  # monotone decrease
        assert (vub <= hist[0] + 1e-12).all()  # <= the convexity bound
        assert (vub <= opt + 1e-6).all()  # at convergence <= the best matched bound
        # the optimal matching is the best of all permutations
        perms = torch.tensor(list(itertools.permutations(range(k))))
        brute = torch.stack([kl_gmm(q, p, "matched", matching=s) for s in perms]).min(0).values
        assert torch.allclose(opt, brute, atol=1e-12)
        assert torch.allclose(kl_gmm(q, p, "matched", matching=perm), opt, atol=1e-12)
        # Durrieu interval holds the MC reference, the variational and the product approximations
        lo, up = durrieu_bounds(q, p)
        assert (lo <= ref + 3 * se).all() and (ref - 3 * se <= up).all()
        for m in ("variational", "product"):
            v = kl_gmm(q, p, m)
            assert (lo <= v + 1e-10).all() and (v <= up + 1e-10).all(), m


def test_vub_with_different_component_counts():
    g_ = gen(7)
    q, p = random_mix(g_, (20,), 2, 2, False), random_mix(g_, (20,), 4, 2, True)
    ref, se = kl_gmm(q, p, "mc", num_samples=10_000, seed=0, return_stderr=True)
    vub, hist = kl_gmm(q, p, "variational_upper", num_iters=100, tol=0, return_history=True)
    assert (hist >= ref - 3 * se).all() and (hist[1:] <= hist[:-1] + 1e-10).all()
    for m in METHODS:
        if m != "matched":
            assert torch.isfinite(kl_gmm(q, p, m)).all(), m


def test_vub_tol_stops_early():
    f, g = pair_1d()
    _, hist = kl_gmm(f, g, "variational_upper", num_iters=1000, tol=1e-10, return_history=True)
    assert len(hist) < 1001
    full = kl_gmm(f, g, "variational_upper", num_iters=1000, tol=0)
    assert kl_gmm(f, g, "variational_upper", num_iters=1000).item() == pytest.approx(full.item(), abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# representations, batching, broadcasting
# ---------------------------------------------------------------------------------------------------------------
def _all_calls(q, p):
    out = {m: kl_gmm(q, p, m) for m in CLOSED}
    out["matched_opt"] = kl_gmm(q, p, "matched", matching="optimal")
    out["mc"] = kl_gmm(q, p, "mc", num_samples=500, seed=0)
    return out


def test_diagonal_and_full_representations_agree():
    g_ = gen(21)
    q, p = random_mix(g_, (4,), 3, 3, False), random_mix(g_, (4,), 3, 3, False)
    a = _all_calls(q, p)
    for qq, pp in ((as_full(q), as_full(p)), (q, as_full(p)), (as_full(q), p)):
        b = _all_calls(qq, pp)
        for m in a:
            assert torch.allclose(a[m], b[m], atol=1e-10, rtol=1e-10), m
    lo_a, up_a = durrieu_bounds(q, p)
    lo_b, up_b = durrieu_bounds(as_full(q), as_full(p))
    assert torch.allclose(lo_a, lo_b) and torch.allclose(up_a, up_b)
    assert torch.allclose(pairwise_kl(q, p), pairwise_kl(as_full(q), as_full(p)))


def test_one_dimensional_normal_components():
    f, g = pair_1d()
    c = f.component_distribution.base_dist
    f1 = MixtureSameFamily(f.mixture_distribution, Normal(c.loc[..., 0], c.scale[..., 0]))
    c = g.component_distribution.base_dist
    g1 = MixtureSameFamily(g.mixture_distribution, Normal(c.loc[..., 0], c.scale[..., 0]))
    for m in CLOSED:
        assert kl_gmm(f1, g1, m).item() == pytest.approx(kl_gmm(f, g, m).item(), abs=1e-12), m
    assert kl_gmm(f1, g1, "mc", seed=0).item() == pytest.approx(kl_gmm(f, g, "mc", seed=0).item(), abs=1e-12)


@pytest.mark.parametrize("full", [False, True])
def test_batch_equals_loop(full):
    g_ = gen(31 + full)
    q, p = random_mix(g_, (5,), 3, 2, full), random_mix(g_, (5,), 3, 2, full)
    batched = _all_calls(q, p)
    mc_b, se_b = kl_gmm(q, p, "mc", num_samples=5000, seed=1, return_stderr=True)
    assert mc_b.shape == se_b.shape == (5,)

    def pick(mix, i):
        c = mix.component_distribution
        w = mix.mixture_distribution.probs[i]
        if full:
            return full_mix(w, c.loc[i], c.scale_tril[i])
        return diag_mix(w, c.base_dist.loc[i], c.base_dist.scale[i])

    for i in range(5):
        qi, pi = pick(q, i), pick(p, i)
        for m in CLOSED:
            # the VUB's early stop (tol) is decided for the whole batch, hence a looser tolerance
            tol = 1e-9 if m == "variational_upper" else 1e-12
            assert kl_gmm(qi, pi, m).item() == pytest.approx(batched[m][i].item(), abs=tol), m
        assert kl_gmm(qi, pi, "matched", matching="optimal").item() == pytest.approx(
            batched["matched_opt"][i].item(), abs=1e-12)
        mc_i, se_i = kl_gmm(qi, pi, "mc", num_samples=5000, seed=2, return_stderr=True)
        assert abs(mc_i - mc_b[i]) < 5 * math.hypot(se_i, se_b[i])


def test_batch_broadcasting():
    g_ = gen(41)
    q = random_mix(g_, (3,), 2, 2, False)
    p = random_mix(g_, (), 2, 2, True)
    pb = full_mix(p.mixture_distribution.probs.expand(3, 2), p.component_distribution.loc.expand(3, 2, 2),
                  p.component_distribution.scale_tril.expand(3, 2, 2, 2))
    for m in CLOSED:
        a, b = kl_gmm(q, p, m), kl_gmm(q, pb, m)
        assert a.shape == (3,) and torch.allclose(a, b, atol=1e-12), m
    q2 = random_mix(g_, (4, 1), 2, 2, False)
    assert kl_gmm(q2, q, "variational").shape == (4, 3)
    assert kl_gmm(q2, q, "matched", matching="optimal").shape == (4, 3)
    assert kl_gmm(q2, q, "mc", num_samples=10, seed=0).shape == (4, 3)


# ---------------------------------------------------------------------------------------------------------------
# numerical stability
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full", [False, True])
def test_well_separated_mixtures(full):
    # Same components 50 apart with tiny variances, different weights: D(q||p) = KL(pi || omega) to within 1e-300.
    loc = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]], dtype=DT)
    scale = torch.full((3, 2), 0.01, dtype=DT)
    q = diag_mix([0.2, 0.3, 0.5], loc, scale)
    p = diag_mix([0.6, 0.3, 0.1], loc, scale)
    if full:
        q, p = as_full(q), as_full(p)
    truth = float(sum(a * math.log(a / b) for a, b in zip([0.2, 0.3, 0.5], [0.6, 0.3, 0.1])))
    for m in ("matched", "variational", "variational_upper", "unscented", "goldberger"):
        assert kl_gmm(q, p, m).item() == pytest.approx(truth, abs=1e-9), m
    assert kl_gmm(q, p, "matched", matching="optimal").item() == pytest.approx(truth, abs=1e-9)
    est, se = kl_gmm(q, p, "mc", num_samples=20_000, seed=0, return_stderr=True)
    assert abs(est.item() - truth) < 4 * se.item() + 1e-12
    # Permuted p: components far from their partners give huge but finite component KLs.
    pp = diag_mix([0.1, 0.6, 0.3], loc[[2, 0, 1]], scale)
    if full:
        pp = as_full(pp)
    for m in METHODS:
        v = kl_gmm(q, pp, m)
        assert torch.isfinite(v).all(), m
    assert kl_gmm(q, pp, "matched").item() > 1e6
    assert kl_gmm(q, pp, "matched", matching="optimal").item() == pytest.approx(truth, abs=1e-9)
    assert kl_gmm(q, pp, "variational_upper").item() == pytest.approx(truth, abs=1e-6)
    lo, up = durrieu_bounds(q, pp)
    assert torch.isfinite(lo) and torch.isfinite(up)


def test_heavily_overlapping_mixtures():
    g_ = gen(51)
    loc = 1e-3 * torch.randn(4, 3, generator=g_, dtype=DT)
    q = diag_mix([0.25] * 4, loc, torch.ones(4, 3, dtype=DT))
    p = diag_mix([0.1, 0.2, 0.3, 0.4], loc + 1e-4, 1.001 * torch.ones(4, 3, dtype=DT))
    ref, se = kl_gmm(q, p, "mc", num_samples=20_000, seed=0, return_stderr=True)
    for m in METHODS:
        assert torch.isfinite(kl_gmm(q, p, m)).all(), m
    for m in ("matched", "variational_upper"):
        assert kl_gmm(q, p, m).item() >= ref.item() - 3 * se.item()
    # almost a single Gaussian: the exact-for-single-Gaussians methods agree closely
    for m in ("gaussian", "variational", "unscented"):
        assert kl_gmm(q, p, m).item() == pytest.approx(ref.item(), abs=max(4 * se.item(), 1e-5)), m


def test_float32_inputs_are_finite():
    q = random_mix(gen(61), (4,), 3, 2, True)
    p = random_mix(gen(62), (4,), 3, 2, False)
    qc, pc = q.component_distribution, p.component_distribution.base_dist
    q32 = MixtureSameFamily(Categorical(probs=q.mixture_distribution.probs.float()),
                            MultivariateNormal(qc.loc.float(), scale_tril=qc.scale_tril.float()))
    p32 = MixtureSameFamily(Categorical(probs=p.mixture_distribution.probs.float()),
                            Independent(Normal(pc.loc.float(), pc.scale.float()), 1))
    for m in METHODS:
        v = kl_gmm(q32, p32, m)
        assert v.dtype == torch.float32 and torch.isfinite(v).all(), m
        if m != "mc":
            assert torch.allclose(v.double(), kl_gmm(q, p, m), rtol=1e-4, atol=1e-4), m


# ---------------------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------------------
def test_gradients():
    g_ = gen(71)
    loc_q = torch.randn(3, 2, generator=g_, dtype=DT, requires_grad=True)
    ls_q = (0.3 * torch.randn(3, 2, generator=g_, dtype=DT)).requires_grad_()
    logit_q = torch.randn(3, generator=g_, dtype=DT, requires_grad=True)
    p = random_mix(g_, (), 3, 2, True)

    def build(lq, sq, wq):
        return MixtureSameFamily(Categorical(logits=wq), Independent(Normal(lq, sq.exp()), 1))

    for m, opts in (("matched", {}), ("variational", {}), ("product", {}), ("gaussian", {}),
                    ("unscented", {}), ("variational_upper", {"num_iters": 5, "unroll": True, "tol": 0})):
        assert torch.autograd.gradcheck(lambda a, b, c: kl_gmm(build(a, b, c), p, m, **opts),
                                        (loc_q, ls_q, logit_q)), m
    # Envelope gradient at (near) convergence equals the unrolled gradient.
    q = build(loc_q, ls_q, logit_q)
    g1 = torch.autograd.grad(kl_gmm(q, p, "variational_upper", num_iters=2000, tol=0), (loc_q, ls_q, logit_q))
    q = build(loc_q, ls_q, logit_q)
    g2 = torch.autograd.grad(kl_gmm(q, p, "variational_upper", num_iters=2000, tol=0, unroll=True),
                             (loc_q, ls_q, logit_q))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6)
    # MC: reparameterised in the component parameters
    q = build(loc_q, ls_q, logit_q)
    est = kl_gmm(q, p, "mc", num_samples=100, seed=0)
    gl, = torch.autograd.grad(est, loc_q)
    assert torch.isfinite(gl).all() and gl.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_errors():
    f, g = pair_1d()
    q2 = random_mix(gen(0), (), 2, 2, False)
    q3 = random_mix(gen(0), (), 3, 1, False)
    with pytest.raises(ValueError, match="event dimension"):
        kl_gmm(f, q2, "variational")
    with pytest.raises(ValueError, match="method must be one of.*'variational_upper'"):
        kl_gmm(f, g, "jensen")
    with pytest.raises(TypeError, match="^q must be a torch.distributions.MixtureSameFamily"):
        kl_gmm(Normal(0.0, 1.0), g, "variational")
    with pytest.raises(TypeError, match="^p must be"):
        kl_gmm(f, MultivariateNormal(torch.zeros(1), torch.eye(1)), "variational")
    with pytest.raises(ValueError, match="same number of components"):
        kl_gmm(f, q3, "matched")
    with pytest.raises(ValueError, match="same number of components"):
        kl_gmm(f, q3, "matched", matching="optimal")
    with pytest.raises(TypeError, match="num_samples"):
        kl_gmm(f, g, "gaussian", num_samples=10)
    with pytest.raises(ValueError, match="matching"):
        kl_gmm(f, g, "matched", matching="best")
    with pytest.raises(ValueError, match="permutation"):
        kl_gmm(f, g, "matched", matching=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="num_samples"):
        kl_gmm(f, g, "mc", num_samples=0)
    with pytest.raises(ValueError, match="generator and seed"):
        kl_gmm(f, g, "mc", seed=0, generator=gen(0))
    with pytest.raises(ValueError, match="num_iters"):
        kl_gmm(f, g, "variational_upper", num_iters=-1)
    with pytest.raises(ValueError, match="sigma_points"):
        kl_gmm(f, g, "unscented", sigma_points="random")
    bad = MixtureSameFamily(Categorical(probs=torch.tensor([0.5, 0.5], dtype=DT)),
                            Independent(Normal(torch.zeros(2, 1, dtype=DT), torch.tensor([[1.0], [-1.0]], dtype=DT),
                                               validate_args=False), 1), validate_args=False)
    with pytest.raises(ValueError, match="^p: component scale must be finite and > 0"):
        kl_gmm(f, bad, "variational")
    ib = random_mix(gen(0), (3,), 2, 1, False)
    ib2 = random_mix(gen(0), (4,), 2, 1, False)
    with pytest.raises(ValueError, match="batch shapes of q"):
        kl_gmm(ib, ib2, "product")
    wrong = MixtureSameFamily(Categorical(probs=torch.tensor([0.5, 0.5])),
                              Independent(Normal(torch.zeros(2, 1, 1), torch.ones(2, 1, 1)), 2))
    with pytest.raises(ValueError, match="reinterpreted_batch_ndims"):
        kl_gmm(wrong, g, "variational")


def test_torch_registry_has_no_mixture_kl():
    f, g = pair_1d()
    with pytest.raises(NotImplementedError):
        kl_divergence(f, g)


def test_zero_weight_components():
    loc = torch.tensor([[0.0], [3.0], [-2.0]], dtype=DT)
    scale = torch.tensor([[1.0], [0.5], [2.0]], dtype=DT)
    # Zero weights must be given as -inf logits: Categorical(probs=...) clamps probabilities to float eps.
    def zmix(w):
        return MixtureSameFamily(Categorical(logits=torch.log(torch.tensor(w, dtype=DT))),
                                 Independent(Normal(loc, scale), 1))

    q, p = zmix([0.5, 0.5, 0.0]), zmix([0.3, 0.0, 0.7])
    for m in METHODS:
        v = kl_gmm(q, p, m)
        assert not torch.isnan(v).any(), m
    # q's component 1 has no partner of positive weight under the given matching: the bound is +inf
    assert kl_gmm(q, p, "matched").item() == math.inf
    assert math.isfinite(kl_gmm(q, p, "matched", matching="optimal").item())
    assert math.isfinite(kl_gmm(q, p, "variational_upper").item())
    # zero-weight components change nothing
    q2 = diag_mix([0.5, 0.5], loc[:2], scale[:2])
    p2 = diag_mix([0.3, 0.7], loc[[0, 2]], scale[[0, 2]])
    for m in ("variational", "product", "variational_upper", "gaussian", "unscented"):
        assert kl_gmm(q, p, m).item() == pytest.approx(kl_gmm(q2, p2, m).item(), abs=1e-9), m


def _unvalidated(b, k, d, family="diag"):
    """A mixture with batch shape (b,), k components in d dimensions, built without torch's argument validation
    (which itself rejects empty batches with an unrelated reshape error)."""
    logits = torch.zeros(b, k, dtype=DT)
    if family == "full":
        comp = MultivariateNormal(torch.zeros(b, k, d, dtype=DT), scale_tril=torch.eye(d, dtype=DT).expand(b, k, d, d),
                                  validate_args=False)
    elif family == "1d":
        comp = Normal(torch.zeros(b, k, dtype=DT), torch.ones(b, k, dtype=DT), validate_args=False)
    else:
        comp = Independent(Normal(torch.zeros(b, k, d, dtype=DT), torch.ones(b, k, d, dtype=DT), validate_args=False),
                           1, validate_args=False)
    return MixtureSameFamily(Categorical(logits=logits, validate_args=False), comp, validate_args=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["diag", "full", "1d"])
def test_empty_batches_and_empty_mixtures_are_refused_by_name(method, family):
    ok = _unvalidated(2, 2, 3, family)
    for bad, pat in ((_unvalidated(0, 2, 3, family), r"has an empty batch shape \(0,\).*at least one mixture"),
                     (_unvalidated(2, 0, 3, family), r"is an empty mixture \(0 components")):
        with pytest.raises(ValueError, match="^q " + pat):
            kl_gmm(bad, ok, method)
        with pytest.raises(ValueError, match="^p " + pat):
            kl_gmm(ok, bad, method)
    if family != "1d":  # a 1-D mixture always has D = 1
        with pytest.raises(ValueError, match=r"^q is an empty mixture \(2 components of dimension 0\)"):
            kl_gmm(_unvalidated(2, 2, 0, family), ok, method)
    with pytest.raises(ValueError, match="^q has an empty batch"):
        durrieu_bounds(_unvalidated(0, 2, 3, family), ok)


@pytest.mark.parametrize("dtype,log_var", [(torch.float32, -100.0), (torch.float64, -740.0)])
def test_pairwise_kl_at_the_smallest_variances(dtype, log_var):
    # components with variances near the dtype's smallest (1e-44 in float32): D(f_a || f_a) is exactly 0 (the
    # textbook (m_a - m_b)^2 exp(-v) gives 0 * inf = NaN), the off-diagonal is inf, and the matched bound of q with
    # itself is 0 with finite gradients
    loc = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=dtype, requires_grad=True)
    lv = torch.full((2, 2), log_var, dtype=dtype, requires_grad=True)
    comp = Independent(Normal(loc, torch.exp(0.5 * lv)), 1)
    d = pairwise_kl(comp, comp)
    assert torch.equal(torch.diagonal(d), torch.zeros(2, dtype=dtype)) and bool(torch.isinf(d[0, 1]))
    q = MixtureSameFamily(Categorical(logits=torch.zeros(2, dtype=dtype)), comp)
    v = kl_gmm(q, q, "matched")
    assert v.item() == 0.0
    assert all(bool(torch.isfinite(g).all()) for g in torch.autograd.grad(v, (loc, lv)))


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("matching", ["given", "optimal", "perm"])
@pytest.mark.parametrize("batch,shared", [((37,), True), ((37,), False), ((5, 4), True), ((5, 4), False)])
def test_matched_bound_chunked_equals_one_pass(monkeypatch, full, matching, batch, shared):
    # The reference computes the matched bound in chunks of rows (bounded memory at B = 100,000): the chunks give
    # exactly the numbers, and the gradients, of a single pass
    import vaebook.mixtures as mixtures_mod

    g_ = gen(len(batch) + 7 * full)
    q = random_mix(g_, batch, 4, 3, full)
    p = random_mix(g_, () if shared else batch, 4, 3, full)
    leaves = [t.requires_grad_(True) for t in (q.mixture_distribution.logits, q.component_distribution.mean)]
    opts = {"matching": matching} if matching != "perm" else {
        "matching": torch.stack([torch.randperm(4, generator=g_) for _ in range(batch[0])]).reshape(
            batch[0], *([1] * (len(batch) - 1)), 4)}
    one = kl_gmm(q, p, "matched", return_matching=True, **opts)
    g_one = torch.autograd.grad(one[0].sum(), leaves)
    calls = []
    real = mixtures_mod._aligned_kl
    monkeypatch.setattr(mixtures_mod, "_MATCHED_CHUNK", 24)  # a few rows per chunk
    monkeypatch.setattr(mixtures_mod, "_aligned_kl", lambda f, g: calls.append(1) or real(f, g))
    chunked = kl_gmm(q, p, "matched", return_matching=True, **opts)
    assert len(calls) > 1  # it was chunked
    assert torch.equal(chunked[0], one[0]) and torch.equal(chunked[1], one[1])
    for a, b in zip(torch.autograd.grad(chunked[0].sum(), leaves), g_one):
        assert torch.equal(a, b)
