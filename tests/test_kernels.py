"""Tests for vaebook.kernels: every Triton kernel against its PyTorch reference, plus the dispatch rules.

Under CI the kernels run through the Triton interpreter on the CPU (``TRITON_INTERPRET=1``, set at the top of
conftest.py before anything imports triton, and exported by .ci/run); sizes are tiny because the interpreter is
slow, and include sizes that are not multiples of the block size. On a GPU runner (interpreter off) the same tests
run the compiled kernels on CUDA tensors. Without triton installed, the kernel tests skip and the dispatch tests
still run.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from vaebook import kernels
from vaebook.kernels import reference as ref

HAVE_TRITON = kernels.triton_available()
ON_GPU = torch.cuda.is_available() and not kernels.interpreter_enabled()
CAN_RUN = HAVE_TRITON and (kernels.interpreter_enabled() or ON_GPU)
DEVICE = "cuda" if ON_GPU else "cpu"
needs_triton = pytest.mark.skipif(not CAN_RUN, reason="triton is not installed, or no GPU and no TRITON_INTERPRET=1")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _particles(n, d, dtype=torch.float32, seed=0):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    score = -x + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)  # roughly N(0, I)
    return x.to(DEVICE, dtype), score.to(DEVICE, dtype)


# ------------------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------------------
def test_import_never_needs_triton_and_explicit_triton_raises_without_interpreter():
    # a fresh process without TRITON_INTERPRET: the references run and triton is never imported; then an
    # explicit backend="triton" on CPU tensors raises a clear error (still without importing triton)
    code = ("import sys, torch, vaebook, vaebook.kernels as k, vaebook.relaxed, vaebook.mixtures\n"
            "x = torch.randn(6, 2)\n"
            "k.svgd_direction(x, -x, 1.0); k.ksd(x, -x, 1.0)\n"
            "k.gumbel_softmax(torch.randn(3, 4), 0.5, hard=True)\n"
            "k.matched_kl(torch.zeros(2), torch.zeros(2, 1), torch.zeros(2, 1),"
            " torch.zeros(2), torch.ones(2, 1), torch.zeros(2, 1))\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n"
            "try:\n    k.gumbel_softmax(torch.randn(2, 3), 1.0, backend='triton')\n"
            "except k.BackendUnavailableError as e:\n    print('RAISED', e)\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    if not torch.cuda.is_available():
        assert "RAISED" in out.stdout, out.stdout
        assert ("TRITON_INTERPRET=1" if HAVE_TRITON else "pip install") in out.stdout


@pytest.mark.skipif(not HAVE_TRITON or torch.cuda.is_available(), reason="needs triton and no GPU")
def test_interpreter_set_after_import_is_detected():
    code = ("import os, torch, triton\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "import vaebook.kernels as k\n"
            "try:\n    k.svgd_direction(torch.randn(4, 2), torch.randn(4, 2), 1.0, backend='triton')\n"
            "except k.BackendUnavailableError as e:\n    print('RAISED', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert "RAISED" in out.stdout and "before" in out.stdout, out.stdout + out.stderr[-2000:]


def test_auto_on_cpu_is_the_reference_exactly():
    x, s = _particles(9, 2)
    x, s = x.cpu(), s.cpu()
    assert torch.equal(kernels.svgd_direction(x, s, 0.8), ref.svgd_direction_reference(x, s, 0.8))
    logits = torch.randn(4, 6, generator=_gen(1))
    a = kernels.gumbel_softmax(logits, 0.5, generator=_gen(2))
    from vaebook.relaxed import gumbel_softmax

    assert torch.equal(a, gumbel_softmax(logits, 0.5, generator=_gen(2)))


def test_bad_arguments():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="score must have the shape"):
        kernels.svgd_direction(x, torch.randn(4, 3), 1.0)
    with pytest.raises(ValueError, match="bandwidth must be"):
        kernels.ksd(x, -x, bandwidth=-1.0)
    with pytest.raises(ValueError, match="U-statistic needs n >= 2"):
        kernels.ksd(x[:1], -x[:1], 1.0)
    with pytest.raises(ValueError, match="power of two"):
        kernels.svgd_direction(x, -x, 1.0, block=24)
    with pytest.raises(ValueError, match="q_logvar must end in"):
        kernels.matched_kl(torch.zeros(3), torch.zeros(3, 2), torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, 2),
                           torch.zeros(3, 2))


def test_teaching_helpers():
    src = kernels.kernel_source("_svgd_direction_kernel")
    assert src.startswith("@triton.jit") and "tl.store" in src
    with pytest.raises(ValueError, match="no function"):
        kernels.kernel_source("nope")
    logits = torch.randn(8, 10)
    c = kernels.count_ops(ref.gumbel_softmax_reference, logits, 0.5, gumbel=torch.zeros(8, 10))
    assert c["ops"] >= 3 and c["bytes_written"] >= 3 * logits.numel() * 4
    torch.testing.assert_close(c["result"], torch.softmax(logits / 0.5, -1))


def test_dense_reference_matches_the_pairwise_definition():
    # phi(x_i) = 1/n sum_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)], by autograd, float64
    x, s = _particles(7, 3, torch.float64, seed=3)
    x, s, h = x.cpu(), s.cpu(), 0.9
    xj = x.clone().requires_grad_(True)
    k = torch.exp(-(xj.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1) / h)  # k[j, i] = k(x_j, x_i)
    grads = torch.stack([torch.autograd.grad(k[:, i].sum(), xj, retain_graph=True)[0] for i in range(7)])
    phi = ((k.T.unsqueeze(-1) * s.unsqueeze(0)).sum(1) + grads.sum(1)) / 7
    torch.testing.assert_close(ref.svgd_direction_reference(x, s, h), phi.detach(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# SVGD direction and KSD
# ------------------------------------------------------------------------------------------------------------
SVGD_CASES = [(1, 2, None), (5, 1, None), (37, 3, 16), (64, 2, 32), (100, 2, 64), (33, 5, 16)]


@needs_triton
@pytest.mark.parametrize("n,d,block", SVGD_CASES)
def test_svgd_direction_kernel_matches_reference(n, d, block):
    x, s = _particles(n, d, seed=n)
    out = kernels.svgd_direction(x, s, 0.7, backend="triton", block=block)
    torch.testing.assert_close(out, ref.svgd_direction_reference(x, s, 0.7), rtol=1e-5, atol=1e-6)


@needs_triton
def test_svgd_direction_kernel_float64_and_median_bandwidth():
    x, s = _particles(45, 2, torch.float64, seed=5)
    out = kernels.svgd_direction(x, s, backend="triton", block=16)
    torch.testing.assert_close(out, ref.svgd_direction_reference(x, s), rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("statistic", ["u", "v"])
@pytest.mark.parametrize("n,d,block", [(2, 1, None), (37, 3, 16), (70, 2, 32)])
def test_ksd_kernel_matches_reference(n, d, block, statistic):
    x, s = _particles(n, d, seed=n + 1)
    out = kernels.ksd(x, s, 0.9, statistic=statistic, backend="triton", block=block)
    torch.testing.assert_close(out, ref.ksd_reference(x, s, 0.9, statistic), rtol=1e-5, atol=1e-6)
    if statistic == "v":
        assert out.item() >= 0.0


def test_ksd_reference_sanity():
    g = _gen(11)
    x = torch.randn(300, 1, generator=g, dtype=torch.float64)
    null = ref.ksd_reference(x, -x, 1.0).item()  # p = N(0, 1), samples from p
    shifted = ref.ksd_reference(x + 1.0, -(x + 1.0), 1.0).item()
    assert abs(null) < 0.02 and shifted > 10 * abs(null)


def test_svgd_library_agrees_with_kernel_reference():
    svgd = pytest.importorskip("vaebook.svgd")
    x, s = _particles(30, 2, torch.float64, seed=7)
    torch.testing.assert_close(svgd.svgd_direction(x, s, bandwidth=0.6), ref.svgd_direction_reference(x, s, 0.6))
    torch.testing.assert_close(svgd.ksd(x, s, 0.6), ref.ksd_reference(x, s, 0.6))
    # bandwidth=None: both use the library's median rules ("code" for SVGD, "ksd" for the KSD)
    torch.testing.assert_close(kernels.svgd_direction(x, s), svgd.svgd_direction(x, s))
    torch.testing.assert_close(kernels.ksd(x, s, statistic="v"), svgd.ksd(x, s, statistic="v"))
    if CAN_RUN:
        torch.testing.assert_close(kernels.svgd_direction(x, s, 0.6, backend="triton", block=16),
                                   svgd.svgd_direction(x, s, bandwidth=0.6))
        torch.testing.assert_close(kernels.ksd(x, s, backend="triton", block=16), svgd.ksd(x, s))


# ------------------------------------------------------------------------------------------------------------
# Gumbel-Softmax with straight-through
# ------------------------------------------------------------------------------------------------------------
def _gumbel(shape, seed, dtype=torch.float32):
    from vaebook.relaxed import sample_gumbel

    return sample_gumbel(shape, generator=_gen(seed), dtype=dtype).to(DEVICE)


@needs_triton
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("shape,block_k", [((4, 10), None), ((3, 7, 33), None), ((3, 7, 33), 16), ((1, 128), 32),
                                           ((2, 5), 2)])
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_gumbel_softmax_kernel_matches_reference(shape, block_k, tau, hard):
    logits = 3 * torch.randn(shape, generator=_gen(sum(shape))).to(DEVICE)
    g = _gumbel(shape, 1)
    out = kernels.gumbel_softmax(logits, tau, hard, gumbel=g, backend="triton", block_k=block_k)
    expect = ref.gumbel_softmax_reference(logits, tau, hard, gumbel=g)
    if hard:
        assert torch.equal(out, expect)  # exactly one-hot, at the same category
    else:
        torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)


@needs_triton
def test_gumbel_softmax_kernel_generator_tensor_tau_and_neg_inf():
    logits = torch.randn(6, 37, generator=_gen(3)).to(DEVICE)
    logits[:, :20] = -float("inf")  # the first tiles of every row are empty: the online max starts at -inf
    logits[2, 30] = -float("inf")
    tau = torch.linspace(0.2, 3.0, 6).to(DEVICE)
    out = kernels.gumbel_softmax(logits, tau, generator=_gen(9), backend="triton", block_k=8)
    expect = ref.gumbel_softmax_reference(logits, tau, generator=_gen(9))
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    assert (out[:, :20] == 0).all() and out[2, 30] == 0


@needs_triton
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("block_k", [None, 4])
def test_gumbel_softmax_backward_matches_autograd_float32(hard, block_k):
    shape = (5, 11)
    logits = torch.randn(shape, generator=_gen(4)).to(DEVICE)
    tau = torch.full((5,), 0.7).to(DEVICE)
    g = _gumbel(shape, 5)
    w = torch.randn(shape, generator=_gen(6)).to(DEVICE)  # a random downstream loss sum(w * y)
    grads = []
    for backend in ("triton", "torch"):
        lg, tg = logits.clone().requires_grad_(True), tau.clone().requires_grad_(True)
        y = kernels.gumbel_softmax(lg, tg, hard, gumbel=g, backend=backend, block_k=block_k)
        grads.append(torch.autograd.grad((w * y).sum(), (lg, tg)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_triton
def test_gumbel_softmax_gradcheck_float64():
    logits = torch.randn(2, 6, generator=_gen(7), dtype=torch.float64).to(DEVICE).requires_grad_(True)
    tau = torch.tensor([0.5, 2.0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    g = _gumbel((2, 6), 8, torch.float64)

    def f(lg, t):
        return kernels.gumbel_softmax(lg, t, gumbel=g, backend="triton", block_k=4)

    assert torch.autograd.gradcheck(f, (logits, tau), eps=1e-6, atol=1e-7, fast_mode=True)
    # a scalar tensor temperature shared by all rows: its gradient sums over the rows
    t0 = torch.tensor(0.8, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 6, generator=_gen(9), dtype=torch.float64).to(DEVICE)
    a = torch.autograd.grad((w * f(logits, t0)).sum(), (logits, t0))
    b = torch.autograd.grad((w * ref.gumbel_softmax_reference(logits, t0, gumbel=g)).sum(), (logits, t0))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# matched bound
# ------------------------------------------------------------------------------------------------------------
def _mixtures(batch, K, D, shared_prior, dtype=torch.float32, seed=0):
    g = _gen(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)

    q = [2 * r(*batch, K), r(*batch, K, D), 0.5 * r(*batch, K, D)]
    pb = () if shared_prior else batch
    p = [r(*pb, K), r(*pb, K, D), 0.5 * r(*pb, K, D)]
    return q, p


@needs_triton
@pytest.mark.parametrize("batch,K,D,shared,block_b", [((6,), 5, 3, True, None), ((6,), 5, 3, False, 4),
                                                      ((2, 3), 10, 7, True, 2), ((1,), 1, 1, False, None),
                                                      ((13,), 3, 2, True, 8)])
def test_matched_kl_kernel_matches_reference(batch, K, D, shared, block_b):
    q, p = _mixtures(batch, K, D, shared, seed=K + D)
    out = kernels.matched_kl(*q, *p, backend="triton", block_b=block_b)
    assert out.shape == batch
    torch.testing.assert_close(out, ref.matched_kl_reference(*q, *p), rtol=1e-5, atol=1e-5)


@needs_triton
def test_matched_kl_kernel_is_exactly_zero_at_equality_and_float64():
    q, _ = _mixtures((4,), 3, 2, False, torch.float64, seed=1)
    assert torch.equal(kernels.matched_kl(*q, *q, backend="triton"), torch.zeros(4, dtype=torch.float64,
                                                                                 device=DEVICE))
    q, p = _mixtures((5,), 4, 3, True, torch.float64, seed=2)
    torch.testing.assert_close(kernels.matched_kl(*q, *p, backend="triton"), ref.matched_kl_reference(*q, *p),
                               rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("shared", [True, False])
def test_matched_kl_backward_matches_autograd(shared):
    q, p = _mixtures((5,), 3, 4, shared, torch.float64, seed=3)
    w = torch.randn(5, generator=_gen(4), dtype=torch.float64).to(DEVICE)
    grads = []
    for backend in ("triton", "torch"):
        ins = [t.clone().requires_grad_(True) for t in q + p]
        grads.append(torch.autograd.grad((w * kernels.matched_kl(*ins, backend=backend)).sum(), ins))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_triton
def test_matched_kl_gradcheck_float64():
    q, p = _mixtures((2,), 3, 2, True, torch.float64, seed=5)
    ins = tuple(t.requires_grad_(True) for t in q + p)
    assert torch.autograd.gradcheck(lambda *a: kernels.matched_kl(*a, backend="triton"), ins, eps=1e-6, atol=1e-7,
                                    fast_mode=True)


# ------------------------------------------------------------------------------------------------------------
# tightly clustered float32 particles (review 2026-12, section 4): the dense and blocked PyTorch paths stay finite
# and agree with a float64 evaluation on the same particles down to spread 1e-18 (the direction to 1e-20)
# ------------------------------------------------------------------------------------------------------------
def _cluster(spread, n=40, d=3, seed=0):
    g = _gen(seed)
    x = (spread * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    s = (torch.randn(n, d, generator=g, dtype=torch.float64) / spread).float()  # scores of the cluster's scale
    return x, s


@pytest.mark.parametrize("statistic", ["u", "v"])
@pytest.mark.parametrize("spread", [1e-3, 1e-6, 1e-9, 1e-12, 1e-15, 1e-18])
def test_dense_and_blocked_ksd_agree_on_tight_float32_clusters(spread, statistic):
    from vaebook import svgd

    x, s = _cluster(spread)
    h = float(svgd.median_bandwidth(x, rule="ksd"))  # ~ spread^2: 1e-36 at spread 1e-18
    exact = svgd.ksd(x.double(), s.double(), h, statistic=statistic).item()  # the same float32 inputs, in float64
    assert math.isfinite(exact) and abs(exact) > 0
    values = {"svgd.ksd (blocked)": svgd.ksd(x, s, h, statistic=statistic),
              "kernels.ksd torch": kernels.ksd(x, s, h, statistic=statistic, backend="torch"),
              "ksd_reference": ref.ksd_reference(x, s, h, statistic),
              # (the matrix is finite at every spread; the sum of its 1600 entries of ~1e36 overflows at 1e-18)
              "mean of stein_kernel_matrix": (svgd.stein_kernel_matrix(x, s, h).mean()
                                              if statistic == "v" and spread >= 1e-15 else None),
              "median bandwidth (None)": svgd.ksd(x, s, statistic=statistic)}
    for name, v in values.items():
        if v is None:
            continue
        assert v.dtype == torch.float32 and bool(torch.isfinite(v)), (name, v)
        assert abs(v.item() - exact) <= 1e-4 * abs(exact), (name, v.item(), exact)
    k = svgd.stein_kernel_matrix(x, s, h)
    assert bool(torch.isfinite(k).all())
    torch.testing.assert_close(k.double(), svgd.stein_kernel_matrix(x.double(), s.double(), h), rtol=1e-4,
                               atol=1e-4 * k.double().abs().max().item())


@pytest.mark.parametrize("spread", [1e-3, 1e-12, 1e-18, 1e-20])
def test_svgd_direction_finite_on_tight_float32_clusters(spread):
    from vaebook import svgd

    x, s = _cluster(spread)
    phi = svgd.svgd_direction(x, s)  # median bandwidth in float32 (1e-40, subnormal, at spread 1e-20)
    h = float(svgd.median_bandwidth(x))
    exact = svgd.svgd_direction(x.double(), s.double(), h)
    assert bool(torch.isfinite(phi).all()), phi
    torch.testing.assert_close(phi.double(), exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())
    dense = kernels.svgd_direction(x, s, backend="torch")
    assert bool(torch.isfinite(dense).all())
    torch.testing.assert_close(dense.double(), exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())


def test_bandwidth_that_underflows_in_the_particles_dtype_is_named():
    from vaebook import svgd

    x, s = _cluster(1.0)
    for fn in (lambda h: svgd.svgd_direction(x, s, h), lambda h: svgd.ksd(x, s, h),
               lambda h: svgd.stein_kernel_matrix(x, s, h), lambda h: svgd.rbf_kernel(x, x, h),
               lambda h: kernels.svgd_direction(x, s, h), lambda h: kernels.ksd(x, s, h),
               lambda h: ref.ksd_reference(x, s, h), lambda h: ref.svgd_direction_reference(x, s, h)):
        with pytest.raises(ValueError, match=r"bandwidth 1e-50 underflows in torch.float32 .*allowed: 1.18e-38 <= h"):
            fn(1e-50)
        with pytest.raises(ValueError, match=r"bandwidth 1e\+300 overflows to inf in torch.float32"):
            fn(1e300)
    # the same bandwidth is fine for float64 particles (its smallest normal number is 2.2e-308)
    assert bool(torch.isfinite(svgd.svgd_direction(x.double(), s.double(), 1e-50)).all())


def test_half_precision_particles_are_refused_with_the_allowed_dtypes():
    from vaebook import svgd

    x, s = _cluster(1.0)
    for dt in (torch.float16, torch.bfloat16):
        for fn in (svgd.svgd_direction, svgd.ksd, svgd.svgd_direction_dense):
            with pytest.raises(TypeError, match=r"x has dtype .*float32 and float64 only"):
                fn(x.to(dt), s.to(dt))
