"""Tests for vaebook.discrete_vae (Chapter 3): the pluggable categorical latent and the categorical VAE."""
from __future__ import annotations

import math

import pytest
import torch

from vaebook import discrete_vae as D
from vaebook.divergences import kl_categorical
from vaebook.metrics import evaluate, iwae_bound
from vaebook.relaxed import relaxed_kl_equal_tau_exact, tau_schedule
from vaebook.train import fit, load_checkpoint, save_checkpoint

N, K = 3, 4


def small(**kw):
    torch.manual_seed(0)
    return D.CategoricalVAE.mlp(N, K, hidden=(16,), data_shape=(1, 4, 4), **kw)


def data(b=8, seed=0):
    return torch.bernoulli(torch.full((b, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kl", D.KL_CHOICES)
@pytest.mark.parametrize("hard", [False, True])
def test_shapes_and_finite_for_every_kl(kl, hard):
    m = small(kl=kl, hard=hard).train()
    x = data()
    params = m.encode(x)
    assert params.shape == (8, N, K)
    s = m.latent.rsample(params, 0.7, num_samples=5)
    assert s["z"].shape == s["log_y"].shape == (5, 8, N, K)
    torch.testing.assert_close(s["z"].sum(-1), torch.ones(5, 8, N))
    if hard:  # straight-through: exactly one-hot forward
        assert set(s["z"].unique().tolist()) <= {0.0, 1.0}
    loss, logs = m.loss(x)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and set(logs) == {"loss", "elbo", "rec", "kl", "tau"}
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.enc.parameters())


def test_kl_terms_match_library_functions():
    lat = D.CategoricalLatent(N, K, kl="categorical")
    params = torch.randn(6, N, K, dtype=torch.float64) * 2
    lat = lat.double()
    torch.testing.assert_close(lat.kl(params, None, 1.0), kl_categorical(params, torch.zeros(K)).sum(-1))
    torch.testing.assert_close(lat.discrete_kl(params), kl_categorical(params, torch.zeros(K)).sum(-1))
    lat.kl_type = "relaxed_exact"
    exact = relaxed_kl_equal_tau_exact(params, torch.zeros(K, dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(lat.kl(params, None, 0.3), exact)
    # the single-sample relaxed_mc term is unbiased for the exact equal-temperature KL, at any tau
    lat.kl_type = "relaxed_mc"
    for tau in (0.2, 1.5):
        s = lat.rsample(params, tau, num_samples=20000, generator=torch.Generator().manual_seed(1))
        lq_minus_lp = lat.kl(params, s, tau)  # mean over samples
        per = torch.stack([lat.kl(params, {"log_y": s["log_y"][i:i + 1]}, tau) for i in range(0, 20000, 50)])
        se = per.std(0) / math.sqrt(per.shape[0])
        assert ((lq_minus_lp - exact).abs() < 5 * se + 1e-3).all()
    # relaxed >= categorical (data processing), recab >= relaxed
    lat.kl_type = "recab"
    assert (lat.kl(params, None, 1.0) >= exact - 1e-9).all()
    assert (exact >= lat.discrete_kl(params) - 1e-9).all()


def test_unequal_prior_temperature_changes_relaxed_mc():
    lat = D.CategoricalLatent(1, 4, kl="relaxed_mc", tau_prior=0.5).double()
    params = torch.tensor([[[2.0, 0.0, -1.0, 0.5]]], dtype=torch.float64)
    s = lat.rsample(params, 2 / 3, num_samples=100000, generator=torch.Generator().manual_seed(0))
    v = lat.kl(params, s, 2 / 3).item()
    assert abs(v - 1.19) < 0.05  # notes §1.14(vi): tau_q = 2/3, tau_p = 0.5 gives 1.19
    with pytest.raises(ValueError, match="tau_prior"):
        D.CategoricalLatent(1, 4, kl="recab", tau_prior=0.5)


def test_eval_mode_is_the_discrete_model():
    m = small().eval()
    x = data(4)
    torch.manual_seed(3)
    with torch.no_grad():
        lw = m.log_weights(x, 20000)
        terms = m.elbo(x, num_samples=20000)
    # E_q[log p(x|z) + log p(z) - log q(z|x)] = E_q log p(x|z) - KL_cat exactly
    se = lw.std(0) / math.sqrt(lw.shape[0])
    assert ((lw.mean(0) - terms["elbo"]).abs() < 5 * se + 1e-3).all()
    params = m.encode(x)
    torch.testing.assert_close(terms["kl"], kl_categorical(params, torch.zeros(K)).sum(-1))
    z = m.latent.sample_discrete(params, 7)
    assert z.shape == (7, 4, N, K) and set(z.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(z.sum(-1), torch.ones(7, 4, N))
    # evaluate/iwae_bound use the discrete model; the bound improves with k on average
    ev = evaluate(m, x, k=50)
    b200 = iwae_bound(m, x, k=200).mean()
    assert b200 > terms["elbo"].mean() and math.isfinite(ev["elbo"]) and math.isfinite(ev["iwae"])


def test_discrete_elbo_is_exact_for_enumerable_model():
    # one variable with K classes: log p(x) = logsumexp_k [log p(x|e_k) + log p(e_k)] >= discrete ELBO
    torch.manual_seed(0)
    m = D.CategoricalVAE.mlp(1, 3, hidden=(8,), data_shape=(1, 2, 2)).eval().double()
    x = data(5)[:, :, :2, :2].double()
    eye = torch.eye(3, dtype=torch.float64)[:, None, None, :].expand(3, 5, 1, 3)
    with torch.no_grad():
        log_px = torch.logsumexp(m.decode(eye).log_prob(x) + math.log(1 / 3), 0)
        q = torch.softmax(m.encode(x), -1)[:, 0]  # (5, 3)
        exact_elbo = (q.T * m.decode(eye).log_prob(x)).sum(0) - kl_categorical(m.encode(x)[:, 0], torch.zeros(3))
        big = iwae_bound(m, x, k=4000)
        mc = m.elbo(x, num_samples=40000)["elbo"]
    assert (exact_elbo <= log_px + 1e-12).all()
    torch.testing.assert_close(mc, exact_elbo, atol=0.05, rtol=0)
    torch.testing.assert_close(big, log_px, atol=0.02, rtol=0)


def test_tau_schedule_and_step_counter_roundtrip(tmp_path):
    m = small(tau=D.jang_schedule(rate=1e-2, every=2)).train()
    x = data()
    taus = [m.loss(x)[1]["tau"] for _ in range(6)]
    assert taus == [tau_schedule(t, rate=1e-2, every=2) for t in range(6)]
    assert int(m.step) == 6
    m.eval()
    m.loss(x)  # not training: the step does not advance
    assert int(m.step) == 6
    path = save_checkpoint(m, tmp_path / "m.pt", hello=1)
    m2 = small(tau=D.jang_schedule(rate=1e-2, every=2))
    meta = load_checkpoint(m2, path)
    assert meta["hello"] == 1 and set(meta) == {"hello", "git_commit", "git_dirty", "argv", "saved_at", "torch",
                                                 "python", "threads"}  # save_checkpoint adds the provenance
    assert int(m2.step) == 6 and m2.tau == m.tau == tau_schedule(6, rate=1e-2, every=2)
    assert small(tau=0.3).tau == 0.3


def test_learned_prior_and_callable_kl_and_subclass_hook():
    m = small(prior="learned").train()
    m.loss(data())[0].backward()
    assert isinstance(m.latent.prior_logits, torch.nn.Parameter) and m.latent.prior_logits.grad.abs().sum() > 0
    calls = []

    def zero_kl(latent, params, sample, tau):
        calls.append(tau)
        return params.new_zeros(params.shape[0])

    m = small(kl=zero_kl, tau=0.9).train()
    assert m.loss(data())[1]["kl"] == 0.0 and calls == [0.9]

    class Sharp(D.CategoricalLatent):  # a relaxation whose tau -> 0 limit differs from softmax(params)
        def discrete_logits(self, params):
            return 3 * params

    m = small(latent=Sharp(N, K)).eval()
    params = m.encode(data())
    torch.testing.assert_close(m.elbo(data())["kl"], kl_categorical(3 * params, torch.zeros(K)).sum(-1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="kl must be"):
        D.CategoricalLatent(2, 3, kl="bogus")
    with pytest.raises(ValueError, match="num_classes"):
        D.CategoricalLatent(2, 1)
    with pytest.raises(ValueError, match="prior"):
        D.CategoricalLatent(2, 3, prior="flat")
    with pytest.raises(ValueError, match="tau must be"):
        small(tau=0.0)
    with pytest.raises(ValueError, match="binarize"):
        small(binarize="static")


def test_fit_improves_relaxed_objective():
    m = small(kl="relaxed_mc", tau=0.5)
    x = torch.bernoulli(torch.rand(1, 1, 4, 4).expand(200, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=50, shuffle=True)
    hist = fit(m, loader, num_epochs=15, lr=1e-2, progress=False)
    assert hist["loss"][-1] < hist["loss"][0] - 0.5
    assert int(m.step) == 15 * 4


def test_train_smoke(mnist_test, tmp_path):
    model, meta = D.train(out=tmp_path / "c.pt", num_epochs=1, progress=False, num_train=300, eval_k=5,
                          eval_num_test=20)
    assert meta["steps"] == 3 and meta["num_train"] == 300 and math.isfinite(meta["eval"]["test_elbo"])
    m2 = D.build()
    load_checkpoint(m2, tmp_path / "c.pt")
    assert int(m2.step) == 3
