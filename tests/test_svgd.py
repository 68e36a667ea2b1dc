"""Tests of vaebook.svgd (Chapter 6): the blocked SVGD direction against the dense autograd version and the
reference code's formulas, the median rules against NumPy/SciPy, the KSD against a direct double sum with autograd,
memory bounds, and the numeric checks S3, S6, K1, K2, A4, A2/A3 of the notes (stein_and_introspection.md §1.10)."""
import math

import numpy as np
import pytest
import torch

from vaebook import svgd
from vaebook.train import fit

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _points(n, d, seed=0, batch=()):
    g = _gen(seed)
    x = torch.randn(*batch, n, d, generator=g, dtype=F64)
    s = -x + 0.5 * torch.randn(*batch, n, d, generator=g, dtype=F64)  # any score will do for identities
    return x, s


# ----------------------------------------------------------------------------------------------------------------
# bandwidth
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 7, 40, 41, 150])
def test_median_rules_match_numpy(n):
    from scipy.spatial.distance import pdist, squareform

    x, _ = _points(n, 3, seed=n)
    dist = pdist(x.numpy())
    code = np.median(squareform(dist) ** 2) / np.log(n + 1)  # python/svgd.py::svgd_kernel, all n^2 entries
    paper = np.median(dist) ** 2 / np.log(n)
    ksd_rule = 2 * np.median(dist**2)
    assert svgd.median_bandwidth(x).item() == pytest.approx(code, rel=1e-12)
    assert svgd.median_bandwidth(x, rule="paper").item() == pytest.approx(paper, rel=1e-12)
    assert svgd.median_bandwidth(x, rule="ksd").item() == pytest.approx(ksd_rule, rel=1e-12)


def test_median_subsample_for_large_n_is_close_and_bounded():
    g = _gen(1)
    x = torch.randn(2500, 2, generator=g, dtype=F64)
    exact = svgd.median_bandwidth(x, median_sample=2500)
    approx, peak = svgd.peak_memory(svgd.median_bandwidth, x, median_sample=500)
    assert abs(approx / exact - 1) < 0.05
    assert peak < 4 * 8 * 500**2  # a few 500 x 500 float64 arrays, never 2500 x 2500 (50 MB)
    assert svgd.median_bandwidth(x, median_sample=500) == approx  # deterministic


def test_degenerate_bandwidths():
    assert svgd.median_bandwidth(torch.zeros(1, 2, dtype=F64)).item() == 1.0
    assert svgd.median_bandwidth(torch.zeros(5, 2, dtype=F64)).item() == 1.0
    with pytest.raises(ValueError):
        svgd.median_bandwidth(torch.zeros(5, 2), rule="silverman")
    with pytest.raises(ValueError):
        svgd.svgd_direction(torch.zeros(5, 2), torch.zeros(5, 2), bandwidth=-1.0)
    with pytest.raises(ValueError):
        svgd.svgd_direction(torch.zeros(5, 2), torch.zeros(4, 2))


# ----------------------------------------------------------------------------------------------------------------
# the SVGD direction
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d,block", [(1, 2, 4), (2, 1, 1), (37, 3, 5), (64, 2, 64), (100, 5, 33)])
def test_blocked_equals_dense_autograd(n, d, block):
    x, s = _points(n, d, seed=n + d)
    blocked = svgd.svgd_direction(x, s, block_size=block)
    dense = svgd.svgd_direction_dense(x, s)
    assert torch.allclose(blocked, dense, rtol=0, atol=1e-10)
    for rule in ("paper", "ksd"):
        assert torch.allclose(svgd.svgd_direction(x, s, rule=rule, block_size=block),
                              svgd.svgd_direction_dense(x, s, rule=rule), rtol=0, atol=1e-10)


def test_direction_matches_reference_code_formula():
    """phi = (K s + (x * K.sum(1) - K x) / sigma^2) / n with sigma^2 = 0.5 m / log(n + 1) (the code's svgd_kernel)."""
    x, s = _points(50, 2, seed=3)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    sigma2 = 0.5 * np.median(d2.numpy()) / math.log(51)
    k = torch.exp(-d2 / (2 * sigma2))
    ref = (k @ s + (x * k.sum(1, keepdim=True) - k @ x) / sigma2) / 50
    assert torch.allclose(svgd.svgd_direction(x, s, block_size=16), ref, rtol=0, atol=1e-12)


def test_batched_sets_are_independent_and_callable_score():
    x, s = _points(30, 2, seed=5, batch=(3,))
    out = svgd.svgd_direction(x, lambda y: -y, block_size=7)
    for b in range(3):
        assert torch.allclose(out[b], svgd.svgd_direction(x[b], -x[b]), rtol=0, atol=1e-12)
    h = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    out = svgd.svgd_direction(x, s, bandwidth=h)
    assert torch.allclose(out[2], svgd.svgd_direction(x[2], s[2], bandwidth=2.0), rtol=0, atol=1e-12)


def test_one_particle_is_map_and_repulsion_pushes_apart():
    x = torch.tensor([[0.3, -1.0]], dtype=F64)
    s = torch.tensor([[1.5, 2.0]], dtype=F64)
    assert torch.equal(svgd.svgd_direction(x, s), s)  # S6
    two = torch.tensor([[-0.1], [0.1]], dtype=F64)
    phi = svgd.svgd_direction(two, torch.zeros_like(two), bandwidth=1.0)
    assert phi[0, 0] < 0 < phi[1, 0]


def test_memory_is_bounded_for_n_20000():
    g = _gen(2)
    x = torch.randn(20_000, 2, generator=g)
    s = -x
    block = 512
    phi, peak = svgd.peak_memory(svgd.svgd_direction, x, s, block_size=block)
    assert phi.shape == x.shape and torch.isfinite(phi).all()
    # a 20,000 x 20,000 float32 matrix would be 1.6 GB; the tiles are 1 MB each
    assert peak < 8 * 4 * block**2 + 64 * x.numel() * 4, peak
    # the dense version's memory grows like n^2 (checked at a small n against the same tracker)
    _, dense_peak = svgd.peak_memory(svgd.svgd_direction_dense, x[:1000], s[:1000])
    assert dense_peak > 4 * 1000**2 * 3


def test_peak_memory_tracker_counts_live_tensors():
    def f():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 4 MB
        del a
        c = b + 1  # 4 MB, a freed
        return c.sum()

    _, peak = svgd.peak_memory(f)
    assert 8_000_000 <= peak < 8_100_000


# ----------------------------------------------------------------------------------------------------------------
# KSD
# ----------------------------------------------------------------------------------------------------------------


def _u_autograd(x, s, h):
    """u_p(x_i, x_j) by autograd of k alone (independent of the closed form), as a dense matrix."""
    n, d = x.shape

    def k(a, b):
        return torch.exp(-((a - b) ** 2).sum() / h)

    out = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            a, b = x[i].clone().requires_grad_(True), x[j].clone().requires_grad_(True)
            kv = k(a, b)
            ga, gb = torch.autograd.grad(kv, (a, b), create_graph=True)
            tr = sum(torch.autograd.grad(gb[c], a, retain_graph=True)[0][c] for c in range(d))
            out[i, j] = (kv * s[i] @ s[j] + s[i] @ gb + ga @ s[j] + tr).detach()
    return out


def test_ksd_against_direct_double_sum():
    x, s = _points(12, 2, seed=7)
    h = 0.9
    u = _u_autograd(x, s, h)
    assert torch.allclose(svgd.stein_kernel_matrix(x, s, h), u, rtol=1e-10, atol=1e-12)
    n = 12
    u_stat = (u.sum() - u.diagonal().sum()) / (n * (n - 1))
    for block in (1, 5, 12, 100):
        assert svgd.ksd(x, s, h, block_size=block).item() == pytest.approx(u_stat.item(), rel=1e-10, abs=1e-13)
        assert svgd.ksd(x, s, h, statistic="v", block_size=block).item() == pytest.approx(u.mean().item(), rel=1e-10)
    xb, sb = _points(20, 3, seed=8, batch=(2,))
    kb = svgd.ksd(xb, sb, block_size=6)
    assert torch.allclose(kb, torch.stack([svgd.ksd(xb[i], sb[i]) for i in range(2)]), rtol=1e-12)


def test_ksd_near_zero_under_p_and_grows_with_shift():
    """K1, K2: p = N(0, 1), n = 500, U-statistic with the KSD median rule."""
    g = _gen(11)
    null = torch.stack([svgd.ksd(x, -x) for x in torch.randn(20, 500, 1, generator=g, dtype=F64)])
    assert abs(null.mean()) < 3 * null.std() / math.sqrt(20) + 1e-4
    assert null.abs().max() < 0.02
    base = torch.randn(500, 1, generator=g, dtype=F64)
    shifted = [svgd.ksd(base + delta, -(base + delta)).item() for delta in (0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(shifted, shifted[1:]))
    assert shifted[2] > 10 * null.std()
    assert svgd.ksd(base, -base, statistic="v") >= 0


# ----------------------------------------------------------------------------------------------------------------
# the driver and amortized SVGD
# ----------------------------------------------------------------------------------------------------------------


def _gmm_score():
    p = svgd.gmm1d_target()
    return svgd.score_from_log_prob(lambda x: p.log_prob(x).sum(-1))


def test_adagrad_momentum_rule():
    rule = svgd.AdaGradMomentum(stepsize=0.25)
    g1 = torch.tensor([2.0, -0.5], dtype=F64)
    assert torch.allclose(rule(g1), 0.25 * torch.sign(g1), atol=1e-6)  # first step ~ eps * sign(g)
    g2 = torch.tensor([1.0, 1.0], dtype=F64)
    h = 0.9 * g1**2 + 0.1 * g2**2
    assert torch.allclose(rule(g2), 0.25 * g2 / (1e-6 + h.sqrt()), rtol=1e-14)


def test_svgd_recovers_gmm_moments_S3_S4():
    """S3/S4: 10 independent runs (one batched call), 100 particles from N(-10, 1), 500 it, AdaGrad eps = 0.25."""
    x0 = -10 + torch.randn(10, 100, 1, generator=_gen(0), dtype=F64)
    driver = svgd.SVGD(_gmm_score(), stepsize=0.25)
    x = driver.run(x0, 500, record_at=(10, 150))
    mean, m2, pos = x.mean().item(), (x**2).mean().item(), (x > 0).double().mean().item()
    assert abs(mean - 2 / 3) < 0.15 and abs(m2 - 5) < 0.3 and 0.6 <= pos <= 0.72
    assert driver.snapshots[10].mean() < -6 and driver.snapshots[150].mean() > 0
    assert torch.equal(x0, -10 + torch.randn(10, 100, 1, generator=_gen(0), dtype=F64))  # x0 untouched


def test_svgd_ring_A4():
    ring = svgd.ring_target()
    x0 = 2 * torch.randn(200, 2, generator=_gen(0), dtype=F64)
    x = svgd.SVGD(svgd.score_from_log_prob(ring.log_prob), stepsize=0.05, step_rule="constant").run(x0, 600)
    w = svgd.mode_weights(x, ring.component_distribution.mean)
    assert ((w >= 0.05) & (w <= 0.2)).all(), w
    assert abs(x.norm(dim=-1).mean() - 2) < 0.1


def test_amortized_svgd_loss_gradient_moves_outputs_along_phi():
    lin = torch.nn.Linear(2, 2).double()
    xi = torch.randn(30, 2, generator=_gen(4), dtype=F64)
    x = lin(xi)
    loss, phi = svgd.amortized_svgd_loss(x, lambda y: -y, return_direction=True)
    loss.backward()
    # -dL/dW = (1/n) sum_i phi_i xi_i^T for a linear sampler
    assert torch.allclose(-lin.weight.grad, phi.T @ xi / 30, rtol=1e-12)
    assert torch.allclose(-lin.bias.grad, phi.mean(0), rtol=1e-12)


def test_amortized_svgd_ring_A2_and_collapse_A3():
    ring = svgd.ring_target(dtype=torch.float32)
    score = svgd.score_from_log_prob(ring.log_prob)
    centres = ring.component_distribution.mean
    weights = {}
    for scale in (2.0, 0.0):
        torch.manual_seed(0)
        model = svgd.AmortizedSVGD(svgd.ResidualSampler(2, 2, scale=scale), score, noise_dim=2)
        hist = fit(model, svgd.NoiseBatches(100, 2, 300, seed=0), num_epochs=2, lr=1e-3, progress=False)
        assert math.isfinite(hist["phi_norm"][-1])
        weights[scale] = svgd.mode_weights(model.sample(4000, _gen(1)), centres)
    assert ((weights[2.0] >= 0.03) & (weights[2.0] <= 0.25)).all(), weights[2.0]  # A2: all 8 modes
    assert weights[0.0].max() > 0.5, weights[0.0]  # A3: a plain MLP collapses onto few modes
