"""The GPU path is the library's path (issue 20): ``backend=`` on the hot-path functions and the models.

Every library function on a hot path (``svgd.svgd_direction``, ``svgd.ksd``, ``svgd.SVGD``,
``svgd.AmortizedSVGD``, ``mixtures.kl_gmm(method="matched")``, ``relaxed.gumbel_softmax``) and every model that
calls them (the categorical VAE, the Gumbel mixture VAE, the GM-VRNN, the LDC-VAE) follows the one dispatch rule of
:mod:`vaebook.kernels`. Here, under the Triton interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``
before anything imports triton):

* one training step of each model with ``backend="triton"`` gives the loss and the gradients of
  ``backend="torch"``, from the same noise (the same seed: both backends draw their noise in PyTorch, in the same
  order), and a spy on :func:`vaebook.kernels._kernels`, the one door to the ``_triton_*`` modules, sees the kernels
  launch;
* with ``backend="auto"`` on CPU tensors the spy sees no launch and the numbers are those of ``backend="torch"``
  bit for bit (the PyTorch path the library had before it had kernels).

**Tolerance.** The models run in float64. A kernel and its reference compute the same formulas in another order
(tiles, fused expressions, a Taylor series for :math:`e^x-1-x` near 0), so values differ by a few units of
float64 rounding (1e-16 relative) and gradients by that times the small condition numbers of these tiny networks;
``rtol=1e-8`` leaves a margin of more than 1e5 over that, while any real error (a wrong term, a lost tile, a wrong
noise) moves losses and gradients by far more than 1e-8 relative.

Sizes are tiny (batches of 3, 3x3 images, a few particles) because the interpreter runs every program through
NumPy; the file takes well under a minute in one process.
"""
from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

from vaebook import kernels

HAVE_TRITON = kernels.triton_available()
INTERPRETED = HAVE_TRITON and kernels.interpreter_enabled() and not torch.cuda.is_available()
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 (CPU only)")
F64 = torch.float64
RTOL, ATOL = 1e-8, 1e-10
IMG = (1, 3, 3)


class _Counting:
    """A kernel module whose launch functions count their calls in ``calls["<module>.<function>"]``."""

    def __init__(self, mod, name, calls):
        self._mod, self._name, self._calls = mod, name, calls

    def __getattr__(self, attr):
        fn = getattr(self._mod, attr)
        if not callable(fn):
            return fn

        def counted(*args, **kwargs):
            self._calls[f"{self._name}.{attr}"] += 1
            return fn(*args, **kwargs)

        return counted


@pytest.fixture
def spy(monkeypatch):
    """``Counter`` of the Triton launch functions called (through ``vaebook.kernels._kernels``)."""
    calls: collections.Counter = collections.Counter()
    real = kernels._kernels
    monkeypatch.setattr(kernels, "_kernels", lambda name: _Counting(real(name), name, calls))
    return calls


def _step(model, batch, seed=0):
    """Loss and gradients of one training step (``model.loss``), with the global RNG seeded first."""
    model.train()
    torch.manual_seed(seed)
    loss, logs = model.loss(batch)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)], logs


def _with_backend(model, backend):
    m = copy.deepcopy(model)
    m.backend = backend
    return m


def _models():
    """``{name: (model in float64, batch, expected kernel launches)}``: one tiny instance of each model."""
    from vaebook import discrete_vae, ldc, mixture_vae, models, svgd, vrnn

    torch.manual_seed(0)
    x = torch.rand(3, *IMG, dtype=F64)
    seq = torch.rand(3, 4, 5, dtype=F64)
    gumbel = {"gumbel.gumbel_softmax_fwd", "gumbel.gumbel_softmax_bwd"}
    matched = {"matched.matched_kl_fwd", "matched.matched_kl_bwd"}
    out = {}
    for hard in (False, True):
        out[f"CategoricalVAE(hard={hard})"] = (discrete_vae.CategoricalVAE.mlp(
            2, 4, (8,), IMG, kl="relaxed_mc", tau=0.7, hard=hard, binarize=None).double(), x, gumbel)
        out[f"GumbelMixtureVAE(hard={hard})"] = (mixture_vae.GumbelMixtureVAE(
            IMG, 2, 3, (8,), tau=0.6, hard=hard, binarize=None).double(), x, gumbel | matched)
        out[f"GMVRNN(gumbel, hard={hard})"] = (vrnn.GMVRNN(
            "gumbel", 5, 6, 2, 3, 2, 4, tau=0.8, hard=hard, binarize=None).double(), seq, gumbel | matched)
    enc = ldc.ParticleEncoder(9, 2, (6,), (5,), "tanh")
    out["LDCVAE"] = (ldc.LDCVAE(enc, models.BernoulliDecoder(2, IMG, (6,)), num_particles=4,
                                binarize=None).double(), x, {"svgd.svgd_direction"})
    target = svgd.ring_target(4, 2.0, 0.5)
    score = svgd.score_from_log_prob(target.log_prob)
    out["AmortizedSVGD"] = (svgd.AmortizedSVGD(svgd.ResidualSampler(2, 2, (8,)).double(), score, 2),
                            torch.randn(7, 2, dtype=F64), {"svgd.svgd_direction"})
    return out


MODELS = list(_models())


@needs_interpreter
@pytest.mark.parametrize("name", MODELS)
def test_training_step_triton_equals_torch_and_the_kernels_run(name, spy):
    model, batch, launches = _models()[name]
    assert model.backend == "auto"
    loss_t, grads_t, _ = _step(_with_backend(model, "torch"), batch)
    assert not spy
    loss_k, grads_k, logs = _step(_with_backend(model, "triton"), batch)
    assert set(spy) == launches, dict(spy)  # forward and backward kernels both launched
    torch.testing.assert_close(loss_k, loss_t, rtol=RTOL, atol=ATOL)
    assert len(grads_k) == len(grads_t) and any(bool(g.abs().sum() > 0) for g in grads_t)
    for gk, gt in zip(grads_k, grads_t):
        torch.testing.assert_close(gk, gt, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", MODELS)
def test_auto_on_cpu_runs_the_reference_bit_for_bit(name, spy):
    model, batch, _ = _models()[name]
    loss_a, grads_a, _ = _step(_with_backend(model, "auto"), batch)
    assert not spy, dict(spy)  # no kernel launched
    loss_t, grads_t, _ = _step(_with_backend(model, "torch"), batch)
    assert torch.equal(loss_a, loss_t) and all(torch.equal(a, t) for a, t in zip(grads_a, grads_t))


@needs_interpreter
def test_svgd_driver_steps_and_library_functions(spy):
    from vaebook import svgd
    from vaebook.mixtures import kl_gmm
    from vaebook.relaxed import gumbel_softmax

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 2, generator=g, dtype=F64)  # two independent particle sets
    score = svgd.score_from_log_prob(lambda z: -0.5 * (z - 1.0).square().sum(-1))
    steps = {}
    for backend in ("torch", "triton", "auto"):
        spy.clear()
        drv = svgd.SVGD(score, 0.1, step_rule="constant", backend=backend)
        steps[backend] = drv.run(x, 2)
        assert (spy["svgd.svgd_direction"] == 2) == (backend == "triton"), (backend, dict(spy))
    torch.testing.assert_close(steps["triton"], steps["torch"], rtol=RTOL, atol=ATOL)
    assert torch.equal(steps["auto"], steps["torch"])
    s = score(x)
    for statistic in ("u", "v"):
        spy.clear()
        kk = svgd.ksd(x, s, statistic=statistic, backend="triton")
        assert spy["svgd.ksd_row_sums"] == 1 and kk.shape == (2,)
        torch.testing.assert_close(kk, svgd.ksd(x, s, statistic=statistic, backend="torch"), rtol=RTOL, atol=ATOL)
    h = torch.tensor([0.5, 2.0], dtype=F64)  # one bandwidth per set
    torch.testing.assert_close(svgd.svgd_direction(x, s, h, backend="triton"), svgd.svgd_direction(x, s, h),
                               rtol=RTOL, atol=ATOL)
    # the matched bound through kl_gmm, with a shared prior, and gumbel_softmax with a generator
    q = MixtureSameFamily(Categorical(logits=torch.randn(4, 3, generator=g, dtype=F64)),
                          Independent(Normal(torch.randn(4, 3, 2, generator=g, dtype=F64),
                                             torch.rand(4, 3, 2, generator=g, dtype=F64) + 0.5), 1))
    p = MixtureSameFamily(Categorical(logits=torch.zeros(3, dtype=F64)),
                          Independent(Normal(torch.randn(3, 2, generator=g, dtype=F64),
                                             torch.ones(3, 2, dtype=F64)), 1))
    spy.clear()
    v = kl_gmm(q, p, "matched", backend="triton")
    assert spy["matched.matched_kl_fwd"] == 1
    torch.testing.assert_close(v, kl_gmm(q, p, "matched"), rtol=1e-12, atol=1e-12)
    val, perm = kl_gmm(q, p, "matched", backend="triton", return_matching=True)
    assert torch.equal(perm, torch.arange(3).expand(4, 3)) and torch.equal(val, v)
    logits = torch.randn(5, 6, generator=g, dtype=F64)
    for hard in (False, True):
        spy.clear()
        y = gumbel_softmax(logits, 0.4, hard, generator=torch.Generator().manual_seed(3), backend="triton")
        assert spy["gumbel.gumbel_softmax_fwd"] == 1
        torch.testing.assert_close(y, gumbel_softmax(logits, 0.4, hard, generator=torch.Generator().manual_seed(3)),
                                   rtol=1e-12, atol=1e-14)


def test_auto_on_cpu_library_functions_launch_nothing(spy):
    from vaebook import svgd
    from vaebook.relaxed import gumbel_softmax

    x = torch.randn(2, 9, 2, dtype=F64)
    svgd.svgd_direction(x, -x)
    svgd.ksd(x, -x)
    gumbel_softmax(torch.randn(4, 3), 0.5, hard=True)
    assert not spy


def test_backend_arguments_are_checked():
    from vaebook import discrete_vae, ldc, mixture_vae, models, svgd, vrnn
    from vaebook.mixtures import kl_gmm
    from vaebook.relaxed import gumbel_softmax

    enc = ldc.ParticleEncoder(9, 2, (6,), (5,))
    builders = [lambda b: discrete_vae.CategoricalVAE.mlp(2, 3, (4,), IMG, backend=b),
                lambda b: mixture_vae.GumbelMixtureVAE(IMG, 2, 2, (4,), backend=b),
                lambda b: vrnn.GMVRNN("gumbel", 5, 6, 2, 2, 2, 4, backend=b),
                lambda b: ldc.LDCVAE(enc, models.BernoulliDecoder(2, IMG, (6,)), backend=b),
                lambda b: svgd.SVGD(lambda z: -z, backend=b),
                lambda b: svgd.AmortizedSVGD(svgd.ResidualSampler(2, 2), lambda z: -z, 2, backend=b),
                lambda b: svgd.svgd_direction(torch.zeros(3, 2), torch.zeros(3, 2), backend=b),
                lambda b: gumbel_softmax(torch.zeros(3), 1.0, backend=b)]
    for build in builders:
        with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'torch', 'triton', got 'cuda'"):
            build("cuda")
        assert build("torch") is not None
    # models keep the backend as an attribute, outside the state_dict (shipped checkpoints load unchanged)
    m = builders[0]("torch")
    assert m.backend == "torch" == m.latent.backend and not any("backend" in k for k in m.state_dict())
    m.backend = "auto"
    assert m.latent.backend == "auto"
    comp = MultivariateNormal(torch.zeros(2, 2), scale_tril=torch.eye(2).expand(2, 2, 2))
    full = MixtureSameFamily(Categorical(logits=torch.zeros(2)), comp)
    with pytest.raises(ValueError, match=r"backend='triton' has a kernel for method='matched' only"):
        kl_gmm(full, full, "variational", backend="triton")
    if HAVE_TRITON:
        with pytest.raises(ValueError, match=r"diagonal Gaussians with matching='given' only"):
            kl_gmm(full, full, "matched", backend="triton")


def test_shipped_checkpoints_load_and_keep_the_default_backend():
    from vaebook import pretrained

    for name in ("ch03_catvae", "ch07_ldc", "ch09_gmvrnn_a"):
        model, meta = pretrained.load(name, progress=False)
        assert model.backend == "auto" and "backend" not in meta.get("recipe", meta.get("config", {}))
