r"""Stein variational gradient descent (SVGD), the kernelized Stein discrepancy (KSD) and amortized SVGD (Chapter 6).

Everything uses the RBF kernel in the SVGD paper's parameterisation

.. math:: k(x,y)=\exp\big(-\|x-y\|^2/h\big)

(``h`` is called the *bandwidth* everywhere in this module; the KSD literature's :math:`\exp(-r^2/(2\sigma^2))` is
:math:`h=2\sigma^2`). Chapter 6 derives the formulas; the equation labels below are the chapter's.

* :func:`svgd_direction` -- the SVGD update (eq. ``ch06-svgd-direction``)
  :math:`\phi(x_i)=\frac1n\sum_j\big[k(x_j,x_i)\,s(x_j)+\nabla_{x_j}k(x_j,x_i)\big]`, with
  :math:`\nabla_{x_j}k(x_j,x_i)=\frac2h k_{ij}(x_i-x_j)`. Computed in tiles of ``block_size x block_size`` pairs, so
  memory is :math:`O(nd+\text{block\_size}^2)` and ``n = 20,000`` never builds an ``n x n`` matrix. This blocked
  computation is the *reference path* that the GPU-kernel appendix compares its Triton kernel with.
  :func:`svgd_direction_dense` is the usual dense autograd implementation (for tests and the cost comparison).
* :func:`ksd` -- the KSD U-statistic (or V-statistic) with the RBF closed form (eq. ``ch06-ksd-rbf``), also blocked;
  :func:`stein_kernel_matrix` gives the dense ``n x n`` matrix of :math:`u_p(x_i,x_j)` for small ``n``.
* :func:`median_bandwidth` -- the median heuristic, with the rule of the reference code (default for SVGD), the
  rule stated in the paper, and the KSD rule; for large ``n`` the median is estimated on a random subsample.
* :class:`SVGD` -- the particle driver with the reference code's step-size rule (:class:`AdaGradMomentum`).
* Amortized SVGD {Wang & Liu 2016}: :func:`amortized_svgd_loss` (a surrogate loss whose gradient moves a sampler
  network's outputs along :math:`\phi`; works for batches of particle sets ``(B, n, d)``, e.g. ``n`` latent
  particles per data point), :class:`ResidualSampler`, :class:`AmortizedSVGD` (a module with the book's
  ``loss(batch) -> (loss, logs)`` contract, trained by :func:`vaebook.train.fit` on :class:`NoiseBatches`).
* :func:`peak_memory` and :func:`measure` -- peak tensor memory and time of a call on the CPU (``tracemalloc`` does not
  see torch's allocations, so a ``TorchDispatchMode`` counts the bytes of every storage torch creates).

Shapes: particles ``x`` are ``(n, d)`` or batched ``(..., n, d)`` (independent particle sets, each with its own
bandwidth); ``score`` is the target's score :math:`\nabla_x\log p(x)` at ``x`` (same shape), or a callable
``x -> score`` (see :func:`score_from_log_prob`). Use float64 for reference values.
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from typing import Callable, Sequence

import torch
from torch import nn
from .kernels import _check_backend
from .utils import check_int

__all__ = [
    "BANDWIDTH_RULES",
    "rbf_kernel",
    "median_bandwidth",
    "svgd_direction",
    "svgd_direction_dense",
    "ksd",
    "stein_kernel_matrix",
    "score_from_log_prob",
    "AdaGradMomentum",
    "ConstantStep",
    "SVGD",
    "amortized_svgd_loss",
    "ResidualSampler",
    "NoiseBatches",
    "AmortizedSVGD",
    "gmm1d_target",
    "ring_target",
    "mode_weights",
    "peak_memory",
    "measure",
]

#: the median rules of :func:`median_bandwidth` (Chapter 6)
BANDWIDTH_RULES = ("code", "paper", "ksd")

_DEFAULT_BLOCK = 1024
_DEFAULT_MEDIAN_SAMPLE = 1000


# -----------------------------------------------------------------------------
# argument handling
# -----------------------------------------------------------------------------


def _check_x(x) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(
            f"x must be a tensor of shape (..., n, d), got {type(x).__name__}"
        )
    if x.ndim < 2 or x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(
            "x must have shape (..., n, d) with n, d >= 1, got "
            f"{tuple(x.shape)}"
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"x has dtype {x.dtype}, but the SVGD and KSD functions support "
            "float32 and float64 only "
            "(half precision has no CPU cdist kernel and too narrow a range "
            "for kernel values): "
            f"convert with .float() or .double()"
        )
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(
            "x must be finite (no NaN or inf among the particles)"
        )
    return x


def _resolve_score(x: torch.Tensor, score) -> torch.Tensor:
    s = score(x) if callable(score) else score
    if not torch.is_tensor(s):
        raise TypeError(
            "score must be a tensor of the shape of x or a callable x -> such "
            "a tensor"
        )
    if s.shape != x.shape:
        raise ValueError(
            f"score must have the shape of x {tuple(x.shape)}, got "
            f"{tuple(s.shape)}"
        )
    if not bool(torch.isfinite(s.detach()).all()):
        raise ValueError(
            "score must be finite (no NaN or inf) at every particle"
        )
    return s.to(x.dtype)


def _check_block(block_size) -> int:
    check_int("block_size", block_size)
    return block_size


def _resolve_bandwidth(
    x: torch.Tensor, bandwidth, rule: str, median_sample: int, generator
) -> torch.Tensor:
    """The bandwidth as a tensor of shape ``x.shape[:-2]`` (dtype and device of ``x``)."""
    if bandwidth is None:
        return median_bandwidth(
            x, rule=rule, median_sample=median_sample, generator=generator
        )
    h = bandwidth(x) if callable(bandwidth) else bandwidth
    h = _check_bandwidth_value(h, bandwidth, x.dtype, x.device)
    if h.ndim == 0:
        return h.expand(x.shape[:-2])
    try:
        return torch.broadcast_to(h, x.shape[:-2])
    except RuntimeError:
        raise ValueError(
            "bandwidth must be a number or a tensor broadcastable to "
            "x.shape[:-2] = "
            f"{tuple(x.shape[:-2])}, got shape {tuple(h.shape)}"
        ) from None


def _check_bandwidth_value(
    h, given, dtype: torch.dtype, device=None
) -> torch.Tensor:
    """``h`` as a tensor of ``dtype``; ``ValueError`` unless every entry is > 0 and finite **in that dtype**.

    A positive number that rounds to 0 (or to a subnormal) or to inf in ``dtype`` is named as such, with the
    range that ``dtype`` allows: e.g. ``1e-50`` underflows in float32, whose smallest normal number is 1.2e-38.
    """
    fi = torch.finfo(dtype)
    allowed = (
        f"allowed: {fi.tiny:.3g} <= h <= {fi.max:.3g} for {dtype} particles"
    )
    raw = (
        h.detach()
        if torch.is_tensor(h)
        else torch.as_tensor(h, dtype=torch.float64)
    )
    if (
        raw.is_floating_point()
        and raw.numel()
        and bool(torch.isfinite(raw).all() and (raw > 0).all())
    ):
        lo, hi = float(raw.min()), float(raw.max())
        if lo < fi.tiny:
            raise ValueError(
                f"bandwidth {given!r} underflows in {dtype} (x's dtype; h = "
                f"{lo:.3g} is below its "
                "smallest normal number, so the kernel exp(-|x-y|^2/h) would "
                "divide by 0 or lose all "
                f"precision); {allowed}: use a larger bandwidth or float64 "
                "particles"
            )
        if hi > fi.max:
            raise ValueError(
                f"bandwidth {given!r} overflows to inf in {dtype} (x's "
                f"dtype); {allowed}"
            )
    h = torch.as_tensor(h, dtype=dtype, device=device)
    if not (torch.isfinite(h).all() and (h > 0).all()):
        raise ValueError(
            "bandwidth must be finite and > 0 (h in exp(-|x-y|^2/h)), got "
            f"{given!r}"
        )
    return h


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2``, shape ``(..., n, m)``, from direct coordinate differences (no ``|a|^2+|b|^2-2ab``
    cancellation) without an ``(n, m, d)`` intermediate."""
    dist = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.square() if dist.requires_grad else dist.square_()


# -----------------------------------------------------------------------------
# kernel and bandwidth
# -----------------------------------------------------------------------------


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth) -> torch.Tensor:
    r"""The RBF kernel matrix :math:`k(x_i,y_j)=\exp(-\|x_i-y_j\|^2/h)`, shape ``(..., n, m)`` for ``x`` ``(..., n, d)``
    and ``y`` ``(..., m, d)``; ``bandwidth`` is ``h`` (a number or a tensor of shape ``x.shape[:-2]``). Dense."""
    h = _check_bandwidth_value(bandwidth, bandwidth, x.dtype, x.device)
    if x.dim() < 2 or y.dim() < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            "x and y must have shapes (..., n, d) and (..., m, d) with the "
            "same d, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return torch.exp(-_sqdist(x, y) / h[..., None, None])


def _kth(v: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest (0-based) entry along the last dimension (a selection, not a sort)."""
    return torch.kthvalue(v, k + 1, dim=-1).values


def _middle(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two middle values along the last dimension (equal when the length is odd): NumPy's median is their mean."""
    m = v.shape[-1]
    if m % 2:
        mid = _kth(v, m // 2)
        return mid, mid
    return _kth(v, m // 2 - 1), _kth(v, m // 2)


def _quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile along the last dimension (NumPy's default), via one or two selections."""
    pos = q * (v.shape[-1] - 1)
    lo = min(max(int(math.floor(pos + 1e-9)), 0), v.shape[-1] - 1)
    frac = pos - lo
    a = _kth(v, lo)
    if frac <= 1e-9 or lo + 1 >= v.shape[-1]:
        return a
    return a + frac * (_kth(v, lo + 1) - a)


@functools.lru_cache(maxsize=32)
def _triu(m: int, device: str) -> torch.Tensor:
    return torch.triu_indices(m, m, offset=1, device=device)


def _pair_sqdist(x: torch.Tensor) -> torch.Tensor:
    """The ``m(m-1)/2`` squared distances ``|x_i - x_j|^2``, ``i < j``, shape ``(..., m(m-1)/2)``."""
    iu = _triu(x.shape[-2], str(x.device))
    return _sqdist(x, x)[..., iu[0], iu[1]]


def _code_rule_level(n: int) -> float:
    """The quantile level of the ``n(n-1)/2`` pairwise squared distances (``i < j``, linear interpolation) that equals
    NumPy's median of all ``n**2`` entries of the squared-distance matrix (``n`` zeros, each pair twice), ``n >= 3``.

    Sorted, the ``n**2`` entries are ``n`` zeros followed by each pair value twice. For odd ``n`` the middle entry is
    pair value number ``(n**2 - 2n - 3) / 4`` (0-based); for even ``n`` the two middle entries are pair values
    ``(n**2 - 2n - 2) / 4 -+ 1/2``, whose mean is linear interpolation at that position."""
    pos = (n * n - 2 * n - 3) / 4 if n % 2 else (n * n - 2 * n - 2) / 4
    return pos / (n * (n - 1) / 2 - 1)


def median_bandwidth(
    x: torch.Tensor,
    rule: str = "code",
    median_sample: int = _DEFAULT_MEDIAN_SAMPLE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The median-heuristic bandwidth ``h`` of :math:`k(x,y)=\exp(-\|x-y\|^2/h)` for particles ``x`` ``(..., n, d)``.

    Returns a tensor of shape ``x.shape[:-2]`` (one bandwidth per particle set). Rules (Chapter 6):

    * ``"code"`` (default of :func:`svgd_direction` and :class:`SVGD`): the official SVGD code
      (``python/svgd.py::svgd_kernel``): :math:`h=m/\log(n+1)` with :math:`m` the median of **all** :math:`n^2`
      entries of the squared-distance matrix (both triangles and the :math:`n` zeros of the diagonal; NumPy's median,
      i.e. the mean of the two middle values when :math:`n^2` is even). :math:`\log(n+1)` keeps ``n = 1`` finite.
    * ``"paper"``: the rule stated in the SVGD paper [unverified; quoted by secondary implementations]:
      :math:`h=\mathrm{med}^2/\log n` with med the median of the pairwise distances :math:`\|x_i-x_j\|`, :math:`i<j`.
    * ``"ksd"`` (default of :func:`ksd`): :math:`h=2\,\mathrm{median}_{i<j}\|x_i-x_j\|^2`, i.e. :math:`\sigma^2` = the
      median of the squared distances in :math:`\exp(-r^2/(2\sigma^2))`, the rule of Chapter 6's KSD checks.

    Chapter 6 finds the code and paper rules equivalent on the 1-D mixture toy (within Monte Carlo error).

    **Large n.** For ``n <= median_sample`` the median is exact (the squared distances of all pairs are built once,
    at most ``median_sample``\ :sup:`2` numbers). For larger ``n`` it is estimated on ``median_sample`` points drawn
    without replacement with ``generator`` (default: a fixed seed, 0, so the result is deterministic and the global
    RNG is untouched); memory stays :math:`O(\text{median\_sample}^2)`, independent of ``n``. The code rule is always
    evaluated as an equivalent quantile of the :math:`i<j` squared distances: with :math:`n` zeros among the
    :math:`n^2` entries, their median is the pair quantile at a level slightly below 1/2 that depends on :math:`n`
    only (identical to NumPy's median of the full matrix; see ``_code_rule_level``); on a subsample the same level,
    computed with the full ``n``, is applied to the subsample's pairs.

    Degenerate sets (``n = 1``, or more than half the pairs at distance 0) would give ``h = 0``; ``h = 1`` is used
    instead (with all particles equal, every ``h`` gives the same direction).
    """
    x = _check_x(x)
    if rule not in BANDWIDTH_RULES:
        raise ValueError(
            f"rule must be one of {BANDWIDTH_RULES}, got {rule!r}"
        )
    check_int("median_sample", median_sample, 2)
    n = x.shape[-2]
    batch = x.shape[:-2]
    if n == 1:
        return torch.ones(batch, dtype=x.dtype, device=x.device)
    x = x.detach()
    sub = n > median_sample
    if sub:
        g = (
            generator
            if generator is not None
            else torch.Generator().manual_seed(0)
        )
        idx = torch.randperm(n, generator=g)[:median_sample].to(x.device)
        xs = x.index_select(-2, idx)
    else:
        xs = x
    pairs = _pair_sqdist(xs)  # (..., m(m-1)/2)
    if rule == "code":
        med = (
            0.5 * pairs[..., 0]
            if n == 2
            else _quantile(pairs, _code_rule_level(n))
        )  # n = 2: median(0,0,r,r)
    elif rule == "paper":
        lo, hi = _middle(pairs)
        med = (0.5 * (lo.sqrt() + hi.sqrt())).square()  # (median distance)^2
    else:
        lo, hi = _middle(pairs)
        med = 0.5 * (lo + hi)
    if rule == "code":
        h = med / math.log(n + 1)
    elif rule == "paper":
        h = med / math.log(n)
    else:
        h = 2.0 * med
    return torch.where(torch.isfinite(h) & (h > 0), h, torch.ones_like(h))


# -----------------------------------------------------------------------------
# the SVGD direction
# -----------------------------------------------------------------------------


def svgd_direction(
    x: torch.Tensor,
    score,
    bandwidth=None,
    *,
    rule: str = "code",
    block_size: int = _DEFAULT_BLOCK,
    median_sample: int = _DEFAULT_MEDIAN_SAMPLE,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""The SVGD update direction (Chapter 6, eq. ``ch06-svgd-direction``), blocked, shape of ``x``.

    .. math:: \phi_i=\frac1n\sum_{j=1}^n\Big[k(x_j,x_i)\,s_j+\nabla_{x_j}k(x_j,x_i)\Big]
              =\frac1n\Big[\sum_jk_{ij}s_j+\frac2h\Big(x_i\sum_jk_{ij}-\sum_jk_{ij}x_j\Big)\Big],
              \qquad k_{ij}=\exp(-\|x_i-x_j\|^2/h).

    Args:
        x: particles ``(n, d)`` or ``(..., n, d)`` (each leading index an independent set).
        score: :math:`s_j=\nabla\log p(x_j)`, a tensor of the shape of ``x``, or a callable ``x -> score``.
        bandwidth: ``h``; ``None`` = :func:`median_bandwidth` with ``rule`` on the current particles; or a positive
            number, a tensor of shape ``x.shape[:-2]``, or a callable ``x -> h``.
        rule: ``"code"`` (default, the official code), ``"paper"`` or ``"ksd"`` (see :func:`median_bandwidth`).
        block_size: pairs are processed in tiles of ``block_size x block_size``; peak extra memory is a few such
            tiles plus ``O(n d)`` accumulators (about ``3 * block_size**2`` numbers), whatever ``n`` is.
        median_sample, generator: for the median of large sets (see :func:`median_bandwidth`).
        backend: ``"auto"`` (default: the tiled Triton kernel on CUDA tensors when triton is installed, this
            blocked PyTorch code otherwise), ``"torch"`` or ``"triton"`` (the rule of :mod:`vaebook.kernels`; the
            kernel gets every particle set in one launch and is not differentiated through).

    The tiles are summed in a fixed order, so results are deterministic. Not wrapped in ``no_grad``: call it on
    tensors that do not require grad (as the driver and :func:`amortized_svgd_loss` do) to keep memory bounded.
    With ``n = 1`` the repulsion vanishes and ``phi == score`` (SVGD with one particle is gradient ascent, MAP).
    """
    x = _check_x(x)
    s = _resolve_score(x, score)
    block_size = _check_block(block_size)
    h = _resolve_bandwidth(x, bandwidth, rule, median_sample, generator)
    from . import kernels

    if kernels.resolve_backend(backend, x, s) == "triton":
        return kernels._svgd_direction_sets(x, s, h)
    hb = h[..., None, None]
    n, d = x.shape[-2], x.shape[-1]
    xs = (
        x / hb.sqrt()
        # k_ij = exp(-|xs_i - xs_j|^2), the same number as exp(-|x_i - x_j|^2
        # / h)
    )
    # The repulsion (2/h)(x_i sum_j k_ij - sum_j k_ij x_j); for a tiny h
    # (tightly clustered float32 particles, where
    # 2/h overflows) the same number in units of sqrt(h):
    # (2/sqrt(h))(xs_i sum_j k_ij - sum_j k_ij xs_j).
    c, fac = (xs, 2.0 / hb.sqrt()) if _tiny_bandwidth(h, 1) else (x, 2.0 / hb)
    rhs = torch.cat(
        [s, c, torch.ones_like(x[..., :1])], -1
    )  # [s_j | c_j | 1]: one matmul per tile
    out = torch.empty_like(x)
    for i0 in range(0, n, block_size):
        acc = None  # sum_j k_ij [s_j | c_j | 1], shape (..., b, 2d + 1)
        for j0 in range(0, n, block_size):
            k = (
                _sqdist(
                    xs[..., i0 : i0 + block_size, :],
                    xs[..., j0 : j0 + block_size, :],
                )
                .neg_()
                .exp_()
            )
            part = k @ rhs[..., j0 : j0 + block_size, :]
            acc = part if acc is None else acc + part
            del k
        ks, kc, k1 = acc[..., :d], acc[..., d : 2 * d], acc[..., 2 * d :]
        ci = c[..., i0 : i0 + block_size, :]
        out[..., i0 : i0 + block_size, :] = (ks + fac * (ci * k1 - kc)) / n
    return out


def _tiny_bandwidth(h: torch.Tensor, power: int) -> bool:
    r"""Whether ``1/h**power`` could overflow (or ``h**power`` leave the normal range) in ``h``'s dtype: then the
    kernel sums are computed in units of :math:`\sqrt h`, where every term is of order one. Otherwise the textbook
    formulas run (the numbers the library always gave). float32: ``h < 1.9e-37`` for ``power=1``, ``h < 1.7e-18``
    for ``power=2``."""
    tiny = torch.finfo(h.dtype).tiny
    return not bool((h >= 16.0 * tiny ** (1.0 / power)).all())


def svgd_direction_dense(
    x: torch.Tensor,
    score,
    bandwidth=None,
    *,
    rule: str = "code",
    median_sample: int = _DEFAULT_MEDIAN_SAMPLE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The SVGD direction the way most PyTorch code writes it: the dense ``n x n`` kernel matrix and the repulsion by
    autograd, :math:`\sum_j\nabla_{x_j}k(x_j,x_i)=-\nabla_{y_i}\sum_jk(x_j,y_i)\big|_{y=x}` (the RBF kernel depends
    on :math:`x_j-y_i` only). Memory :math:`O(n^2 d)`. Same arguments and result as :func:`svgd_direction`; used by
    the tests (blocked == dense) and by Chapter 6's cost comparison."""
    x = _check_x(x)
    s = _resolve_score(x, score).detach()
    h = _resolve_bandwidth(
        x, bandwidth, rule, median_sample, generator
    ).detach()
    xd = x.detach()
    n = x.shape[-2]
    with torch.enable_grad():
        y = xd.clone().requires_grad_(True)
        diff = xd.unsqueeze(-2) - y.unsqueeze(-3)  # (..., j, i, d) = x_j - y_i
        kmat = torch.exp(
            -diff.square().sum(-1) / h[..., None, None]
        )  # (..., j, i) = k(x_j, y_i)
        (grad_y,) = torch.autograd.grad(kmat.sum(), y)
    return (kmat.detach().transpose(-1, -2) @ s - grad_y) / n


# -----------------------------------------------------------------------------
# kernelized Stein discrepancy
# -----------------------------------------------------------------------------


def stein_kernel_matrix(x: torch.Tensor, score, bandwidth) -> torch.Tensor:
    r"""The dense matrix of :math:`u_p(x_i,x_j)` (Chapter 6, eq. ``ch06-ksd-rbf``) for the RBF kernel with bandwidth
    ``h``: :math:`k_{ij}\big[s_i^\top s_j+\frac2h(s_i-s_j)^\top(x_i-x_j)+\frac{2d}h-\frac{4\|x_i-x_j\|^2}{h^2}\big]`.
    Shape ``(..., n, n)``; memory :math:`O(n^2)` (use :func:`ksd` for large ``n``)."""
    x = _check_x(x)
    s = _resolve_score(x, score)
    if bandwidth is None:
        raise ValueError(
            "bandwidth must be given (finite and > 0, e.g. "
            "median_bandwidth(x, rule='ksd'))"
        )
    h = _resolve_bandwidth(x, bandwidth, "ksd", _DEFAULT_MEDIAN_SAMPLE, None)
    if _tiny_bandwidth(
        h, 2
    ):  # 4 |x_i - x_j|^2 / h^2 would be 0/0: in units of sqrt(h)
        return _stein_kernel_scaled(x, s, h) / h[..., None, None]
    h = h[..., None, None]
    d = x.shape[-1]
    d2 = _sqdist(x, x)
    a = (s * x).sum(-1)  # s_i . x_i
    cross = (
        a.unsqueeze(-1)
        + a.unsqueeze(-2)
        - s @ x.transpose(-1, -2)
        - x @ s.transpose(-1, -2)
    )
    return torch.exp(-d2 / h) * (
        s @ s.transpose(-1, -2)
        + (2.0 / h) * cross
        + 2.0 * d / h
        - 4.0 * d2 / h**2
    )


def _stein_kernel_scaled(
    x: torch.Tensor, s: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    r""":math:`h\,u_p(x_i,x_j)` (dense, ``(..., n, n)``), computed in units of :math:`\sqrt h`: with
    :math:`\tilde x=x/\sqrt h` and :math:`\tilde s=\sqrt h\,s`,
    :math:`h\,u_p=k_{ij}\big[\tilde s_i^\top\tilde s_j+2(\tilde s_i-\tilde s_j)^\top(\tilde x_i-\tilde x_j)+2d
    -4\|\tilde x_i-\tilde x_j\|^2\big]`, every term of order one, so that nothing overflows or underflows for
    tightly clustered particles (the literal :math:`4\|x_i-x_j\|^2/h^2` gives 0/0 in float32 once
    :math:`h^2<10^{-45}`). ``h`` has shape ``x.shape[:-2]``."""
    rh = h[..., None, None].sqrt()
    xs, ss = x / rh, s * rh
    d = x.shape[-1]
    d2 = _sqdist(xs, xs)
    a = (ss * xs).sum(-1)  # s_i . x_i
    cross = (
        a.unsqueeze(-1)
        + a.unsqueeze(-2)
        - ss @ xs.transpose(-1, -2)
        - xs @ ss.transpose(-1, -2)
    )
    return torch.exp(-d2) * (
        ss @ ss.transpose(-1, -2) + 2.0 * cross + 2.0 * d - 4.0 * d2
    )


def ksd(
    x: torch.Tensor,
    score,
    bandwidth=None,
    *,
    rule: str = "ksd",
    statistic: str = "u",
    block_size: int = _DEFAULT_BLOCK,
    median_sample: int = _DEFAULT_MEDIAN_SAMPLE,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""The kernelized Stein discrepancy :math:`\mathbb S(q,p)` estimated from samples ``x`` of ``q`` (Chapter 6).

    ``statistic="u"`` (default): the unbiased U-statistic :math:`\frac1{n(n-1)}\sum_{i\ne j}u_p(x_i,x_j)` (may be
    slightly negative; needs ``n >= 2``); ``"v"``: the V-statistic :math:`\frac1{n^2}\sum_{i,j}u_p(x_i,x_j)\ge0`.
    :math:`u_p` is the RBF closed form of :func:`stein_kernel_matrix`, summed in ``block_size`` tiles (memory
    :math:`O(nd+\text{block\_size}^2)`). ``bandwidth=None`` uses :func:`median_bandwidth` with ``rule`` (default
    ``"ksd"``: :math:`h=2\,\mathrm{median}_{i<j}\|x_i-x_j\|^2`); KSD values depend on the bandwidth, so compare
    values only at the same ``h`` (pass it explicitly to compare different samples at one ``h``). ``backend``:
    ``"auto"`` (default; the Triton KSD kernel on CUDA tensors when triton is installed, this code otherwise),
    ``"torch"`` or ``"triton"``, the rule of :mod:`vaebook.kernels`.
    Returns a tensor of shape ``x.shape[:-2]``.
    """
    x = _check_x(x)
    if statistic not in ("u", "v"):
        raise ValueError(f"statistic must be 'u' or 'v', got {statistic!r}")
    n, d = x.shape[-2], x.shape[-1]
    if statistic == "u" and n < 2:
        raise ValueError("the U-statistic needs at least 2 samples")
    s = _resolve_score(x, score)
    block_size = _check_block(block_size)
    h = _resolve_bandwidth(x, bandwidth, rule, median_sample, generator)
    from . import kernels

    if kernels.resolve_backend(backend, x, s) == "triton":
        return kernels._ksd_sets(x, s, h, statistic)
    hb = h[..., None, None]
    xs = x / hb.sqrt()
    # For a tiny h (tightly clustered float32 particles: 1/h^2 overflows
    # once h < 1e-19) the sums run in units of
    # sqrt(h): with xs = x / sqrt(h), ss = sqrt(h) s and H = 1 the total
    # below is h * sum_ij u_p(x_i, x_j), every
    # term of order one, divided by h only at the end. Otherwise (X, S,
    # H) = (x, s, h): the textbook formula.
    scaled = _tiny_bandwidth(h, 2)
    X, S, H = (xs, s * hb.sqrt(), torch.ones_like(h)) if scaled else (x, s, h)
    Hb = H[..., None, None]
    a = (S * X).sum(-1, keepdim=True)  # s_i . x_i
    rhs = torch.cat([S, X, torch.ones_like(a), a], -1)  # [s_j | x_j | 1 | a_j]
    total = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
    for i0 in range(0, n, block_size):
        xi, si, ai = (
            X[..., i0 : i0 + block_size, :],
            S[..., i0 : i0 + block_size, :],
            a[..., i0 : i0 + block_size, :],
        )
        acc, kd2 = (
            None,
            0.0,
        )  # sum_j k_ij [s_j | x_j | 1 | a_j] and sum_ij k_ij |x_i - x_j|^2 / h
        for j0 in range(0, n, block_size):
            d2 = _sqdist(
                xs[..., i0 : i0 + block_size, :],
                xs[..., j0 : j0 + block_size, :],
            )  # |x_i - x_j|^2 / h
            k = torch.exp(-d2)
            part = k @ rhs[..., j0 : j0 + block_size, :]
            acc = part if acc is None else acc + part
            kd2 = kd2 + d2.mul_(k).sum((-1, -2))
            del k, d2
        ks, kx, k1, ka = (
            acc[..., :d],
            acc[..., d : 2 * d],
            acc[..., 2 * d : 2 * d + 1],
            acc[..., 2 * d + 1 :],
        )
        # sum_ij k_ij [s_i.s_j + (2/h)(a_i + a_j - s_i.x_j - x_i.s_j)
        # + 2d/h] - (4/h) sum_ij k_ij |x_i-x_j|^2/h
        rows = (
            (si * ks).sum(-1)
            + (2.0 / Hb[..., 0])
            * (
                (ai * k1 + ka).squeeze(-1)
                - (si * kx).sum(-1)
                - (xi * ks).sum(-1)
            )
            + (2.0 * d / Hb[..., 0]) * k1.squeeze(-1)
        )
        total = total + rows.sum(-1) - (4.0 / H) * kd2
    if statistic == "v":
        out = total / (n * n)
    else:
        diag = (
            S.square().sum((-1, -2)) + n * 2.0 * d / H
        )  # u_p(x_i, x_i) = |s_i|^2 + 2d/h
        out = (total - diag) / (n * (n - 1))
    return out / h if scaled else out


def score_from_log_prob(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""Turn an (unnormalised) log-density ``log_prob: (..., n, d) -> (..., n)`` into the score function
    ``x -> grad_x log_prob(x)`` (autograd on a detached copy, also inside ``no_grad``). The normaliser of ``p`` never
    matters: SVGD and the KSD only see the score."""

    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(log_prob(y).sum(), y)
        return g

    return score


# -----------------------------------------------------------------------------
# step-size rules and the particle driver
# -----------------------------------------------------------------------------


class AdaGradMomentum:
    r"""The step-size rule of the official SVGD code ("AdaGrad with momentum", an RMSProp-style average; ``dilinwang820/Stein-Variational-Gradient-Descent``, ``python/svgd.py``).

    Per particle and coordinate, with :math:`g_\ell=\phi(x^\ell)`: :math:`H_1=g_1^2`,
    :math:`H_\ell=\alpha H_{\ell-1}+(1-\alpha)g_\ell^2`, displacement :math:`\epsilon\,g_\ell/(\delta+\sqrt{H_\ell})`,
    with ``alpha`` = 0.9, ``fudge_factor`` :math:`\delta` = 1e-6 and ``stepsize`` :math:`\epsilon` the "master
    stepsize" (the python code's default 1e-3, the matlab code's 0.1). Each particle moves about ``stepsize`` per
    step while its direction is consistent; the first step is :math:`\epsilon\,\mathrm{sign}(g)` up to :math:`\delta`.
    """

    def __init__(
        self,
        stepsize: float = 1e-3,
        alpha: float = 0.9,
        fudge_factor: float = 1e-6,
    ):
        if not 0 < stepsize < math.inf:
            raise ValueError(
                f"stepsize must be > 0 and finite, got {stepsize!r}"
            )
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if (
            not 0 < fudge_factor < math.inf
        ):  # 0 would give 0 / 0 = NaN for a zero direction
            raise ValueError(
                f"fudge_factor must be > 0 and finite, got {fudge_factor!r}"
            )
        self.stepsize, self.alpha, self.fudge_factor = (
            float(stepsize),
            float(alpha),
            float(fudge_factor),
        )
        self.historical_grad: torch.Tensor | None = None

    def reset(self) -> None:
        self.historical_grad = None

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """The displacement for the direction ``g`` (updates the running average)."""
        if (
            self.historical_grad is None
            or self.historical_grad.shape != g.shape
        ):
            self.historical_grad = g.square()
        else:
            self.historical_grad = (
                self.alpha * self.historical_grad
                + (1 - self.alpha) * g.square()
            )
        return (
            self.stepsize
            * g
            / (self.fudge_factor + self.historical_grad.sqrt())
        )


class ConstantStep:
    r"""Plain SVGD steps: displacement :math:`\epsilon\,\phi(x)` (the paper's Algorithm 1 with a fixed step)."""

    def __init__(self, stepsize: float = 0.1):
        if not 0 < stepsize < math.inf:
            raise ValueError(
                f"stepsize must be > 0 and finite, got {stepsize!r}"
            )
        self.stepsize = float(stepsize)

    def reset(self) -> None:
        pass

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return self.stepsize * g


class SVGD:
    r"""SVGD particle driver: :math:`x^{\ell+1}=x^\ell+\text{step}(\phi(x^\ell))` (Chapter 6, Algorithm 1 of the paper).

    Args:
        score: callable ``x -> grad log p(x)`` (e.g. :func:`score_from_log_prob`), ``x`` of shape ``(..., n, d)``.
        stepsize: the master step size :math:`\epsilon`.
        step_rule: ``"adagrad"`` (default; :class:`AdaGradMomentum`, the official code's rule, with ``alpha`` and
            ``fudge_factor``) or ``"constant"`` (:class:`ConstantStep`); or any object with ``__call__(g)`` and
            ``reset()``.
        bandwidth, rule, block_size, median_sample: as in :func:`svgd_direction` (the median is recomputed on the
            current particles at every iteration, as in the paper and the code).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``, passed to :func:`svgd_direction` at every step (the rule
            of :mod:`vaebook.kernels`: the Triton kernel for CUDA particles by default).

    ``run(x, num_iter, record_at=...)`` returns the final particles and keeps copies of the particles at the
    iterations in ``record_at`` (0 = the start) in :attr:`snapshots` ``{iteration: tensor}``. The driver never
    modifies ``x`` in place; :attr:`iteration` counts the steps taken since the last :meth:`reset`.
    """

    def __init__(
        self,
        score: Callable[[torch.Tensor], torch.Tensor],
        stepsize: float = 1e-3,
        *,
        step_rule="adagrad",
        alpha: float = 0.9,
        fudge_factor: float = 1e-6,
        bandwidth=None,
        rule: str = "code",
        block_size: int = _DEFAULT_BLOCK,
        median_sample: int = _DEFAULT_MEDIAN_SAMPLE,
        backend: str = "auto",
    ):
        if not callable(score):
            raise TypeError(
                "score must be a callable x -> grad log p(x) (see "
                "score_from_log_prob)"
            )
        if rule not in BANDWIDTH_RULES:
            raise ValueError(
                f"rule must be one of {BANDWIDTH_RULES}, got {rule!r}"
            )
        self.score, self.backend = score, _check_backend(backend)
        if step_rule == "adagrad":
            self.step_rule = AdaGradMomentum(stepsize, alpha, fudge_factor)
        elif step_rule == "constant":
            self.step_rule = ConstantStep(stepsize)
        elif callable(step_rule) and hasattr(step_rule, "reset"):
            self.step_rule = step_rule
        else:
            raise ValueError(
                "step_rule must be 'adagrad', 'constant' or a step object, "
                f"got {step_rule!r}"
            )
        self.bandwidth, self.rule = bandwidth, rule
        self.block_size, self.median_sample = (
            _check_block(block_size),
            median_sample,
        )
        self.iteration = 0
        self.snapshots: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget the step-size state, the iteration count and the snapshots."""
        self.step_rule.reset()
        self.iteration = 0
        self.snapshots = {}

    def direction(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\phi(x)` with this driver's score and bandwidth settings."""
        with torch.no_grad():
            s = self.score(x)
            return svgd_direction(
                x,
                s,
                self.bandwidth,
                rule=self.rule,
                block_size=self.block_size,
                median_sample=self.median_sample,
                backend=self.backend,
            )

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One SVGD step; returns new particles."""
        x = _check_x(x)
        with torch.no_grad():
            x = x + self.step_rule(self.direction(x))
        self.iteration += 1
        return x

    def run(
        self,
        x: torch.Tensor,
        num_iter: int,
        record_at: Sequence[int] = (),
        progress: bool = False,
    ) -> torch.Tensor:
        """``num_iter`` steps from ``x`` (continuing the step-size state); returns the final particles."""
        check_int("num_iter", num_iter, 0)
        from tqdm.auto import tqdm

        record = set(int(r) for r in record_at)
        x = _check_x(x).detach()
        if self.iteration in record:
            self.snapshots[self.iteration] = x.clone()
        for _ in tqdm(
            range(num_iter), desc="SVGD", disable=not progress, leave=False
        ):
            x = self.step(x)
            if not torch.isfinite(x).all():
                raise FloatingPointError(
                    "SVGD particles became non-finite at iteration "
                    f"{self.iteration}; "
                    "lower the step size"
                )
            if self.iteration in record:
                self.snapshots[self.iteration] = x.clone()
        return x


# -----------------------------------------------------------------------------
# amortized SVGD
# -----------------------------------------------------------------------------


def amortized_svgd_loss(
    x: torch.Tensor,
    score,
    bandwidth=None,
    *,
    rule: str = "code",
    block_size: int = _DEFAULT_BLOCK,
    median_sample: int = _DEFAULT_MEDIAN_SAMPLE,
    return_direction: bool = False,
    backend: str = "auto",
):
    r"""Surrogate loss of amortized SVGD {Wang & Liu 2016} (Chapter 6, eq. ``ch06-amortized``).

    ``x = f_eta(xi)`` are sampler outputs ``(..., n, d)`` that require grad; the SVGD direction :math:`\phi` is computed
    on the detached batch (each leading index an independent particle set with its own bandwidth, e.g. ``n``
    latent particles per data point for a Gibbs posterior) and the loss is

    .. math:: L(\eta)=-\frac1{N}\sum_{\text{sets}}\sum_i f_\eta(\xi_i)^\top\,\mathrm{sg}[\phi(x_i)]

    (:math:`N` = number of particles in all sets, sg = stop-gradient), so
    :math:`-\nabla_\eta L=\frac1N\sum_i\partial_\eta f_\eta(\xi_i)^\top\phi(x_i)`: a gradient step on :math:`L` moves every
    output along :math:`\phi`. This is the surrogate ``-(x * dx.detach()).sum()`` divided by :math:`N` (the scale does not
    matter for Adam). ``score`` is a tensor (the target's score at ``x``; it is detached) or a callable evaluated
    on ``x.detach()``. The value of ``L`` is not a divergence; monitor :math:`\|\phi\|` or :func:`ksd` instead.
    ``backend`` goes to :func:`svgd_direction` (the Triton kernel for CUDA tensors by default).
    Returns ``loss`` or ``(loss, phi)``.
    """
    x = _check_x(x)
    xd = x.detach()
    s = (score(xd) if callable(score) else score).detach()
    with torch.no_grad():
        phi = svgd_direction(
            xd,
            s,
            bandwidth,
            rule=rule,
            block_size=block_size,
            median_sample=median_sample,
            backend=backend,
        )
    loss = -(x * phi).sum() / (x.numel() // x.shape[-1])
    return (loss, phi) if return_direction else loss


class ResidualSampler(nn.Module):
    r"""A sampler network :math:`f(\xi)=c\,\xi_{1:d}+\mathrm{MLP}(\xi)` (Chapter 6).

    ``noise_dim`` inputs (:math:`\xi\sim\mathcal N(0,I)`), ``out_dim`` outputs, hidden widths ``hidden``, skip scale
    ``scale`` :math:`c` (needs ``noise_dim >= out_dim`` when ``c != 0``). The skip connection gives the initial
    samples a spread of about ``scale``; ``scale=0`` is a plain MLP, whose outputs start near one point and which can
    collapse to a single mode (check A3). ReLU by default: on the ring of 8 Gaussians (A2) the same sampler with tanh
    units collapsed onto one mode in our runs, with ReLU units it covered all eight.
    """

    def __init__(
        self,
        noise_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (64, 64),
        scale: float = 2.0,
        activation: str = "relu",
    ):
        super().__init__()
        from .models import MLP

        for name, v in (("noise_dim", noise_dim), ("out_dim", out_dim)):
            check_int(name, v)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        if scale != 0 and noise_dim < out_dim:
            raise ValueError(
                "the skip connection needs noise_dim >= out_dim, got "
                f"{noise_dim} < {out_dim}"
            )
        self.noise_dim, self.out_dim, self.scale = (
            int(noise_dim),
            int(out_dim),
            float(scale),
        )
        self.net = MLP(noise_dim, tuple(hidden), out_dim, activation)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        out = self.net(noise)
        if self.scale != 0:
            out = out + self.scale * noise[..., : self.out_dim]
        return out


class NoiseBatches:
    """An iterable of ``num_batches`` fresh noise batches ``(batch_size, noise_dim)`` (standard normal), for
    :func:`vaebook.train.fit` with :class:`AmortizedSVGD`. Its own generator (seeded by ``seed``) is advanced, so
    every epoch sees new noise and the global RNG is untouched."""

    def __init__(
        self,
        batch_size: int,
        noise_dim: int,
        num_batches: int,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        for name, v in (
            ("batch_size", batch_size),
            ("noise_dim", noise_dim),
            ("num_batches", num_batches),
        ):
            check_int(name, v)
        self.batch_size, self.noise_dim, self.num_batches = (
            batch_size,
            noise_dim,
            num_batches,
        )
        self.dtype, self.device = dtype, device
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for _ in range(self.num_batches):
            xi = torch.randn(
                self.batch_size,
                self.noise_dim,
                generator=self.generator,
                dtype=self.dtype,
            )
            yield xi if self.device is None else xi.to(self.device)


class AmortizedSVGD(nn.Module):
    r"""Amortized SVGD: train ``sampler`` (noise ``(B, noise_dim)`` -> samples ``(B, d)``) towards the target whose
    score is ``score`` (a callable ``x -> grad log p(x)``), with the book's model contract
    ``loss(batch) -> (loss, logs)`` so that :func:`vaebook.train.fit` trains it on :class:`NoiseBatches`.

    Each step draws a batch, treats its ``B`` outputs as one particle set, and applies
    :func:`amortized_svgd_loss` (bandwidth options and ``backend`` as there; ``backend`` is kept as an attribute).
    ``logs``: ``phi_norm`` (mean :math:`\|\phi(x_i)\|`, which shrinks as the sampler approaches the target) and
    ``surrogate`` (the loss value).
    """

    def __init__(
        self,
        sampler: nn.Module,
        score: Callable[[torch.Tensor], torch.Tensor],
        noise_dim: int,
        *,
        bandwidth=None,
        rule: str = "code",
        block_size: int = _DEFAULT_BLOCK,
        backend: str = "auto",
    ):
        super().__init__()
        if not callable(score):
            raise TypeError(
                "score must be a callable x -> grad log p(x) (see "
                "score_from_log_prob)"
            )
        check_int("noise_dim", noise_dim)
        if rule not in BANDWIDTH_RULES:
            raise ValueError(
                f"rule must be one of {BANDWIDTH_RULES}, got {rule!r}"
            )
        self.sampler, self.score, self.noise_dim = (
            sampler,
            score,
            int(noise_dim),
        )
        self.bandwidth, self.rule, self.block_size = (
            bandwidth,
            rule,
            block_size,
        )
        self.backend = _check_backend(backend)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.sampler(noise)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` samples ``(n, d)`` from the sampler (noise drawn with ``generator``)."""
        p = next(self.sampler.parameters())
        noise = torch.randn(
            n, self.noise_dim, generator=generator, dtype=p.dtype
        ).to(p.device)
        return self.sampler(noise)

    def loss(self, batch):
        noise = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = self.sampler(noise)
        loss, phi = amortized_svgd_loss(
            x,
            self.score,
            self.bandwidth,
            rule=self.rule,
            block_size=self.block_size,
            return_direction=True,
            backend=self.backend,
        )
        return loss, {
            "phi_norm": phi.norm(dim=-1).mean().item(),
            "surrogate": loss.item(),
        }


# -----------------------------------------------------------------------------
# targets and summaries used by Chapter 6
# -----------------------------------------------------------------------------


def gmm1d_target(dtype: torch.dtype = torch.float64):
    r"""The SVGD paper's 1-D toy target :math:`\frac13\mathcal N(-2,1)+\frac23\mathcal N(2,1)` (Liu & Wang 2016, Section 5), as a
    ``torch.distributions.MixtureSameFamily`` with event shape ``()`` (so ``log_prob`` of ``(n, 1)`` particles is
    ``(n, 1)``; sum over the last dimension for a particle log-density). Mean 2/3, :math:`E[x^2]=5`."""
    from torch.distributions import Categorical, MixtureSameFamily, Normal

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating torch.dtype, got {dtype!r}"
        )
    return MixtureSameFamily(
        Categorical(probs=torch.tensor([1 / 3, 2 / 3], dtype=dtype)),
        Normal(
            torch.tensor([-2.0, 2.0], dtype=dtype), torch.ones(2, dtype=dtype)
        ),
    )


def ring_target(
    num_modes: int = 8,
    radius: float = 2.0,
    std: float = 0.2,
    dtype: torch.dtype = torch.float64,
):
    r"""An equal-weight mixture of ``num_modes`` isotropic 2-D Gaussians (s.d. ``std``) on a circle of radius
    ``radius`` (Chapter 6); a ``MixtureSameFamily`` with event shape ``(2,)``. The centres are
    ``target.component_distribution.mean``."""
    from torch.distributions import (
        Categorical,
        Independent,
        MixtureSameFamily,
        Normal,
    )

    check_int("num_modes", num_modes)
    if not 0 <= radius < math.inf:
        raise ValueError(
            f"radius must be a number >= 0 and finite, got {radius!r}"
        )
    if not 0 < std < math.inf:
        raise ValueError(f"std must be a number > 0 and finite, got {std!r}")
    ang = 2 * math.pi * torch.arange(num_modes, dtype=dtype) / num_modes
    centres = radius * torch.stack([ang.cos(), ang.sin()], -1)
    comp = Independent(Normal(centres, torch.full_like(centres, std)), 1)
    return MixtureSameFamily(
        Categorical(logits=torch.zeros(num_modes, dtype=dtype)), comp
    )


def mode_weights(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Fraction of the points ``x`` ``(n, d)`` whose nearest centre (``(K, d)``) is each centre; shape ``(K,)``."""
    if centres.dim() != 2 or centres.shape[0] < 1:
        raise ValueError(
            "centres must have shape (K, d) with K >= 1, got "
            f"{tuple(centres.shape)}"
        )
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] != centres.shape[1]:
        raise ValueError(
            "x must have shape (n, d) with n >= 1 and d = centres.shape[1] = "
            f"{centres.shape[1]}, got "
            f"{tuple(x.shape)}"
        )
    nearest = torch.cdist(x.to(centres.dtype), centres).argmin(-1)
    return (
        torch.bincount(nearest, minlength=centres.shape[0]).to(centres.dtype)
        / x.shape[0]
    )


# -----------------------------------------------------------------------------
# cost measurements (CPU)
# -----------------------------------------------------------------------------


def peak_memory(fn: Callable, *args, **kwargs):
    r"""Run ``fn(*args, **kwargs)`` and return ``(result, peak_bytes)``: the peak, over the call, of the bytes held by
    tensor storages that torch operations created during the call (inputs that existed before are not counted).

    How: ``tracemalloc`` only sees Python's allocator, not torch's (a 16 MB tensor shows up as 80 bytes), and torch
    keeps no allocator statistics on the CPU. So a ``TorchDispatchMode`` sees every operator's outputs, adds the
    ``nbytes`` of each new storage, and a ``weakref.finalize`` on the storage subtracts them when it is freed. This
    counts autograd's saved tensors and the backward pass, is deterministic and works on any OS; it does not count
    temporary buffers inside a single kernel, nor allocator overhead (the process's RSS high-water mark is a little
    higher). Runs with a small Python overhead per operator; time separately (:func:`measure`).
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Tracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.current = 0
            self.peak = 0
            self.live: dict[int, int] = {}

        def _free(self, key: int, nbytes: int) -> None:
            if self.live.pop(key, None) is not None:
                self.current -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    st = t.untyped_storage()
                    key, nbytes = st.data_ptr(), st.nbytes()
                    if nbytes == 0 or key in self.live:
                        continue
                    self.live[key] = nbytes
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(st, self._free, key, nbytes)
            return out

    tracker = _Tracker()
    with tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak


def measure(fn: Callable, *args, repeats: int = 3, **kwargs) -> dict:
    """Time and peak tensor memory of ``fn(*args, **kwargs)`` on the CPU: ``{"seconds": min over repeats,
    "peak_bytes": from one extra run under :func:`peak_memory`}``. The minimum of repeated runs is the robust
    statistic on a shared machine."""
    check_int("repeats", repeats)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    _, peak = peak_memory(fn, *args, **kwargs)
    return {"seconds": min(times), "peak_bytes": peak}
