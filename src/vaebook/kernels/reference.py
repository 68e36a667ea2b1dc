r"""Plain-PyTorch references for the kernels of :mod:`vaebook.kernels` (Appendix "GPU kernels").

Each function here is the *specification* of one Triton kernel: the kernel must agree with it to rounding error,
and the tests and the appendix check exactly that. Two of the three references are the library's own functions,
so their mathematics lives in one place only:

* Gumbel-Softmax / Concrete sample with straight-through: :func:`vaebook.relaxed.gumbel_softmax` (Chapter 3).
* the matched bound between diagonal Gaussian mixtures: :func:`vaebook.mixtures.kl_gmm` with
  ``method="matched"`` (Chapter 2); :func:`matched_kl_reference` only builds the two ``MixtureSameFamily``
  objects from tensors.

The SVGD direction is written out densely below; the KSD reference is the mean of the Stein chapter's dense
Stein-kernel matrix (:func:`vaebook.svgd.stein_kernel_matrix`), and the Stein chapter's blocked
:func:`vaebook.svgd.svgd_direction` is a second reference for the SVGD kernel (tested). Notation (Chapter 6):
particles :math:`x_1..x_n\in\mathbb R^d` stacked in ``x`` ``(n, d)``, scores :math:`s_j=\nabla\log p(x_j)` in
``score`` ``(n, d)``, the RBF kernel :math:`k(x,y)=\exp(-\|x-y\|^2/h)` with bandwidth :math:`h>0`.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)

__all__ = [
    "rbf_gram",
    "svgd_direction_reference",
    "ksd_reference",
    "gumbel_softmax_reference",
    "matched_kl_reference",
]


def _check_particles(x, score) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    score = torch.as_tensor(score)
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            "x must have shape (n, d) with n >= 1 and d >= 1, got "
            f"{tuple(x.shape)}"
        )
    if score.shape != x.shape:
        raise ValueError(
            f"score must have the shape of x {tuple(x.shape)}, got "
            f"{tuple(score.shape)}"
        )
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    for name, t in (("x", x), ("score", score)):
        if not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x, score.to(x.dtype)


def _bandwidth(x: torch.Tensor, bandwidth, rule: str = "code") -> float:
    """``h`` as a Python float: ``bandwidth`` checked, or :func:`vaebook.svgd.median_bandwidth` with ``rule``."""
    if bandwidth is None:
        from ..svgd import median_bandwidth

        return float(median_bandwidth(x.detach(), rule=rule))
    if (
        isinstance(bandwidth, bool)
        or not isinstance(bandwidth, numbers.Real)
        or not (0 < bandwidth < math.inf)
    ):
        raise ValueError(
            "bandwidth must be a number > 0 (h in exp(-|x-y|^2/h)) or None, "
            f"got {bandwidth!r}"
        )
    if x.is_floating_point():
        from ..svgd import _check_bandwidth_value

        _check_bandwidth_value(
            float(bandwidth), bandwidth, x.dtype
        )  # e.g. 1e-50 underflows in float32
    return float(bandwidth)


def rbf_gram(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float
) -> torch.Tensor:
    r"""The dense kernel matrix :math:`K_{ij}=\exp(-\|x_i-y_j\|^2/h)`, ``(n, m)``: what the Triton kernels never form."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            "x and y must have shapes (n, d) and (m, d) with the same d, got "
            f"{tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    _bandwidth(x, bandwidth)
    d2 = (
        (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)
    )  # exact zeros on the diagonal (cdist is not)
    return torch.exp(-d2 / bandwidth)


def svgd_direction_reference(x, score, bandwidth=None) -> torch.Tensor:
    r"""The SVGD direction, dense: :math:`\phi=\big(Ks+\tfrac2h(\mathrm{diag}(K\mathbf 1)\,x-Kx)\big)/n`.

    This is :math:`\phi(x_i)=\frac1n\sum_j\big[k(x_j,x_i)\,s_j+\nabla_{x_j}k(x_j,x_i)\big]` (Liu & Wang 2016,
    Algorithm 1) with :math:`\nabla_{x_j}k(x_j,x_i)=\tfrac2h(x_i-x_j)\,k(x_j,x_i)` for the RBF kernel: the first
    term drives particles up the score, the second pushes them apart. Memory: the ``(n, n)`` matrix ``K``.

    Args:
        x: particles ``(n, d)``; score: :math:`\nabla\log p` at the particles, ``(n, d)``.
        bandwidth: :math:`h>0`, or ``None`` for ``vaebook.svgd.median_bandwidth(x, rule="code")``.

    Returns:
        ``(n, d)``.
    """
    x, score = _check_particles(x, score)
    return _svgd_direction_dense(x, score, _bandwidth(x, bandwidth))


def _svgd_direction_dense(
    x: torch.Tensor, score: torch.Tensor, h: float
) -> torch.Tensor:
    """:func:`svgd_direction_reference` on checked particles and a bandwidth ``h`` (a float) already resolved."""
    n = x.shape[0]
    if h >= 16.0 * torch.finfo(x.dtype).tiny:
        k = rbf_gram(x, x, h)
        return (
            k @ score + (2.0 / h) * (x * k.sum(1, keepdim=True) - k @ x)
        ) / n
    # 2/h overflows (tightly clustered float32 particles): the same
    # formula in units of sqrt(h),
    # k = exp(-|xs_i - xs_j|^2) and (2/h)(diag(K1) x - Kx) =
    # (2/sqrt(h))(diag(K1) xs - K xs), xs = x / sqrt(h)
    rh = torch.tensor(math.sqrt(h), dtype=x.dtype, device=x.device)
    xs = x / rh
    k = rbf_gram(xs, xs, 1.0)
    return (
        k @ score + (2.0 / rh) * (xs * k.sum(1, keepdim=True) - k @ xs)
    ) / n


def ksd_reference(
    x, score, bandwidth=None, statistic: str = "u"
) -> torch.Tensor:
    r"""Squared kernelised Stein discrepancy, dense, RBF kernel :math:`k=\exp(-\|x-y\|^2/h)` (Stein chapter):
    the mean of the Stein kernel matrix :func:`vaebook.svgd.stein_kernel_matrix`,

    .. math:: u(x,y)=k(x,y)\Big[s_x^\top s_y+\tfrac2h(s_x-s_y)^\top(x-y)+\tfrac{2d}h-\tfrac4{h^2}\|x-y\|^2\Big],

    over :math:`i\ne j` (``statistic="u"``, unbiased, may be slightly negative) or over all pairs (``"v"``, >= 0).

    Args:
        x, score: ``(n, d)`` (``n >= 2`` for the U-statistic); bandwidth: :math:`h>0` or ``None``
        (``vaebook.svgd.median_bandwidth(x, rule="ksd")``); statistic: ``"u"`` or ``"v"``.

    Returns:
        a 0-dim tensor.
    """
    x, score = _check_particles(x, score)
    _check_statistic(statistic, x.shape[0])
    return _ksd_dense(x, score, _bandwidth(x, bandwidth, "ksd"), statistic)


def _ksd_dense(
    x: torch.Tensor, score: torch.Tensor, h: float, statistic: str
) -> torch.Tensor:
    """:func:`ksd_reference` on checked particles and a bandwidth ``h`` (a float) already resolved."""
    from ..svgd import (
        _stein_kernel_scaled,
        _tiny_bandwidth,
        stein_kernel_matrix,
    )

    n = x.shape[0]
    h = torch.tensor(h, dtype=x.dtype, device=x.device)
    if not _tiny_bandwidth(h, 2):
        u = stein_kernel_matrix(x, score, h)
        if statistic == "u":
            return (u.sum() - torch.diagonal(u).sum()) / (n * (n - 1))
        return u.sum() / n**2
    # 1/h^2 overflows (tightly clustered float32 particles): h * u in
    # units of sqrt(h), divided by h at the end
    hu = _stein_kernel_scaled(x, score, h)
    if statistic == "u":
        return (hu.sum() - torch.diagonal(hu).sum()) / (n * (n - 1)) / h
    return hu.sum() / n**2 / h


def _check_statistic(statistic, n: int) -> None:
    if statistic not in ("u", "v"):
        raise ValueError(f"statistic must be 'u' or 'v', got {statistic!r}")
    if statistic == "u" and n < 2:
        raise ValueError("the U-statistic needs n >= 2 particles")


def gumbel_softmax_reference(
    logits, tau, hard: bool = False, gumbel=None, generator=None
) -> torch.Tensor:
    r"""The reference Gumbel-Softmax / Concrete sample: :func:`vaebook.relaxed.gumbel_softmax` itself."""
    from ..relaxed import gumbel_softmax

    return gumbel_softmax(
        logits,
        tau,
        hard=hard,
        gumbel=gumbel,
        generator=generator,
        backend="torch",
    )


def matched_kl_reference(
    q_logits, q_mean, q_logvar, p_logits, p_mean, p_logvar
) -> torch.Tensor:
    r"""The matched bound (identity matching) between diagonal Gaussian mixtures, via
    ``vaebook.mixtures.kl_gmm(q, p, method="matched")`` (Chapter 2):

    .. math:: D_{\mathrm{match}}=\sum_k\pi^q_k\Big[\mathrm{KL}\big(\mathcal N(\mu^q_k,\sigma^{q2}_k)\,\|\,
              \mathcal N(\mu^p_k,\sigma^{p2}_k)\big)+\log\pi^q_k-\log\pi^p_k\Big]\ \ge\ \mathrm{KL}(q\,\|\,p).

    Args:
        q_logits ``(..., K)``, q_mean ``(..., K, D)``, q_logvar ``(..., K, D)``; the ``p_*`` tensors broadcast
        against them (e.g. a shared prior with shapes ``(K,)``, ``(K, D)``, ``(K, D)``).

    Returns:
        ``(...)``.
    """
    from ..mixtures import kl_gmm

    def mix(logits, mean, logvar):
        return MixtureSameFamily(
            Categorical(logits=logits),
            Independent(Normal(mean, torch.exp(0.5 * logvar)), 1),
        )

    return kl_gmm(
        mix(q_logits, q_mean, q_logvar),
        mix(p_logits, p_mean, p_logvar),
        method="matched",
        backend="torch",
    )
