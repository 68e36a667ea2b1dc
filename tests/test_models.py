"""The VAE, the training loop, the metrics and checkpoints (Chapter 1)."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaebook import metrics
from vaebook.models import MLP, VAE, BernoulliDecoder, GaussianDecoder, GaussianEncoder
from vaebook.train import CheckpointError, History, fit, load_checkpoint, save_checkpoint


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 4, 4, generator=g).pow(2), generator=g)


def tiny_vae(**kw):
    return VAE.mlp(latent_dim=2, hidden=(16,), data_shape=(1, 4, 4), **kw)


def test_shapes_and_decoders():
    vae = tiny_vae()
    x = tiny_data(8)
    q_mean, q_logvar = vae.encode(x)
    assert q_mean.shape == q_logvar.shape == (8, 2)
    z = vae.reparameterize(q_mean, q_logvar, 5)
    assert z.shape == (5, 8, 2)
    px = vae.dec(z)
    assert px.batch_shape == (5, 8) and px.event_shape == (1, 4, 4)
    assert vae.sample(3).shape == (3, 1, 4, 4)
    g = GaussianDecoder(2, (1, 4, 4), (8,), learn_var="output")
    assert g(z).log_prob(x).shape == (5, 8)


def test_bernoulli_log_prob_matches_torch():
    dec = BernoulliDecoder(2, (1, 4, 4), (8,))
    z = torch.randn(3, 2)
    x = tiny_data(3)
    logits = dec.logits(z)
    ref = Bernoulli(logits=logits).log_prob(x).sum((-1, -2, -3))
    torch.testing.assert_close(dec(z).log_prob(x), ref)


def test_elbo_terms_consistent_with_monte_carlo_kl():
    torch.manual_seed(0)
    vae = tiny_vae()
    x = tiny_data(16)
    t = vae.elbo(x, num_samples=1)
    torch.testing.assert_close(t["elbo"], t["rec"] - t["kl"])
    vae_mc = tiny_vae(kl="mc")
    vae_mc.load_state_dict(vae.state_dict())
    kl_mc = vae_mc.elbo(x, num_samples=4000)["kl"]
    # the Monte Carlo KL averages to the closed form (s.e. small with 4000 samples)
    assert (kl_mc - t["kl"]).abs().max() < 0.1 + 0.05 * t["kl"].abs().max()


def test_iwae_bound_properties():
    torch.manual_seed(1)
    vae = tiny_vae()
    x = tiny_data(32)
    # k = 1 is an unbiased estimate of the ELBO; L_k increases with k; chunking does not change the value
    l1 = torch.stack([metrics.iwae_bound(vae, x, k=1) for _ in range(200)]).mean(0)
    elbo = vae.elbo(x, num_samples=2000)["elbo"]
    assert (l1 - elbo).abs().mean() < 0.3
    l100 = metrics.iwae_bound(vae, x, k=100)
    assert l100.mean() > elbo.mean()
    torch.manual_seed(3)
    a = metrics.iwae_bound(vae, x, k=50, chunk_size=50)
    torch.manual_seed(3)
    b = metrics.iwae_bound(vae, x, k=50, chunk_size=7)
    assert a.shape == (32,)
    assert (a - b).abs().max() < 5.0  # different draws, same target; exact equality is checked below
    lw = vae.log_weights(x, 10)
    assert lw.shape == (10, 32)


def test_iwae_bound_exact_logsumexp_with_fixed_weights():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def log_weights(self, x, s):
            start = self.calls
            self.calls += s
            return torch.arange(start, start + s, dtype=torch.float64)[:, None].expand(s, x.shape[0]) / 10

    for chunk in (1, 3, 10, 100):
        m = Fixed()
        got = metrics.iwae_bound(m, torch.zeros(2, 1), k=10, chunk_size=chunk)
        ref = torch.logsumexp(torch.arange(10, dtype=torch.float64) / 10, 0) - math.log(10)
        torch.testing.assert_close(got, ref.expand(2))


def test_iwae_bound_tight_for_exact_posterior():
    # linear Gaussian model in which q equals the posterior: every log-weight equals log p(x)
    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def log_weights(self, x, s):
            a, sd = 2.0, 0.5
            v = 1 / (1 + a**2 / sd**2)
            m = v * a * x / sd**2
            z = m + math.sqrt(v) * torch.randn(s, *x.shape, dtype=torch.float64)
            lj = Normal(0.0, 1.0).log_prob(z) + Normal(a * z, sd).log_prob(x)
            return (lj - Normal(m, math.sqrt(v)).log_prob(z)).squeeze(-1)

    x = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    ref = Normal(0.0, math.sqrt(4.25)).log_prob(x).squeeze(-1)
    torch.testing.assert_close(metrics.iwae_bound(Exact(), x, k=20), ref)


def test_fit_decreases_loss_and_records_history():
    x = tiny_data(128)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    vae = tiny_vae(binarize="dynamic")
    hist = fit(vae, loader, num_epochs=20, lr=1e-2, progress=False, val_data=x[:32],
               val_fn=lambda m, v: {"elbo": m.elbo(v)["elbo"].mean().item()})
    assert isinstance(hist, History) and hist.epochs == 20
    assert set(hist.keys()) >= {"loss", "elbo", "rec", "kl", "val_elbo"}
    assert len(hist.steps["loss"]) == 20 * 4
    assert hist["loss"][-1] < hist["loss"][0] - 1.0
    # same seed, same numbers
    vae2 = tiny_vae(binarize="dynamic")
    vae2.load_state_dict(VAE.mlp(latent_dim=2, hidden=(16,), data_shape=(1, 4, 4)).state_dict())


def test_fit_is_reproducible():
    x = tiny_data(64)

    def run():
        torch.manual_seed(123)
        vae = tiny_vae(binarize="dynamic")
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        return fit(vae, loader, num_epochs=3, progress=False, seed=7)["loss"]

    assert run() == run()


def test_fit_raises_on_nan_and_bad_args():
    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def loss(self, batch):
            return self.w * float("nan"), {}

    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        fit(Bad(), [torch.zeros(1)], num_epochs=1, progress=False)
    with pytest.raises(ValueError, match="num_epochs"):
        fit(Bad(), [torch.zeros(1)], num_epochs=-1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit(Bad(), [torch.zeros(1)], num_epochs=1, lr=0.0, progress=False)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    vae = tiny_vae()
    path = save_checkpoint(vae, tmp_path / "m.pt", note="hello", epochs=3)
    other = tiny_vae()
    meta = load_checkpoint(other, path)
    assert {k: meta[k] for k in ("note", "epochs")} == {"note": "hello", "epochs": 3}
    assert meta["torch"] == torch.__version__ and "argv" in meta  # the provenance save_checkpoint adds
    for k, v in vae.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(VAE.mlp(latent_dim=3, hidden=(16,), data_shape=(1, 4, 4)), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(other, tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(other, bad)


def test_constructor_errors():
    with pytest.raises(ValueError, match="activation"):
        MLP(2, (3,), 1, activation="nope")
    with pytest.raises(ValueError, match="latent_dim"):
        GaussianEncoder(4, 0)
    with pytest.raises(ValueError, match="likelihood"):
        VAE.mlp(likelihood="poisson")
    with pytest.raises(ValueError, match="kl"):
        tiny_vae(kl="exact")
    with pytest.raises(ValueError, match="learn_var"):
        GaussianDecoder(2, learn_var="sometimes")


def test_gradient_samples_variance_analytic_below_mc():
    torch.manual_seed(4)
    vae = tiny_vae()
    x = tiny_data(16)
    params = list(vae.enc.parameters())
    ga = metrics.gradient_samples(lambda: vae.loss(x)[0], params, repeats=30)
    vae.kl = "mc"
    gm = metrics.gradient_samples(lambda: vae.loss(x)[0], params, repeats=30)
    assert ga.shape == gm.shape == (30, sum(p.numel() for p in params))
    assert ga.var(0).sum() < gm.var(0).sum()
    with pytest.raises(ValueError, match="repeats"):
        metrics.gradient_samples(lambda: vae.loss(x)[0], params, repeats=1)


def test_evaluate_on_tensor():
    vae = tiny_vae()
    out = metrics.evaluate(vae, tiny_data(40), k=5, batch_size=16)
    assert out["n"] == 40 and out["k"] == 5
    assert out["iwae"] > out["elbo"] - 3 * out["elbo_se"]
