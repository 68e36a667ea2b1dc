"""Tests for vaebook.recab_vae (Chapter 5): the VAE with a Gaussian and a relaxed-categorical latent."""
from __future__ import annotations

import math

import pytest
import torch

from vaebook import divergences
from vaebook import recab_vae as R
from vaebook.discrete_vae import KL_CHOICES
from vaebook.divergences import kl_categorical, kl_normal_diag
from vaebook.metrics import iwae_bound
from vaebook.train import load_checkpoint

D, N, K = 3, 2, 4


def small(**kw):
    torch.manual_seed(0)
    kw.setdefault("binarize", None)
    return R.ReCABVAE.mlp(D, N, K, hidden=(16,), data_shape=(1, 4, 4), **kw)


def data(b=8, seed=0):
    return torch.bernoulli(torch.full((b, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kl", KL_CHOICES)
def test_shapes(kl):
    m = small(kl=kl).train()
    x = data()
    q_mean, q_logvar, logits = m.encode(x)
    assert q_mean.shape == q_logvar.shape == (8, D) and logits.shape == (8, N, K)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        terms = m.elbo(x, num_samples=3)
        assert set(terms) == {"elbo", "rec", "kl", "kl_c", "kl_d"}
        assert all(t.shape == (8,) and torch.isfinite(t).all() for t in terms.values())
        torch.testing.assert_close(terms["elbo"], terms["rec"] - terms["kl_c"] - terms["kl_d"])
        torch.testing.assert_close(terms["kl"], terms["kl_c"] + terms["kl_d"])
    m.train()
    loss, logs = m.loss(x)
    assert loss.dim() == 0 and set(logs) == {"loss", "elbo", "rec", "kl_c", "kl_d", "tau", "beta_d"}
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.enc.parameters())
    assert m.log_weights(x, 5).shape == (5, 8)
    assert m.decode_classes().shape == (K, 1, 4, 4) and m.sample(6).shape == (6, 1, 4, 4)
    assert m.reconstruct(x).shape == (8, 1, 4, 4) and m.codes(x).shape == (8, N)


def test_elbo_terms_match_library_functions():
    m = small(kl="recab").double().train()
    x = data().double()
    q_mean, q_logvar, logits = m.encode(x)
    terms = m.elbo(x)
    prior = torch.zeros(K, dtype=torch.float64)
    torch.testing.assert_close(terms["kl_d"], divergences.recab(logits, prior).sum(-1))
    torch.testing.assert_close(terms["kl_c"], kl_normal_diag(q_mean, q_logvar))
    m.eval()  # the discrete model: the exact categorical KL
    torch.testing.assert_close(m.elbo(x)["kl_d"], kl_categorical(logits, prior).sum(-1))
    # per-variable terms sum to the CategoricalLatent's own KL term, for every choice (same sample for relaxed_mc)
    for kl in KL_CHOICES:
        m.latent.kl_type = kl
        s = m.latent.rsample(logits, 0.7, 4)
        per = R.discrete_kl_per_variable(m.latent, logits, s, 0.7)
        assert per.shape == (8, N)
        torch.testing.assert_close(per.sum(-1), m.latent.kl(logits, s, 0.7))


def test_loss_decreases():
    m = small(kl="recab", tau=0.5)
    x = data(64, seed=1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = m.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.4  # the data entropy is 10.8 nats
    assert int(m.step) == 40


def _loss_and_terms(m, x, seed=3):
    torch.manual_seed(seed)
    loss, logs = m.loss(x)
    torch.manual_seed(seed)
    rec, kl_c, kl_dn = m._terms(x, 1, False, m.tau)
    return loss, rec, kl_c, kl_dn


def test_free_bits_and_kl_weight_behave_as_documented():
    x = data()
    # free_bits = 0, beta = 1: the negative relaxed objective
    m = small(kl="recab")
    loss, rec, kl_c, kl_dn = _loss_and_terms(m, x)
    torch.testing.assert_close(loss, -rec.mean() + kl_c.mean() + kl_dn.sum(-1).mean())
    # beta and beta_c weight the two KL terms
    m = small(kl="recab", beta=0.3, beta_c=2.0)
    loss, rec, kl_c, kl_dn = _loss_and_terms(m, x)
    torch.testing.assert_close(loss, -rec.mean() + 2.0 * kl_c.mean() + 0.3 * kl_dn.sum(-1).mean())
    # free bits: sum over variables of max(lambda, batch-mean KL of that variable)
    lam = 0.05
    m = small(kl="recab", free_bits=lam)
    loss, rec, kl_c, kl_dn = _loss_and_terms(m, x)
    means = kl_dn.mean(0)
    assert (means > lam).any() or (means < lam).any()
    torch.testing.assert_close(loss, -rec.mean() + kl_c.mean() + means.clamp_min(lam).sum())
    # above every variable's KL, free bits remove the discrete KL's gradient: the same gradients as beta = 0
    grads = []
    for kw in (dict(free_bits=1e3), dict(beta=0.0)):
        m = small(kl="recab", **kw)
        loss, rec, kl_c, kl_dn = _loss_and_terms(m, x)
        if "free_bits" in kw:
            torch.testing.assert_close(loss, -rec.mean() + kl_c.mean() + N * 1e3)
        grads.append(torch.autograd.grad(loss, list(m.enc.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    # the reported elbo never includes the weights or free bits
    m = small(kl="recab", free_bits=1e3, beta=0.1)
    torch.manual_seed(3)
    _, logs = m.loss(x)
    torch.manual_seed(3)
    rec, kl_c, kl_dn = m._terms(x, 1, False, m.tau)
    assert logs["elbo"] == pytest.approx((rec - kl_c - kl_dn.sum(-1)).mean().item(), rel=1e-5)
    # linear warm-up of beta_d
    m = small(kl="recab", beta=2.0, warmup_steps=10)
    assert m.kl_weight(0) == pytest.approx(0.2) and m.kl_weight(4) == pytest.approx(1.0)
    assert m.kl_weight(9) == m.kl_weight(500) == 2.0
    _, logs = m.loss(x)
    assert logs["beta_d"] == pytest.approx(0.2) and m.kl_weight() == pytest.approx(0.4)


def test_discrete_evaluation_is_a_bound():
    m = small(kl="recab").eval()
    x = data(16)
    torch.manual_seed(0)
    elbo = m.elbo(x, num_samples=2000)["elbo"]
    lw = m.log_weights(x, 2000)
    # the mean log-weight is the same ELBO (estimated), and L_k >= L_1
    assert ((lw.mean(0) - elbo).abs() < 5 * lw.std(0) / math.sqrt(2000) + 0.05).all()
    assert (iwae_bound(m, x, k=200) > lw.mean(0) - 0.05).all()


def test_code_purity():
    labels = torch.arange(10).repeat(20)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    r = R.code_purity(perm[labels], labels, perm[labels], labels)
    assert r["accuracy"] == 1.0 and r["nmi"] == pytest.approx(1.0) and r["used"] == 10
    const = torch.zeros_like(labels)
    r = R.code_purity(const, labels, const, labels)
    assert r["accuracy"] == pytest.approx(0.1) and r["nmi"] == 0.0 and r["used"] == 1
    # probabilities: one-hot rows give the same as indices; uniform rows carry nothing, whatever their arg max
    onehot = torch.nn.functional.one_hot(perm[labels], 10).double()
    assert R.code_purity(onehot, labels, onehot, labels)["nmi"] == pytest.approx(1.0)
    uniform = torch.full((200, 10), 0.1, dtype=torch.float64)
    r = R.code_purity(uniform, labels, uniform, labels)
    assert r["accuracy"] == pytest.approx(0.1) and r["nmi"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="codes must be"):
        R.code_purity(torch.zeros(5, 3), labels[:5], torch.zeros(5, 3), labels[:5])


def test_argument_checks():
    with pytest.raises(ValueError, match="kl must be"):
        small(kl="kl_nonsense")
    with pytest.raises(ValueError, match="free_bits"):
        small(free_bits=-1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        small(warmup_steps=1.5)
    with pytest.raises(ValueError, match="arm"):
        R.build("nope")


def test_train_smoke_and_checkpoint_round_trip(tmp_path, mnist_test):
    model, meta = R.train(out=tmp_path / "c.pt", num_epochs=1, progress=False, arms=["recab"], seeds=[0],
                          num_train=200, num_test=300, eval_k=2, eval_num_test=20)
    assert set(meta["results"]) == {"recab/0", "recab_fb/0"}  # the saved arm is always trained
    r = meta["results"]["recab_fb/0"]
    assert r["kl_cat"] <= r["kl_relaxed"] + 1e-6 <= r["kl_recab"] + 2e-6
    assert math.isfinite(r["test_elbo"]) and 0.0 <= r["code_accuracy"] <= 1.0
    fresh = R.build()
    meta2 = load_checkpoint(fresh, tmp_path / "c.pt")
    assert meta2["results"] == meta["results"]
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_shipped_checkpoint_loads():
    from pathlib import Path

    path = Path(R.__file__).parent / "checkpoints" / "ch05_recab_vae.pt"
    if not path.is_file():
        pytest.skip("checkpoint not built yet (python -m vaebook.recab_vae)")
    meta = load_checkpoint(R.build(), path)
    assert {f"{a}/{s}" for a in R.ARMS for s in meta["recipe"]["seeds"]} <= set(meta["results"])
