"""Closed-form divergences.

Chapter 1 derives the Gaussian KL (eqs. ``kl-gauss-full`` and ``kl-gauss-diag`` of the chapter) and the categorical
KL; later chapters add the divergences between mixtures and relaxed categoricals to this module.

Shapes follow ``torch.distributions``: leading dimensions are batch dimensions and broadcast; the last dimension
is the event dimension and is summed over.
"""

from __future__ import annotations

import math

import torch
from .utils import check_int

__all__ = ["kl_normal_diag", "kl_mvn", "kl_categorical", "kl_mc"]


def _as_tensor_like(x, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


def _check_nan(name: str, t: torch.Tensor) -> None:
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")


def _expm1_minus_x(d: torch.Tensor) -> torch.Tensor:
    r""":math:`e^d-1-d\ge0` to full relative precision: ``expm1(d) - d`` for ``|d| >= 0.1``, and its Taylor series
    :math:`\tfrac{d^2}2(1+\tfrac d3(1+\tfrac d4(1+\tfrac d5(1+\tfrac d6(1+\tfrac d7)))))` below, where the
    subtraction would cancel (truncation error below 1e-9 relative)."""
    small = d.abs() < 0.1
    ds = torch.where(small, d, torch.zeros_like(d))
    series = (
        0.5
        * ds
        * ds
        * (
            1
            + ds
            / 3
            * (1 + ds / 4 * (1 + ds / 5 * (1 + ds / 6 * (1 + ds / 7))))
        )
    )
    return torch.where(small, series, torch.expm1(d) - d)


def _sq_over_var(diff: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r""":math:`\delta^2e^{-v}` (a squared mean difference over a variance), finite wherever the true value is.

    For ``v`` above :math:`-\tfrac12\log(\text{dtype max})` (about -44 in float32, -354 in float64) this is the
    plain product ``diff**2 * exp(-v)``. Below, :math:`e^{-v}` can overflow (at ``v < -88.7`` in float32) and
    ``0 * inf`` would give NaN even for equal means, so the value is computed in log space,
    :math:`\exp(2\log|\delta|-v)`, and a zero difference gives exactly 0 (with a zero, finite gradient: both
    branches are evaluated at safe arguments before ``torch.where`` picks one, so no NaN reaches the backward pass).
    """
    dtype = torch.promote_types(diff.dtype, logvar.dtype)
    lim = 0.5 * math.log(torch.finfo(dtype).max)
    big = logvar < -lim
    zero_v = torch.zeros((), dtype=logvar.dtype, device=logvar.device)
    ordinary = diff.pow(2) * torch.exp(-torch.where(big, zero_v, logvar))
    adiff = diff.abs()
    use = big & (adiff > 0)
    log_adiff = torch.log(torch.where(use, adiff, torch.ones_like(adiff)))
    v = torch.where(use, logvar, zero_v)
    extreme = torch.where(
        use, torch.exp(2.0 * log_adiff - v), torch.zeros_like(log_adiff)
    )
    return torch.where(big, extreme, ordinary)


def _normal_args(q_mean, q_logvar, p_mean, p_logvar):
    """Validate and convert the arguments of :func:`kl_normal_diag` (same dtype/device, finite, broadcastable)."""
    q_mean = torch.as_tensor(q_mean)
    q_logvar = (
        _as_tensor_like(q_logvar, q_mean)
        if not torch.is_tensor(q_logvar)
        else q_logvar
    )
    if not torch.is_floating_point(q_mean):
        q_mean = q_mean.to(torch.get_default_dtype())
    p_mean = (
        _as_tensor_like(p_mean, q_mean)
        if not torch.is_tensor(p_mean)
        else p_mean
    )
    p_logvar = (
        _as_tensor_like(p_logvar, q_mean)
        if not torch.is_tensor(p_logvar)
        else p_logvar
    )
    for name, t in (
        ("q_mean", q_mean),
        ("q_logvar", q_logvar),
        ("p_mean", p_mean),
        ("p_logvar", p_logvar),
    ):
        _check_nan(name, t)
        if torch.isinf(t).any():
            raise ValueError(
                f"{name} must be finite (log-variances in a float range, e.g. "
                "[-50, 50])"
            )
    if q_mean.dim() == 0:
        raise ValueError(
            "q_mean must have at least one dimension (the event dimension, "
            "summed over)"
        )
    try:
        torch.broadcast_shapes(
            q_mean.shape, q_logvar.shape, p_mean.shape, p_logvar.shape
        )
    except RuntimeError as e:
        raise ValueError(
            f"q_mean, q_logvar, p_mean, p_logvar must broadcast: {e}"
        ) from None
    return q_mean, q_logvar, p_mean, p_logvar


def kl_normal_diag(q_mean, q_logvar, p_mean=0.0, p_logvar=0.0) -> torch.Tensor:
    r"""KL between diagonal Gaussians, :math:`\mathrm{KL}(\mathcal N(\mu_q,\mathrm{diag}\,e^{v_q})\,\|\,\mathcal N(\mu_p,\mathrm{diag}\,e^{v_p}))`.

    Chapter 1, eq. ``kl-gauss-diag``:

    .. math:: \tfrac12\sum_j \big[e^{d_j} - 1 - d_j + (\mu_{q,j}-\mu_{p,j})^2 e^{-v_{p,j}}\big],\qquad d_j = v_{q,j}-v_{p,j}.

    Written with :math:`e^d-1-d` computed without cancellation (``expm1`` and, for tiny ``|d|``, its Taylor series),
    so that it is exactly zero at equality and keeps full relative accuracy when ``d`` is tiny,
    and parameterised by log-variances so that variances from 1e-6 to 1e6 are fine in float32. The mean term
    :math:`(\mu_q-\mu_p)^2e^{-v_p}` is computed in log space where :math:`e^{-v_p}` could overflow, so the KL stays
    finite (and exactly 0 for ``q == p``, with finite gradients) down to the dtype's smallest variances
    (``p_logvar`` about -103 in float32, -744 in float64); it is ``inf`` only where the true KL exceeds the dtype.

    Args:
        q_mean, q_logvar: ``(..., D)`` mean and log-variance of :math:`q`.
        p_mean, p_logvar: mean and log-variance of :math:`p`, broadcastable to ``(..., D)``; default the standard normal.

    Returns:
        ``(...)``: the KL summed over the last dimension (nats).
    """
    q_mean, q_logvar, p_mean, p_logvar = _normal_args(
        q_mean, q_logvar, p_mean, p_logvar
    )
    d = q_logvar - p_logvar  # log(sigma_q^2 / sigma_p^2)
    sq = _sq_over_var(
        q_mean - p_mean, p_logvar
    )  # (mu_q - mu_p)^2 / sigma_p^2, without 0 * inf
    return 0.5 * (_expm1_minus_x(d) + sq).sum(-1)


def _cholesky(name: str, cov: torch.Tensor) -> torch.Tensor:
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(
            f"{name} must be a (..., D, D) covariance matrix, got shape "
            f"{tuple(cov.shape)}"
        )
    _check_nan(name, cov)
    if torch.isinf(cov).any():
        raise ValueError(
            f"{name} must be finite (a symmetric positive definite matrix)"
        )
    c = cov.detach()
    if not torch.allclose(
        c,
        c.transpose(-1, -2),
        rtol=1e-5,
        atol=1e-8 * float(c.abs().max().clamp_min(1.0)),
    ):
        raise ValueError(f"{name} must be symmetric")
    chol, info = torch.linalg.cholesky_ex(cov)
    if (info != 0).any():
        raise ValueError(
            f"{name} must be symmetric positive definite (its Cholesky "
            "factorisation failed)"
        )
    return chol


def _mvn_args(q_mean, q_cov, p_mean, p_cov):
    """Validate the arguments of :func:`kl_mvn`; return the means and the Cholesky factors of the covariances."""
    q_mean = torch.as_tensor(q_mean)
    if not torch.is_floating_point(q_mean):
        q_mean = q_mean.to(torch.get_default_dtype())
    if q_mean.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"q_mean has dtype {q_mean.dtype}, but kl_mvn supports float32 "
            "and float64 only (its "
            "Cholesky factorisations have no half-precision kernels): "
            "convert with .float() or .double()"
        )
    q_cov = torch.as_tensor(q_cov, dtype=q_mean.dtype, device=q_mean.device)
    dim = q_mean.shape[-1] if q_mean.dim() else 0
    if q_mean.dim() == 0:
        raise ValueError("q_mean must have shape (..., D)")
    p_mean = (
        torch.zeros_like(q_mean)
        if p_mean is None
        else torch.as_tensor(p_mean, dtype=q_mean.dtype, device=q_mean.device)
    )
    if p_cov is None:
        p_cov = torch.eye(dim, dtype=q_mean.dtype, device=q_mean.device)
    p_cov = torch.as_tensor(p_cov, dtype=q_mean.dtype, device=q_mean.device)
    for name, cov in (("q_cov", q_cov), ("p_cov", p_cov)):
        if cov.dim() < 2 or cov.shape[-1] != dim:
            raise ValueError(
                f"{name} must have shape (..., {dim}, {dim}) to match "
                f"q_mean's last dimension {dim}, "
                f"got {tuple(cov.shape)}"
            )
    if p_mean.shape[-1] != dim:
        raise ValueError(
            f"p_mean must have last dimension {dim}, got shape "
            f"{tuple(p_mean.shape)}"
        )
    for name, t in (
        ("q_mean", q_mean),
        ("q_cov", q_cov),
        ("p_mean", p_mean),
        ("p_cov", p_cov),
    ):
        if t.numel() == 0:
            raise ValueError(
                f"{name} is empty (shape {tuple(t.shape)}): kl_mvn needs D >= "
                "1 and every batch "
                f"dimension >= 1 (at least one pair of distributions)"
            )
    for name, t in (("q_mean", q_mean), ("p_mean", p_mean)):
        _check_nan(name, t)
        if torch.isinf(t).any():
            raise ValueError(f"{name} must be finite")
    lq = _cholesky("q_cov", q_cov)
    lp = _cholesky("p_cov", p_cov)
    try:
        torch.broadcast_shapes(
            lq.shape[:-2], lp.shape[:-2], q_mean.shape[:-1], p_mean.shape[:-1]
        )
    except RuntimeError:
        raise ValueError(
            f"the batch shapes of q_mean {tuple(q_mean.shape[:-1])}, q_cov "
            f"{tuple(q_cov.shape[:-2])}, "
            f"p_mean {tuple(p_mean.shape[:-1])} and p_cov "
            f"{tuple(p_cov.shape[:-2])} must broadcast"
        ) from None
    return q_mean, p_mean, lq, lp


def kl_mvn(q_mean, q_cov, p_mean=None, p_cov=None) -> torch.Tensor:
    r"""KL between full-covariance Gaussians, :math:`\mathrm{KL}(\mathcal N(\mu_q,\Sigma_q)\,\|\,\mathcal N(\mu_p,\Sigma_p))`.

    Chapter 1, eq. ``kl-gauss-full``:

    .. math:: \tfrac12\big[\operatorname{tr}(\Sigma_p^{-1}\Sigma_q) + (\mu_p-\mu_q)^\top\Sigma_p^{-1}(\mu_p-\mu_q) - D
              + \log\det\Sigma_p - \log\det\Sigma_q\big],

    computed with Cholesky factors :math:`\Sigma = LL^\top` and triangular solves (no explicit inverse):
    :math:`\operatorname{tr}(\Sigma_p^{-1}\Sigma_q)=\|L_p^{-1}L_q\|_F^2`, :math:`\log\det\Sigma = 2\sum_i\log L_{ii}`.

    Args:
        q_mean: ``(..., D)``; q_cov: ``(..., D, D)`` symmetric positive definite.
        p_mean, p_cov: the same for :math:`p`; ``None`` means zero mean / identity covariance.

    Returns:
        ``(...)``. Raises ``ValueError`` naming the matrix that is not positive definite.
    """
    q_mean, p_mean, lq, lp = _mvn_args(q_mean, q_cov, p_mean, p_cov)
    dim = q_mean.shape[-1]
    batch = torch.broadcast_shapes(
        lq.shape[:-2], lp.shape[:-2], q_mean.shape[:-1], p_mean.shape[:-1]
    )
    lq = lq.expand(*batch, dim, dim)
    lp = lp.expand(*batch, dim, dim)
    diff = (p_mean - q_mean).expand(*batch, dim).unsqueeze(-1)
    a = torch.linalg.solve_triangular(lp, lq, upper=False)  # L_p^{-1} L_q
    b = torch.linalg.solve_triangular(
        lp, diff, upper=False
    )  # L_p^{-1} (mu_p - mu_q)
    trace = a.pow(2).sum((-1, -2))
    maha = b.pow(2).sum((-1, -2))
    logdet_p = 2.0 * torch.log(torch.diagonal(lp, dim1=-2, dim2=-1)).sum(-1)
    logdet_q = 2.0 * torch.log(torch.diagonal(lq, dim1=-2, dim2=-1)).sum(-1)
    # KL >= 0: trace + maha - D and the log-determinants cancel at (near)
    # equality and can round below 0
    return (0.5 * (trace + maha - dim + logdet_p - logdet_q)).clamp_min(0.0)


def kl_categorical(q_logits, p_logits) -> torch.Tensor:
    r"""KL between categorical distributions given by (unnormalised) logits, :math:`\sum_k q_k(\log q_k-\log p_k)`.

    Logits are normalised with ``log_softmax``, so a common shift of either argument changes nothing. Categories
    with :math:`q_k=0` (logit ``-inf``) contribute 0; a category with :math:`q_k>0` and :math:`p_k=0` gives ``inf``.

    Args:
        q_logits, p_logits: ``(..., K)``, broadcastable.

    Returns:
        ``(...)``.
    """
    q_logits = torch.as_tensor(q_logits)
    if not torch.is_floating_point(q_logits):
        q_logits = q_logits.to(torch.get_default_dtype())
    p_logits = torch.as_tensor(
        p_logits, dtype=q_logits.dtype, device=q_logits.device
    )
    for name, t in (("q_logits", q_logits), ("p_logits", p_logits)):
        _check_nan(name, t)
        if t.dim() == 0 or t.shape[-1] < 1:
            raise ValueError(
                f"{name} must have shape (..., K) with K >= 1, got "
                f"{tuple(t.shape)}"
            )
        if (t == math.inf).any():
            raise ValueError(
                f"{name} must not contain +inf (use finite logits; -inf marks "
                "an impossible category)"
            )
    if q_logits.shape[-1] != p_logits.shape[-1]:
        raise ValueError(
            "q_logits and p_logits must have the same number of categories "
            "K, "
            f"got {q_logits.shape[-1]} and {p_logits.shape[-1]}"
        )
    try:
        torch.broadcast_shapes(q_logits.shape, p_logits.shape)
    except RuntimeError:
        raise ValueError(
            "q_logits and p_logits must broadcast, got shapes "
            f"{tuple(q_logits.shape)} "
            f"and {tuple(p_logits.shape)}"
        ) from None
    log_q = torch.log_softmax(q_logits, -1)
    log_p = torch.log_softmax(p_logits, -1)
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    # KL >= 0: the sum of terms of both signs can round to a tiny
    # negative number (e.g. -1e-34 in float32)
    return terms.sum(-1).clamp_min(0.0)


def kl_mc(
    q,
    p,
    num_samples: int = 1000,
    generator: torch.Generator | None = None,
    return_stderr: bool = False,
):
    r"""Monte Carlo estimate of :math:`\mathrm{KL}(q\,\|\,p)=\mathbb E_q[\log q(z)-\log p(z)]` with its standard error.

    ``q`` and ``p`` are ``torch.distributions`` objects with the same event shape; ``q`` must support ``sample``
    (``rsample`` is used when available, so the estimate is differentiable). The estimate is unbiased; its standard
    error is the sample standard deviation of the log-ratios over :math:`\sqrt{S}`. Used in Chapter 1 to check the
    closed forms and in later chapters wherever no closed form exists.

    Returns:
        the estimate, shape ``q.batch_shape``, or ``(estimate, stderr)`` if ``return_stderr``.
    """
    check_int("num_samples", num_samples, 2)
    from torch.distributions import Distribution

    for name, d in (("q", q), ("p", p)):
        if not isinstance(d, Distribution):
            raise TypeError(
                f"{name} must be a torch.distributions.Distribution (with "
                "sample or rsample, and "
                f"log_prob), got {type(d).__name__}; for distributions given "
                "by parameter tensors use "
                f"the closed forms kl_normal_diag, kl_mvn or kl_categorical"
            )
    if q.event_shape != p.event_shape:
        raise ValueError(
            "q and p must have the same event shape, got "
            f"{tuple(q.event_shape)} and "
            f"{tuple(p.event_shape)}"
        )
    if generator is not None:
        # torch.distributions has no generator argument: fork the
        # global RNG and seed it from the generator.
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = (
                q.rsample((num_samples,))
                if q.has_rsample
                else q.sample((num_samples,))
            )
    else:
        z = (
            q.rsample((num_samples,))
            if q.has_rsample
            else q.sample((num_samples,))
        )
    log_ratio = q.log_prob(z) - p.log_prob(z)
    est = log_ratio.mean(0)
    if not return_stderr:
        return est
    return est, log_ratio.std(0) / math.sqrt(num_samples)


def __getattr__(name: str):
    # Divergences derived in later chapters live in their topic's module
    # and are re-exported here lazily,
    # so that ``vaebook.divergences.kl_gmm`` (Chapter 2) and
    # ``vaebook.divergences.recab`` (Chapter 5) work.
    if name == "kl_gmm":
        from .mixtures import kl_gmm

        return kl_gmm
    if name == "recab":
        from .relaxed import recab

        return recab
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
