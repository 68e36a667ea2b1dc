"""Hidden tests of the chapters' code exercises, for the nbgrader and otter-grader exports (``vaebook.tooling.assignments``).

A chapter's *graded check* (its code cell tagged ``graded``) tests the student's answer on the chapter's own inputs,
and its printed output is on the book's pages. A student can therefore pass it with typed-in numbers: a function
that returns the printed value, a dict copied from the page. The hidden test of an exercise, appended to its graded
check between nbgrader's ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` (an otter-grader hidden test case
in the otter export), recomputes the answer from the student's own objects on inputs that the page never shows:

* a function is called on fresh random inputs (other shapes, sizes, parameters) and compared with an independent
  reference written here (a closed form, quadrature, a direct sum, ``torch.distributions``);
* a cell that computes a result (a dict, a list, a trained model's numbers) is **run again** (:func:`rerun`) with
  fresh inputs put in place of the chapter's (another seed, other data, another start), and its new result is
  compared with a reference computed here on the same fresh inputs, or must at least change and keep the
  chapter's qualitative claim; a typed-in result does not change, so it fails;
* trained models are evaluated on test digits that the graded check did not use.

Hidden tests run in the notebook's namespace and leave it as they found it: the random number generators (torch,
NumPy, ``random`` and every ``torch.Generator`` of the notebook) are restored afterwards (:func:`run`), and re-runs
happen in a copy of the namespace. They are kept here, in the library, keyed by exercise label (:data:`HIDDEN`),
so that the chapters in ``book/`` stay as they are; ``tests/test_assignments.py`` checks that every code exercise
of every chapter has one.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import textwrap

__all__ = [
    "HIDDEN",
    "hidden_code",
    "user_namespace",
    "solution_source",
    "rerun",
    "patched",
    "isolated",
    "run",
    "differs",
]


def user_namespace() -> dict:
    """The namespace of the running IPython kernel (the notebook's globals)."""
    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        raise RuntimeError(
            "hidden tests run inside a Jupyter kernel (nbgrader, otter-grader)"
        )
    return ip.user_ns


def solution_source(*patterns: str) -> str:
    """The source of the latest cell executed before the current one in which every regex of ``patterns`` matches
    (``re.M``): the student's solution cell. Raises ``AssertionError`` if no executed cell matches."""
    from IPython import get_ipython

    ip = get_ipython()
    inputs = list(ip.user_ns.get("In") or ip.history_manager.input_hist_raw)
    for src in reversed(
        inputs[:-1]
    ):  # the last one is the cell running this test
        if all(re.search(p, src, re.M) for p in patterns):
            return src
    raise AssertionError(
        f"hidden test: no executed cell matches {patterns}; keep the names "
        "and the given lines "
        "of the exercise's cell"
    )


def rerun(*patterns: str, drop: str | None = None, **fresh) -> dict:
    """Run the student's solution cell (:func:`solution_source`) again in a
    copy of the notebook's namespace in which the names in ``fresh`` are
    replaced; the statements whose first line matches the regex ``drop``
    (given set-up lines that would overwrite a fresh input; a statement may
    span several lines) are left out. Returns the namespace after the run."""
    import ast

    from IPython import get_ipython

    # IPython magics, as in the notebook
    code = get_ipython().transform_cell(solution_source(*patterns))
    if drop:
        lines = code.splitlines()
        keep = [True] * len(lines)
        for stmt in ast.parse(code).body:
            if re.match(drop, lines[stmt.lineno - 1]):
                for i in range(stmt.lineno - 1, stmt.end_lineno):
                    keep[i] = False
        code = "\n".join(line for line, k in zip(lines, keep) if k)
    ns = dict(user_namespace())
    ns.update(fresh)
    exec(
        compile(
            code, "<your solution cell, run again on fresh inputs>", "exec"
        ),
        ns,
    )
    return ns


@contextlib.contextmanager
def patched(**values):
    """Temporarily replace names in the notebook's namespace (restored afterwards, also on failure)."""
    ns, missing = user_namespace(), object()
    saved = {k: ns.get(k, missing) for k in values}
    ns.update(values)
    try:
        yield ns
    finally:
        for k, v in saved.items():
            if v is missing:
                ns.pop(k, None)
            else:
                ns[k] = v


@contextlib.contextmanager
def isolated():
    """Save and restore the random state: torch's default generators, NumPy's, ``random``'s and every
    ``torch.Generator`` in the notebook's namespace, so that a hidden test does not change later cells."""
    import numpy as np
    import torch

    gens = [
        (g, g.get_state())
        for g in list(user_namespace().values())
        if isinstance(g, torch.Generator)
    ]
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        cuda = (
            list(range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else []
        )
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        for g, state in gens:
            g.set_state(state)


def run(test) -> None:
    """Run a hidden test function with the random state isolated (:func:`isolated`), seeded (the same draws
    whatever the notebook did before) and with gradients enabled."""
    import numpy as np
    import torch

    with isolated(), torch.enable_grad():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        test()


def _numbers(obj) -> list[float]:
    import torch

    if isinstance(obj, dict):
        return [v for k in sorted(obj, key=repr) for v in _numbers(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _numbers(o)]
    if isinstance(obj, torch.Tensor):
        return obj.detach().double().flatten().tolist()
    try:
        return [float(obj)]
    except (TypeError, ValueError):
        return []


def differs(new, old, rtol: float = 1e-9) -> bool:
    """Whether two results (numbers, tensors, or dicts/lists/tuples of them) differ in some number: a result
    recomputed on fresh inputs differs from the first one; a typed-in result does not."""
    a, b = _numbers(new), _numbers(old)
    if len(a) != len(b):
        return True
    return any(
        not (
            math.isclose(x, y, rel_tol=rtol, abs_tol=1e-300)
            or (math.isnan(x) and math.isnan(y))
        )
        for x, y in zip(a, b)
    )


# -----------------------------------------------------------------------------
# The registry: exercise label -> the body of its hidden test. The body runs
# inside a function defined in the
# notebook's namespace, so it reads the chapter's names directly; ``ht`` is
# this module.
# -----------------------------------------------------------------------------

HIDDEN: dict[str, str] = {}

# Chapter 1
# -----------------------------------------------------------------------------
HIDDEN["ch01-ex-kl-grad"] = """
g = torch.Generator().manual_seed(1001)
m, v = 3 * torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
gm, gv = kl_gradients(m, v)
mr, vr = m.clone().requires_grad_(True), v.clone().requires_grad_(True)
(0.5 * (mr**2 + vr.exp() - vr - 1)).sum().backward()
assert torch.allclose(torch.as_tensor(gm, dtype=torch.float64), mr.grad), "dKL/dmean is wrong on fresh inputs"
assert torch.allclose(torch.as_tensor(gv, dtype=torch.float64), vr.grad), "dKL/dlogvar is wrong on fresh inputs"
"""

HIDDEN["ch01-ex-naive-kl"] = """
from torch.distributions import Normal, kl_divergence
g = torch.Generator().manual_seed(1002)
m, v = 2 * torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
ref = kl_divergence(Normal(m, (0.5 * v).exp()), Normal(torch.zeros_like(m), torch.ones_like(m))).sum(-1)
out = kl_standard_normal(m, v)
assert out.shape == ref.shape and torch.allclose(out, ref), "kl_standard_normal is wrong on fresh inputs"
"""

HIDDEN["ch01-ex-beta"] = """
from vaebook.models import VAE
assert set(models) == {1.0, 4.0} and set(runs) == {1.0, 4.0}
assert models[1.0] is not models[4.0], "two models, trained separately"
for b, m in models.items():
    assert isinstance(m, VAE) and m.beta == b and m.latent_dim == 2, "VAE.mlp(latent_dim=2, ..., beta=beta)"
xs = x_test[1000:2000].to(device)        # test digits that the graded check did not use
torch.manual_seed(3)
with torch.no_grad():
    t = {b: {k: v.mean().item() for k, v in models[b].eval().elbo(xs).items()} for b in (1.0, 4.0)}
    untrained = VAE.mlp(latent_dim=2, hidden=(200, 200), binarize="dynamic").to(device)
    untrained.dec.init_bias(x_fit)
    e0 = untrained.eval().elbo(xs)["elbo"].mean().item()
for b in (1.0, 4.0):
    assert t[b]["elbo"] > e0 + 20, f"the beta = {b} model is not trained (test ELBO {t[b]['elbo']:.1f})"
    assert abs(runs[b]["kl"] - t[b]["kl"]) < 1.5, f"runs[{b}] is not the log of models[{b}]'s training"
    assert abs(runs[b]["rec"] - t[b]["rec"]) < 10, f"runs[{b}] is not the log of models[{b}]'s training"
assert t[4.0]["kl"] < t[1.0]["kl"] - 1 and t[4.0]["elbo"] < t[1.0]["elbo"]
"""

# Chapter 2
# -----------------------------------------------------------------------------
_MIXTURES = """
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
def _mix(w, loc, scale):
    return MixtureSameFamily(Categorical(probs=w), Independent(Normal(loc, scale), 1))
"""

HIDDEN["ch02-ex-equal-weights"] = (
    _MIXTURES
    + """
g = torch.Generator().manual_seed(2001)
r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
f2 = _mix(r(6, 5).softmax(-1), 2 * r(6, 5, 3), (0.4 * r(6, 5, 3)).exp())
g2 = _mix(r(6, 5).softmax(-1), 2 * r(6, 5, 3), (0.4 * r(6, 5, 3)).exp())
cf, cg = f2.component_distribution.base_dist, g2.component_distribution.base_dist
kl = (torch.log(cg.scale / cf.scale) + (cf.scale**2 + (cf.loc - cg.loc)**2) / (2 * cg.scale**2) - 0.5).sum(-1)
ref = (f2.mixture_distribution.probs * kl).sum(-1)
out = weighted_diagonal_kl(f2, g2)
assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-10), "wrong on fresh mixtures (K = 5, d = 3)"
"""
)

HIDDEN["ch02-ex-permute"] = (
    _MIXTURES
    + """
g = torch.Generator().manual_seed(2002)
r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
mix = _mix(r(4, 5).softmax(-1), 2 * r(4, 5, 2), (0.3 * r(4, 5, 2)).exp())
perm = torch.tensor([3, 0, 4, 1, 2])
out = permute_components(mix, perm)
c, co = mix.component_distribution.base_dist, out.component_distribution.base_dist
assert torch.allclose(out.mixture_distribution.probs, mix.mixture_distribution.probs[..., perm])
assert torch.allclose(co.loc, c.loc[..., perm, :]) and torch.allclose(co.scale, c.scale[..., perm, :])
x = 3 * r(20, 4, 2)
assert torch.allclose(out.log_prob(x), mix.log_prob(x), atol=1e-10)
"""
)

HIDDEN["ch02-ex-mc-rate"] = (
    _MIXTURES
    + """
# the same question for another pair: the errors must follow this pair's standard deviation, not the chapter's
f2 = _mix(torch.tensor([0.2, 0.8], dtype=torch.float64), torch.tensor([[-3.0], [1.0]], dtype=torch.float64),
          torch.tensor([[0.5], [1.5]], dtype=torch.float64))
g2 = _mix(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[-0.5], [2.5]], dtype=torch.float64),
          torch.tensor([[1.0], [0.6]], dtype=torch.float64))
grid = torch.linspace(-25, 25, 100_001, dtype=torch.float64)[:, None]
lf, lg = f2.log_prob(grid), g2.log_prob(grid)
kl2 = torch.trapezoid(lf.exp() * (lf - lg), grid[:, 0]).item()
sd2 = torch.trapezoid(lf.exp() * (lf - lg - kl2) ** 2, grid[:, 0]).sqrt().item()
ns2 = ht.rerun(r"^\\s*err\\s*=", f=f2, g=g2, kl_exact=kl2)
err2, sizes = ns2["err"], ns2["ns"]
assert len(err2) == len(sizes) == 3
for n, e in zip(sizes, err2):
    expected = sd2 * math.sqrt(2 / (math.pi * n))     # E|N(0, sd^2 / n)|
    assert 0.65 * expected < float(e) < 1.5 * expected, (
        f"n = {n}: mean |error| {float(e):.4f} on another pair, expected "
        f"about {expected:.4f}")
"""
)

# Chapter 3
# -----------------------------------------------------------------------------
HIDDEN["ch03-ex-k2"] = """
import numpy as np
from scipy import integrate
log_f = lambda x: -np.abs(x) - 2 * np.log1p(np.exp(-np.abs(x)))     # standard logistic density
for d in (0.37, -1.3, 2.9, 5.5):
    ref = integrate.quad(lambda x: np.exp(log_f(x - d)) * (log_f(x - d) - log_f(x)), -80, 80,
                         points=[0.0, d], limit=400)[0]
    assert abs(float(kl_logistic(d)) - ref) < 1e-7, f"kl_logistic({d}) is wrong"
"""

HIDDEN["ch03-ex-baseline"] = """
# another objective f (other target, and a constant offset that a baseline must cancel); `exact` is not updated,
# so an estimator has to sample
g = torch.Generator().manual_seed(3001)
target2 = torch.rand(K, generator=g, dtype=torch.float64)
f2 = lambda z: (z - target2).pow(2).sum(-1) + 3.0
exact2 = torch.autograd.grad((torch.softmax(theta, -1) * f2(eye)).sum(), theta)[0]
def plain():
    k = relaxed.gumbel_max(theta.detach().expand(S, K), return_index=True)
    return (f2(eye[k]) * torch.log_softmax(theta, -1)[k]).mean()
with ht.patched(f=f2):
    torch.manual_seed(0)
    gs = metrics.gradient_samples(reinforce_loo, [theta], 400)
    gp = metrics.gradient_samples(plain, [theta], 400)
    torch.manual_seed(7)
    a = metrics.gradient_samples(reinforce_loo, [theta], 20)
with ht.patched(f=lambda z: f2(z) + 50.0):
    torch.manual_seed(7)
    b = metrics.gradient_samples(reinforce_loo, [theta], 20)
z = (gs.mean(0) - exact2) / (gs.var(0) / len(gs)).sqrt()
assert z.abs().max() < 4.5, "biased for another f"
assert gs.var(0).sum() < gp.var(0).sum() / 3, "no variance reduction for another f"
assert torch.allclose(a, b, atol=1e-8), "adding a constant to f changes the gradient: not a leave-one-out baseline"
"""

HIDDEN["ch03-ex-kl-choice"] = """
from vaebook.data import load_mnist as _load_mnist
def other_digits(*args, **kwargs):       # 2,000 other training digits for the same recipe
    x, y = _load_mnist(*args, **kwargs)
    return x[6000:], y[6000:]
ns2 = ht.rerun(r"^\\s*info\\s*=", load_mnist=other_digits, x_test=x_test[2000:])
info2 = ns2["info"]
assert set(info2) == {"categorical", "relaxed_mc"}
assert ht.differs(info2, info), "`info` did not change with the data: it must come from training the two models"
for kl, (elbo, kl_cat) in info2.items():
    assert -400 < float(elbo) < -50 and 0 <= float(kl_cat) <= 8 * math.log(10) + 1e-4, (kl, elbo, kl_cat)
assert info2["relaxed_mc"][1] < info2["categorical"][1]
"""

# Chapter 4
# -----------------------------------------------------------------------------
HIDDEN["ch04-ex-logitnormal"] = """
from torch.distributions import Normal
g = torch.Generator().manual_seed(4001)
x1 = torch.rand(500, generator=g, dtype=torch.float64) * 0.996 + 0.002
logit = torch.log(x1) - torch.log1p(-x1)
for mu, sigma, tau in ((-0.7, 1.3, 0.9), (1.1, 0.4, 2.5)):
    ref = Normal(mu / tau, sigma / tau).log_prob(logit) - torch.log(x1) - torch.log1p(-x1)
    out = torch.as_tensor(logit_normal_log_prob(x1, mu, sigma, tau), dtype=torch.float64)
    assert torch.allclose(out, ref, atol=1e-8), f"wrong for mu = {mu}, sigma = {sigma}, tau = {tau}"
"""

HIDDEN["ch04-ex-delta"] = """
for tau, delta in ((0.5, 0.3), (1.5, 0.5), (1.0, 2.0), (0.3, 0.02)):
    pred = 0.25 * (1 + math.erf(tau * math.log(delta) / math.sqrt(2))) ** 2
    assert abs(float(last_category_prob(tau, delta)) - pred) < 1e-6, f"wrong for tau = {tau}, delta = {delta}"
"""

HIDDEN["ch04-ex-prior"] = """
for mu0, K in ((-0.3, 5), (-1.2, 20), (-0.55, 3)):
    s = float(uniform_sigma_0(mu0, K))
    probs = igr_limit_probs(torch.full((K - 1,), mu0, dtype=torch.float64),
                            torch.full((K - 1,), s, dtype=torch.float64))
    assert torch.allclose(probs, torch.full_like(probs, 1 / K), atol=1e-6), f"not uniform for mu_0 = {mu0}, K = {K}"
"""

HIDDEN["ch04-ex-truncated-kl"] = """
from torch.distributions import Normal, kl_divergence
g = torch.Generator().manual_seed(4004)          # another posterior and prior, in place of the given lines
q2 = IGRStickBreaking(torch.randn(30, generator=g), 0.5, 0.2)
p2 = IGRStickBreaking(torch.full((30,), -1.0), 1.5, 0.2)
ns2 = ht.rerun(r"^\\s*kls\\s*=", drop=r"^\\s*[qp]_sb\\s*=", q_sb=q2, p_sb=p2)
kls2 = ns2["kls"]
gauss = kl_divergence(Normal(q2.loc, q2.scale), Normal(p2.loc, p2.scale)).cumsum(0)
assert len(kls2) == 30, "one KL per level"
got = torch.tensor([float(v) for v in kls2], dtype=gauss.dtype)
assert torch.allclose(got, gauss, rtol=1e-5), "kls is not recomputed for another posterior"
"""

# Chapter 5
# -----------------------------------------------------------------------------
HIDDEN["ch05-ex-cat-ratio"] = """
for K in (4, 7, 25, 100):
    assert abs(float(cat_ratio_limit(K)) - (K + 1) / K**2) < 1e-9, f"wrong for K = {K}"
K = 7
e = 1e-4 * torch.randn(K, generator=torch.Generator().manual_seed(5001), dtype=torch.float64)
zero = torch.zeros(K, dtype=torch.float64)
ratio = (kl_categorical(e, zero) / relaxed.relaxed_kl_equal_tau_exact(e, zero)).item()
assert abs(ratio - float(cat_ratio_limit(K))) < 1e-3
"""

HIDDEN["ch05-ex-shift"] = """
g = torch.Generator().manual_seed(5002)
q, p = 2 * torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
c = torch.randn(3, 4, generator=g, dtype=torch.float64)
def ref(c):   # sum_k KL(Gumbel(mu1_k, 1) || Gumbel(mu2_k, 1)) = sum_k (mu1 - mu2 + exp(mu2 - mu1) - 1)
    mu1 = torch.log_softmax(q, -1)
    mu2 = torch.log_softmax(p, -1) + torch.as_tensor(c, dtype=torch.float64)[..., None]
    return (mu1 - mu2 + torch.exp(mu2 - mu1) - 1).sum(-1)
out = gumbel_bound(q, p, c)
assert out.shape == (3, 4) and torch.allclose(out, ref(c), atol=1e-10), "wrong for batched logits and shifts"
assert torch.allclose(torch.as_tensor(gumbel_bound(q, p, 0.3)), ref(0.3), atol=1e-10), "wrong for a scalar shift"
"""

HIDDEN["ch05-ex-kl-weight"] = """
from torch.utils.data import DataLoader, TensorDataset
small = DataLoader(TensorDataset(x_train[5000:6000]), batch_size=100, shuffle=True,
                   generator=torch.Generator().manual_seed(1))
ns2 = ht.rerun(r"^\\s*kl_weight_run\\s*=", loader=small)
r2 = ns2["kl_weight_run"]
assert set(r2) >= {"kl_d", "beta_d"} and abs(r2["beta_d"] - 0.1) < 1e-9
assert math.isfinite(r2["kl_d"]) and r2["kl_d"] > 0
assert ht.differs(r2, kl_weight_run), "kl_weight_run did not change with the data: it must be the training log"
"""

# Chapter 6
# -----------------------------------------------------------------------------
HIDDEN["ch06-ex-linear-kernel"] = """
g = torch.Generator().manual_seed(6001)
for n in (11, 3):
    xs, ss = torch.randn(2, n, generator=g, dtype=torch.float64)
    direct = torch.stack([sum((1 + xs[j] * y) * ss[j] + y for j in range(n)) / n for y in xs])
    out = linear_kernel_direction(xs, ss)
    assert out.shape == (n,) and torch.allclose(out, direct), f"wrong for {n} fresh particles"
"""

HIDDEN["ch06-ex-paper-rule"] = """
x0_new = -6 + 0.5 * torch.randn(10, 100, 1, generator=torch.Generator().manual_seed(6002), dtype=torch.float64)
ns2 = ht.rerun(r"^\\s*drv_paper\\s*=", x0_gmm=x0_new)
ref_x = svgd.SVGD(score_p, stepsize=1.0, step_rule="constant", rule="paper").run(x0_new, 500)
assert ns2["x_paper"].shape == ref_x.shape
assert torch.allclose(ns2["x_paper"], ref_x, atol=1e-6), "from another start the particles differ from the rule's"
"""

HIDDEN["ch06-ex-ksd-scale"] = """
base2 = torch.randn(500, 1, generator=torch.Generator().manual_seed(6003), dtype=torch.float64)
ns2 = ht.rerun(r"^\\s*ksd_scale\\s*=", drop=r"^\\s*base\\s*=", base=base2)
got = ns2["ksd_scale"]
assert set(got) == {None, 2.0}
for h in (None, 2.0):
    for tau in (0.5, 1, 2):
        ref = svgd.ksd(tau * base2, score_n, bandwidth=h).item()
        assert abs(float(got[h][tau]) - ref) < 1e-9 * max(1.0, abs(ref)), f"wrong for another sample, h = {h}"
"""

# Chapter 7
# -----------------------------------------------------------------------------
HIDDEN["ch07-ex-biased-mmd"] = """
g = torch.Generator().manual_seed(7001)
x = torch.randn(13, 2, generator=g, dtype=torch.float64)
y = 1.5 + torch.randn(13, 2, generator=g, dtype=torch.float64)
for h in (1.7, 0.4):
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / h)
    ref = (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()).item()
    assert abs(float(mmd_biased(x, y, h)) - ref) < 1e-10, f"wrong on fresh samples, h = {h}"
"""

HIDDEN["ch07-ex-particles"] = """
ns2 = ht.rerun(r"^\\s*mmd_by_k\\s*=", x_lin=x_lin[500:1000], x500=x_lin[500:1000],
               gen=torch.Generator().manual_seed(7002))
m2 = ns2["mmd_by_k"]
assert set(m2) == {2, 8, 32}
assert ht.differs(m2, mmd_by_k), "mmd_by_k did not change with the data: it must come from running SVGD"
assert m2[2] > m2[32] and m2[2] > 0.005, f"on 500 other data points: {m2}"
"""

# Chapter 8
# -----------------------------------------------------------------------------
HIDDEN["ch08-ex-gamma"] = """
for V, d, gamma in ((2.7, 3, 0.5), (0.9, 1, 2.0), (5.0, 4, 0.0), (1.3, 2, 7.0)):
    expected = V / (d * (1 + gamma))
    assert abs(float(equilibrium_variance(V, d, gamma)) - expected) < 1e-12, f"wrong for V={V}, d={d}, gamma={gamma}"
    V_t = torch.tensor(V, dtype=torch.float64)
    assert abs(float(equilibrium_variance(V_t, d, gamma)) - expected) < 1e-12
"""

HIDDEN["ch08-ex-jsd"] = """
import numpy as np
real = toy2d("rings", 3000, seed=11)
fake = 0.8 * torch.randn(3000, 2, generator=torch.Generator().manual_seed(8002))
def jsd(a, b, lim, bins):
    hist = lambda x: np.histogram2d(x[:, 0].double().numpy(), x[:, 1].double().numpy(), bins=bins,
                                    range=[[-lim, lim], [-lim, lim]])[0]
    p, q = hist(a), hist(b)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    kl = lambda u: float(np.sum(u[u > 0] * np.log(u[u > 0] / m[u > 0])))
    return 0.5 * kl(p) + 0.5 * kl(q)
for lim, bins in ((3.0, 40), (2.0, 100)):
    assert abs(float(fixed_jsd(real, fake, lim, bins)) - jsd(real, fake, lim, bins)) < 1e-9, (
        f"wrong on other samples (lim {lim}, {bins} bins)")
"""

HIDDEN["ch08-ex-hinge"] = """
from vaebook.data import toy2d as _toy2d
def other_data(name, n, seed=None):            # another sample of the same data set
    return _toy2d(name, n, seed=None if seed is None else seed + 1000)
ns2 = ht.rerun(r"^\\s*hv\\s*=", toy2d=other_data)
gi, gv, logs2 = ns2["g_intro"], ns2["g_vae"], ns2["logs"]
params = list(ns2["hv"].enc.parameters())
assert len(gi) == len(gv) == len(params) and all(a.shape == p.shape for a, p in zip(gi, params))
assert logs2["hinge_rec"] == 0 and logs2["hinge_fake"] == 0
assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(gi, gv)), "on other data the gradients differ"
assert max(a.abs().max().item() for a in gi) > 0, "the encoder's gradients are all zero: nothing was computed"
assert ht.differs(gi, g_intro), "the gradients did not change with the data: they must be computed"
"""

# Chapter 9
# -----------------------------------------------------------------------------
HIDDEN["ch09-ex-lstm-exact"] = """
class Coins(torch.nn.Module):   # independent pixels with p(1) = a, p(0) = b: the total is (a + b)^(pixels)
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b
    def log_prob(self, x):
        return (x * math.log(self.a) + (1 - x) * math.log(self.b)).sum((-2, -1))
assert abs(float(total_probability(Coins(0.3, 0.5), 3, 2)) - 0.8 ** 6) < 1e-10, "wrong for an unnormalised model"
torch.manual_seed(1)
lstm = vrnn.LSTMBaseline(x_dim=3, h_dim=5, feat_dim=4, binarize=None).double()
assert abs(float(total_probability(lstm, 3, 2)) - 1) < 1e-10, "wrong for another LSTM (x_dim 3, 2 steps)"
"""

HIDDEN["ch09-ex-vrnn-i"] = """
assert issubclass(VRNNI, vrnn.VRNN)
torch.manual_seed(1)
m = VRNNI(h_dim=32, z_dim=5, feat_dim=8)
mean, logvar = m.prior_params(torch.randn(7, 32))
assert tuple(mean.shape) == tuple(logvar.shape) == (7, 5), "prior_params must return (B, z_dim) tensors"
assert mean.abs().max() == 0 and logvar.abs().max() == 0
"""

HIDDEN["ch09-ex-upside-down"] = """
model, xs = models["VRNN"], x_test[500:600]        # test digits that the graded check did not use
torch.manual_seed(21)
got = upside_down_terms(model, xs)
refs = []
for seed in (21, 22):
    torch.manual_seed(seed)
    with torch.no_grad():
        refs.append({k: v.mean().item() for k, v in model.elbo(xs.flip(1)).items()})
for k in ("elbo", "rec", "kl"):
    noise = abs(refs[0][k] - refs[1][k])
    assert abs(float(got[k]) - refs[0][k]) < 1e-6 + 5 * noise, f"{k}: {float(got[k]):.3f} vs {refs[0][k]:.3f}"
"""

HIDDEN["ch09-ex-tau"] = """
xs = x_test[600:700]                               # test digits that the graded check did not use
saved = (gm_a.training, gm_a.tau)
try:
    for tau in (None, 0.5):
        refs = []
        for seed in (31, 32):
            gm_a.train(tau is not None)
            gm_a.tau = saved[1] if tau is None else tau
            torch.manual_seed(seed)
            with torch.no_grad():
                refs.append(gm_a.elbo(xs)["elbo"].mean().item())
            gm_a.eval()
        torch.manual_seed(31)
        got = float(elbo_at(gm_a, xs, tau))
        assert not gm_a.training, "elbo_at must leave the model in evaluation mode"
        noise = abs(refs[0] - refs[1])
        assert abs(got - refs[0]) < 1e-6 + 5 * noise, f"tau = {tau}: {got:.3f} vs {refs[0]:.3f}"
finally:
    gm_a.train(saved[0])
    gm_a.tau = saved[1]
"""

# Appendix
# -----------------------------------------------------------------------------
HIDDEN["app-kern-ex-uv"] = """
g = torch.Generator().manual_seed(9001)
x, s = torch.randn(2, 23, 4, generator=g, dtype=torch.float64)
h = 1.3
su = kernels.ksd(x, s, h, statistic="u", backend="torch")
sv = kernels.ksd(x, s, h, statistic="v", backend="torch")
assert torch.allclose(torch.as_tensor(v_from_u(su, s, h), dtype=torch.float64), sv, rtol=1e-10)
n, d = s.shape
expected = (n * (n - 1) * 0.25 + s.pow(2).sum().item() + 2 * d * n / h) / n**2
assert abs(float(v_from_u(torch.tensor(0.25, dtype=torch.float64), s, h)) - expected) < 1e-10
"""

HIDDEN["app-kern-ex-tiles"] = """
from vaebook.kernels import reference as _ref
g = torch.Generator().manual_seed(9002)
x, s = torch.randn(2, 29, 3, generator=g, dtype=torch.float64)
expected = _ref.svgd_direction_reference(x, s, 1.7)
for block in (4, 7, 29, 100):
    err = (svgd_tiled(x, s, 1.7, block) - expected).abs().max()
    assert err < 1e-12, f"block {block}: max error {err:.1e}"
"""

HIDDEN["app-kern-ex-memory"] = """
from vaebook.kernels import reference as _ref
g = torch.Generator().manual_seed(9003)
parts = {n: torch.randn(n, 5, generator=g) for n in (1000, 2000)}   # d = 5 instead of 2
ns2 = ht.rerun(r"^\\s*peaks\\s*=", drop=r"^\\s*particles\\s*=", particles=parts)
p2 = ns2["peaks"]
assert set(p2) == {1000, 2000}
for n, x in parts.items():
    dense = svgd.peak_memory(_ref.svgd_direction_reference, x, -x, 1.0)[1]
    blocked = svgd.peak_memory(svgd.svgd_direction, x, -x, 1.0, block_size=256)[1]
    assert abs(p2[n][0] - dense) <= 0.01 * dense and abs(p2[n][1] - blocked) <= 0.01 * blocked, (
        f"n = {n}, d = 5: peaks {p2[n]}, measured {(dense, blocked)}")
"""

BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _function_name(label: str) -> str:
    return "_hidden_test_" + re.sub(r"\W", "_", label)


def hidden_code(label: str) -> str:
    """The hidden test of exercise ``label`` as notebook code: a function holding the registry's body, defined in
    the notebook's namespace and run with the random state isolated. Raises ``KeyError`` for an unknown label."""
    body = textwrap.dedent(HIDDEN[label]).strip("\n")
    name = _function_name(label)
    return (
        f"# Hidden test of {label} (vaebook.tooling.hidden_tests): the answer "
        "is recomputed on fresh inputs.\n"
        f"def {name}():\n"
        "    import math\n"
        "    import torch\n"
        "    import vaebook.tooling.hidden_tests as ht\n"
        + textwrap.indent(body, "    ")
        + "\n"
        f"__import__('vaebook.tooling.hidden_tests').tooling.hidden_tests.run({name})\n"
    )
