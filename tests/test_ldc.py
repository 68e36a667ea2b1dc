"""Chapter 7 (vaebook.ldc): U-statistic standard errors, MMD, KSD, the particle encoder and the LDC-VAE losses."""
import itertools
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from vaebook import ldc, svgd
from vaebook.metrics import iwae_bound
from vaebook.train import load_checkpoint


def _brute_u_and_var(H):
    """U and the unbiased variance estimate by explicit enumeration of distinct index tuples."""
    n = H.shape[0]
    pairs = [H[i, j] for i, j in itertools.permutations(range(n), 2)]
    trip = [H[i, j] * H[i, k] for i, j, k in itertools.permutations(range(n), 3)]
    quad = [H[i, j] * H[k, l] for i, j, k, l in itertools.permutations(range(n), 4)]
    u = sum(pairs) / len(pairs)
    mu2 = sum(quad) / len(quad)
    zeta1 = sum(trip) / len(trip) - mu2
    zeta2 = sum(p * p for p in pairs) / len(pairs) - mu2
    return u, (4 * (n - 2) * zeta1 + 2 * zeta2) / (n * (n - 1))


def test_u_statistic_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    r = 2 * torch.randn(7, generator=g, dtype=torch.float64)
    a = torch.randn(7, 7, generator=g, dtype=torch.float64)
    H = r[:, None] + r[None, :] + 0.3 * (a + a.T) + 1.0  # row effects: zeta_1 > 0
    u, se = ldc.u_statistic(H)
    u_ref, var_ref = _brute_u_and_var(H)
    assert torch.allclose(u, u_ref) and var_ref > 0
    assert torch.allclose(se, var_ref.sqrt())
    with pytest.raises(ValueError):
        ldc.u_statistic(H[:3, :3])


def test_mmd_matches_direct_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = torch.randn(9, 3, generator=g, dtype=torch.float64) + 0.5
    h = 2.3
    k = lambda a, b: math.exp(-((a - b) ** 2).sum().item() / h)
    n = len(x)
    direct = sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i])
                 for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert abs(ldc.mmd(x, y, h).item() - direct) < 1e-12
    with pytest.raises(ValueError):
        ldc.mmd(x, y[:5], h)


def test_mmd_near_zero_for_matched_and_positive_for_shifted():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 800, 5, generator=g, dtype=torch.float64)
    m0, se0 = ldc.mmd(x, y, return_se=True)
    assert abs(m0.item()) < 4 * se0.item() + 1e-4
    m1, se1 = ldc.mmd(x + torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64), y, return_se=True)
    assert m1.item() > 6 * se1.item() and m1.item() > 10 * abs(m0.item())
    # a narrower "aggregate posterior" (variance 0.5) is detected too
    m2, se2 = ldc.mmd(x * math.sqrt(0.5), y, return_se=True)
    assert m2.item() > 5 * se2.item()


@pytest.mark.parametrize("shift", [0.0, 0.6])
def test_standard_error_is_calibrated(shift):
    """The permutation-free s.e. agrees with the spread of the estimate over independent repetitions."""
    g = torch.Generator().manual_seed(3)
    vals, ses = [], []
    for _ in range(300):
        x, y = torch.randn(2, 60, 2, generator=g, dtype=torch.float64)
        m, se = ldc.mmd(x + shift, y, 2.0, return_se=True)
        vals.append(m.item())
        ses.append(se.item())
    sd = torch.tensor(vals).std().item()
    ratio = (sum(s * s for s in ses) / len(ses)) ** 0.5 / sd
    assert 0.7 < ratio < 1.5, ratio  # conservative under the null (zeta_1 clipped at 0)


def test_ksd_with_se_agrees_with_svgd_ksd():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(300, 4, generator=g, dtype=torch.float64) * 1.3
    h = 5.0
    k, se = ldc.ksd_with_se(z, -z, h)
    assert torch.allclose(k, svgd.ksd(z, -z, h).double(), rtol=1e-8, atol=1e-12)
    assert k.item() > 4 * se.item()  # variance 1.69 vs the prior's 1
    z0 = torch.randn(300, 4, generator=g, dtype=torch.float64)
    k0, se0 = ldc.ksd_with_se(z0, -z0, h)
    assert abs(k0.item()) < 4 * se0.item() + 1e-4


def test_latent_consistency_keys_and_same_bandwidth():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(400, 3, generator=g) * 0.5
    a = ldc.latent_consistency(z, torch.Generator().manual_seed(0))
    b = ldc.latent_consistency(z * 2, torch.Generator().manual_seed(0))
    assert a["h"] == b["h"]  # the bandwidth depends on the prior sample only
    assert a["mmd2"] > 5 * a["mmd2_se"] and abs(b["mmd2"]) < 4 * b["mmd2_se"] + 1e-4
    assert abs(a["var_mean"] - 0.25) < 0.05


def test_particle_encoder_starts_gaussian():
    torch.manual_seed(0)
    enc = ldc.ParticleEncoder(6, 3, hidden=(16, 16), head_hidden=(8,))
    x = torch.randn(4, 6)
    z = enc(x, 4000, generator=torch.Generator().manual_seed(1))
    assert z.shape == (4, 4000, 3)
    mu, raw = enc.gauss(enc.trunk(x)).chunk(2, -1)
    assert torch.allclose(z.mean(1), mu, atol=0.1)
    assert torch.allclose(z.var(1).log(), raw, atol=0.1)
    with pytest.raises(ValueError):
        enc(x, 0)


class _LinearGaussianDecoder(torch.nn.Module):
    """x | z ~ N(A z, s^2 I): a decoder with a closed-form posterior, for checks."""

    def __init__(self, A, s):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())
        self.s = s

    def forward(self, z):
        return Independent(Normal(z @ self.A.T, self.s), 1)

    def mean(self, z):
        return z @ self.A.T


def _linear_model(num_particles=16, lam=1.0, seed=0):
    torch.manual_seed(seed)
    A = torch.tensor([[1.5, 0.0], [0.5, 1.0], [0.0, -1.0], [1.0, 1.0]])
    enc = ldc.ParticleEncoder(4, 2, hidden=(32, 32), head_hidden=(32,))
    return ldc.LDCVAE(enc, _LinearGaussianDecoder(A, 0.7), num_particles=num_particles, lam=lam, binarize=None), A


def _posterior(A, s, x, lam=1.0):
    prec = torch.eye(2) + lam * A.T @ A / s**2
    cov = torch.linalg.inv(prec)
    return (lam * x @ A / s**2) @ cov, cov


def test_gibbs_score_and_gradient_routing():
    model, A = _linear_model(lam=0.5)
    x = torch.randn(3, 4)
    z = torch.randn(3, 5, 2)
    score, _ = model.gibbs_score(x, z)
    mean, cov = _posterior(A, 0.7, x, lam=0.5)
    exact = -((z - mean[:, None]) @ torch.linalg.inv(cov))  # the Gaussian posterior's score
    assert torch.allclose(score, exact, atol=1e-5)
    # decoder gradients come from the particle log-likelihood only; encoder gradients from the surrogate only
    loss, logs = model.loss(x)
    loss.backward()
    assert model.dec.A.grad is not None and model.enc.gauss.weight.grad is not None
    assert {"rec", "phi_norm", "surrogate", "spread"} <= set(logs)


def test_amortized_svgd_encoder_learns_the_posterior():
    """With the decoder fixed, the amortized-SVGD encoder matches the closed-form posterior (mean and variance)."""
    model, A = _linear_model(num_particles=16)
    model.dec.A.requires_grad_(False)
    opt = torch.optim.Adam(model.enc.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        z0 = torch.randn(64, 2, generator=g)
        x = z0 @ A.T + 0.7 * torch.randn(64, 4, generator=g)
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(5, 2, generator=g) @ A.T
    z = model.particles(x, 2000, torch.Generator().manual_seed(2))
    mean, cov = _posterior(A, 0.7, x)
    assert (z.mean(1) - mean).abs().max() < 0.1
    ratio = z.var(1) / torch.diagonal(cov)
    # 16 SVGD particles under-disperse even in 2-D (plain SVGD on N(0, I_2) settles near 0.75 of the variance)
    assert (ratio > 0.35).all() and (ratio < 1.2).all(), ratio


def test_log_weights_give_valid_bounds():
    model, A = _linear_model()
    model.eval()
    x = torch.randn(4, 2) @ A.T
    log_px = torch.distributions.MultivariateNormal(torch.zeros(4), A @ A.T + 0.49 * torch.eye(4)).log_prob(x)
    torch.manual_seed(0)
    for proposal in ("fitted", "prior"):
        lw = model.log_weights(x, 20000, proposal=proposal).double()
        # E[w] = p(x): the importance-sampling estimate of log p(x) is consistent ...
        assert (torch.logsumexp(lw, 0) - math.log(20000) - log_px).abs().max() < 0.1
        # ... and the k = 1 value (an ELBO of the proposal) lies below log p(x)
        assert (lw.mean(0) < log_px + 1e-3).all()
    b = torch.stack([iwae_bound(model, x, k=50) for _ in range(40)]).double()
    assert b.shape == (40, 4) and (b.mean(0) < log_px + 4 * b.std(0) / 40**0.5 + 1e-3).all()
    with pytest.raises(ValueError):
        model.log_weights(x, 2, proposal="posterior")
    with pytest.raises(ValueError):
        ldc.fitted_gaussian(torch.zeros(3, 1, 2))


def test_build_train_smoke_and_checkpoint_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBOOK_OFFLINE", "1")
    try:
        model, meta = ldc.train(tmp_path / "m.pt", num_epochs=1, progress=False, num_train=200, eval_k=2,
                                eval_num_test=20)
    except Exception as e:  # noqa: BLE001 - no MNIST on this machine
        if "MNIST" in str(e) or "mnist" in str(e):
            pytest.skip(f"MNIST not available: {e}")
        raise
    assert meta["eval"]["iwae_k"] == 2 and math.isfinite(meta["eval"]["test_iwae"])
    fresh = ldc.build()
    meta2 = load_checkpoint(fresh, tmp_path / "m.pt")
    assert meta2["num_epochs"] == 1
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
