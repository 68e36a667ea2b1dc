"""The VRNN, the GM-VRNNs and the LSTM baseline (Chapter 9)."""
import itertools
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from vaebook import metrics
from vaebook.divergences import kl_normal_diag
from vaebook.mixtures import kl_gmm
from vaebook.train import fit, load_checkpoint
from vaebook.vrnn import GMVRNN, VRNN, LSTMBaseline, build, split_mask, train

X_DIM, T = 6, 5


def tiny_seqs(n=8, steps=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, steps, X_DIM, generator=g), generator=g)


def tiny(kind, **kw):
    torch.manual_seed(0)
    small = dict(x_dim=X_DIM, h_dim=12, feat_dim=8, binarize=None)
    if kind == "vrnn":
        return VRNN(z_dim=3, **small, **kw)
    if kind == "lstm":
        return LSTMBaseline(**small, **kw)
    return GMVRNN(variant=kind, z_dim=3, num_components=3, w_dim=2, **small, **kw)


@pytest.mark.parametrize("kind", ["vrnn", "gumbel", "gmvae"])
def test_per_step_terms_sum_to_sequence_elbo(kind):
    model = tiny(kind)
    x = tiny_seqs()
    torch.manual_seed(3)
    per_step = model.elbo_per_step(x)
    torch.manual_seed(3)
    seq = model.elbo(x)
    assert per_step["rec"].shape == per_step["kl"].shape == (8, T)
    torch.testing.assert_close(per_step["elbo"].sum(1), seq["elbo"])
    torch.testing.assert_close(seq["elbo"], seq["rec"] - seq["kl"])
    assert (per_step["kl"] >= -1e-6).all()
    if kind == "gmvae":  # the report's three regularisers add up to the KL term
        torch.testing.assert_close(per_step["kl"], per_step["cond_prior"] + per_step["w_prior"]
                                   + per_step["v_prior"])
    if kind == "gumbel":
        torch.testing.assert_close(per_step["kl"], per_step["kl_cat"] + per_step["kl_gauss"])


def test_masking_equals_truncated_sequences():
    model = tiny("vrnn")
    x = tiny_seqs(3)
    noise = torch.randn(3, T, 3)
    lengths = [5, 3, 1]
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).float()
    x_pad = x * mask[..., None] + (1 - mask[..., None]) * 1.0  # padding values must not matter
    full = model.elbo_per_step(x_pad, mask, noise=noise)
    for b, n in enumerate(lengths):
        alone = model.elbo_per_step(x[b:b + 1, :n], noise=noise[b:b + 1, :n])
        for k in ("rec", "kl", "logw"):
            torch.testing.assert_close(full[k][b, :n], alone[k][0])
            assert (full[k][b, n:] == 0).all()
    # a masked step in the middle is skipped: the state is carried over it unchanged
    hole = torch.ones(1, T)
    hole[0, 2] = 0
    keep = [0, 1, 3, 4]
    skipped = model.elbo_per_step(x[:1], hole, noise=noise[:1])
    removed = model.elbo_per_step(x[:1, keep], noise=noise[:1, keep])
    torch.testing.assert_close(skipped["elbo"][:, keep], removed["elbo"])
    lstm = tiny("lstm")
    lp = lstm.log_prob(x_pad, mask)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(lp[b], lstm.log_prob(x[b:b + 1, :n])[0])


def test_kl_term_is_the_gaussian_kl_of_prior_and_encoder():
    model = tiny("vrnn")
    x = tiny_seqs()
    noise = torch.randn(8, T, 3)
    params = model.step_params(x, noise=noise)
    kl = model.elbo_per_step(x, noise=noise)["kl"]
    expected = kl_normal_diag(params["q_mean"], params["q_logvar"], params["p_mean"], params["p_logvar"])
    torch.testing.assert_close(kl, expected)
    q = Independent(Normal(params["q_mean"], (0.5 * params["q_logvar"]).exp()), 1)
    p = Independent(Normal(params["p_mean"], (0.5 * params["p_logvar"]).exp()), 1)
    torch.testing.assert_close(kl, kl_divergence(q, p), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(params["p_mean"][:, 0], params["p_mean"][:, 1])  # the prior depends on h_{t-1}


def _mixture(logits, mean, logvar):
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mean, (0.5 * logvar).exp()), 1))


def test_gumbel_variant_kl_is_the_matched_bound():
    model = tiny("gumbel").double()
    torch.manual_seed(1)
    fx = torch.randn(7, 8, dtype=torch.float64)
    h = torch.randn(7, 12, dtype=torch.float64)
    q, p = model.mixture_params(fx, h)
    kl_cat, kl_gauss = model.matched_kl(q, p)
    ref = kl_gmm(_mixture(*q), _mixture(*p), method="matched")
    torch.testing.assert_close(kl_cat + kl_gauss, ref)
    mc = kl_gmm(_mixture(*q), _mixture(*p), method="mc", num_samples=20000, seed=0)
    assert (kl_cat + kl_gauss >= mc - 0.05).all()  # an upper bound on the true KL


def test_gumbel_variant_samples_exactly_in_eval_mode():
    model = tiny("gumbel")
    model.eval()
    logits = torch.tensor([[0.0, -1.0, 2.0]]).expand(4000, 3)
    mean = torch.tensor([[-10.0], [0.0], [10.0]]).expand(3, 3).unsqueeze(0).expand(4000, 3, 3)
    z = model._sample_mixture(logits, mean, torch.full_like(mean, -12.0), relaxed=False)
    assert set(z[:, 0].round().unique().tolist()) <= {-10.0, 0.0, 10.0}  # one component, never a blend
    freq = (z[:, 0] > 5).float().mean().item()
    assert abs(freq - torch.softmax(logits[0], 0)[2].item()) < 0.03
    z_soft = model._sample_mixture(logits, mean, torch.full_like(mean, -12.0), relaxed=True)
    assert not set(z_soft[:, 0].round().unique().tolist()) <= {-10.0, 0.0, 10.0}  # tau = 1 blends


def test_gmvae_variant_terms():
    model = tiny("gmvae")
    x = tiny_seqs()
    terms = model.elbo_per_step(x)
    for k in ("cond_prior", "w_prior", "v_prior"):
        assert (terms[k] >= -1e-6).all()
    one = GMVRNN("gmvae", x_dim=X_DIM, h_dim=12, z_dim=3, num_components=1, w_dim=2, feat_dim=8, binarize=None)
    torch.manual_seed(0)
    t1 = one.elbo_per_step(x)
    assert t1["v_prior"].abs().max() < 1e-6  # one component: nothing to choose
    # with one component the conditional prior is the Gaussian KL to N(mu(w), sigma(w)), and the log weight
    # is rec - [log q(z) - log p(z|w)] - [log q(w) - log p(w)]: the exact ELBO's integrand
    h = torch.randn(4, 12)
    fx = torch.randn(4, 8)
    zn, wn = torch.randn(4, 3), torch.randn(4, 2)
    z, tt = one.gmvae_terms(x[:4, 0], fx, h, zn, wn)
    qz_mean, qz_logvar = one.enc_z(torch.cat([fx, h], -1))
    qw_mean, qw_logvar = one.enc_w(torch.cat([fx, h], -1))
    gm_mean, gm_logvar = one.gm_params(qw_mean + (0.5 * qw_logvar).exp() * wn)
    torch.testing.assert_close(tt["cond_prior"], kl_normal_diag(qz_mean, qz_logvar, gm_mean[:, 0], gm_logvar[:, 0]))


def test_lstm_log_likelihood_is_a_manual_bernoulli_computation_and_normalised():
    model = tiny("lstm").double()
    x = tiny_seqs().double()
    with torch.no_grad():
        p = torch.sigmoid(model.logits(x))
        manual = (x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2))
        torch.testing.assert_close(model.log_prob(x), manual)
        # causal: changing the last step changes no earlier conditional
        x2 = x.clone()
        x2[:, -1] = 1 - x2[:, -1]
        torch.testing.assert_close(model.log_prob_per_step(x)[:, :-1], model.log_prob_per_step(x2)[:, :-1])
    small = LSTMBaseline(x_dim=2, h_dim=5, feat_dim=4, binarize=None).double()
    allx = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64).view(-1, 3, 2)
    with torch.no_grad():
        total = torch.logsumexp(small.log_prob(allx), 0)
    assert abs(total.item()) < 1e-10  # sums to one over all 64 binary sequences
    assert torch.equal(metrics.iwae_bound(small, allx[:4], k=3), small.log_prob(allx[:4]))


@pytest.mark.parametrize("kind", ["vrnn", "gumbel", "gmvae", "lstm"])
def test_generation_keeps_the_prime(kind):
    model = tiny(kind)
    x = tiny_seqs(3)
    out = model.generate(3, T=7, prime=x[:, :2])
    assert out.shape == (3, 7, X_DIM)
    assert torch.equal(out[:, :2], x[:, :2])
    assert ((out >= 0) & (out <= 1)).all()
    free = model.generate(4, T=7)
    assert free.shape == (4, 7, X_DIM)
    shared = model.generate(2, T=4, prime=x[0, :3])  # one prime for all samples
    assert torch.equal(shared[:, :3], x[0, :3].expand(2, 3, X_DIM))
    with pytest.raises(ValueError):
        model.generate(2, T=4, feed="argmax")


@pytest.mark.parametrize("kind", ["vrnn", "gumbel", "gmvae", "lstm"])
def test_training_decreases_the_loss(kind):
    model = tiny(kind)
    x = tiny_seqs(64, seed=1)
    x[:, :, :3] = 1.0  # structure to learn
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)
    hist = fit(model, loader, num_epochs=6, lr=1e-2, grad_clip=5.0, progress=False)
    first, last = hist.steps["loss"][0], hist["loss"][-1]
    assert last < 0.8 * first, (first, last)


class RecordingAdam(torch.optim.Adam):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.norms = []

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return super().step(closure)


def test_gradient_clipping_is_applied_before_the_step():
    x = tiny_seqs(32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)
    norms = {}
    for clip in (None, 0.1):
        model = tiny("vrnn")
        opt = RecordingAdam(model.parameters(), lr=1e-3)
        fit(model, loader, num_epochs=1, optimizer=opt, grad_clip=clip, progress=False)
        norms[clip] = opt.norms
    assert max(norms[None]) > 0.1  # the clip binds
    assert max(norms[0.1]) <= 0.1 + 1e-5


def test_iwae_bound_of_the_vrnn_is_above_its_elbo_and_batches_with_masks():
    model = tiny("vrnn")
    model.eval()
    x = tiny_seqs(16)
    torch.manual_seed(0)
    elbo = torch.stack([model.elbo(x)["elbo"] for _ in range(50)]).mean(0)
    iw = metrics.iwae_bound(model, x, k=50)
    assert iw.shape == (16,) and (iw.mean() > elbo.mean())
    x_b, m_b = split_mask((x, torch.ones(16, T)))
    assert m_b is not None and split_mask((x, torch.arange(16)))[1] is None
    with pytest.raises(ValueError):
        model.elbo_per_step(x[:, :, :2])
    with pytest.raises(ValueError):
        model.elbo_per_step(x, torch.ones(16, T + 1))


def test_checkpoint_round_trip(tmp_path, mnist_test):
    model, meta = train("ch09_vrnn", out=tmp_path / "v.pt", num_epochs=1, num_train=128, progress=False,
                        num_test=40, eval_k=2, eval_num_test=8, monitor_num_test=8)
    fresh = build("ch09_vrnn")
    meta2 = load_checkpoint(fresh, tmp_path / "v.pt")
    assert meta2["eval"]["test_elbo"] == meta["eval"]["test_elbo"]
    assert meta2["eval"]["test_iwae"] > -600 and math.isfinite(meta2["eval"]["test_elbo_logw"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
