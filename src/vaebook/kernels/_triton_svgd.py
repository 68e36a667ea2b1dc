r"""Triton kernels for the SVGD direction and the KSD: tiled pairwise reductions (Appendix "GPU kernels").

Imported only by :mod:`vaebook.kernels` when ``backend="triton"`` is chosen, because importing this module imports
triton. The structure is that of flash attention: a program owns a tile of ``BLOCK_I`` target particles, keeps
them in registers, and streams over the particles in tiles of ``BLOCK_J``; each ``(BLOCK_I, BLOCK_J)`` tile of the
kernel matrix is computed, used and discarded, so the ``n x n`` matrix never exists in memory. The running
accumulators (``acc``, ``ksum``) are the "online reduction"; no rescaling is needed (unlike softmax attention)
because :math:`0<k\le1` cannot overflow.

Pairwise differences are formed as a ``(BLOCK_I, BLOCK_J, BLOCK_D)`` block (``BLOCK_D`` = next power of two >= d),
which suits the book's small ``d``; for large ``d`` one would compute :math:`\|x_i-x_j\|^2` and the sums with
``tl.dot`` instead (the flash-attention way), which needs blocks of at least 16.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _svgd_direction_kernel(
    x_ptr,
    s_ptr,
    out_ptr,
    par_ptr,
    n,
    d,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # phi_i = (1/n) [ sum_j k_ij (s_j - (2/h) x_j) + (2/h) x_i sum_j k_ij
    # ],  k_ij = exp(-|x_i - x_j|^2 / h)
    # grid axis 1: independent particle sets (n, d) stored one after the
    # other, each with its own bandwidth
    pset = tl.program_id(1)
    base = pset.to(tl.int64) * n * d
    x_ptr = x_ptr + base
    s_ptr = s_ptr + base
    out_ptr = out_ptr + base
    inv_h = tl.load(
        par_ptr + 2 * pset
        # scalars come in a tensor of x's dtype (a Python float would be
        # float32)
    )
    inv_n = tl.load(par_ptr + 2 * pset + 1)
    pid = tl.program_id(0)
    rows = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    dim_ok = dims < d
    xi = tl.load(
        x_ptr + rows[:, None] * d + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    acc = tl.zeros((BLOCK_I, BLOCK_D), dtype=xi.dtype)
    ksum = tl.zeros((BLOCK_I,), dtype=xi.dtype)
    for start in range(
        0, n, BLOCK_J
    ):  # one pass over the particles, a tile at a time
        cols = start + tl.arange(0, BLOCK_J)
        col_ok = cols < n
        m2 = col_ok[:, None] & dim_ok[None, :]
        xj = tl.load(
            x_ptr + cols[:, None] * d + dims[None, :], mask=m2, other=0.0
        )
        sj = tl.load(
            s_ptr + cols[:, None] * d + dims[None, :], mask=m2, other=0.0
        )
        diff = xi[:, None, :] - xj[None, :, :]  # (BLOCK_I, BLOCK_J, BLOCK_D)
        k = tl.exp(
            -tl.sum(diff * diff, axis=2) * inv_h
        )  # one tile of the kernel matrix, never stored
        k = tl.where(
            col_ok[None, :], k, 0.0
        )  # ragged last tile: padded particles weigh nothing
        v = sj - (2.0 * inv_h) * xj
        acc += tl.sum(k[:, :, None] * v[None, :, :], axis=1)
        ksum += tl.sum(k, axis=1)
    phi = (acc + (2.0 * inv_h) * xi * ksum[:, None]) * inv_n
    tl.store(
        out_ptr + rows[:, None] * d + dims[None, :],
        phi,
        mask=row_ok[:, None] & dim_ok[None, :],
    )


@triton.jit
def _ksd_rows_kernel(
    x_ptr,
    s_ptr,
    out_ptr,
    par_ptr,
    n,
    d,
    U_STAT: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out_i = sum_j u(x_i, x_j) (j != i for the U-statistic), with the
    # RBF closed form of u; one set per grid column
    pset = tl.program_id(1)
    base = pset.to(tl.int64) * n * d
    x_ptr = x_ptr + base
    s_ptr = s_ptr + base
    out_ptr = out_ptr + pset.to(tl.int64) * n
    inv_h = tl.load(par_ptr + pset)
    pid = tl.program_id(0)
    rows = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    dim_ok = dims < d
    mi = row_ok[:, None] & dim_ok[None, :]
    xi = tl.load(x_ptr + rows[:, None] * d + dims[None, :], mask=mi, other=0.0)
    si = tl.load(s_ptr + rows[:, None] * d + dims[None, :], mask=mi, other=0.0)
    acc = tl.zeros((BLOCK_I,), dtype=xi.dtype)
    for start in range(0, n, BLOCK_J):
        cols = start + tl.arange(0, BLOCK_J)
        col_ok = cols < n
        mj = col_ok[:, None] & dim_ok[None, :]
        xj = tl.load(
            x_ptr + cols[:, None] * d + dims[None, :], mask=mj, other=0.0
        )
        sj = tl.load(
            s_ptr + cols[:, None] * d + dims[None, :], mask=mj, other=0.0
        )
        diff = xi[:, None, :] - xj[None, :, :]
        d2 = tl.sum(diff * diff, axis=2)
        k = tl.exp(-d2 * inv_h)
        ss = tl.sum(si[:, None, :] * sj[None, :, :], axis=2)
        ds = tl.sum((si[:, None, :] - sj[None, :, :]) * diff, axis=2)
        u = k * (
            ss
            + (2.0 * inv_h) * ds
            + (2.0 * inv_h) * d
            - (4.0 * inv_h * inv_h) * d2
        )
        keep = col_ok[None, :]
        if U_STAT:
            keep = keep & (rows[:, None] != cols[None, :])
        acc += tl.sum(tl.where(keep, u, 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=row_ok)


def _blocks(n: int, d: int, block: int | None) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(d)
    if (
        block is None
    ):  # keep the (BLOCK_I, BLOCK_J, BLOCK_D) block near 16k elements
        block = max(
            16,
            min(
                64,
                triton.next_power_of_2(max(1, int((16384 // block_d) ** 0.5))),
            ),
        )
    return block, block, block_d


def svgd_direction(x, score, h, block: int | None = None):
    """SVGD direction with the tiled kernel. ``x``, ``score``: contiguous ``(n, d)``, or ``(S, n, d)`` for ``S``
    independent particle sets (one grid column each), of one dtype and device; ``h``: a number, or a tensor of ``S``
    bandwidths."""
    import torch

    sets = x.reshape(-1, *x.shape[-2:])
    S, n, d = sets.shape
    out = torch.empty_like(x)
    bi, bj, bd = _blocks(n, d, block)
    grid = (triton.cdiv(n, bi), S)
    inv_h = 1.0 / torch.as_tensor(
        h, dtype=torch.float64, device=x.device
    ).expand(S)  # 1/h in float64, then rounded
    par = (
        torch.stack([inv_h, torch.full_like(inv_h, 1.0 / n)], -1)
        .to(x.dtype)
        .contiguous()
    )
    _svgd_direction_kernel[grid](
        x, score, out, par, n, d, BLOCK_I=bi, BLOCK_J=bj, BLOCK_D=bd
    )
    return out


def ksd_row_sums(x, score, h, u_statistic: bool, block: int | None = None):
    """Per-particle sums of the Stein kernel ``u(x_i, .)``: ``(n,)`` for ``(n, d)`` inputs, ``(S, n)`` for ``S``
    sets ``(S, n, d)`` (``h`` a number or ``S`` bandwidths); the caller sums and normalises."""
    import torch

    sets = x.reshape(-1, *x.shape[-2:])
    S, n, d = sets.shape
    out = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
    bi, bj, bd = _blocks(n, d, block)
    grid = (triton.cdiv(n, bi), S)
    par = (
        (
            1.0
            / torch.as_tensor(h, dtype=torch.float64, device=x.device).expand(
                S
            )
        )
        .to(x.dtype)
        .contiguous()
    )
    _ksd_rows_kernel[grid](
        x,
        score,
        out,
        par,
        n,
        d,
        U_STAT=bool(u_statistic),
        BLOCK_I=bi,
        BLOCK_J=bj,
        BLOCK_D=bd,
    )
    return out


KERNELS = (_svgd_direction_kernel, _ksd_rows_kernel)
