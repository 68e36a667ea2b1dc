r"""Relaxed discrete latents (Chapter 3): Gumbel-max, Gumbel-Softmax / Concrete, ExpConcrete and the relaxed KL.

Notation (Chapter 3): :math:`K\ge 2` categories, logits :math:`\ell\in\mathbb R^K` (unnormalised; only
:math:`\pi=\mathrm{softmax}(\ell)` matters), temperature :math:`\tau>0`, Gumbel noise
:math:`g_k\stackrel{iid}{\sim}\mathrm{Gumbel}(0,1)`.

* Gumbel-max: :math:`\mathrm{one\_hot}(\arg\max_k(\ell_k+g_k))\sim\mathrm{Cat}(\pi)`.
* Concrete / Gumbel-Softmax sample: :math:`y=\mathrm{softmax}((\ell+g)/\tau)` on the open simplex.
* ExpConcrete sample: :math:`Y=\log y=\mathrm{log\_softmax}((\ell+g)/\tau)`, representable in float32 at any
  :math:`\tau` where :math:`y` itself underflows to exact zeros.

Shapes follow ``torch.distributions``: ``logits`` is ``(..., K)``; leading dimensions are batch dimensions and
broadcast; the last dimension is the category (event) dimension. A temperature ``tau`` is a Python number or a tensor
whose shape broadcasts against the **batch** shape ``logits.shape[:-1]`` (one temperature per distribution; note
that ``torch.distributions`` instead wants it broadcastable against ``(..., K)``, i.e. with a trailing 1).

What this module adds to ``torch.distributions.RelaxedOneHotCategorical`` (same density, checked in the tests):
the density is computed in log space (finite in float32 for logits in [-50, 50] and tau down to 0.01), a Python
float temperature is accepted everywhere, bad input raises a ``ValueError`` naming the argument and the allowed
range, and the relaxed KL exists: :func:`relaxed_kl` (Monte Carlo in ExpConcrete space, any temperatures) and
:func:`relaxed_kl_equal_tau_exact` (equal temperatures: the KL does not depend on tau and is a 1-D integral),
plus :func:`recab`, a closed-form upper bound for equal temperatures (a reconstruction of ReCAB, Chapter 5).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch.distributions import (
    Distribution,
    TransformedDistribution,
    constraints,
)
from torch.distributions.kl import register_kl
from torch.distributions.transforms import ExpTransform
from .utils import check_int, check_number

__all__ = [
    "sample_gumbel",
    "gumbel_max",
    "gumbel_softmax",
    "exp_concrete_sample",
    "exp_concrete_log_prob",
    "concrete_log_prob",
    "ExpConcrete",
    "Concrete",
    "relaxed_kl",
    "relaxed_kl_equal_tau_exact",
    "recab",
    "tau_schedule",
    "constant_tau_schedule",
]


# -----------------------------------------------------------------------------
# argument checks
# -----------------------------------------------------------------------------


def _describe(value) -> str:
    if torch.is_tensor(value) and value.numel() > 1:
        v = value.detach()
        bad = (
            v[~(torch.isfinite(v) & (v > 0))]
            if v.is_floating_point()
            else v[~(v > 0)]
        )
        first = (
            bad.flatten()[0].item() if bad.numel() else v.flatten()[0].item()
        )
        return f"a tensor of shape {tuple(v.shape)} containing {first!r}"
    if torch.is_tensor(value):
        return (
            repr(value.detach().item())
            if value.numel() == 1
            else "an empty tensor"
        )
    return repr(value)


def _as_logits(
    logits, name: str = "logits", allow_neg_inf: bool = False
) -> torch.Tensor:
    """Logits as a floating tensor of shape ``(..., K)``, K >= 2, without NaN / +inf (and -inf unless allowed)."""
    logits = torch.as_tensor(logits)
    if not torch.is_floating_point(logits):
        logits = logits.to(torch.get_default_dtype())
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(
            f"{name} must have shape (..., K) with K >= 2 categories in the "
            f"last dimension, got shape {tuple(logits.shape)}"
        )
    d = logits.detach()
    if torch.isnan(d).any():
        raise ValueError(
            f"{name} contains NaN; {name} must be real numbers (finite, e.g. "
            "in [-50, 50])"
        )
    if allow_neg_inf:
        if (d == math.inf).any():
            raise ValueError(
                f"{name} contains +inf; {name} must be finite or -inf (a "
                "category with probability 0)"
            )
        if (d.amax(-1) == -math.inf).any():
            raise ValueError(
                f"{name} has a row where every entry is -inf; at least one "
                "category needs a finite logit"
            )
    elif torch.isinf(d).any():
        raise ValueError(
            f"{name} must be finite (no inf; e.g. in [-50, 50]); categories "
            "with probability 0 have no density"
        )
    return logits


def _as_tau(tau, ref: torch.Tensor, name: str = "tau") -> torch.Tensor:
    """``tau`` as a tensor of ``ref``'s dtype/device; raises unless finite and > 0 and broadcastable to the batch."""
    if isinstance(tau, bool) or (
        torch.is_tensor(tau) and tau.dtype == torch.bool
    ):
        raise ValueError(
            f"{name} must be > 0 and finite (a number or a tensor in (0, "
            "inf)), got a bool"
        )
    if not (torch.is_tensor(tau) or isinstance(tau, numbers.Real)):
        raise ValueError(
            f"{name} must be > 0 and finite (a number or a tensor in (0, "
            f"inf)), got {type(tau).__name__}"
        )
    if torch.is_tensor(tau):
        t = tau.to(device=ref.device, dtype=ref.dtype)
    # a Python number goes straight to ref's dtype (no float32 round
    # trip: 0.7 stays 0.7 in float64)
    else:
        t = torch.tensor(float(tau), dtype=ref.dtype, device=ref.device)
    d = t.detach()
    if not bool((torch.isfinite(d) & (d > 0)).all()):
        raise ValueError(
            f"{name} must be > 0 and finite (allowed range: 0 < {name} < "
            f"inf), got {_describe(tau)}"
        )
    try:
        torch.broadcast_shapes(t.shape, ref.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{name} must be a number or a tensor broadcastable to the batch "
            f"shape {tuple(ref.shape[:-1])} "
            f"(logits.shape[:-1]), got shape {tuple(t.shape)}"
        ) from None
    return t


def _event(tau: torch.Tensor) -> torch.Tensor:
    """A batch-shaped temperature with a trailing singleton so that it broadcasts against ``(..., K)``."""
    return tau.unsqueeze(-1) if tau.dim() else tau


def _as_gumbel(gumbel, logits: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(gumbel, dtype=logits.dtype, device=logits.device)
    if torch.isnan(g.detach()).any():
        raise ValueError(
            "gumbel contains NaN; pass Gumbel(0, 1) noise, e.g. from "
            "sample_gumbel"
        )
    try:
        torch.broadcast_shapes(g.shape, logits.shape)
    except RuntimeError:
        raise ValueError(
            "gumbel must be broadcastable to logits' shape "
            f"{tuple(logits.shape)}, got shape {tuple(g.shape)}"
        ) from None
    if g.dim() == 0 or g.shape[-1] not in (1, logits.shape[-1]):
        raise ValueError(
            f"gumbel must have shape (..., {logits.shape[-1]}), got shape "
            f"{tuple(g.shape)}"
        )
    return g


def _noise(
    logits: torch.Tensor, tau_e: torch.Tensor, gumbel, generator
) -> torch.Tensor:
    if gumbel is not None:
        return _as_gumbel(gumbel, logits)
    shape = torch.broadcast_shapes(logits.shape, tau_e.shape)
    return sample_gumbel(
        shape, generator=generator, dtype=logits.dtype, device=logits.device
    )


def _tolerance(dtype: torch.dtype) -> float:
    # sqrt(machine epsilon): 3.5e-4 in float32, 1.5e-8 in float64
    return math.sqrt(torch.finfo(dtype).eps)


# -----------------------------------------------------------------------------
# sampling
# -----------------------------------------------------------------------------


def _scores(z: torch.Tensor, tau_e: torch.Tensor) -> torch.Tensor:
    """``z / tau``; in rows where that overflows (a tau below about 1e-37 in float32: the largest score is +inf or
    every score is -inf, and the softmax would be NaN), ``(z - max z) / tau`` instead, the same softmax with the largest
    score at 0. Rows without overflow are ``z / tau`` bit for bit."""
    scores = z / tau_e
    bad = ~torch.isfinite(
        scores.detach().amax(-1, keepdim=True)
    )  # no host sync: always a where
    return torch.where(
        bad, (z - z.detach().amax(-1, keepdim=True)) / tau_e, scores
    )


def sample_gumbel(
    shape,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    r"""Standard Gumbel noise :math:`g=-\log(-\log U)`, :math:`U\sim\mathcal U(0,1)` (Chapter 3, Jang footnote 1).

    ``U`` is clamped to ``[tiny, 1 - eps/2]`` of ``dtype`` (the smallest normal number and the largest number below 1),
    so both logarithms are finite: no ``inf``/``NaN`` ever, in any float dtype. In float32 the draws lie in about
    [-4.5, 16.6]; the clamp moves only draws of exactly 0, which have probability :math:`2^{-24}`.

    Args:
        shape: output shape, e.g. ``(..., K)``.
        generator: optional ``torch.Generator`` (on ``device``) for reproducible noise.
        dtype: floating dtype (default ``torch.get_default_dtype()``); device: default CPU.

    Returns:
        a tensor of ``shape`` with i.i.d. Gumbel(0, 1) entries.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    dims = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0
        for v in dims
    ):
        raise ValueError(
            f"shape must be a sequence of ints >= 0, got {shape!r}"
        )
    finfo = torch.finfo(dtype)
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    u = u.clamp(min=finfo.tiny, max=1.0 - finfo.eps / 2)
    return -torch.log(-torch.log(u))


def gumbel_max(
    logits,
    generator: torch.Generator | None = None,
    *,
    return_index: bool = False,
    gumbel=None,
) -> torch.Tensor:
    r"""Exact categorical sample by the Gumbel-max trick (Chapter 3, Jang eq. 1).

    .. math:: z=\mathrm{one\_hot}\big(\arg\max_k(\ell_k+g_k)\big),\qquad P(z=e_k)=\mathrm{softmax}(\ell)_k .

    Args:
        logits: ``(..., K)`` unnormalised log-probabilities (``-inf`` allowed for impossible categories).
        generator: optional ``torch.Generator`` for the noise.
        return_index: return the ``(...)`` ``long`` index instead of the one-hot vector.
        gumbel: optional Gumbel noise broadcastable to ``(..., K)``; with the same noise,
            ``gumbel_max`` is the :math:`\tau\to0` limit of :func:`gumbel_softmax`.

    Returns:
        ``(..., K)`` one-hot in ``logits.dtype`` (entries exactly 0 and 1), or the ``(...)`` index.
    """
    logits = _as_logits(logits, allow_neg_inf=True)
    g = (
        _as_gumbel(gumbel, logits)
        if gumbel is not None
        else sample_gumbel(
            logits.shape,
            generator=generator,
            dtype=logits.dtype,
            device=logits.device,
        )
    )
    scores = logits.detach() + g.detach()
    index = scores.argmax(-1)
    if return_index:
        return index
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact one-hot vector at ``index``; backward: the identity (gradient of the soft sample)."""

    @staticmethod
    def forward(
        ctx, y_soft: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        return torch.zeros_like(y_soft).scatter_(-1, index.unsqueeze(-1), 1.0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def gumbel_softmax(
    logits,
    tau,
    hard: bool = False,
    gumbel=None,
    generator: torch.Generator | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Gumbel-Softmax / Concrete sample (Chapter 3, Jang eq. 2), optionally straight-through (Jang §2.2).

    .. math:: y_k=\frac{\exp((\ell_k+g_k)/\tau)}{\sum_{j=1}^K\exp((\ell_j+g_j)/\tau)},\qquad g_k\sim\mathrm{Gumbel}(0,1).

    With ``hard=True`` the forward value is the one-hot vector at :math:`\arg\max_k(\ell_k+g_k)` with entries
    **exactly** 0 and 1 (the usual ``y_hard - y_soft.detach() + y_soft`` can give 0.99999994), while the backward
    pass uses the gradient of the soft sample :math:`y` (straight-through estimator).

    Args:
        logits: ``(..., K)`` unnormalised log-probabilities (``-inf`` allowed for impossible categories).
        tau: temperature > 0, a number or a tensor broadcastable to the batch shape ``logits.shape[:-1]``
            (may require grad, for a learned temperature).
        hard: straight-through sample (one-hot forward, soft gradient).
        gumbel: optional Gumbel noise broadcastable to ``(..., K)`` (to compare backends on identical noise);
            drawn with :func:`sample_gumbel` otherwise.
        generator: optional ``torch.Generator`` for the noise.
        backend: ``"auto"`` (default: the fused Triton kernel :func:`vaebook.kernels.gumbel_softmax` on CUDA tensors
            when triton is installed, this PyTorch code otherwise), ``"torch"`` or ``"triton"``; the rule of
            :mod:`vaebook.kernels`. The noise is drawn here in PyTorch either way, so both backends see the same
            draws for the same random state.

    Returns:
        ``(..., K)``, on the simplex (in float32 at small tau, entries can underflow to exact 0: use
        :func:`exp_concrete_sample` when you need the density of the sample).
    """
    from . import kernels

    if kernels.resolve_backend(backend, logits, tau, gumbel) == "triton":
        return kernels.gumbel_softmax(
            logits, tau, hard, gumbel, generator, backend="triton"
        )
    logits = _as_logits(logits, allow_neg_inf=True)
    tau_e = _event(_as_tau(tau, logits))
    scores = _scores(logits + _noise(logits, tau_e, gumbel, generator), tau_e)
    y = torch.softmax(scores, dim=-1)
    if hard:
        y = _StraightThrough.apply(y, scores.detach().argmax(-1))
    return y


def exp_concrete_sample(
    logits, tau, gumbel=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""ExpConcrete sample :math:`Y=\log y` (Chapter 3, §"ExpConcrete"), computed without forming :math:`y`.

    .. math:: Y=\mathrm{log\_softmax}\big((\ell+g)/\tau\big),\qquad \mathrm{logsumexp}_k Y_k=0 .

    Finite in float32 for logits in [-50, 50] and tau down to 0.01 (where ``exp(Y)`` has exact zeros).
    Reparameterised: differentiable in ``logits`` and ``tau``.

    Args:
        logits: ``(..., K)``; tau: > 0, number or tensor broadcastable to ``logits.shape[:-1]``;
        gumbel: optional noise broadcastable to ``(..., K)``; generator: optional ``torch.Generator``.

    Returns:
        ``(..., K)`` log-simplex point.
    """
    logits = _as_logits(logits, allow_neg_inf=True)
    tau_e = _event(_as_tau(tau, logits))
    scores = _scores(logits + _noise(logits, tau_e, gumbel, generator), tau_e)
    return torch.log_softmax(scores, dim=-1)


# -----------------------------------------------------------------------------
# densities
# -----------------------------------------------------------------------------


def _exp_concrete_log_prob(
    log_y: torch.Tensor, logits: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    # log Gamma(K) + (K-1) log tau + sum_k log_softmax(logits - tau *
    # Y)_k   (no checks)
    K = logits.shape[-1]
    s = logits - _event(tau) * log_y
    return (
        math.lgamma(K)
        + (K - 1) * torch.log(tau)
        + torch.log_softmax(s, dim=-1).sum(-1)
    )


def _check_log_y(
    log_y, logits: torch.Tensor, name: str = "log_y"
) -> torch.Tensor:
    log_y = torch.as_tensor(log_y, device=logits.device)
    if not torch.is_floating_point(log_y):
        log_y = log_y.to(logits.dtype)
    K = logits.shape[-1]
    if log_y.dim() == 0 or log_y.shape[-1] != K:
        raise ValueError(
            f"{name} must have shape (..., {K}) to match logits, got shape "
            f"{tuple(log_y.shape)}"
        )
    d = log_y.detach()
    if torch.isnan(d).any():
        raise ValueError(
            f"{name} contains NaN; {name} must be the log of a point in the "
            "open simplex"
        )
    if torch.isinf(d).any():
        raise ValueError(
            f"{name} must be finite: an entry of -inf is y_k = 0, on the "
            "boundary of the simplex, where the density "
            "is not defined (sample with exp_concrete_sample to avoid "
            "underflow)"
        )
    tol = _tolerance(torch.promote_types(d.dtype, torch.float32))
    lse = torch.logsumexp(d, dim=-1)
    if (lse.abs() > tol).any():
        raise ValueError(
            f"{name} must be the log of a point on the simplex: "
            f"logsumexp({name}, -1) must be 0 within {tol:.1e}, "
            f"got {lse.abs().max().item():.3g} (normalise with "
            "torch.log_softmax)"
        )
    return log_y


def _check_batch(
    name: str, value: torch.Tensor, logits: torch.Tensor, tau: torch.Tensor
) -> None:
    try:
        torch.broadcast_shapes(value.shape[:-1], logits.shape[:-1], tau.shape)
    except RuntimeError:
        raise ValueError(
            f"the batch shapes of {name} {tuple(value.shape[:-1])}, logits "
            f"{tuple(logits.shape[:-1])} "
            f"and tau {tuple(tau.shape)} must broadcast"
        ) from None


def exp_concrete_log_prob(log_y, logits, tau) -> torch.Tensor:
    r"""ExpConcrete log-density of :math:`Y=\log y` (Chapter 3; Maddison et al.'s ExpConcrete).

    .. math:: \log p(Y)=\log\Gamma(K)+(K-1)\log\tau+\sum_{k=1}^K\big(\ell_k-\tau Y_k\big)
              -K\,\mathrm{logsumexp}_k\big(\ell_k-\tau Y_k\big),

    computed as :math:`\log\Gamma(K)+(K-1)\log\tau+\sum_k\mathrm{log\_softmax}(\ell-\tau Y)_k` (no exponentials of
    large numbers). The density is with respect to the logit differences :math:`(Y_k-Y_K)_{k<K}`; it equals
    ``torch.distributions.relaxed_categorical.ExpRelaxedCategorical(tau, logits=logits).log_prob(log_y)`` and stays
    finite in float32 for logits in [-50, 50] and tau >= 0.01.

    Args:
        log_y: ``(..., K)`` finite, with ``logsumexp(log_y, -1) == 0`` within ``sqrt(eps)`` of the dtype.
        logits: ``(..., K)`` finite; tau: > 0, number or tensor broadcastable to the batch shape.

    Returns:
        ``(...)``, the broadcast batch shape.
    """
    logits = _as_logits(logits)
    tau = _as_tau(tau, logits)
    log_y = _check_log_y(log_y, logits)
    _check_batch("log_y", log_y, logits, tau)
    return _exp_concrete_log_prob(log_y, logits, tau)


def concrete_log_prob(y, logits, tau) -> torch.Tensor:
    r"""Concrete / Gumbel-Softmax log-density on the simplex (Chapter 3, Jang eq. 3).

    .. math:: p(y)=\Gamma(K)\,\tau^{K-1}\Big(\sum_{i=1}^K\pi_i y_i^{-\tau}\Big)^{-K}\prod_{i=1}^K\pi_i y_i^{-\tau-1},

    with respect to Lebesgue measure on :math:`(y_1,\dots,y_{K-1})`. Computed through :math:`\log y` as
    ``exp_concrete_log_prob(log y) - sum_k log y_k`` (the Jacobian of :math:`y=e^Y` divides by all K coordinates),
    which equals ``torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau), logits=logits).log_prob(y)``.

    Args:
        y: ``(..., K)`` on the simplex: entries >= 0 summing to 1 within ``sqrt(eps)`` of the dtype. Entries exactly 0
            (the boundary, e.g. float32 underflow at small tau) raise a ``ValueError``: work in log space with
            :func:`exp_concrete_sample` / :func:`exp_concrete_log_prob` instead.
        logits: ``(..., K)`` finite; tau: > 0, number or tensor broadcastable to the batch shape.

    Returns:
        ``(...)``.
    """
    logits = _as_logits(logits)
    tau = _as_tau(tau, logits)
    y = torch.as_tensor(y, device=logits.device)
    if not torch.is_floating_point(y):
        y = y.to(logits.dtype)
    K = logits.shape[-1]
    if y.dim() == 0 or y.shape[-1] != K:
        raise ValueError(
            f"y must have shape (..., {K}) to match logits, got shape "
            f"{tuple(y.shape)}"
        )
    d = y.detach()
    if torch.isnan(d).any():
        raise ValueError(
            "y contains NaN; y must lie on the simplex (entries >= 0 summing "
            "to 1)"
        )
    if (d < 0).any():
        raise ValueError(
            "y must lie on the simplex: entries must be >= 0, got min "
            f"{d.min().item():.3g}"
        )
    tol = _tolerance(torch.promote_types(d.dtype, torch.float32))
    err = (d.sum(-1) - 1).abs()
    if (err > tol).any():
        raise ValueError(
            "y must lie on the simplex: entries must sum to 1 within "
            f"{tol:.1e}, "
            f"got a sum off by {err.max().item():.3g}"
        )
    if (d == 0).any():
        raise ValueError(
            "y has entries equal to 0: the boundary of the simplex, where the "
            "Concrete density is not defined "
            "(in float32 at small tau, softmax samples underflow to 0); use "
            "exp_concrete_sample and "
            "exp_concrete_log_prob, which work with log y"
        )
    _check_batch("y", y, logits, tau)
    log_y = torch.log(y)
    return _exp_concrete_log_prob(log_y, logits, tau) - log_y.sum(-1)


# -----------------------------------------------------------------------------
# torch.distributions classes
# -----------------------------------------------------------------------------


class _LogSimplex(constraints.Constraint):
    """Finite vectors with ``logsumexp(x, -1) == 0`` (within sqrt(eps)): logs of points in the open simplex."""

    is_discrete = False
    event_dim = 1

    def check(self, value):
        tol = _tolerance(torch.promote_types(value.dtype, torch.float32))
        finite = torch.isfinite(value).all(-1)
        return finite & (torch.logsumexp(value, -1).abs() <= tol)

    def __repr__(self):
        return "LogSimplex()"


log_simplex = _LogSimplex()


def _logits_from(probs, logits) -> torch.Tensor:
    if (probs is None) == (logits is None):
        raise ValueError("pass exactly one of probs or logits")
    if probs is not None:
        probs = torch.as_tensor(probs)
        if not torch.is_floating_point(probs):
            probs = probs.to(torch.get_default_dtype())
        if torch.isnan(probs).any() or (probs <= 0).any():
            raise ValueError(
                "probs must be > 0 (the Concrete density needs every category "
                "possible) and not NaN"
            )
        logits = torch.log(probs)
    return _as_logits(logits)


class ExpConcrete(Distribution):
    r"""ExpConcrete distribution of :math:`Y=\log y` for :math:`y\sim\mathrm{Concrete}(\pi,\tau)` (Chapter 3).

    A drop-in for ``torch.distributions.relaxed_categorical.ExpRelaxedCategorical`` (same samples, same
    ``log_prob``) that also accepts a Python float ``temperature``, validates its arguments with clear errors,
    and has a KL: ``kl_divergence(ExpConcrete, ExpConcrete)`` is registered for **equal** temperatures
    (:func:`relaxed_kl_equal_tau_exact`; it does not depend on tau). Unequal temperatures raise
    ``NotImplementedError`` pointing to the Monte Carlo estimator :func:`relaxed_kl`.

    Args:
        temperature: > 0, number or tensor broadcastable to the batch shape.
        probs / logits: ``(..., K)``, exactly one of them; stored normalised (``logits = log_softmax(logits)``).

    ``batch_shape`` is the broadcast of ``logits.shape[:-1]`` and ``temperature.shape``; ``event_shape = (K,)``;
    ``support`` is the log-simplex (finite vectors with ``logsumexp == 0``).
    """

    arg_constraints = {
        "temperature": constraints.positive,
        "logits": constraints.real_vector,
    }
    support = log_simplex
    has_rsample = True

    def __init__(
        self, temperature, probs=None, logits=None, validate_args=None
    ):
        logits = _logits_from(probs, logits)
        tau = _as_tau(temperature, logits, name="temperature")
        batch_shape = torch.broadcast_shapes(logits.shape[:-1], tau.shape)
        K = logits.shape[-1]
        self.logits = torch.log_softmax(logits, dim=-1).expand(*batch_shape, K)
        self.temperature = tau.expand(batch_shape)
        super().__init__(
            batch_shape, torch.Size((K,)), validate_args=validate_args
        )

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpConcrete, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.temperature = self.temperature.expand(batch_shape)
        Distribution.__init__(
            new, batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        g = sample_gumbel(
            shape, dtype=self.logits.dtype, device=self.logits.device
        )
        return torch.log_softmax(
            (self.logits + g) / _event(self.temperature), dim=-1
        )

    def log_prob(self, value) -> torch.Tensor:
        value = (
            _check_log_y(value, self.logits, name="value")
            if self._validate_args
            else torch.as_tensor(value)
        )
        return _exp_concrete_log_prob(value, self.logits, self.temperature)


class Concrete(TransformedDistribution):
    r"""Concrete / Gumbel-Softmax distribution on the simplex, :math:`y=\exp(Y)`, :math:`Y\sim` :class:`ExpConcrete`
    (Chapter 3).

    Same density as ``torch.distributions.RelaxedOneHotCategorical`` (:func:`concrete_log_prob`), with a float
    ``temperature`` accepted and the equal-temperature KL registered. ``rsample`` exponentiates an ExpConcrete sample,
    so in float32 at small temperatures entries can underflow to 0; keep such samples in log space
    (``self.base_dist``) when you need their density.

    Args:
        temperature: > 0, number or tensor broadcastable to the batch shape; probs / logits: ``(..., K)``.
    """

    arg_constraints = {
        "temperature": constraints.positive,
        "logits": constraints.real_vector,
    }
    support = constraints.simplex
    has_rsample = True

    def __init__(
        self, temperature, probs=None, logits=None, validate_args=None
    ):
        base = ExpConcrete(
            temperature,
            probs=probs,
            logits=logits,
            validate_args=validate_args,
        )
        super().__init__(base, ExpTransform(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Concrete, _instance)
        return super().expand(batch_shape, _instance=new)

    @property
    def temperature(self) -> torch.Tensor:
        return self.base_dist.temperature

    @property
    def logits(self) -> torch.Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> torch.Tensor:
        return self.base_dist.probs

    def log_prob(self, value) -> torch.Tensor:
        if self._validate_args:
            return concrete_log_prob(value, self.logits, self.temperature)
        log_y = torch.log(torch.as_tensor(value))
        return _exp_concrete_log_prob(
            log_y, self.logits, self.temperature
        ) - log_y.sum(-1)


def _kl_equal_tau(p_logits, q_logits, p_tau, q_tau) -> torch.Tensor:
    shape = torch.broadcast_shapes(p_tau.shape, q_tau.shape)
    if not torch.equal(p_tau.expand(shape), q_tau.expand(shape)):
        raise NotImplementedError(
            "KL between Concrete distributions with different temperatures "
            "has no closed form; "
            "estimate it with vaebook.relaxed.relaxed_kl(q_logits, p_logits, "
            "tau_q, tau_p) (Monte Carlo)"
        )
    return relaxed_kl_equal_tau_exact(p_logits, q_logits)


@register_kl(ExpConcrete, ExpConcrete)
def _kl_expconcrete_expconcrete(p, q):
    return _kl_equal_tau(p.logits, q.logits, p.temperature, q.temperature)


@register_kl(Concrete, Concrete)
def _kl_concrete_concrete(p, q):
    return _kl_equal_tau(p.logits, q.logits, p.temperature, q.temperature)


# -----------------------------------------------------------------------------
# relaxed KL
# -----------------------------------------------------------------------------


def relaxed_kl(
    q_logits,
    p_logits,
    tau_q,
    tau_p=None,
    num_samples: int = 1000,
    generator: torch.Generator | None = None,
    return_stderr: bool = False,
    *,
    chunk_size: int | None = None,
):
    r"""Monte Carlo relaxed KL :math:`\mathrm{KL}(\mathrm{Concrete}(\pi^q,\tau_q)\,\|\,\mathrm{Concrete}(\pi^p,\tau_p))`
    in ExpConcrete (log) space (Chapter 3, Maddison's estimator).

    .. math:: \widehat{\mathrm{KL}}=\frac1n\sum_{s=1}^n\big[\log q_{\mathrm{Exp}}(Y_s)-\log p_{\mathrm{Exp}}(Y_s)\big],
              \qquad Y_s=\mathrm{log\_softmax}\big((\ell^q+g_s)/\tau_q\big),

    which is the KL between the Concretes (KL is invariant under the bijection :math:`Y\mapsto e^Y`) without ever
    forming :math:`y` (no float32 underflow at small tau). Works for equal and unequal temperatures; for equal ones
    prefer :func:`relaxed_kl_equal_tau_exact` (deterministic, tau-free). Reparameterised, so it can be used as a
    training loss (``num_samples=1`` gives the usual single-sample estimate).

    Args:
        q_logits, p_logits: ``(..., K)`` finite, broadcastable.
        tau_q: > 0, number or tensor broadcastable to the batch shape; tau_p: the same, default ``tau_q``.
        num_samples: n >= 1 (>= 2 with ``return_stderr``).
        generator: optional ``torch.Generator``.
        return_stderr: also return the standard error :math:`\mathrm{sd}/\sqrt n` of the mean.
        chunk_size: samples drawn per step (bounds memory); default keeps about 4M elements per step.

    Returns:
        ``(...)`` estimate, or ``(estimate, stderr)``.
    """
    q_logits = _as_logits(q_logits, "q_logits")
    p_logits = _as_logits(p_logits, "p_logits")
    dtype = torch.promote_types(q_logits.dtype, p_logits.dtype)
    q_logits, p_logits = q_logits.to(dtype), p_logits.to(dtype)
    K = q_logits.shape[-1]
    if p_logits.shape[-1] != K:
        raise ValueError(
            "q_logits and p_logits must have the same number of categories, "
            f"got {K} and {p_logits.shape[-1]}"
        )
    tq = _as_tau(tau_q, q_logits, "tau_q")
    tp = tq if tau_p is None else _as_tau(tau_p, p_logits, "tau_p")
    try:
        batch = torch.broadcast_shapes(
            q_logits.shape[:-1], p_logits.shape[:-1], tq.shape, tp.shape
        )
    except RuntimeError:
        raise ValueError(
            "q_logits, p_logits, tau_q, tau_p must broadcast, got batch "
            f"shapes {tuple(q_logits.shape[:-1])}, "
            f"{tuple(p_logits.shape[:-1])}, {tuple(tq.shape)}, "
            f"{tuple(tp.shape)}"
        ) from None
    check_int("num_samples", num_samples)
    if return_stderr and num_samples < 2:
        raise ValueError(
            "num_samples must be >= 2 to estimate a standard error "
            "(return_stderr=True)"
        )
    per_sample = max(1, math.prod(batch) * K)
    if chunk_size is None:
        chunk_size = max(1, (1 << 22) // per_sample)
    elif (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    q_norm = torch.log_softmax(q_logits, dim=-1)
    p_norm = torch.log_softmax(p_logits, dim=-1)
    tq_e = _event(tq)
    n_done, mean, m2 = 0, None, None
    while n_done < num_samples:
        m = min(chunk_size, num_samples - n_done)
        g = sample_gumbel(
            (m, *batch, K),
            generator=generator,
            dtype=dtype,
            device=q_logits.device,
        )
        log_y = torch.log_softmax((q_norm + g) / tq_e, dim=-1)
        lr = _exp_concrete_log_prob(
            log_y, q_norm, tq
        ) - _exp_concrete_log_prob(log_y, p_norm, tp)
        c_mean = lr.mean(0)
        c_m2 = (lr - c_mean).pow(2).sum(0)
        if mean is None:
            mean, m2 = c_mean, c_m2
        # Chan et al.'s pairwise update of mean and sum of squared
        # deviations
        else:
            n_tot = n_done + m
            delta = c_mean - mean
            mean = mean + delta * (m / n_tot)
            m2 = m2 + c_m2 + delta.pow(2) * (n_done * m / n_tot)
        n_done += m
    if return_stderr:
        return mean, torch.sqrt(m2 / (num_samples - 1) / num_samples)
    return mean


def relaxed_kl_equal_tau_exact(
    q_logits, p_logits, *, step: float = 0.25
) -> torch.Tensor:
    r"""Relaxed KL for **equal** temperatures, :math:`\mathrm{KL}(\mathrm{Concrete}(\pi^q,\tau)\|\mathrm{Concrete}(\pi^p,\tau))`,
    to float64 accuracy by 1-D quadrature (Chapter 3). It does not depend on :math:`\tau`, so there is no ``tau``.

    With :math:`d_k=\log\pi^q_k-\log\pi^p_k` and :math:`a_k=e^{-d_k}`, the exact Dirichlet form is

    .. math:: \mathrm{KL}=\sum_k d_k+K\,\mathbb E_{w\sim\mathrm{Dir}(\mathbf 1_K)}\big[\log w^\top a\big].

    Writing :math:`w=E/\sum_j E_j` with :math:`E_k\sim\mathrm{Exp}(1)` and using Frullani's integral
    :math:`\log x=\int_0^\infty(e^{-t}-e^{-tx})\,dt/t` with :math:`\mathbb E[e^{-t\sum_k a_kE_k}]=\prod_k(1+ta_k)^{-1}`,
    then :math:`t=e^s`:

    .. math:: \mathbb E\big[\log w^\top a\big]=\int_{-\infty}^{\infty}\Big[e^{-K\,\mathrm{softplus}(s)}
              -e^{-\sum_k\mathrm{softplus}(s+\log a_k)}\Big]\,ds .

    The integrand is analytic in the strip :math:`|\mathrm{Im}\,s|<\pi` and decays exponentially at both ends, so the
    trapezoid rule with step :math:`h` has error about :math:`e^{-2\pi^2/h}` (``step=0.25``: below float64 rounding;
    checked against the Hermite-Genocchi closed form in 50-digit arithmetic). Unlike the closed form, it has no
    cancellation when some :math:`a_i` are close. Differentiable (autograd through the quadrature). Computed in
    float64; returned in the inputs' dtype.

    Args:
        q_logits, p_logits: ``(..., K)`` finite, broadcastable.
        step: trapezoid step in :math:`s`.

    Returns:
        ``(...)``.
    """
    q_logits = _as_logits(q_logits, "q_logits")
    p_logits = _as_logits(p_logits, "p_logits")
    out_dtype = torch.promote_types(q_logits.dtype, p_logits.dtype)
    K = q_logits.shape[-1]
    if p_logits.shape[-1] != K:
        raise ValueError(
            "q_logits and p_logits must have the same number of categories, "
            f"got {K} and {p_logits.shape[-1]}"
        )
    if not (isinstance(step, numbers.Real) and 0 < step <= 1):
        raise ValueError(f"step must be in (0, 1], got {step!r}")
    try:
        torch.broadcast_shapes(q_logits.shape, p_logits.shape)
    except RuntimeError:
        raise ValueError(
            "q_logits and p_logits must broadcast, got shapes "
            f"{tuple(q_logits.shape)} "
            f"and {tuple(p_logits.shape)}"
        ) from None
    for name, t in (("q_logits", q_logits), ("p_logits", p_logits)):
        if t.numel() == 0:
            raise ValueError(
                f"{name} has an empty batch (shape {tuple(t.shape)}): "
                "relaxed_kl_equal_tau_exact needs "
                "every batch dimension >= 1 (at least one pair of "
                "distributions)"
            )
    d = torch.log_softmax(q_logits.double(), -1) - torch.log_softmax(
        p_logits.double(), -1
    )
    log_a = -d  # max(log_a) >= 0 >= min(log_a), because sum_k pi^q_k a_k = 1
    lo = -float(log_a.detach().amax()) - 40.0
    hi = 40.0
    s_all = torch.arange(
        lo, hi + step, step, dtype=torch.float64, device=d.device
    )
    flat = log_a.reshape(-1, K)
    chunk = max(1, (1 << 22) // max(1, flat.shape[0] * K))
    total = torch.zeros(flat.shape[0], dtype=torch.float64, device=d.device)
    for start in range(0, s_all.numel(), chunk):
        s = s_all[start : start + chunk]
        ref = torch.exp(-K * F.softplus(s))  # (G,)
        val = torch.exp(
            -F.softplus(s[None, :, None] + flat[:, None, :]).sum(-1)
        )  # (B, G)
        total = total + (ref[None, :] - val).sum(-1)
    e_log = (step * total).reshape(log_a.shape[:-1])
    return (d.sum(-1) + K * e_log).to(out_dtype)


def recab(q_logits, p_logits, *, tau_q=None, tau_p=None) -> torch.Tensor:
    r"""ReCAB*: a closed-form upper bound on the equal-temperature relaxed KL (Chapter 5).

    **A reconstruction**, derived in Chapter 5, with the properties the ReCAB abstract (Oh, Um, Kang 2022)
    claims (closed form, an upper bound on the relaxed-categorical KL, close to it); the paper's own formula was not
    available, so do not attribute this expression to the paper. With :math:`d_k=\log\pi^q_k-\log\pi^p_k`,
    :math:`a_k=e^{-d_k}`, Jensen's inequality on the exact form of :func:`relaxed_kl_equal_tau_exact` gives

    .. math:: \mathrm{KL}\big(\mathrm{Concrete}(\pi^q,\tau)\,\|\,\mathrm{Concrete}(\pi^p,\tau)\big)\ \le\
              \mathrm{ReCAB}^*=\sum_k d_k+K\log\Big(\frac1K\sum_k a_k\Big)=K\log\frac{\mathrm{AM}(a)}{\mathrm{GM}(a)} .

    It is >= 0 (= 0 iff :math:`\pi^q=\pi^p`), not symmetric, invariant to logit shifts and independent of
    :math:`\tau`, and valid **only for equal temperatures**: with unequal ones the relaxed KL can exceed it
    (Chapter 3), so passing ``tau_q != tau_p`` raises a ``ValueError``. Computed as
    :math:`K\log\big(\frac1K\sum_k e^{-(d_k-\bar d)}\big)` with :math:`\bar d` the mean of :math:`d`, using
    ``log1p(mean(expm1(.)))`` when all :math:`|d_k-\bar d|<1`, so it is exactly 0 at equality and accurate near it.

    Args:
        q_logits, p_logits: ``(..., K)`` finite, broadcastable.
        tau_q, tau_p: optional temperatures, only checked for equality (the bound does not depend on them).

    Returns:
        ``(...)``.
    """
    q_logits = _as_logits(q_logits, "q_logits")
    p_logits = _as_logits(p_logits, "p_logits")
    dtype = torch.promote_types(q_logits.dtype, p_logits.dtype)
    q_logits, p_logits = q_logits.to(dtype), p_logits.to(dtype)
    K = q_logits.shape[-1]
    if p_logits.shape[-1] != K:
        raise ValueError(
            "q_logits and p_logits must have the same number of categories, "
            f"got {K} and {p_logits.shape[-1]}"
        )
    try:
        torch.broadcast_shapes(q_logits.shape, p_logits.shape)
    except RuntimeError:
        raise ValueError(
            "q_logits and p_logits must broadcast, got shapes "
            f"{tuple(q_logits.shape)} "
            f"and {tuple(p_logits.shape)}"
        ) from None
    if (tau_q is None) != (tau_p is None):
        raise ValueError(
            "pass both tau_q and tau_p (to check that they are equal) or "
            "neither"
        )
    if tau_q is not None:
        tq = _as_tau(tau_q, q_logits, "tau_q")
        tp = _as_tau(tau_p, p_logits, "tau_p")
        shape = torch.broadcast_shapes(tq.shape, tp.shape)
        if not torch.equal(
            tq.detach().expand(shape), tp.detach().expand(shape)
        ):
            raise ValueError(
                "recab (ReCAB*) bounds the relaxed KL only for equal "
                "temperatures (tau_q == tau_p); with unequal "
                "temperatures the relaxed KL can exceed it: estimate it with "
                "relaxed_kl(q_logits, p_logits, tau_q, tau_p)"
            )
    d = torch.log_softmax(q_logits, -1) - torch.log_softmax(p_logits, -1)
    e = d - d.mean(-1, keepdim=True)
    small = e.detach().abs().amax(-1) < 1.0
    near = torch.log1p(torch.expm1(-e.clamp(-1.0, 1.0)).mean(-1))
    far = torch.logsumexp(-e, -1) - math.log(K)
    return K * torch.where(small, near, far)


# -----------------------------------------------------------------------------
# temperature schedules
# -----------------------------------------------------------------------------


def _check_step(step) -> int:
    check_int("step", step, 0)
    return int(step)


def tau_schedule(
    step: int,
    tau0: float = 1.0,
    tau_min: float = 0.5,
    rate: float = 1e-5,
    every: int = 1000,
) -> float:
    r"""Jang et al.'s temperature annealing (Chapter 3; Jang §4.2): exponential decay to a floor, updated every N steps.

    .. math:: \tau(t)=\max\big(\tau_{\min},\ \tau_0\,e^{-r\,N\lfloor t/N\rfloor}\big).

    Paper settings: VAE :math:`\tau_0=1,\ \tau_{\min}=0.5,\ r\in\{10^{-5},10^{-4}\},\ N\in\{500,1000\}`;
    semi-supervised :math:`r=3\cdot10^{-5},\ N=2000`; the reference notebook uses :math:`r=3\cdot10^{-5},\ N=1000`
    (it updates at steps :math:`i\equiv1 \pmod{1000}` with :math:`e^{-ri}`, one step later than here).
    ``every=1`` gives the unquantised curve :math:`\max(\tau_{\min},\tau_0e^{-rt})`.

    Args:
        step: global training step t >= 0; tau0, tau_min: > 0; rate: r >= 0; every: N >= 1.

    Returns:
        the temperature (a float), piecewise constant on ``[kN, (k+1)N)``.
    """
    step = _check_step(step)
    for name, v in (("tau0", tau0), ("tau_min", tau_min)):
        check_number(name, v, 0.0, strict=True)
    check_number("rate", rate, 0.0)
    check_int("every", every)
    t = (step // every) * every
    return max(float(tau_min), float(tau0) * math.exp(-float(rate) * t))


def constant_tau_schedule(step: int, tau: float = 1.0) -> float:
    """Constant temperature (Chapter 3; Jang §4.1 uses tau = 1 without annealing): returns ``tau`` for every step."""
    _check_step(step)
    if (
        isinstance(tau, bool)
        or not isinstance(tau, numbers.Real)
        or not (0 < tau < math.inf)
    ):
        raise ValueError(
            "tau must be > 0 and finite (allowed range: 0 < tau < inf), got "
            f"{tau!r}"
        )
    return float(tau)
