r"""Triton kernels for the matched bound between diagonal Gaussian mixtures (Appendix "GPU kernels").

Imported only by :mod:`vaebook.kernels` when ``backend="triton"`` is chosen. In the Gumbel-softmax mixture VAE
(Chapter 2) the KL term of every training step is the matched bound with the identity matching,

.. math:: V=\sum_k\pi_k\,c_k,\qquad c_k=D_k+\log\pi_k-\log\omega_k,\qquad
          D_k=\tfrac12\sum_j\Big[e^{u_{kj}-v_{kj}}-1-(u_{kj}-v_{kj})+(m_{kj}-n_{kj})^2e^{-v_{kj}}\Big],

with :math:`\pi=\mathrm{softmax}(a)`, :math:`\omega=\mathrm{softmax}(b)`, means :math:`m,n` and log-variances
:math:`u,v` of :math:`q` and :math:`p`. Written with PyTorch ops it launches about twenty kernels that each read
and write a ``(B, K, D)`` intermediate; here one program reads the six inputs of ``BLOCK_B`` rows once and writes
one number per row. The backward kernel recomputes :math:`\pi,\omega,D_k` and writes the six gradients

.. math:: \partial_aV=\pi\odot(c-V),\quad \partial_bV=\omega-\pi,\quad \partial_mV=-\partial_nV=\pi_k(m-n)e^{-v},

.. math:: \partial_uV=\tfrac12\pi_k(e^{u-v}-1),\quad \partial_vV=\tfrac12\pi_k\big(1-e^{u-v}-(m-n)^2e^{-v}\big),

each multiplied by the incoming gradient of its row (derived in the appendix).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _exp_minus_one_minus(x):
    # e^x - 1 - x without cancellation near 0 (a Taylor series for |x| <
    # 0.1), exactly 0 at x = 0
    series = (
        x
        * x
        * (
            0.5
            + x
            * (
                1.0 / 6.0
                + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (1.0 / 720.0)))
            )
        )
    )
    return tl.where(tl.abs(x) < 0.1, series, tl.exp(x) - 1.0 - x)


@triton.jit
def _log_softmax_rows(a):
    mx = tl.max(a, axis=1)
    return (
        a
        - mx[:, None]
        - tl.log(tl.sum(tl.exp(a - mx[:, None]), axis=1))[:, None]
    )


@triton.jit
def _load_rows(
    ql_ptr,
    qm_ptr,
    qv_ptr,
    pl_ptr,
    pm_ptr,
    pv_ptr,
    ql_s,
    qm_s,
    qv_s,
    pl_s,
    pm_s,
    pv_s,
    rows,
    B,
    K,
    D,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ks = tl.arange(0, BLOCK_K)
    ds = tl.arange(0, BLOCK_D)
    ok_b = rows < B
    ok_k = ks < K
    ok2 = ok_b[:, None] & ok_k[None, :]
    ok3 = ok2[:, :, None] & (ds < D)[None, None, :]
    r2 = rows[:, None].to(tl.int64)
    r3 = rows[:, None, None].to(tl.int64)
    off3 = ks[None, :, None] * D + ds[None, None, :]
    a = tl.load(ql_ptr + r2 * ql_s + ks[None, :], mask=ok2, other=0.0)
    b = tl.load(pl_ptr + r2 * pl_s + ks[None, :], mask=ok2, other=0.0)
    a = tl.where(
        ok_k[None, :], a, -float("inf")
    )  # padded categories get weight 0
    b = tl.where(ok_k[None, :], b, -float("inf"))
    qm = tl.load(
        qm_ptr + r3 * qm_s + off3, mask=ok3, other=0.0
    )  # padding: equal zeros, so D_k gets 0
    qv = tl.load(qv_ptr + r3 * qv_s + off3, mask=ok3, other=0.0)
    pm = tl.load(pm_ptr + r3 * pm_s + off3, mask=ok3, other=0.0)
    pv = tl.load(pv_ptr + r3 * pv_s + off3, mask=ok3, other=0.0)
    return a, b, qm, qv, pm, pv, ok2, ok3, off3


@triton.jit
def _matched_kl_fwd_kernel(
    ql_ptr,
    qm_ptr,
    qv_ptr,
    pl_ptr,
    pm_ptr,
    pv_ptr,
    ql_s,
    qm_s,
    qv_s,
    pl_s,
    pm_s,
    pv_s,
    out_ptr,
    B,
    K,
    D,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    a, b, qm, qv, pm, pv, ok2, ok3, off3 = _load_rows(
        ql_ptr,
        qm_ptr,
        qv_ptr,
        pl_ptr,
        pm_ptr,
        pv_ptr,
        ql_s,
        qm_s,
        qv_s,
        pl_s,
        pm_s,
        pv_s,
        rows,
        B,
        K,
        D,
        BLOCK_K,
        BLOCK_D,
    )
    log_pi = _log_softmax_rows(a)
    log_om = _log_softmax_rows(b)
    dm = qm - pm
    d_k = 0.5 * tl.sum(
        _exp_minus_one_minus(qv - pv) + dm * dm * tl.exp(-pv), axis=2
    )  # (BLOCK_B, BLOCK_K)
    pi = tl.exp(log_pi)
    ok_k = (tl.arange(0, BLOCK_K) < K)[None, :]
    c = (
        d_k + tl.where(ok_k, log_pi, 0.0) - tl.where(ok_k, log_om, 0.0)
    )  # padded columns: no -inf - (-inf)
    val = tl.sum(
        tl.where(pi > 0, pi * c, 0.0), axis=1
    )  # a zero-weight component contributes 0
    tl.store(out_ptr + rows, val, mask=rows < B)


@triton.jit
def _matched_kl_bwd_kernel(
    ql_ptr,
    qm_ptr,
    qv_ptr,
    pl_ptr,
    pm_ptr,
    pv_ptr,
    ql_s,
    qm_s,
    qv_s,
    pl_s,
    pm_s,
    pv_s,
    go_ptr,
    g_ql,
    g_qm,
    g_qv,
    g_pl,
    g_pm,
    g_pv,
    B,
    K,
    D,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    a, b, qm, qv, pm, pv, ok2, ok3, off3 = _load_rows(
        ql_ptr,
        qm_ptr,
        qv_ptr,
        pl_ptr,
        pm_ptr,
        pv_ptr,
        ql_s,
        qm_s,
        qv_s,
        pl_s,
        pm_s,
        pv_s,
        rows,
        B,
        K,
        D,
        BLOCK_K,
        BLOCK_D,
    )
    go = tl.load(go_ptr + rows, mask=rows < B, other=0.0)
    log_pi = _log_softmax_rows(a)
    log_om = _log_softmax_rows(b)
    dm = qm - pm
    e_v = tl.exp(-pv)
    d_k = 0.5 * tl.sum(_exp_minus_one_minus(qv - pv) + dm * dm * e_v, axis=2)
    pi = tl.exp(log_pi)
    ok_k = (tl.arange(0, BLOCK_K) < K)[None, :]
    c = (
        d_k + tl.where(ok_k, log_pi, 0.0) - tl.where(ok_k, log_om, 0.0)
    )  # padded columns: no -inf - (-inf)
    val = tl.sum(tl.where(pi > 0, pi * c, 0.0), axis=1)
    w2 = go[:, None] * pi  # (BLOCK_B, BLOCK_K)
    ga = tl.where(pi > 0, w2 * (c - val[:, None]), 0.0)
    gb = go[:, None] * (tl.exp(log_om) - pi)
    w3 = w2[:, :, None]
    r = tl.exp(qv - pv)
    gm = w3 * dm * e_v
    gu = 0.5 * w3 * (r - 1.0)
    gv = 0.5 * w3 * (1.0 - r - dm * dm * e_v)
    ks = tl.arange(0, BLOCK_K)
    r2 = rows[:, None].to(tl.int64)
    r3 = rows[:, None, None].to(tl.int64)
    tl.store(g_ql + r2 * K + ks[None, :], ga, mask=ok2)
    tl.store(g_pl + r2 * K + ks[None, :], gb, mask=ok2)
    tl.store(g_qm + r3 * K * D + off3, gm, mask=ok3)
    tl.store(g_pm + r3 * K * D + off3, -gm, mask=ok3)
    tl.store(g_qv + r3 * K * D + off3, gu, mask=ok3)
    tl.store(g_pv + r3 * K * D + off3, gv, mask=ok3)


def _blocks(B: int, K: int, D: int, block_b: int | None):
    bk, bd = triton.next_power_of_2(K), triton.next_power_of_2(D)
    if (
        block_b is None
    ):  # about 8k elements per (BLOCK_B, BLOCK_K, BLOCK_D) block
        block_b = max(1, min(triton.next_power_of_2(B), 8192 // (bk * bd)))
    return int(block_b), bk, bd


def _strides(tensors):
    return [t.stride(0) for t in tensors]


def matched_kl_fwd(tensors, block_b: int | None = None):
    """``tensors``: (q_logits (B,K), q_mean, q_logvar (B,K,D), p_logits, p_mean, p_logvar) with contiguous inner
    dimensions (row stride 0 allowed for a shared prior). Returns ``(B,)``."""
    ql, qm = tensors[0], tensors[1]
    B, K, D = qm.shape
    out = torch.empty(B, dtype=ql.dtype, device=ql.device)
    bb, bk, bd = _blocks(B, K, D, block_b)
    if B:
        _matched_kl_fwd_kernel[(triton.cdiv(B, bb),)](
            *tensors,
            *_strides(tensors),
            out,
            B,
            K,
            D,
            BLOCK_B=bb,
            BLOCK_K=bk,
            BLOCK_D=bd,
        )
    return out


def matched_kl_bwd(tensors, grad_out, block_b: int | None = None):
    """Per-row gradients of the six inputs: ``(B, K)`` and ``(B, K, D)`` tensors (the caller sums broadcasts)."""
    ql, qm = tensors[0], tensors[1]
    B, K, D = qm.shape
    grads = [
        torch.empty((B, K), dtype=ql.dtype, device=ql.device)
        if i in (0, 3)
        else torch.empty((B, K, D), dtype=ql.dtype, device=ql.device)
        for i in range(6)
    ]
    bb, bk, bd = _blocks(B, K, D, block_b)
    if B:
        _matched_kl_bwd_kernel[(triton.cdiv(B, bb),)](
            *tensors,
            *_strides(tensors),
            grad_out.contiguous(),
            *grads,
            B,
            K,
            D,
            BLOCK_B=bb,
            BLOCK_K=bk,
            BLOCK_D=bd,
        )
    return grads


KERNELS = (_matched_kl_fwd_kernel, _matched_kl_bwd_kernel)
