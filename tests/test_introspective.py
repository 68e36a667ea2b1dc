"""Tests of vaebook.introspective (Chapter 8): Soft-IntroVAE / IntroVAE losses against hand computation, which
parameters receive gradients in which step, the 2-D metrics against scipy, the reference-code quirks, and short
training runs."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from torch import nn
from torch.distributions import Independent, Normal

from vaebook import introspective as I
from vaebook.data import EIGHT_GAUSSIANS_CENTRES, toy2d
from vaebook.divergences import kl_normal_diag
from vaebook.models import VAE

LOGVAR = -60.0  # sigma = e^-30: the reparameterised sample equals the mean to float64 precision


class LinEnc(nn.Module):
    """q(z|x) = N(A x, e^LOGVAR I): deterministic in practice, so losses can be computed by hand."""

    def __init__(self, a, logvar=LOGVAR):
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.logvar = logvar
        self.latent_dim = a.shape[0]

    def forward(self, x):
        mu = x @ self.a.T
        return mu, torch.full_like(mu, self.logvar)


class LinDec(nn.Module):
    """D(z) = B z, unit-variance Gaussian likelihood."""

    def __init__(self, b):
        super().__init__()
        self.b = nn.Parameter(b.clone())
        self.data_shape = (b.shape[0],)

    def mean(self, z):
        return z @ self.b.T

    def forward(self, z):
        return Independent(Normal(self.mean(z), torch.ones(())), 1)


def tiny(cls=I.SoftIntroVAE, **kw):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(3, 2, generator=g, dtype=torch.float64) * 0.5
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    zp = torch.randn(4, 2, generator=g, dtype=torch.float64)
    return cls(LinEnc(a), LinDec(b), **kw), a, b, x, zp


BETAS = dict(beta_rec=0.7, beta_kl=0.3, beta_neg=0.02, gamma_r=0.1, scale=0.5)


def hand(a, b, x, zp, beta_rec, beta_kl, beta_neg, gamma_r, scale):
    kl = lambda mu: 0.5 * (mu.pow(2).sum(1) + mu.shape[1] * (math.exp(LOGVAR) - LOGVAR - 1))  # noqa: E731
    rec = lambda t, r: (t - r).pow(2).sum(1)  # noqa: E731
    enc, dec = (lambda v: v @ a.T), (lambda z: z @ b.T)
    x_r, fake = dec(enc(x)), dec(zp)
    rec_real, kl_real = rec(x, x_r).mean(), kl(enc(x)).mean()
    exps = [torch.exp(-2 * scale * (beta_rec * rec(g, dec(enc(g))) + beta_neg * kl(enc(g)))).mean()
            for g in (x_r, fake)]
    loss_e = scale * (beta_rec * rec_real + beta_kl * kl_real) + 0.25 * (exps[0] + exps[1])
    kls = [kl(enc(g)).mean() for g in (x_r, fake)]
    recs = [rec(g, dec(enc(g))).mean() for g in (x_r, fake)]
    loss_d = scale * (beta_rec * rec_real + 0.5 * beta_kl * (kls[0] + kls[1])
                      + gamma_r * 0.5 * beta_rec * (recs[0] + recs[1]))
    return loss_e, loss_d


def test_reference_kl_form_equals_library():
    mu, lv = torch.randn(2, 50, 3, dtype=torch.float64)
    assert torch.allclose(I._kl(mu, lv), kl_normal_diag(mu, lv), rtol=1e-10)


def test_soft_intro_losses_match_hand_computation():
    model, a, b, x, zp = tiny(**BETAS)
    loss_e, logs, z = model.encoder_loss(x, zp)
    loss_d, _ = model.decoder_loss(x, zp, z)
    exp_e, exp_d = hand(a, b, x, zp, **BETAS)
    assert abs(loss_e.item() - exp_e.item()) < 1e-10 * max(1, abs(exp_e.item()))
    assert abs(loss_d.item() - exp_d.item()) < 1e-10 * max(1, abs(exp_d.item()))
    assert 0 < logs["exp_elbo_rec"] < 1 and 0 < logs["exp_elbo_fake"] < 1


def test_default_scale_is_inverse_data_dimension():
    model = VAE.mlp(latent_dim=4, hidden=(8,), likelihood="gaussian")
    s = I.SoftIntroVAE(model.enc, model.dec)
    assert s.scale == pytest.approx(1 / 784)
    g, b = I.mnist_model(likelihood="gaussian"), I.mnist_model(likelihood="bernoulli")
    assert (g.rec_loss, b.rec_loss) == ("mse", "nll") and g.scale == b.scale == pytest.approx(1 / 784)
    with pytest.raises(ValueError):
        I.mnist_model(likelihood="laplace")


def test_large_beta_neg_reduces_encoder_loss_to_scaled_beta_vae():
    model, a, b, x, zp = tiny(**dict(BETAS, beta_neg=1e9))
    loss_e, logs, _ = model.encoder_loss(x, zp)
    s = BETAS["scale"]
    assert logs["exp_elbo_rec"] < 1e-30 and logs["exp_elbo_fake"] < 1e-30
    assert loss_e.item() == pytest.approx(s * (BETAS["beta_rec"] * logs["rec"] + BETAS["beta_kl"] * logs["kl_real"]))


def test_exp_term_gradient_wrt_generated_kl():
    # d/dKL_i of 0.25 * mean_i exp(-2 s (b_rec r_i + b_neg KL_i)) = -0.25 * 2 s b_neg exp(.) / B
    s, b_rec, b_neg = 0.5, 0.2, 0.9
    kl = torch.rand(6, dtype=torch.float64, requires_grad=True)
    r = torch.rand(6, dtype=torch.float64)
    term = 0.25 * torch.exp(-2 * s * (b_rec * r + b_neg * kl)).mean()
    term.backward()
    expected = -0.25 * 2 * s * b_neg * torch.exp(-2 * s * (b_rec * r + b_neg * kl.detach())) / 6
    assert torch.allclose(kl.grad, expected)


def test_which_parameters_get_gradients():
    model, a, b, x, zp = tiny(**BETAS)
    enc_p, dec_p = list(model.enc.parameters()), list(model.dec.parameters())
    # encoder step: decoder frozen, gradients reach the encoder (also through x_r = D(z) in the exp term)
    model._set_trainable(True, False)
    loss_e, _, z = model.encoder_loss(x, zp)
    loss_e.backward()
    assert all(p.grad is None for p in dec_p)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc_p)
    # decoder step: encoder frozen, the generated data's KL reaches the decoder through the encoder
    for p in enc_p:
        p.grad = None
    model._set_trainable(False, True)
    loss_d, _ = model.decoder_loss(x, zp, z)
    loss_d.backward()
    assert all(p.grad is None for p in enc_p)
    assert all(p.grad.abs().sum() > 0 for p in dec_p)
    model._set_trainable(False, True)
    fake = model.generate(zp)
    kl_fake = I._kl(*model.encode(fake)).mean()
    (g,) = torch.autograd.grad(kl_fake, model.dec.b)
    assert g.abs().sum() > 0
    model._set_trainable(True, True)


def test_encoder_step_uses_non_detached_reconstruction_target():
    # the reference keeps x_r (not detached) as the target of rec(x_r, D(E(x_r))): detaching it changes the gradient
    model, a, b, x, zp = tiny(**dict(BETAS, beta_neg=0.001))
    model._set_trainable(True, False)
    loss_e, _, _ = model.encoder_loss(x, zp)
    (g_ref,) = torch.autograd.grad(loss_e, model.enc.a)
    x_r = model.generate(model.encode(x)[0])
    x_rr = model.generate(model.encode(x_r.detach())[0])
    r_att = (x_r - x_rr).pow(2).sum(1)
    r_det = (x_r.detach() - x_rr).pow(2).sum(1)
    s, br, bn = BETAS["scale"], BETAS["beta_rec"], 0.001
    kl_r = I._kl(*model.encode(x_r.detach()))
    (g_att,) = torch.autograd.grad(0.25 * torch.exp(-2 * s * (br * r_att + bn * kl_r)).mean(), model.enc.a,
                                   retain_graph=True)
    (g_det,) = torch.autograd.grad(0.25 * torch.exp(-2 * s * (br * r_det + bn * kl_r)).mean(), model.enc.a)
    assert not torch.allclose(g_att, g_det)
    model._set_trainable(True, True)


def test_train_step_order_and_restores_flags():
    model, a, b, x, zp = tiny(**BETAS)
    opt_e = torch.optim.SGD(model.enc.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(model.dec.parameters(), lr=0.01)
    a0, b0 = model.enc.a.detach().clone(), model.dec.b.detach().clone()
    logs = model.train_step(x, opt_e, opt_d)
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(model.enc.a, a0) and not torch.equal(model.dec.b, b0)
    assert {"loss_e", "loss_d", "kl_real", "kl_fake", "kl_rec", "exp_elbo_rec"} <= set(logs)
    assert model.enc.a.grad is not None and model.dec.b.grad is not None


def test_intro_vae_hinge_and_gradient_accumulation():
    model, a, b, x, zp = tiny(I.IntroVAE, margin=120.0, w_rec=0.3, w_kl=1.0, w_neg=0.5)
    kl = torch.tensor([130.0, 100.0], requires_grad=True)
    h = model.hinge(kl)
    h.sum().backward()
    assert h.tolist() == [0.0, 20.0] and kl.grad.tolist() == [0.0, -1.0]
    # decoder gradient after a step with lr 0 = grad of w_rec * rec (encoder step) + grad of the generator loss
    opt_e = torch.optim.SGD(model.enc.parameters(), lr=0.0)
    opt_d = torch.optim.SGD(model.dec.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(5)
    model.train_step(x, opt_e, opt_d, generator=gen)
    z_p = torch.randn(4, 2, generator=torch.Generator().manual_seed(5)).to(torch.float64)
    bb = b.clone().requires_grad_(True)
    x_r, x_p = x @ a.T @ bb.T, z_p @ bb.T
    rec = (x - x_r).pow(2).sum(1).mean()
    kl_f = lambda v: 0.5 * ((v @ a.T).pow(2).sum(1) + 2 * (math.exp(LOGVAR) - LOGVAR - 1)).mean()  # noqa: E731
    total = 0.3 * rec + 0.5 * 1.0 * (kl_f(x_r) + kl_f(x_p))
    (expected,) = torch.autograd.grad(total, bb)
    assert torch.allclose(model.dec.b.grad, expected, rtol=1e-8)


def test_intro_vae_hinge_forms_review_example():
    # KLs (0, 10) of one batch of generated data, margin 3: the official code's relu(m - kl.mean()) gives
    # relu(3 - 5) = 0; the per-example form mean(relu(3 - kl)) gives (3 + 0) / 2 = 1.5
    model, *_ = tiny(I.IntroVAE, margin=3.0)
    assert model.hinge_form == "batch_mean"
    kl = torch.tensor([0.0, 10.0], requires_grad=True)
    term = model.hinge_term(kl)
    (g,) = torch.autograd.grad(term, kl)
    assert term.item() == 0.0 and g.tolist() == [0.0, 0.0]  # no gradient even for the KL-0 sample
    model.hinge_form = "per_example"
    term = model.hinge_term(kl)
    (g,) = torch.autograd.grad(term, kl)
    assert term.item() == 1.5 and g.tolist() == [-0.5, 0.0]
    with pytest.raises(ValueError, match="hinge_form"):
        tiny(I.IntroVAE, hinge_form="per_sample")


@pytest.mark.parametrize("hinge_form", ["batch_mean", "per_example"])
def test_intro_vae_train_step_hinge_matches_hand_computation(hinge_form):
    # the logged hinges of train_step against the KLs of the generated data computed by hand, with the margin
    # placed between the smallest and the largest per-example KL so that the two forms differ
    model, a, b, x, zp = tiny(I.IntroVAE, margin=1.0, hinge_form=hinge_form)
    kl_f = lambda v: 0.5 * ((v @ a.T).pow(2).sum(1) + 2 * (math.exp(LOGVAR) - LOGVAR - 1))  # noqa: E731
    z_p = torch.randn(4, 2, generator=torch.Generator().manual_seed(5)).to(torch.float64)
    kls = {"hinge_rec": kl_f(x @ a.T @ b.T), "hinge_fake": kl_f(z_p @ b.T)}
    model.margin = kls["hinge_fake"].median().item()
    opt_e = torch.optim.SGD(model.enc.parameters(), lr=0.0)
    opt_d = torch.optim.SGD(model.dec.parameters(), lr=0.0)
    logs = model.train_step(x, opt_e, opt_d, generator=torch.Generator().manual_seed(5))
    for key, k in kls.items():
        m = model.margin
        expected = max(0.0, m - k.mean().item()) if hinge_form == "batch_mean" else (m - k).clamp_min(0).mean().item()
        assert logs[key] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert (logs["hinge_fake"] > 0) == (hinge_form == "per_example")


def test_fit_toy2d_model_kw_and_intro_kind():
    torch.set_num_threads(1)
    m, h = I.fit_toy2d("8gaussians", "intro", num_iters=12, num_vae=4, width=8, depth=1,
                       model_kw=dict(margin=2.0, w_rec=0.2, w_kl=0.3, hinge_form="per_example"))
    assert isinstance(m, I.IntroVAE) and (m.margin, m.w_rec, m.hinge_form) == (2.0, 0.2, "per_example")
    assert len(h.steps["hinge_fake"]) > 0 and all(v >= 0 for v in h.steps["hinge_fake"])
    v, _ = I.fit_toy2d("8gaussians", "vae", num_iters=3, width=8, depth=1, model_kw=dict(beta_rec=50.0))
    assert (v.beta_rec, v.beta_kl) == (50.0, I.TOY2D_BETAS["8gaussians"]["beta_kl"])
    with pytest.raises(ValueError, match="kind"):
        I.fit_toy2d("8gaussians", "gan")


def test_histogram_kl_and_jsd_match_scipy():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4000, 2, generator=g), 1.3 * torch.randn(4000, 2, generator=g) + 0.2
    p, q = I.histogram2d(x, 4.0, 30), I.histogram2d(y, 4.0, 30)
    qs = (1 - 1e-6) * q + 1e-6 / q.size
    assert I.histogram_kl(x, y, 4.0, 30) == pytest.approx(entropy(p.ravel(), qs.ravel()), rel=1e-9)
    assert I.histogram_jsd(x, y, 4.0, 30) == pytest.approx(jensenshannon(p.ravel(), q.ravel()) ** 2, rel=1e-9)
    assert I.histogram_jsd(x, x, 4.0, 30) == 0.0 and I.histogram_kl(x, x, 4.0, 30) == pytest.approx(0, abs=1e-5)


def test_reference_metrics_reproduce_quirks_and_saturation():
    real = toy2d("8gaussians", 5000, seed=0)
    blob = 0.3 * torch.randn(5000, 2, generator=torch.Generator().manual_seed(1))  # a collapsed VAE
    ref_kl, ref_jsd = I.reference_histogram_kl(real, blob, 2.0), I.reference_histogram_jsd(real, blob, 2.0)
    assert 200 < ref_kl < 240  # saturates near 220 for disjoint supports
    assert 90 < ref_jsd < 115  # about 100 for a collapsed VAE; not bounded by log 2
    assert I.histogram_jsd(real, blob, 2.0) == pytest.approx(math.log(2))
    assert I.reference_histogram_kl(real, real, 2.0) == pytest.approx(0, abs=1e-9)
    assert I.reference_histogram_jsd(real, real, 2.0) == pytest.approx(0, abs=1e-9)
    # the reference "KL" is KL(P_real || P_fake + floor) / (bins * bin area) on probabilities
    p, q = I.histogram2d(real, 2.0, 100), I.histogram2d(blob, 2.0, 100)
    area = (4.0 / 100) ** 2
    m = p > 0
    manual = np.sum(p[m] * np.log(p[m] / (q[m] + 1e-14 * area))) / (100 * area)
    assert ref_kl == pytest.approx(manual, rel=1e-6)


def test_grid_nll_equals_gaussian_entropy():
    # encoder N(0 * x, I) (KL = 0) and decoder D = 0 give e(x) = |x|^2: the density N(0, I/2)
    model = I.SoftIntroVAE(LinEnc(torch.zeros(2, 2), logvar=0.0), LinDec(torch.zeros(2, 2)), scale=0.5)
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(2)) * math.sqrt(0.5)
    nll, se = I.grid_nll(model, x, 4.0, 256)
    assert abs(nll - math.log(math.pi * math.e)) < 4 * se
    logp, _ = I.grid_log_density(model, 4.0, 128)
    assert logp.exp().sum().item() * (8.0 / 128) ** 2 == pytest.approx(1.0, rel=1e-5)


def test_modes_covered_and_auroc():
    c = EIGHT_GAUSSIANS_CENTRES.float()
    assert I.modes_covered(c.repeat(10, 1)) == (1.0, 8)
    assert I.modes_covered(torch.zeros(50, 2)) == (0.0, 0)
    assert I.auroc([3.0, 4.0], [1.0, 2.0]) == 1.0 and I.auroc([1.0], [1.0]) == 0.5
    a, b = torch.randn(2, 300, generator=torch.Generator().manual_seed(3))
    brute = ((a[:, None] > b[None]).double() + 0.5 * (a[:, None] == b[None]).double()).mean().item()
    assert I.auroc(a, b) == pytest.approx(brute)


def test_short_training_runs_decrease_losses():
    torch.set_num_threads(1)
    _, h = I.fit_toy2d("8gaussians", "vae", seed=0, num_iters=200, width=32, depth=2, lr=3e-3)
    assert np.mean(h.steps["loss"][-10:]) < np.mean(h.steps["loss"][:10])
    model, h = I.fit_toy2d("8gaussians", "soft_intro", seed=0, num_iters=200, num_vae=50, width=32, depth=2,
                           lr=3e-3)
    assert np.mean(h.steps["rec"][-10:]) < np.mean(h.steps["rec"][:10]) - 0.05
    assert all(math.isfinite(v) for k in h.steps for v in h.steps[k])
    assert model.sample(10).shape == (10, 2)


def test_soft_intro_with_bernoulli_decoder():
    base = VAE.mlp(latent_dim=3, hidden=(16,), data_shape=(1, 4, 4))
    model = I.SoftIntroVAE(base.enc, base.dec, rec_loss="nll", beta_neg=16.0)
    opt_e = torch.optim.Adam(model.enc.parameters(), 1e-3)
    opt_d = torch.optim.Adam(model.dec.parameters(), 1e-3)
    x = torch.rand(8, 1, 4, 4).round()
    logs = model.train_step(x, opt_e, opt_d)
    assert model.scale == 1 / 16 and all(math.isfinite(v) for v in logs.values())
    with pytest.raises(ValueError):
        I.SoftIntroVAE(base.enc, base.dec, rec_loss="l1")


def test_mnist_checkpoint_roundtrip(tmp_path, mnist_test):
    from vaebook.train import load_checkpoint

    models, meta = I.train_mnist(out=tmp_path / "m.pt", num_epochs=1, progress=False, num_train=256)
    fresh = I.build_mnist()
    meta2 = load_checkpoint(fresh, tmp_path / "m.pt")
    assert meta2["num_train"] == 256 and set(meta2["history"]) == {"vae", "soft_intro"}
    x = mnist_test[0][:3]
    assert torch.allclose(fresh["soft_intro"].reconstruct(x), models["soft_intro"].reconstruct(x))
