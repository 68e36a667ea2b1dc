"""Tests for vaebook.mixture_vae (Chapter 2: mixture latents; notes gaussians_and_mixtures.md §4-§5)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaebook.divergences import kl_gmm, kl_normal_diag
from vaebook.mixture_vae import GMVAE, GumbelMixtureVAE, cluster_accuracy, kmeans

DT = torch.float64
SHAPE = (1, 3, 3)  # tiny "images": 9 pixels


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4, dtype=DT), generator=g)


def gumbel_model(k=3, d=2, **kw):
    torch.manual_seed(0)
    return GumbelMixtureVAE(data_shape=SHAPE, latent_dim=d, num_components=k, hidden=(16,), binarize=None,
                            **kw).double()


def gmvae(k=3, d=2, **kw):
    torch.manual_seed(0)
    return GMVAE(data_shape=SHAPE, latent_dim=d, w_dim=2, num_components=k, hidden=(16,), prior_hidden=8,
                 binarize=None, **kw).double()


# --------------------------------------------------------------------------------------------------------------
# (a) Gumbel-softmax mixture VAE
# --------------------------------------------------------------------------------------------------------------
def test_gumbel_shapes():
    m, x = gumbel_model(), data()
    logits, q_mean, q_logvar = m.encode(x)
    assert logits.shape == (8, 3) and q_mean.shape == q_logvar.shape == (8, 3, 2)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(8, dtype=DT))
    z, v = m.relaxed_sample(logits, q_mean, q_logvar, num_samples=5)
    assert z.shape == (5, 8, 2) and v.shape == (5, 8, 3)
    t = m.elbo(x)
    assert all(t[k].shape == (8,) for k in ("elbo", "rec", "kl", "kl_cat"))
    assert m.log_weights(x, 4).shape == (4, 8)
    assert m.cluster(x).shape == (8,) and m.sample_components(2).shape == (6, *SHAPE)


def test_gumbel_kl_term_is_the_matched_bound():
    m, x = gumbel_model(), data()
    logits, q_mean, q_logvar = m.encode(x)
    q = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(q_mean, (0.5 * q_logvar).exp()), 1))
    pr = m.prior()
    expected = kl_gmm(q, pr, method="matched")
    assert torch.allclose(m.kl_term(logits, q_mean, q_logvar), expected, atol=1e-12)
    # the same, written out: sum_k pi_k [log pi_k / omega_k + KL(N_k^q || N_k^p)]
    pc = pr.component_distribution.base_dist
    kl_k = kl_normal_diag(q_mean, q_logvar, pc.loc, 2 * pc.scale.log())
    log_om = torch.log_softmax(m.prior_logits, -1)
    manual = (logits.exp() * (logits - log_om + kl_k)).sum(-1)
    assert torch.allclose(expected, manual, atol=1e-10)
    # an upper bound on the true KL (Monte Carlo with 4 standard errors)
    mc, se = kl_gmm(q, pr, method="mc", num_samples=20000, seed=0, return_stderr=True)
    assert (expected >= mc - 4 * se).all()


def test_hard_relaxed_sample_is_one_component_and_small_tau_is_nearly_one_hot():
    m, x = gumbel_model(), data()
    logits, q_mean, q_logvar = m.encode(x)
    torch.manual_seed(1)
    z, v = m.relaxed_sample(logits, q_mean, q_logvar, hard=True)
    assert ((v == 0) | (v == 1)).all() and (v.sum(-1) == 1).all()
    k = v.argmax(-1)
    comp = q_mean.gather(1, k[:, None, None].expand(-1, 1, 2)).squeeze(1)
    scale = (0.5 * q_logvar).exp().gather(1, k[:, None, None].expand(-1, 1, 2)).squeeze(1)
    # z is that component's reparameterised draw: |z - mu_k| is a few sigma_k, never a blend far from mu_k
    assert ((z - comp).abs() / scale < 6).all()
    _, v_soft = m.relaxed_sample(logits, q_mean, q_logvar, tau=0.01, num_samples=200)
    assert (v_soft.max(-1).values > 0.9).double().mean() > 0.9
    _, v_warm = m.relaxed_sample(logits, q_mean, q_logvar, tau=5.0, num_samples=200)
    assert (v_warm.max(-1).values > 0.9).double().mean() < 0.5


def test_gumbel_stratified_rec_matches_exact_mixture_samples():
    m, x = gumbel_model(), data(4)
    with torch.no_grad():
        torch.manual_seed(0)
        rec = torch.stack([m.elbo(x)["rec"] for _ in range(400)])  # (R, B)
        q = m.posterior(x)
        z = q.sample((20000,))
        ll = m.dec(z).log_prob(x)  # exact samples from the mixture
    se = torch.sqrt(rec.var(0) / 400 + ll.var(0) / 20000)
    assert ((rec.mean(0) - ll.mean(0)).abs() < 4 * se).all()


def test_gumbel_elbo_is_below_the_true_elbo():
    # E[log w] = E log p(x|z) - KL(q||p) >= E log p(x|z) - matched bound = elbo
    m, x = gumbel_model(), data(4)
    with torch.no_grad():
        torch.manual_seed(0)
        lw = m.log_weights(x, 20000)
        el = torch.stack([m.elbo(x)["elbo"] for _ in range(400)])
    se = torch.sqrt(lw.var(0) / 20000 + el.var(0) / 400)
    assert (lw.mean(0) >= el.mean(0) - 4 * se).all()


def test_gumbel_training_steps_decrease_loss():
    m, x = gumbel_model(), data(32)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    torch.manual_seed(0)
    first = m.loss(x)[0].item()
    for _ in range(60):
        loss, logs = m.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"loss", "objective", "rec", "kl", "kl_cat"}
    assert torch.stack([m.loss(x)[0] for _ in range(20)]).mean().item() < first


@pytest.mark.parametrize("kw, match", [({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"), ({"kl": "exact"}, "kl"),
                                       ({"binarize": "static"}, "binarize")])
def test_gumbel_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        GumbelMixtureVAE(data_shape=SHAPE, **kw)
    with pytest.raises(ValueError, match="num_components"):
        GumbelMixtureVAE(data_shape=SHAPE, num_components=0)


# --------------------------------------------------------------------------------------------------------------
# (b) GMVAE
# --------------------------------------------------------------------------------------------------------------
def test_gmvae_four_terms_sum_to_elbo_and_ranges():
    m, x = gmvae(), data()
    t = m.elbo(x)
    assert all(t[k].shape == (8,) for k in ("elbo", "rec", "cond_prior", "w_prior", "z_prior"))
    assert torch.allclose(t["elbo"], t["rec"] - t["cond_prior"] - t["w_prior"] - t["z_prior"], atol=1e-12)
    assert (t["z_prior"] >= -1e-12).all() and (t["z_prior"] <= math.log(3) + 1e-12).all()
    assert m.log_weights(x, 5).shape == (5, 8) and m.cluster(x).shape == (8,)
    assert m.sample_components(2).shape == (6, *SHAPE)


def test_gmvae_sampled_four_terms_equal_marginal_elbo_in_expectation():
    m, x = gmvae(cond_prior="sample"), data(3)
    with torch.no_grad():
        torch.manual_seed(0)
        xs = x.repeat(4000, 1, 1, 1)
        e4 = m.elbo(xs)["elbo"].view(4000, 3)
        lw = m.log_weights(x, 4000)
    se = torch.sqrt(e4.var(0) / 4000 + lw.var(0) / 4000)
    assert ((e4.mean(0) - lw.mean(0)).abs() < 4 * se).all()


def test_gmvae_per_sample_identity():
    # sum_k r_k [log q(z) - log p(z|w,k)] + KL(r || uniform) = log q(z) - log p(z|w), per sample
    m, x = gmvae(cond_prior="sample"), data()
    torch.manual_seed(3)
    q_mean, q_logvar, w_mean, _ = m.encode(x)
    z = q_mean + (0.5 * q_logvar).exp() * torch.randn_like(q_mean)
    p_mean, p_logvar = m.prior_components(w_mean)
    log_n = Independent(Normal(p_mean, (0.5 * p_logvar).exp()), 1).log_prob(z.unsqueeze(-2))
    log_resp = m.log_responsibilities(z, p_mean, p_logvar)
    r = log_resp.exp()
    log_q = Independent(Normal(q_mean, (0.5 * q_logvar).exp()), 1).log_prob(z)
    lhs = (r * (log_q.unsqueeze(-1) - log_n)).sum(-1) + (r * (log_resp + math.log(3))).sum(-1)
    rhs = log_q - (torch.logsumexp(log_n, -1) - math.log(3))
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_gmvae_one_component_reduces_to_gaussian_kl():
    m, x = gmvae(k=1), data()
    torch.manual_seed(0)
    t = m.terms(x)
    assert torch.allclose(t["z_prior"], torch.zeros(8, dtype=DT), atol=1e-12)
    q_mean, q_logvar, w_mean, w_logvar = m.encode(x)
    torch.manual_seed(0)
    _ = torch.randn_like(q_mean)
    w = w_mean + (0.5 * w_logvar).exp() * torch.randn_like(w_mean)
    p_mean, p_logvar = m.prior_components(w)
    assert torch.allclose(t["cond_prior"], kl_normal_diag(q_mean, q_logvar, p_mean[:, 0], p_logvar[:, 0]))


def test_gmvae_free_bits_switch_off_the_z_prior_gradient():
    m, x = gmvae(free_bits=math.log(3) + 0.1), data()
    torch.manual_seed(0)
    loss, logs = m.loss(x)
    assert math.isclose(loss.item(), -(logs["rec"] - logs["cond_prior"] - logs["w_prior"]) + math.log(3) + 0.1,
                        rel_tol=1e-9)


def test_gmvae_training_steps_decrease_loss():
    m, x = gmvae(free_bits=0.0), data(32)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    torch.manual_seed(0)
    first = torch.stack([m.loss(x)[0] for _ in range(20)]).mean().item()
    for _ in range(60):
        loss, _ = m.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.stack([m.loss(x)[0] for _ in range(20)]).mean().item() < first


@pytest.mark.parametrize("kw, match", [({"cond_prior": "mc"}, "cond_prior"), ({"free_bits": -1.0}, "free_bits"),
                                       ({"w_dim": 0}, "w_dim"), ({"hidden": ()}, "hidden")])
def test_gmvae_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        GMVAE(data_shape=SHAPE, **kw)


# --------------------------------------------------------------------------------------------------------------
# clustering helpers
# --------------------------------------------------------------------------------------------------------------
def test_cluster_accuracy_on_synthetic_labels():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), labels) == 1.0  # a relabelling
    assert cluster_accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), labels, "hungarian") == 1.0
    # one mistake
    assert cluster_accuracy(torch.tensor([0, 0, 1, 1, 2, 1]), labels) == pytest.approx(5 / 6)
    # six singleton clusters: majority is trivially perfect, a one-to-one map gets 3 of 6
    singles = torch.arange(6)
    assert cluster_accuracy(singles, labels) == 1.0
    assert cluster_accuracy(singles, labels, "hungarian") == 0.5
    # everything in one cluster: the majority label only
    assert cluster_accuracy(torch.zeros(6, dtype=torch.long), labels) == pytest.approx(2 / 6)


def test_cluster_accuracy_bad_input():
    with pytest.raises(ValueError, match="same length"):
        cluster_accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="method"):
        cluster_accuracy(torch.zeros(3), torch.zeros(3), method="best")


def test_kmeans_separates_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(50)
    z = centres[labels] + torch.randn(150, 2, generator=g)
    assign = kmeans(z, 3, generator=torch.Generator().manual_seed(1))
    assert cluster_accuracy(assign, labels, "hungarian") == 1.0
    with pytest.raises(ValueError, match="z must have shape"):
        kmeans(z[:2], 3)
