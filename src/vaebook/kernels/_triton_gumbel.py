r"""Triton kernels for the fused Gumbel-Softmax / Concrete sample with straight-through (Appendix "GPU kernels").

Imported only by :mod:`vaebook.kernels` when ``backend="triton"`` is chosen. One program per row (one
distribution over K categories). The forward pass fuses *add the noise, scale by 1/tau, softmax, one-hot*: it reads
the logits and the noise once and writes the sample once; the scores :math:`z=(\ell+g)/\tau` exist only in
registers. Rows longer than ``BLOCK_K`` are handled by an **online softmax** (Milakov & Gimelshein 2018, the trick
inside flash attention): a running maximum :math:`m` and a running sum :math:`S` of :math:`e^{z-m}` that is rescaled
by :math:`e^{m_{old}-m_{new}}` whenever the maximum grows, followed by a second pass that writes
:math:`e^{z-m}/S`.

The backward kernel does not read a saved soft sample: it *recomputes* it from the logits and the noise
(recomputation instead of storage, as flash attention does), then applies the softmax Jacobian-vector product

.. math:: \frac{\partial L}{\partial z_k}=y_k\Big(G_k-\sum_jG_jy_j\Big),\quad
          \frac{\partial L}{\partial\ell_k}=\frac1\tau\frac{\partial L}{\partial z_k},\quad
          \frac{\partial L}{\partial\tau}=-\frac1\tau\sum_k\frac{\partial L}{\partial z_k}z_k,

where :math:`G` is the incoming gradient; with ``hard=True`` (straight-through) it is the gradient of the soft
sample, exactly as in :func:`vaebook.relaxed.gumbel_softmax`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_stats(l_ptr, g_ptr, row, K, tau, BLOCK_K: tl.constexpr):
    # One streaming pass over a row: online max m, online sum S = sum_k
    # exp(z_k - m), first argmax of z.
    m = tl.full(
        (), float("-inf"), tau.dtype
    )  # typed scalars: loop-carried values keep one dtype
    total = tl.zeros((), tau.dtype)
    best = tl.zeros((), tl.int32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        ok = cols < K
        z = (
            tl.load(l_ptr + row * K + cols, mask=ok, other=-float("inf"))
            + tl.load(g_ptr + row * K + cols, mask=ok, other=0.0)
        ) / tau
        z = tl.where(ok, z, -float("inf"))
        tile_max = tl.max(z, axis=0)
        tile_arg = tl.argmax(
            z, axis=0
        )  # first index of the maximum, like torch.argmax
        best = tl.where(tile_max > m, start + tile_arg, best)
        m_new = tl.maximum(m, tile_max)
        m_safe = tl.where(
            m_new == -float("inf"), 0.0, m_new
        )  # a row may start with -inf logits
        total = total * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe), axis=0)
        m = m_new
    return m, total, best


@triton.jit
def _gumbel_softmax_fwd_kernel(
    l_ptr,
    g_ptr,
    tau_ptr,
    tau_stride,
    y_ptr,
    K,
    HARD: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    tau = tl.load(tau_ptr + row * tau_stride)
    m, total, best = _row_stats(l_ptr, g_ptr, row, K, tau, BLOCK_K)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        ok = cols < K
        if (
            HARD
        ):  # straight-through forward value: exactly one-hot at the argmax
            y = tl.where(cols == best, 1.0, 0.0)
        else:
            z = (
                tl.load(l_ptr + row * K + cols, mask=ok, other=-float("inf"))
                + tl.load(g_ptr + row * K + cols, mask=ok, other=0.0)
            ) / tau
            y = tl.exp(z - m) / total
        tl.store(y_ptr + row * K + cols, y, mask=ok)


@triton.jit
def _gumbel_softmax_bwd_kernel(
    l_ptr,
    g_ptr,
    tau_ptr,
    tau_stride,
    go_ptr,
    gl_ptr,
    gtau_ptr,
    K,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    tau = tl.load(tau_ptr + row * tau_stride)
    m, total, best = _row_stats(l_ptr, g_ptr, row, K, tau, BLOCK_K)
    # pass 2: A = sum G y, B = sum G y z, C = sum y z  (y recomputed,
    # never stored)
    a_sum = tl.zeros((), tau.dtype)
    b_sum = tl.zeros((), tau.dtype)
    c_sum = tl.zeros((), tau.dtype)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        ok = cols < K
        z = (
            tl.load(l_ptr + row * K + cols, mask=ok, other=-float("inf"))
            + tl.load(g_ptr + row * K + cols, mask=ok, other=0.0)
        ) / tau
        y = tl.exp(z - m) / total
        go = tl.load(go_ptr + row * K + cols, mask=ok, other=0.0)
        yz = y * tl.where(
            y > 0, z, 0.0
        )  # y = 0 at -inf logits and padding: no 0 * inf
        a_sum += tl.sum(go * y, axis=0)
        b_sum += tl.sum(go * yz, axis=0)
        c_sum += tl.sum(yz, axis=0)
    # pass 3: dL/dlogits = y (G - A) / tau
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        ok = cols < K
        z = (
            tl.load(l_ptr + row * K + cols, mask=ok, other=-float("inf"))
            + tl.load(g_ptr + row * K + cols, mask=ok, other=0.0)
        ) / tau
        y = tl.exp(z - m) / total
        go = tl.load(go_ptr + row * K + cols, mask=ok, other=0.0)
        tl.store(gl_ptr + row * K + cols, y * (go - a_sum) / tau, mask=ok)
    tl.store(gtau_ptr + row, -(b_sum - a_sum * c_sum) / tau)


def _block_k(K: int, block_k: int | None) -> int:
    return triton.next_power_of_2(K) if block_k is None else int(block_k)


def gumbel_softmax_fwd(
    logits, gumbel, tau_rows, hard: bool, block_k: int | None = None
):
    """``logits``, ``gumbel``: contiguous ``(B, K)``; ``tau_rows``: ``(B,)`` or ``(1,)`` (then shared)."""
    import torch

    B, K = logits.shape
    y = torch.empty_like(logits)
    if B:
        _gumbel_softmax_fwd_kernel[(B,)](
            logits,
            gumbel,
            tau_rows,
            int(tau_rows.numel() > 1),
            y,
            K,
            HARD=bool(hard),
            BLOCK_K=_block_k(K, block_k),
        )
    return y


def gumbel_softmax_bwd(
    logits, gumbel, tau_rows, grad_out, block_k: int | None = None
):
    """Returns ``(grad_logits (B, K), grad_tau_per_row (B,))``."""
    import torch

    B, K = logits.shape
    grad_logits = torch.empty_like(logits)
    grad_tau = torch.empty(B, dtype=logits.dtype, device=logits.device)
    if B:
        _gumbel_softmax_bwd_kernel[(B,)](
            logits,
            gumbel,
            tau_rows,
            int(tau_rows.numel() > 1),
            grad_out,
            grad_logits,
            grad_tau,
            K,
            BLOCK_K=_block_k(K, block_k),
        )
    return grad_logits, grad_tau


KERNELS = (_gumbel_softmax_fwd_kernel, _gumbel_softmax_bwd_kernel)
