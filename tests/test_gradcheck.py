"""``torch.autograd.gradcheck`` (float64, small sizes) for every differentiable closed form of ``vaebook`` and every
custom ``torch.autograd.Function``; ``gradgradcheck`` where a double backward is supported.

Points: a typical one, and extreme-but-valid ones where the closed form is still smooth (variances 1e-6 and 1e6,
logits of +-50, temperatures 0.05 and 20, far-apart means). Random functions are made deterministic by fixing their
noise (a ``gumbel=`` tensor, a freshly seeded ``torch.Generator`` inside the checked function, or a fixed ``noise``).

Custom autograd Functions in the library (``grep -rn autograd.Function src/vaebook``):

* ``vaebook.relaxed._StraightThrough`` (``gumbel_softmax(hard=True)``): its backward is by design *not* the
  derivative of its forward (a piecewise-constant one-hot), so gradcheck cannot apply; we check the defining property
  instead: the straight-through gradient equals the soft sample's gradient, through the relaxed and kernels paths.
* ``vaebook.kernels._GumbelSoftmaxTriton`` and ``_MatchedKLTriton`` (Triton forward and backward kernels): gradchecked
  through their torch references (``backend="torch"``) and, when triton is installed and runs (``TRITON_INTERPRET=1``
  on the CPU, or a GPU), through the Triton path itself in float64 (the interpreter runs float64 kernels, so no
  tolerance has to be loosened). Their backward is a Triton kernel, not differentiable again: no gradgradcheck (a
  second backward raises, which is asserted).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal, kl_divergence

from vaebook import data as vd
from vaebook import distributions as ds
from vaebook import divergences as dv
from vaebook import introspective as intro
from vaebook import kernels as kn
from vaebook import ldc
from vaebook import mixture_vae as mvae
from vaebook import mixtures as mx
from vaebook import models as md
from vaebook import recab_vae
from vaebook import relaxed as rl
from vaebook import svgd as sv
from vaebook import vrnn
from vaebook.discrete_vae import CategoricalLatent
from vaebook.kernels import reference as kref

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _covers  # noqa: E402

F64 = torch.float64
#: test name -> the public names it gradchecks (read by tests/test_public_api.py, like test_properties.COVERS)
COVERS, covers = _covers.registry()


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, scale=1.0, shift=0.0):
    return (shift + scale * torch.randn(*shape, generator=_g(seed), dtype=F64)).requires_grad_(True)


def check(fn, inputs, gradgrad=True, **kw):
    """gradcheck (and gradgradcheck) of ``fn`` at ``inputs`` (float64 tensors requiring grad)."""
    kw.setdefault("eps", 1e-6)
    kw.setdefault("atol", 1e-5)
    kw.setdefault("rtol", 1e-3)
    assert gradcheck(fn, inputs, **kw)
    if gradgrad:
        assert gradgradcheck(fn, inputs, **kw)


LOGV = math.log(1e6)  # variances from 1e-6 to 1e6

# ==================================================================================================================
# vaebook.divergences
# ==================================================================================================================


@covers("divergences.kl_normal_diag")
@pytest.mark.parametrize("point", ["typical", "taylor", "extreme"])
def test_kl_normal_diag(point):
    if point == "typical":
        args = [_rand(2, 3, seed=i) for i in range(4)]
    elif point == "taylor":  # |d| < 0.1 (the series branch) and the switch at |d| = 0.1
        qv = torch.tensor([1e-4, -0.05, 0.0999, 0.1001, 2.0], dtype=F64, requires_grad=True)
        args = [_rand(5, seed=1), qv, _rand(5, seed=2), torch.zeros(5, dtype=F64, requires_grad=True)]
    else:  # variances 1e-6 and 1e6, means +-100; one event dimension each, so that a KL of 1e11 is not summed
        # with one of 1e-2 (finite differences of the sum would drown the small one in rounding)
        qv = torch.tensor([[-LOGV], [LOGV], [-LOGV], [0.0]], dtype=F64, requires_grad=True)
        pv = torch.tensor([[LOGV], [-LOGV], [-LOGV + 0.5], [0.0]], dtype=F64, requires_grad=True)
        qm = _rand(4, 1, seed=3, scale=100.0)
        # p's mean a few of p's standard deviations away (a mean term of 1e10 would hide the variance terms' change)
        pm = (qm.detach() + 3 * torch.exp(0.5 * pv.detach()) * torch.randn(4, 1, generator=_g(4), dtype=F64))
        args = [qm, qv, pm.requires_grad_(True), pv]
    # at a KL of 5e11 a step of 1e-6 changes it by less than its rounding error (5e-5): a larger step, which is
    # exact for the quadratic mean term and accurate to 1e-6 relative for the exponential variance term
    check(dv.kl_normal_diag, tuple(args), eps=1e-6 if point != "extreme" else 1e-3)


@covers("divergences.kl_mvn")
@pytest.mark.parametrize("cond", [1.0, 1e3])
def test_kl_mvn(cond):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=_g(5), dtype=F64))
    ev = torch.tensor([1.0, math.sqrt(cond), cond], dtype=F64)
    base = q @ torch.diag(ev) @ q.T
    a = torch.linalg.cholesky(base).requires_grad_(True)
    b = torch.linalg.cholesky(torch.eye(3, dtype=F64) + 0.1 * base / cond).requires_grad_(True)

    def f(qm, a, pm, b):
        return dv.kl_mvn(qm, a @ a.T, pm, b @ b.T)

    check(f, (_rand(3, seed=6), a, _rand(3, seed=7), b))


@covers("divergences.kl_categorical")
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_kl_categorical(scale):
    q = _rand(2, 5, seed=8, scale=scale)
    p = _rand(2, 5, seed=9, scale=scale)
    check(dv.kl_categorical, (q, p), atol=1e-5 * scale)


@covers("divergences.kl_mc")
def test_kl_mc_fixed_noise():
    def f(qm, qs, pm):
        q = Independent(Normal(qm, qs.exp()), 1)
        p = Independent(Normal(pm, torch.ones_like(pm)), 1)
        return dv.kl_mc(q, p, num_samples=6, generator=_g(3))

    check(f, (_rand(2, 3, seed=1), _rand(2, 3, seed=2, scale=0.3), _rand(2, 3, seed=3)))


# ==================================================================================================================
# vaebook.relaxed (and its straight-through custom Function)
# ==================================================================================================================


@covers("relaxed.gumbel_softmax", "relaxed.exp_concrete_sample", "relaxed.sample_gumbel")
@pytest.mark.parametrize("tau0,scale", [(1.0, 1.0), (0.05, 1.0), (20.0, 1.0), (1.0, 50.0)])
def test_relaxed_samples(tau0, scale):
    logits = _rand(2, 4, seed=0, scale=scale)
    tau = torch.tensor([tau0, 1.3 * tau0], dtype=F64, requires_grad=True)
    gum = rl.sample_gumbel((2, 4), generator=_g(1), dtype=F64)
    check(lambda l, t: rl.gumbel_softmax(l, t, gumbel=gum), (logits, tau))
    check(lambda l, t: rl.exp_concrete_sample(l, t, gumbel=gum), (logits, tau), atol=1e-5 * scale / tau0)


@covers("relaxed.gumbel_softmax")
@pytest.mark.parametrize("tau0", [0.05, 1.0, 20.0])
def test_straight_through_backward_is_the_soft_gradient(tau0):
    """``_StraightThrough``: forward one-hot, backward the identity, so the hard sample's gradient is the soft one's."""
    logits = _rand(3, 5, seed=2, scale=3.0)
    tau = torch.tensor(tau0, dtype=F64, requires_grad=True)
    gum = rl.sample_gumbel((3, 5), generator=_g(3), dtype=F64)
    w = torch.randn(3, 5, generator=_g(4), dtype=F64)
    hard = rl.gumbel_softmax(logits, tau, hard=True, gumbel=gum)
    soft = rl.gumbel_softmax(logits, tau, hard=False, gumbel=gum)
    assert bool(((hard == 0) | (hard == 1)).all())
    gh = torch.autograd.grad((hard * w).sum(), (logits, tau))
    gs = torch.autograd.grad((soft * w).sum(), (logits, tau))
    for a, b in zip(gh, gs):
        torch.testing.assert_close(a, b)
    # and the soft path itself is smooth to second order
    check(lambda l, t: (rl.gumbel_softmax(l, t, hard=True, gumbel=gum) * w).sum() * 0
          + (rl.gumbel_softmax(l, t, gumbel=gum) * w).sum(), (logits, tau))


@covers("relaxed.exp_concrete_log_prob", "relaxed.concrete_log_prob", "relaxed.ExpConcrete", "relaxed.Concrete")
@pytest.mark.parametrize("tau0,scale", [(0.7, 1.0), (0.05, 1.0), (20.0, 1.0), (1.0, 50.0)])
def test_concrete_log_densities(tau0, scale):
    logits = _rand(2, 4, seed=5, scale=scale)
    tau = torch.tensor([tau0, 1.5 * tau0], dtype=F64, requires_grad=True)
    log_y = rl.exp_concrete_sample(logits.detach() / scale, tau.detach(), gumbel=rl.sample_gumbel(
        (2, 4), generator=_g(6), dtype=F64))
    tol = 1e-5 * (1 + scale / tau0)
    check(lambda l, t: rl.exp_concrete_log_prob(log_y, l, t), (logits, tau), atol=tol)
    check(lambda l, t: rl.ExpConcrete(t, logits=l).log_prob(log_y), (logits, tau), atol=tol)
    if bool((log_y > -30).all()):  # Concrete density on the simplex: needs y > 0
        y = log_y.exp() / log_y.exp().sum(-1, keepdim=True)
        check(lambda l, t: rl.concrete_log_prob(y, l, t), (logits, tau), atol=tol)
        check(lambda l, t: rl.Concrete(t, logits=l).log_prob(y), (logits, tau), atol=tol)
    # the log density in its value (the reparameterised path)
    check(lambda v: rl.exp_concrete_log_prob(torch.log_softmax(v, -1), logits.detach(), tau.detach()),
          (log_y.clone().requires_grad_(True),), atol=tol)


@covers("relaxed.relaxed_kl_equal_tau_exact", "relaxed.recab", "relaxed.relaxed_kl")
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 50.0])
def test_relaxed_kls(scale):
    """The exact equal-temperature KL (quadrature), the ReCAB bound (both branches: |d - mean d| < 1 and >= 1)
    and the Monte Carlo relaxed KL with fixed noise."""
    q = _rand(2, 4, seed=10, scale=scale)
    p = _rand(2, 4, seed=11, scale=scale)
    atol = 1e-5 * (1 + scale)
    check(rl.recab, (q, p), atol=atol)
    if scale <= 3:
        check(rl.relaxed_kl_equal_tau_exact, (q, p), atol=atol, gradgrad=scale == 1.0)
        check(lambda a, b: rl.relaxed_kl(a, b, 0.5, 2.0, num_samples=5, generator=_g(3)), (q, p), atol=atol,
              gradgrad=False)
    # the KL registered for the two distributions is the same closed form
    check(lambda a, b: kl_divergence(rl.ExpConcrete(0.5, logits=a), rl.ExpConcrete(0.5, logits=b)), (q, p),
          atol=atol, gradgrad=False) if scale <= 3 else None


# ==================================================================================================================
# vaebook.distributions
# ==================================================================================================================


@covers("distributions.log_softmax_pp", "distributions.softmax_pp", "distributions.inverse_softmax_pp")
@pytest.mark.parametrize("scale,delta", [(1.0, 1.0), (50.0, 1.0), (1.0, 1e-3)])
def test_softmax_pp(scale, delta):
    v = _rand(2, 3, seed=12, scale=scale)
    check(lambda t: ds.log_softmax_pp(t, delta), (v,), atol=1e-5 * scale)
    check(lambda t: ds.softmax_pp(t, delta), (v,), atol=1e-5 * scale)
    lx = ds.log_softmax_pp(v.detach() / scale, delta).requires_grad_(True)
    check(lambda t: ds.inverse_softmax_pp(t, delta), (lx,))


@covers("distributions.stick_breaking", "distributions.inverse_stick_breaking", "distributions.sb_map",
        "distributions.sb_map_inverse")
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_stick_breaking_maps(scale):
    z = _rand(2, 4, seed=13, scale=scale)
    check(ds.stick_breaking, (z,), atol=1e-5 * scale)
    check(ds.sb_map, (z,), atol=1e-5 * scale)
    lp = ds.stick_breaking(z.detach() / scale).requires_grad_(True)
    check(ds.inverse_stick_breaking, (lp,))
    check(ds.sb_map_inverse, (ds.sb_map(z.detach() / scale).requires_grad_(True),))


@covers("distributions.PlanarFlow", "distributions.IGRPlanar")
def test_planar_flow_and_igr_planar():
    flow = ds.PlanarFlow(3, 2, init_scale=0.5, generator=_g(14)).double()
    z = _rand(4, 3, seed=15)
    check(lambda t: flow(t), (z,))  # f(z) and log|det J|
    names = [n for n, _ in flow.named_parameters()]

    def f(*params):  # the flow as a function of its parameters u, w (through u_tilde) and b
        return torch.func.functional_call(flow, dict(zip(names, params)), (z.detach(),))

    check(f, tuple(p.detach().clone().requires_grad_(True) for p in flow.parameters()))
    eps = torch.randn(5, 3, generator=_g(16), dtype=F64)

    def g(loc, ls, tau):
        d = ds.IGRPlanar(loc, ls.exp(), tau, flow)
        zz = loc + ls.exp() * eps
        return d.log_x_from_gauss(zz), d._gauss_log_prob(zz) - d.log_abs_det_h(zz)

    check(g, (_rand(3, seed=17), _rand(3, seed=18, scale=0.3), torch.tensor(0.6, dtype=F64, requires_grad=True)),
          gradgrad=False)


@covers("distributions.IGR", "distributions.IGRStickBreaking")
@pytest.mark.parametrize("tau0,scale", [(0.6, 0.3), (0.05, 0.3), (20.0, 0.3), (0.6, 3.0)])
def test_igr_log_densities_and_kl(tau0, scale):
    eps = torch.randn(5, 3, generator=_g(0), dtype=F64)
    loc = _rand(3, seed=1)
    ls = _rand(3, seed=2, scale=scale)
    tau = torch.tensor(tau0, dtype=F64, requires_grad=True)
    p_loc = torch.randn(3, generator=_g(3), dtype=F64)
    for cls in (ds.IGR, ds.IGRStickBreaking):
        def f(loc, ls, tau, cls=cls):
            d = cls(loc, ls.exp(), tau)
            log_x = d.log_x_from_gauss(loc + ls.exp() * eps)
            return d.log_prob_log(log_x), log_x

        check(f, (loc, ls, tau), gradgrad=tau0 == 0.6 and scale < 1)
        check(lambda a, b, cls=cls: kl_divergence(cls(a, b.exp(), tau0), cls(p_loc, torch.ones(3, dtype=F64), tau0)),
              (loc, ls))
        x = cls(loc.detach(), ls.detach().exp(), tau0).log_x_from_gauss(loc.detach() + eps[0]).exp()
        if bool((x > 1e-12).all()):  # log_prob on the simplex, in the point x
            check(lambda v, cls=cls: cls(loc.detach(), ls.detach().exp(), tau0).log_prob(v / v.sum(-1, keepdim=True)),
                  (x.clone().requires_grad_(True),), gradgrad=False, atol=1e-4)


@covers("distributions.igr_limit_probs", "distributions.igr_kl_mc")
def test_igr_limit_probs_and_kl_mc():
    check(lambda m, s: ds.igr_limit_probs(m, s.exp()), (_rand(2, 3, seed=4), _rand(2, 3, seed=5, scale=0.3)),
          gradgrad=False)

    def f(loc, ls):
        q = ds.IGR(loc, ls.exp(), 0.5)
        p = ds.IGRStickBreaking(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), 0.7)
        return ds.igr_kl_mc(q, p, num_samples=4, generator=_g(6))

    check(f, (_rand(3, seed=7), _rand(3, seed=8, scale=0.3)), gradgrad=False)


# ==================================================================================================================
# vaebook.mixtures (closed forms and bounds between Gaussian mixtures)
# ==================================================================================================================


def _mix(lw, loc, ls):
    return MixtureSameFamily(Categorical(logits=lw), Independent(Normal(loc, ls.exp()), 1))


P_FIXED = _mix(torch.randn(3, generator=_g(20), dtype=F64), torch.randn(3, 2, generator=_g(21), dtype=F64),
               0.3 * torch.randn(3, 2, generator=_g(22), dtype=F64))


@covers("mixtures.kl_gmm")
@pytest.mark.parametrize("method", ["matched", "variational", "product", "variational_upper", "gaussian", "unscented",
                                    "goldberger", "min_pair", "mc"])
@pytest.mark.parametrize("point", ["typical", "extreme"])
def test_kl_gmm_methods(method, point):
    scale, lsc = (1.0, 0.3) if point == "typical" else (10.0, 2.0)  # extreme: far means, variances e^{+-4}
    lw, loc, ls = _rand(3, seed=23), _rand(3, 2, seed=24, scale=scale), _rand(3, 2, seed=25, scale=lsc)
    # variational_upper: by default the gradient is the envelope gradient at the final iterate (the exact gradient of
    # the bound for that fixed phi, not of the minimum over phi unless converged); unroll=True differentiates the
    # returned value itself, which is what gradcheck compares with finite differences
    opts = {"mc": {"num_samples": 8, "seed": 1}, "unscented": {"sigma_points": "cholesky"},
            "variational_upper": {"unroll": True}}.get(method, {})
    inputs = (loc, ls) if method == "mc" else (lw, loc, ls)  # mc: the component index is sampled (no weight grad)

    def f(*a):
        q = _mix(lw.detach(), *a) if method == "mc" else _mix(*a)
        return mx.kl_gmm(q, P_FIXED, method, **opts)

    check(f, inputs, gradgrad=method in ("matched", "variational", "product") and point == "typical",
          atol=1e-5 * scale**2)


@covers("mixtures.pairwise_kl", "mixtures.log_overlaps", "mixtures.log_responsibilities", "mixtures.durrieu_bounds")
@pytest.mark.parametrize("full", [False, True])
def test_mixture_pieces(full):
    loc, ls = _rand(3, 2, seed=26), _rand(3, 2, seed=27, scale=0.3)
    a = torch.randn(3, 2, 2, generator=_g(28), dtype=F64).requires_grad_(True)

    def comps(loc, ls, a):
        if full:
            return MultivariateNormal(loc, a @ a.transpose(-1, -2) + torch.diag_embed(ls.exp()))
        return Independent(Normal(loc, ls.exp()), 1)

    other = Independent(Normal(torch.zeros(2, 2, dtype=F64), torch.ones(2, 2, dtype=F64)), 1)
    inputs = (loc, ls, a) if full else (loc, ls)
    f = (lambda loc, ls, a=a: comps(loc, ls, a)) if not full else comps
    check(lambda *t: mx.pairwise_kl(f(*t), other), inputs)
    check(lambda *t: mx.log_overlaps(f(*t), other), inputs)
    x = torch.randn(4, 2, generator=_g(29), dtype=F64)
    check(lambda lw, *t: mx.log_responsibilities(MixtureSameFamily(Categorical(logits=lw), f(*t)), x),
          (_rand(3, seed=30), *inputs), gradgrad=not full)
    check(lambda lw, *t: mx.durrieu_bounds(MixtureSameFamily(Categorical(logits=lw), f(*t)), P_FIXED),
          (_rand(3, seed=31), *inputs), gradgrad=False)


@covers("mixture_vae.relaxed_mixture_sample", "mixture_vae.GumbelMixtureVAE")
def test_relaxed_mixture_sample_and_matched_kl_term():
    check(lambda lg, m, v, t: mvae.relaxed_mixture_sample(lg, m, v, t, generator=_g(0)),
          (_rand(2, 3, seed=1), _rand(2, 3, 2, seed=2), _rand(2, 3, 2, seed=3),
           torch.tensor(0.5, dtype=F64, requires_grad=True)))
    m = mvae.GumbelMixtureVAE((1, 2, 2), 2, 3, (4,)).double()
    check(lambda lg, mu, lv: m.kl_term(torch.log_softmax(lg, -1), mu, lv),
          (_rand(2, 3, seed=4), _rand(2, 3, 2, seed=5), _rand(2, 3, 2, seed=6)), gradgrad=False)


# ==================================================================================================================
# custom Functions of vaebook.kernels: the Triton paths (interpreter in float64) and their torch references
# ==================================================================================================================

TRITON_OK = kn.triton_available() and (kn.interpreter_enabled() or torch.cuda.is_available())
KERNEL_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not TRITON_OK, reason="triton is not installed, or no GPU and TRITON_INTERPRET is not set"))]


@covers("kernels.gumbel_softmax", "kernels.reference.gumbel_softmax_reference")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("tau0,scale", [(0.7, 1.0), (0.05, 1.0), (20.0, 50.0)])
def test_kernel_gumbel_softmax(backend, hard, tau0, scale):
    """``_GumbelSoftmaxTriton``: forward and backward kernels (logits and a per-row tensor tau), float64.
    With ``hard=True`` the backward is the straight-through (soft) gradient, so the function checked is the soft
    sample plus zero times the hard one: gradcheck then compares the Triton backward with finite differences of
    the soft sample."""
    logits = _rand(2, 6, seed=7, scale=scale)
    tau = torch.tensor([tau0, 2 * tau0], dtype=F64, requires_grad=True)
    g = rl.sample_gumbel((2, 6), generator=_g(8), dtype=F64)
    w = torch.randn(2, 6, generator=_g(9), dtype=F64)
    if hard:
        def f(l, t):
            yh = kn.gumbel_softmax(l, t, True, gumbel=g, backend=backend)
            ys = kref.gumbel_softmax_reference(l.detach(), t.detach(), gumbel=g)
            return ((yh - yh.detach() + ys) * w).sum()  # value of the soft sample, gradient of the hard one
        assert gradcheck(f, (logits, tau), eps=1e-6, atol=1e-5 * (1 + scale / tau0), rtol=1e-3)
    else:
        check(lambda l, t: kn.gumbel_softmax(l, t, gumbel=g, backend=backend), (logits, tau),
              atol=1e-5 * (1 + scale / tau0), gradgrad=backend == "torch")
        check(lambda l, t: kref.gumbel_softmax_reference(l, t, gumbel=g), (logits, tau), atol=1e-5 * (1 + scale / tau0))
    if backend == "triton":  # the backward is a kernel: no double backward
        y = kn.gumbel_softmax(logits, tau, hard, gumbel=g, backend="triton")
        (gl,) = torch.autograd.grad((y * w).sum(), logits, create_graph=True)
        with pytest.raises(RuntimeError):
            torch.autograd.grad(gl.sum(), logits)


@covers("kernels.matched_kl", "kernels.reference.matched_kl_reference")
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("point", ["typical", "extreme"])
def test_kernel_matched_kl(backend, shared, point):
    """``_MatchedKLTriton``: the matched bound between diagonal mixtures and its gradient for all six inputs (a shared
    prior's gradient is summed over the batch), float64."""
    lsc = 0.5 if point == "typical" else 4.0  # extreme: variances from e^-8 to e^8 and logits of +-10
    q = (_rand(2, 3, seed=10, scale=1 if point == "typical" else 10), _rand(2, 3, 2, seed=11),
         _rand(2, 3, 2, seed=12, scale=lsc))
    pb = () if shared else (2,)
    p = (_rand(*pb, 3, seed=13), _rand(*pb, 3, 2, seed=14), _rand(*pb, 3, 2, seed=15, scale=lsc))
    tol = 1e-5 if point == "typical" else 1e-2
    check(lambda *t: kn.matched_kl(*t, backend=backend), (*q, *p), atol=tol, gradgrad=backend == "torch",
          fast_mode=backend == "triton")
    check(kref.matched_kl_reference, (*q, *p), atol=tol, gradgrad=False)


# ==================================================================================================================
# vaebook.svgd, vaebook.ldc and the kernel references: the RBF / Stein kernel terms
# ==================================================================================================================


@covers("svgd.rbf_kernel", "svgd.stein_kernel_matrix", "svgd.ksd", "svgd.svgd_direction",
        "kernels.reference.rbf_gram", "kernels.reference.svgd_direction_reference", "kernels.reference.ksd_reference",
        "kernels.ksd", "kernels.svgd_direction")
@pytest.mark.parametrize("h", [0.05, 1.0, 50.0])
def test_stein_kernel_terms(h):
    x = _rand(5, 2, seed=16)
    s = _rand(5, 2, seed=17)
    y = _rand(4, 2, seed=18)
    # vaebook.svgd forms squared distances with torch.cdist, whose backward has no derivative in torch
    # (NotImplementedError: '_cdist_backward'): first derivatives only there; the dense references (explicit
    # differences) are checked to second order
    cd = {"gradgrad": False}
    check(lambda a, b: sv.rbf_kernel(a, b, h), (x, y), **cd)
    check(lambda a, b: kref.rbf_gram(a, b, h), (x, y))
    check(lambda a, b: sv.stein_kernel_matrix(a, b, h), (x, s), **cd)
    for stat in ("u", "v"):
        check(lambda a, b, st=stat: sv.ksd(a, b, h, statistic=st, block_size=2), (x, s), **cd)
        check(lambda a, b, st=stat: kref.ksd_reference(a, b, h, st), (x, s), **cd)
        check(lambda a, b, st=stat: kn.ksd(a, b, h, statistic=st, backend="torch"), (x, s), **cd)
    check(lambda a, b: sv.svgd_direction(a, b, h, block_size=2), (x, s), **cd)
    check(lambda a, b: kref.svgd_direction_reference(a, b, h), (x, s))
    check(lambda a, b: kn.svgd_direction(a, b, h, backend="torch"), (x, s))


@covers("ldc.u_statistic", "ldc.mmd", "ldc.ksd_with_se", "ldc.fitted_gaussian")
def test_ldc_statistics():
    a = torch.randn(6, 6, generator=_g(19), dtype=F64)
    H = (a + a.T).requires_grad_(True)
    check(ldc.u_statistic, (H,), gradgrad=False)  # the clip at 0 of the variance terms is not smooth twice
    x, y = _rand(6, 2, seed=20), _rand(6, 2, seed=21, shift=0.5)
    check(lambda a, b: ldc.mmd(a, b, 1.5, return_se=True), (x, y), gradgrad=False)
    check(lambda a, b: ldc.ksd_with_se(a, b, 0.8), (x, _rand(6, 2, seed=22)), gradgrad=False)
    check(lambda z: ldc.fitted_gaussian(z, 2.0, 1e-8), (_rand(2, 5, 3, seed=23),))


# ==================================================================================================================
# vaebook.vrnn, vaebook.models, vaebook.data, vaebook.introspective, vaebook.recab_vae
# ==================================================================================================================


@covers("vrnn.log_normal_diag", "vrnn.GMVRNN", "vrnn.VRNN")
def test_vrnn_per_step_terms():
    check(vrnn.log_normal_diag, (_rand(3, 2, seed=24), _rand(3, 2, seed=25), _rand(3, 2, seed=26, scale=3.0)))
    q = (_rand(2, 3, seed=27), _rand(2, 3, 2, seed=28), _rand(2, 3, 2, seed=29))
    p = (_rand(2, 3, seed=30), _rand(2, 3, 2, seed=31), _rand(2, 3, 2, seed=32))
    check(lambda *t: vrnn.GMVRNN.matched_kl(t[:3], t[3:]), (*q, *p))
    torch.manual_seed(0)
    m = vrnn.VRNN(3, 4, 2, 3).double()
    noise = torch.randn(2, 3, 2, generator=_g(33), dtype=F64)
    x = torch.rand(2, 3, 3, generator=_g(34), dtype=F64).requires_grad_(True)
    # the per-step KL (closed form given h_{t-1}) and the whole ELBO with fixed noise, in the data
    check(lambda t: tuple(m.elbo_per_step(t, noise=noise)[k] for k in ("kl", "rec", "logw")), (x,), gradgrad=False)


@covers("models.GaussianEncoder", "models.BernoulliDecoder", "models.GaussianDecoder", "models.VAE", "models.MLP")
@pytest.mark.parametrize("learn_var", ["output", "global"])
def test_model_heads(learn_var):
    torch.manual_seed(0)
    enc = md.GaussianEncoder(4, 2, (5,), "tanh").double()
    check(enc, (_rand(3, 4, seed=35),))
    bern = md.BernoulliDecoder(2, (4,), (5,), "softplus").double()
    xb = torch.bernoulli(torch.full((3, 4), 0.5, dtype=F64))
    check(lambda z: bern(z).log_prob(xb), (_rand(3, 2, seed=36),))
    gauss = md.GaussianDecoder(2, (4,), (5,), "softplus", learn_var=learn_var).double()
    check(lambda z: gauss(z).log_prob(xb), (_rand(3, 2, seed=37),))
    vae = md.VAE(enc, bern)

    def f(x):
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return vae.elbo(x, num_samples=2)["elbo"]

    check(f, (torch.rand(3, 4, generator=_g(38), dtype=F64).requires_grad_(True),), gradgrad=False)


@covers("data.toy2d_log_density", "introspective.reconstruction_error", "recab_vae.discrete_kl_per_variable")
def test_closed_form_helpers():
    x = (vd.toy2d("8gaussians", 5, seed=0).double() + 0.01).requires_grad_(True)
    check(lambda t: vd.toy2d_log_density("8gaussians", t), (x,), atol=1e-4)
    check(intro.reconstruction_error, (_rand(3, 2, 2, seed=39), _rand(3, 2, 2, seed=40)))
    params = _rand(3, 2, 4, seed=41, scale=3.0)
    for kind in ("recab", "categorical", "relaxed_exact"):
        lat = CategoricalLatent(2, 4, kind).double()
        check(lambda t, lat=lat: recab_vae.discrete_kl_per_variable(lat, t, None, 0.5), (params,),
              gradgrad=kind != "relaxed_exact")
    lat = CategoricalLatent(2, 4, "relaxed_mc").double()
    sample = lat.rsample(params.detach(), 0.5, 2, generator=_g(42))
    check(lambda t: recab_vae.discrete_kl_per_variable(lat, t, sample, 0.5), (params,))
