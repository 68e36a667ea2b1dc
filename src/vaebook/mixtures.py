r"""KL divergence between Gaussian mixtures: estimators, approximations and bounds (Chapter 2).

The KL divergence between two Gaussian mixtures

.. math:: f(x)=\sum_a\pi_a\,\mathcal N(x;\mu_a,\Sigma_a),\qquad g(x)=\sum_b\omega_b\,\mathcal N(x;\nu_b,\Lambda_b)

has no closed form (the logarithm of a sum does not simplify), which is why ``torch.distributions.kl_divergence``
raises ``NotImplementedError`` for two ``MixtureSameFamily`` objects and why this module registers nothing in torch's
KL registry: any registered function would have to be an approximation, silently. Instead :func:`kl_gmm` makes
the choice explicit. Its methods follow Hershey & Olsen (ICASSP 2007) as Chapter 2 reconstructs them (the paper's text was not verified)
(``gaussians_and_mixtures.md`` §3); :math:`D_{ab}=D(f_a\|g_b)` below is the closed-form Gaussian KL of Chapter 1.

============================ ======================================================= ==================================
method                        formula                                                  status
============================ ======================================================= ==================================
``"mc"``                      :math:`\frac1n\sum_i\log f(x_i)/g(x_i)`, :math:`x_i\sim f` unbiased estimate, std. error
``"unscented"``               :math:`\frac1{2d}\sum_a\pi_a\sum_k\log f/g` at sigma points  exact for single Gaussians
``"gaussian"``                KL of the moment-matched single Gaussians                exact for single Gaussians
``"product"``                 :math:`\sum_a\pi_a\log\frac{\sum_{a'}\pi_{a'}z_{aa'}}{\sum_b\omega_bt_{ab}}` zero for f = g only
``"variational"``             :math:`\sum_a\pi_a\log\frac{\sum_{a'}\pi_{a'}e^{-D(f_a\|f_{a'})}}{\sum_b\omega_be^{-D_{ab}}}` exact for single Gaussians
``"matched"``                 :math:`\sum_a\pi_a[D_{a\sigma(a)}+\log\pi_a/\omega_{\sigma(a)}]` **upper bound** (any bijection)
``"variational_upper"``       :math:`\min_\phi\,\mathrm{KL}(\Phi\|\omega)+\sum_{ab}\phi_{ab}D_{ab}` **upper bound** (every iterate)
``"goldberger"``              matched bound with :math:`m(a)=\arg\min_b D_{ab}-\log\omega_b` not a bound in general
``"min_pair"``                :math:`\min_{ab}D_{ab}`                                  crude; exact for single Gaussians
============================ ======================================================= ==================================

Only ``"matched"`` and ``"variational_upper"`` are certified upper bounds; :func:`durrieu_bounds` gives a cheap
two-sided interval. ``"variational"`` and ``"product"`` always lie inside that interval but are neither upper nor
lower bounds; ``"unscented"`` and ``"mc"`` can be negative.

Inputs are ``torch.distributions.MixtureSameFamily`` objects whose components are diagonal Gaussians
(``Independent(Normal(loc, scale), 1)``), full-covariance Gaussians (``MultivariateNormal``) or, for 1-D mixtures,
plain ``Normal``. The two mixtures may use different families (diagonal ones are then promoted to full covariance),
different numbers of components (except for the matched bound) and broadcastable batch shapes; the result has the
broadcast batch shape. Everything is computed in log space (``logsumexp``) with Cholesky factors, so well-separated
mixtures (component KLs in the thousands) and heavily overlapping ones are both fine; float64 is recommended for
reference values.

Zero mixture weights are honoured when given as ``-inf`` logits (``Categorical(logits=...)``); note that
``Categorical(probs=...)`` clamps probabilities to the float epsilon, so a zero probability becomes a tiny positive
weight (about ``log(2e-16) = -36`` nats in float64), which matters for the matched bound.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch.distributions import (
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)
from .divergences import _sq_over_var
from .utils import check_int

__all__ = [
    "METHODS",
    "kl_gmm",
    "pairwise_kl",
    "log_overlaps",
    "log_responsibilities",
    "durrieu_bounds",
]

METHODS = (
    "mc",
    "gaussian",
    "product",
    "matched",
    "variational",
    "variational_upper",
    "unscented",
    "goldberger",
    "min_pair",
)

_OPTIONS = {
    "mc": {"num_samples", "generator", "seed", "return_stderr"},
    "gaussian": set(),
    "product": set(),
    "matched": {"matching", "return_matching"},
    "variational": set(),
    "variational_upper": {"num_iters", "tol", "unroll", "return_history"},
    "unscented": {"sigma_points"},
    "goldberger": set(),
    "min_pair": set(),
}

_LOG_2PI = math.log(2.0 * math.pi)


# -----------------------------------------------------------------------------
# Internal representation: stacked component parameters, aligned on the right
# (..., K, d).
# -----------------------------------------------------------------------------
@dataclass
class _Comps:
    loc: torch.Tensor  # (..., K, d)
    diag: bool
    log_var: torch.Tensor | None = None  # (..., K, d) when diag
    tril: torch.Tensor | None = (
        None  # (..., K, d, d) when full (Cholesky factor of the covariance)
    )

    @property
    def dim(self) -> int:
        return self.loc.shape[-1]

    @property
    def var(self) -> torch.Tensor:
        return self.log_var.exp()

    def to_full(self) -> "_Comps":
        if not self.diag:
            return self
        return _Comps(
            self.loc,
            False,
            tril=torch.diag_embed(torch.exp(0.5 * self.log_var)),
        )

    def cov(self) -> torch.Tensor:
        if self.diag:
            return torch.diag_embed(self.var)
        return self.tril @ self.tril.transpose(-1, -2)

    def logdet(self) -> torch.Tensor:  # (..., K)
        if self.diag:
            return self.log_var.sum(-1)
        return 2.0 * torch.log(
            torch.diagonal(self.tril, dim1=-2, dim2=-1)
        ).sum(-1)

    def entropy(self) -> torch.Tensor:  # (..., K)
        return 0.5 * (self.dim * (_LOG_2PI + 1.0) + self.logdet())

    def cast(self, dtype) -> "_Comps":
        f = lambda t: None if t is None else t.to(dtype)
        return _Comps(f(self.loc), self.diag, f(self.log_var), f(self.tril))


def _components(name: str, comp) -> _Comps:
    """Convert a component distribution (batch shape (..., K)) to stacked parameters, validating it."""
    if isinstance(comp, Independent) and isinstance(comp.base_dist, Normal):
        if comp.reinterpreted_batch_ndims != 1:
            raise ValueError(
                f"{name}: Independent(Normal) components must have "
                "reinterpreted_batch_ndims=1 "
                f"(a vector event), got {comp.reinterpreted_batch_ndims}"
            )
        loc, scale = torch.broadcast_tensors(
            comp.base_dist.loc, comp.base_dist.scale
        )
        _check_scale(name, scale, "scale")
        return _Comps(loc, True, log_var=2.0 * torch.log(scale))
    if isinstance(comp, MultivariateNormal):
        tril = comp.scale_tril
        loc = comp.loc
        if not (torch.isfinite(tril).all() and torch.isfinite(loc).all()):
            raise ValueError(f"{name}: component parameters must be finite")
        diag = torch.diagonal(tril, dim1=-2, dim2=-1)
        _check_scale(name, diag, "scale_tril diagonal")
        return _Comps(loc, False, tril=tril.expand(*loc.shape, loc.shape[-1]))
    if isinstance(comp, Normal):  # univariate components: a 1-D mixture
        loc, scale = torch.broadcast_tensors(comp.loc, comp.scale)
        _check_scale(name, scale, "scale")
        return _Comps(
            loc.unsqueeze(-1),
            True,
            log_var=2.0 * torch.log(scale).unsqueeze(-1),
        )
    raise TypeError(
        f"{name}: components must be Independent(Normal, 1), "
        "MultivariateNormal or (1-D) Normal, "
        f"got {type(comp).__name__}"
        + (
            f"({type(comp.base_dist).__name__})"
            if isinstance(comp, Independent)
            else ""
        )
    )


def _check_scale(name: str, scale: torch.Tensor, what: str) -> None:
    if not torch.isfinite(scale).all() or not (scale > 0).all():
        raise ValueError(f"{name}: component {what} must be finite and > 0")


def _mixture(name: str, mix) -> tuple[torch.Tensor, _Comps]:
    """(log weights (..., K), components) of a MixtureSameFamily, validated."""
    if not isinstance(mix, MixtureSameFamily):
        raise TypeError(
            f"{name} must be a torch.distributions.MixtureSameFamily, got "
            f"{type(mix).__name__}"
        )
    comps = _components(name, mix.component_distribution)
    logits = mix.mixture_distribution.logits  # normalised log-probabilities
    if logits.shape[-1] < 1 or comps.dim < 1:
        raise ValueError(
            f"{name} is an empty mixture ({logits.shape[-1]} components of "
            f"dimension {comps.dim}): "
            f"kl_gmm needs K >= 1 components and event dimension D >= 1"
        )
    if logits.numel() == 0:
        raise ValueError(
            f"{name} has an empty batch shape {tuple(logits.shape[:-1])}: "
            "kl_gmm needs every batch "
            f"dimension >= 1 (at least one mixture)"
        )
    if torch.isnan(logits).any():
        raise ValueError(f"{name}: mixture weights contain NaN")
    log_w = torch.log_softmax(logits, -1)
    if not torch.isfinite(comps.loc).all():
        raise ValueError(f"{name}: component means must be finite")
    return log_w, comps


def _prepare(q, p):
    log_pi, fq = _mixture("q", q)
    log_om, gp = _mixture("p", p)
    if fq.dim != gp.dim:
        raise ValueError(
            f"q and p must have the same event dimension, got q: {fq.dim}, p: "
            f"{gp.dim}"
        )
    try:
        batch = torch.broadcast_shapes(log_pi.shape[:-1], log_om.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"the batch shapes of q {tuple(log_pi.shape[:-1])} and p "
            f"{tuple(log_om.shape[:-1])} "
            f"do not broadcast"
        ) from None
    if fq.loc.device != gp.loc.device:
        raise ValueError(
            f"q and p must be on the same device, got {fq.loc.device} and "
            f"{gp.loc.device}"
        )
    dtype = torch.promote_types(fq.loc.dtype, gp.loc.dtype)
    fq, gp = fq.cast(dtype), gp.cast(dtype)
    log_pi, log_om = log_pi.to(dtype), log_om.to(dtype)
    if fq.diag != gp.diag:
        fq, gp = fq.to_full(), gp.to_full()
    return log_pi, fq, log_om, gp, batch


# -----------------------------------------------------------------------------
# Closed-form pairwise quantities
# -----------------------------------------------------------------------------
def _pairwise_kl(f: _Comps, g: _Comps) -> torch.Tensor:
    """D(f_a || g_b) for all pairs: (..., A, B)."""
    if f.diag and g.diag:
        lva, lvb = (
            f.log_var.unsqueeze(-2),
            g.log_var.unsqueeze(-3),
        )  # (..., A, 1, d), (..., 1, B, d)
        dlv = lva - lvb
        sq = _sq_over_var(
            f.loc.unsqueeze(-2) - g.loc.unsqueeze(-3), lvb
        )  # no 0 * inf at tiny variances
        return 0.5 * (torch.expm1(dlv) - dlv + sq).sum(-1)
    f, g = f.to_full(), g.to_full()
    d = f.dim
    la, lb = (
        f.tril.unsqueeze(-3),
        g.tril.unsqueeze(-4),
    )  # (..., A, 1, d, d), (..., 1, B, d, d)
    shape = torch.broadcast_shapes(la.shape, lb.shape)
    la, lb = la.expand(shape), lb.expand(shape)
    diff = (
        (g.loc.unsqueeze(-3) - f.loc.unsqueeze(-2))
        .expand(shape[:-1])
        .unsqueeze(-1)
    )
    a = torch.linalg.solve_triangular(lb, la, upper=False)
    b = torch.linalg.solve_triangular(lb, diff, upper=False)
    logdet_a = torch.log(torch.diagonal(la, dim1=-2, dim2=-1)).sum(-1)
    logdet_b = torch.log(torch.diagonal(lb, dim1=-2, dim2=-1)).sum(-1)
    return (
        0.5 * (a.pow(2).sum((-1, -2)) + b.pow(2).sum((-1, -2)) - d)
        + logdet_b
        - logdet_a
    )


def _pairwise_log_overlap(f: _Comps, g: _Comps) -> torch.Tensor:
    r"""log \int f_a g_b dx = log N(mu_a; nu_b, Sigma_a + Lambda_b): (..., A, B)."""
    if f.diag and g.diag:
        s = f.var.unsqueeze(-2) + g.var.unsqueeze(-3)
        sq = (f.loc.unsqueeze(-2) - g.loc.unsqueeze(-3)).pow(2)
        return -0.5 * (_LOG_2PI + torch.log(s) + sq / s).sum(-1)
    f, g = f.to_full(), g.to_full()
    s = f.cov().unsqueeze(-3) + g.cov().unsqueeze(-4)
    chol = torch.linalg.cholesky(s)
    diff = (
        (f.loc.unsqueeze(-2) - g.loc.unsqueeze(-3))
        .expand(s.shape[:-1])
        .unsqueeze(-1)
    )
    z = torch.linalg.solve_triangular(chol, diff, upper=False)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (f.dim * _LOG_2PI + logdet + z.pow(2).sum((-1, -2)))


def _component_log_prob(c: _Comps, x: torch.Tensor) -> torch.Tensor:
    """log N(x_n; mu_k, Sigma_k) for points x (..., N, d): (..., N, K)."""
    if c.diag:
        z = (x.unsqueeze(-2) - c.loc.unsqueeze(-3)) * torch.exp(
            -0.5 * c.log_var
        ).unsqueeze(-3)  # (..., N, K, d)
        const = -0.5 * (c.dim * _LOG_2PI + c.log_var.sum(-1))  # (..., K)
        return const.unsqueeze(-2) - 0.5 * z.pow(2).sum(-1)
    diff = x.unsqueeze(-3).transpose(-1, -2) - c.loc.unsqueeze(
        -1
    )  # (..., K, d, N)
    shape = torch.broadcast_shapes(diff.shape[:-2], c.tril.shape[:-2])
    z = torch.linalg.solve_triangular(
        c.tril.expand(*shape, c.dim, c.dim),
        diff.expand(*shape, *diff.shape[-2:]),
        upper=False,
    )
    maha = z.pow(2).sum(-2)  # (..., K, N)
    return (
        -0.5 * (c.dim * _LOG_2PI + maha) - 0.5 * c.logdet().unsqueeze(-1)
    ).transpose(-1, -2)


def _mixture_log_prob(
    log_w: torch.Tensor, c: _Comps, x: torch.Tensor
) -> torch.Tensor:
    """log sum_k w_k N(x_n; mu_k, Sigma_k) for x (..., N, d): (..., N)."""
    return torch.logsumexp(log_w.unsqueeze(-2) + _component_log_prob(c, x), -1)


def _wsum(log_w: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """sum_a w_a terms_a with 0 * anything = 0 for zero-weight components."""
    w = log_w.exp()
    return torch.where(w > 0, w * terms, torch.zeros_like(terms)).sum(-1)


def _as_components(name: str, d) -> _Comps:
    if isinstance(d, MixtureSameFamily):
        d = d.component_distribution
    return _components(name, d)


def pairwise_kl(q_components, p_components) -> torch.Tensor:
    r"""Closed-form :math:`D(f_a\|g_b)` for every pair of components: ``(..., A, B)``.

    Args:
        q_components, p_components: component distributions with batch shapes ``(..., A)`` and ``(..., B)``
            (``Independent(Normal, 1)``, ``MultivariateNormal`` or ``Normal``), or mixtures, whose components are used.
            Diagonal pairs use the closed form of Chapter 1 (written with ``expm1`` so it is exactly 0 on the
            diagonal of ``pairwise_kl(f, f)``); otherwise Cholesky factors and triangular solves.
    """
    f, g = (
        _as_components("q_components", q_components),
        _as_components("p_components", p_components),
    )
    if f.dim != g.dim:
        raise ValueError(
            "q_components and p_components must have the same event "
            f"dimension, got {f.dim} and {g.dim}"
        )
    if f.diag != g.diag:
        f, g = f.to_full(), g.to_full()
    return _pairwise_kl(f, g)


def log_overlaps(q_components, p_components) -> torch.Tensor:
    r"""Log overlaps :math:`\log t_{ab}=\log\int f_ag_b\,dx=\log\mathcal N(\mu_a;\nu_b,\Sigma_a+\Lambda_b)`: ``(..., A, B)``.

    Used by the product-of-Gaussians approximation and the Durrieu bounds. Arguments as in :func:`pairwise_kl`.
    """
    f, g = (
        _as_components("q_components", q_components),
        _as_components("p_components", p_components),
    )
    if f.dim != g.dim:
        raise ValueError(
            "q_components and p_components must have the same event "
            f"dimension, got {f.dim} and {g.dim}"
        )
    if f.diag != g.diag:
        f, g = f.to_full(), g.to_full()
    return _pairwise_log_overlap(f, g)


def log_responsibilities(
    mixture: MixtureSameFamily, x: torch.Tensor
) -> torch.Tensor:
    r"""Log component posteriors :math:`\log f(a\mid x)=\log\pi_af_a(x)-\log f(x)`: ``x.shape[:-event] + (K,)``.

    ``x`` follows the ``torch.distributions`` convention: shape ``sample_shape + batch_shape + event_shape``.
    These are the responsibilities in the exact gap of the matched bound,
    :math:`D^\sigma_{\mathrm{match}}-D=\mathbb E_{x\sim f}\,\mathrm{KL}(f(a|x)\,\|\,g_\sigma(a|x))`.
    """
    if not isinstance(mixture, MixtureSameFamily):
        raise TypeError(
            "mixture must be a torch.distributions.MixtureSameFamily, got "
            f"{type(mixture).__name__}"
        )
    x = torch.as_tensor(x)
    ev = len(mixture.event_shape)
    lp = mixture.component_distribution.log_prob(x.unsqueeze(-1 - ev))
    return torch.log_softmax(
        lp + torch.log_softmax(mixture.mixture_distribution.logits, -1), -1
    )


# -----------------------------------------------------------------------------
# Methods
# -----------------------------------------------------------------------------
def _kl_gaussian(log_pi, f: _Comps, log_om, g: _Comps) -> torch.Tensor:
    def moments(log_w, c: _Comps):
        w = log_w.exp()
        mean = (w.unsqueeze(-1) * c.loc).sum(-2)
        dev = c.loc - mean.unsqueeze(-2)
        cov = (
            w[..., None, None]
            * (c.cov() + dev.unsqueeze(-1) * dev.unsqueeze(-2))
        ).sum(-3)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        return mean, cov

    mf, sf = moments(log_pi, f)
    mg, sg = moments(log_om, g)
    one_f = _Comps(
        mf.unsqueeze(-2), False, tril=torch.linalg.cholesky(sf).unsqueeze(-3)
    )
    one_g = _Comps(
        mg.unsqueeze(-2), False, tril=torch.linalg.cholesky(sg).unsqueeze(-3)
    )
    return _pairwise_kl(one_f, one_g)[..., 0, 0]


def _kl_product(log_pi, f, log_om, g) -> torch.Tensor:
    num = torch.logsumexp(
        log_pi.unsqueeze(-2) + _pairwise_log_overlap(f, f), -1
    )
    den = torch.logsumexp(
        log_om.unsqueeze(-2) + _pairwise_log_overlap(f, g), -1
    )
    return _wsum(log_pi, num - den)


def _kl_variational(log_pi, f, log_om, g) -> torch.Tensor:
    num = torch.logsumexp(log_pi.unsqueeze(-2) - _pairwise_kl(f, f), -1)
    den = torch.logsumexp(log_om.unsqueeze(-2) - _pairwise_kl(f, g), -1)
    return _wsum(log_pi, num - den)


def _matched_value(log_pi, log_om_perm, d_perm) -> torch.Tensor:
    # sum_a pi_a [D(f_a||g_s(a)) + log pi_a - log w_s(a)]; a zero-weight
    # a contributes 0.
    return _wsum(log_pi, d_perm + log_pi - log_om_perm)


def _check_k(log_pi, log_om, method):
    if log_pi.shape[-1] != log_om.shape[-1]:
        raise ValueError(
            f"method={method!r} needs q and p with the same number of "
            "components (a one-to-one "
            f"matching), got q: {log_pi.shape[-1]}, p: {log_om.shape[-1]}; "
            "use "
            f"method='variational_upper', which needs no matching"
        )


def _assign(cost: torch.Tensor) -> torch.Tensor:
    """Minimum-cost permutation for each (K, K) matrix of ``cost`` (..., K, K): (..., K) long, perm[a] = b."""
    k = cost.shape[-1]
    c = cost.detach().to(torch.float64)
    if torch.isnan(c).any():
        raise ValueError(
            "the matching cost contains NaN (check the mixtures' parameters)"
        )
    finite = c[torch.isfinite(c)]
    big = (
        (finite.abs().max().item() + 1.0) * 1e6 * k if finite.numel() else 1.0
    )
    c = torch.nan_to_num(c, posinf=big, neginf=-big)
    flat = c.reshape(-1, k, k)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy is in the test/book extras
        linear_sum_assignment = None
    if linear_sum_assignment is not None:
        arr = flat.cpu().numpy()
        perms = [torch.as_tensor(linear_sum_assignment(m)[1]) for m in arr]
        out = (
            torch.stack(perms)
            if perms
            else torch.empty(0, k, dtype=torch.long)
        )
    else:  # pragma: no cover
        if k > 8:
            raise ValueError(
                "matching='optimal' with more than 8 components needs scipy "
                "(linear_sum_assignment)"
            )
        all_p = torch.tensor(
            list(itertools.permutations(range(k))), dtype=torch.long
        )  # (P, K)
        tot = flat[:, torch.arange(k), all_p].sum(-1)  # (N, P)
        out = all_p[tot.argmin(-1)]
    return out.reshape(cost.shape[:-1]).to(
        device=cost.device, dtype=torch.long
    )


# : elements of the largest ``(rows, ..., K, d)`` intermediate of one chunk
# of the matched bound (8 MB in float64)
_MATCHED_CHUNK = 1 << 20


def _aligned_kl(f: _Comps, g: _Comps) -> torch.Tensor:
    r""":math:`D(f_a\|g_a)` for aligned components, ``(..., K)``: the diagonal of :func:`_pairwise_kl` computed
    with the same operations (the same numbers) without its ``K x K`` matrix."""
    if f.diag and g.diag:
        dlv = f.log_var - g.log_var
        sq = _sq_over_var(f.loc - g.loc, g.log_var)
        return 0.5 * (torch.expm1(dlv) - dlv + sq).sum(-1)
    f, g = f.to_full(), g.to_full()
    d = f.dim
    shape = torch.broadcast_shapes(f.tril.shape, g.tril.shape)
    la, lb = f.tril.expand(shape), g.tril.expand(shape)
    diff = (g.loc - f.loc).expand(shape[:-1]).unsqueeze(-1)
    a = torch.linalg.solve_triangular(lb, la, upper=False)
    b = torch.linalg.solve_triangular(lb, diff, upper=False)
    logdet_a = torch.log(torch.diagonal(la, dim1=-2, dim2=-1)).sum(-1)
    logdet_b = torch.log(torch.diagonal(lb, dim1=-2, dim2=-1)).sum(-1)
    return (
        0.5 * (a.pow(2).sum((-1, -2)) + b.pow(2).sum((-1, -2)) - d)
        + logdet_b
        - logdet_a
    )


def _rows(t: torch.Tensor | None, event: int, nb: int, i0: int, i1: int):
    """Rows ``i0:i1`` of the leading batch dimension of ``t`` (``event`` trailing non-batch dimensions, ``nb``
    batch dimensions in the broadcast batch); a tensor that broadcasts along that dimension is returned whole."""
    if t is None or nb == 0 or t.dim() - event != nb or t.shape[0] == 1:
        return t
    return t[i0:i1]


def _comps_rows(c: _Comps, nb: int, i0: int, i1: int) -> _Comps:
    return _Comps(
        _rows(c.loc, 2, nb, i0, i1),
        c.diag,
        _rows(c.log_var, 2, nb, i0, i1),
        _rows(c.tril, 3, nb, i0, i1),
    )


def _gather_comps(c: _Comps, perm: torch.Tensor, batch) -> _Comps:
    """Components reordered by ``perm`` (``batch + (K,)``): component ``a`` of the result is ``perm[..., a]``."""
    k, d = c.loc.shape[-2], c.dim
    idx = perm.unsqueeze(-1).expand(*batch, k, d)
    if c.diag:
        return _Comps(
            c.loc.expand(*batch, k, d).gather(-2, idx),
            True,
            log_var=c.log_var.expand(*batch, k, d).gather(-2, idx),
        )
    idx3 = perm[..., None, None].expand(*batch, k, d, d)
    return _Comps(
        c.loc.expand(*batch, k, d).gather(-2, idx),
        False,
        tril=c.tril.expand(*batch, k, d, d).gather(-3, idx3),
    )


def _matched_chunks(batch, per_row: int):
    """``(i0, i1)`` ranges of the leading batch dimension such that one chunk holds about :data:`_MATCHED_CHUNK`
    elements of a ``per_row``-sized intermediate; one range when the batch is small (or empty)."""
    rows = batch[0] if len(batch) else 1
    step = max(1, _MATCHED_CHUNK // max(1, per_row * math.prod(batch[1:])))
    return (
        [(i, min(i + step, rows)) for i in range(0, rows, step)]
        if len(batch) and rows > step
        else [(0, rows)]
    )


def _kl_matched(
    log_pi, f, log_om, g, batch, matching="given", return_matching=False
):
    _check_k(log_pi, log_om, "matched")
    k = log_pi.shape[-1]
    nb = len(batch)
    pair_elems = f.dim * (1 if f.diag and g.diag else f.dim)
    if isinstance(matching, str):
        if matching not in ("given", "optimal"):
            raise ValueError(
                "matching must be 'given', 'optimal' or a permutation "
                f"tensor, got {matching!r}"
            )
        perm = None
        if matching == "optimal":
            # the cost needs every pair D(f_a || g_b): (rows, K,
            # K, d) per chunk, without autograd (the optimal
            # matching is piecewise constant; the bound is
            # differentiated at it below)
            perms = []
            with torch.no_grad():
                for i0, i1 in _matched_chunks(batch, k * k * pair_elems):
                    lp, lo = (
                        _rows(log_pi, 1, nb, i0, i1),
                        _rows(log_om, 1, nb, i0, i1),
                    )
                    bc = (i1 - i0, *batch[1:]) if nb else ()
                    d = _pairwise_kl(
                        _comps_rows(f, nb, i0, i1), _comps_rows(g, nb, i0, i1)
                    ).expand(*bc, k, k)
                    lp, lo = lp.expand(*bc, k), lo.expand(*bc, k)
                    w = lp.exp().unsqueeze(-1)
                    terms = d + lp.unsqueeze(-1) - lo.unsqueeze(-2)
                    perms.append(
                        _assign(
                            torch.where(
                                w > 0, w * terms, torch.zeros_like(terms)
                            )
                        )
                    )
            perm = torch.cat(perms, 0) if nb else perms[0]
    else:
        perm = torch.as_tensor(matching, device=log_pi.device)
        if perm.dtype not in (
            torch.int64,
            torch.int32,
            torch.int16,
            torch.int8,
            torch.uint8,
        ):
            raise ValueError(
                f"matching must be an integer tensor of shape (..., {k}), got "
                f"dtype {perm.dtype}"
            )
        perm = perm.long()
        if perm.dim() == 0 or perm.shape[-1] != k:
            raise ValueError(
                f"matching must have last dimension K={k}, got shape "
                f"{tuple(perm.shape)}"
            )
        if not torch.equal(
            perm.sort(-1).values,
            torch.arange(k, device=perm.device).expand_as(perm),
        ):
            raise ValueError(
                "matching must be a permutation of 0..K-1 along its last "
                "dimension"
            )
        try:
            perm = perm.expand(*batch, k)
        except RuntimeError:
            raise ValueError(
                f"matching of shape {tuple(perm.shape)} does not broadcast to "
                "the batch "
                f"shape {tuple(batch)}"
            ) from None
    # The bound itself needs only the matched pairs D(f_a || g_perm(a)),
    # computed in chunks of rows so that the
    # reference's memory stays a small multiple of its inputs whatever
    # the batch (B = 100,000, K = 10, d = 16 in
    # the benchmark); every operation is per row, so the chunks give the
    # same numbers as one pass.
    vals = []
    for i0, i1 in _matched_chunks(batch, k * pair_elems):
        bc = (i1 - i0, *batch[1:]) if nb else ()
        lp, lo = (
            _rows(log_pi, 1, nb, i0, i1).expand(*bc, k),
            _rows(log_om, 1, nb, i0, i1).expand(*bc, k),
        )
        fc, gc = _comps_rows(f, nb, i0, i1), _comps_rows(g, nb, i0, i1)
        if perm is not None:
            pc = perm[i0:i1] if nb else perm
            gc, lo = _gather_comps(gc, pc, bc), lo.gather(-1, pc)
        vals.append(_matched_value(lp, lo, _aligned_kl(fc, gc).expand(*bc, k)))
    val = torch.cat(vals, 0) if nb else vals[0]
    if return_matching:
        if perm is None:
            perm = torch.arange(k, device=log_pi.device).expand(*batch, k)
        return val, perm
    return val


def _kl_goldberger(log_pi, f, log_om, g) -> torch.Tensor:
    d = _pairwise_kl(f, g)
    sc = d - log_om.unsqueeze(-2)
    m = sc.argmin(-1, keepdim=True)  # (..., A, 1), may be many-to-one
    shape = torch.broadcast_shapes(sc.shape[:-1], log_pi.shape)
    return _wsum(
        log_pi,
        sc.expand(*shape, sc.shape[-1])
        .gather(-1, m.expand(*shape, 1))
        .squeeze(-1)
        + log_pi,
    )


def _kl_min_pair(log_pi, f, log_om, g) -> torch.Tensor:
    return _pairwise_kl(f, g).flatten(-2).min(-1).values


def _vub_value(log_pi, log_om, log_r, d):
    """min over psi of the VUB objective for phi_ab = pi_a r_ab: KL(Phi || omega) + sum_ab phi_ab D_ab."""
    log_phi = log_pi.unsqueeze(-1) + log_r
    log_cap = torch.logsumexp(log_phi, -2)  # log Phi_b, (..., B)
    cap = log_cap.exp()
    kl_w = torch.where(
        cap > 0, cap * (log_cap - log_om), torch.zeros_like(cap)
    ).sum(-1)
    phi = log_phi.exp()
    lin = torch.where(phi > 0, phi * d, torch.zeros_like(d)).sum((-1, -2))
    return kl_w + lin


def _kl_variational_upper(
    log_pi,
    f,
    log_om,
    g,
    batch,
    num_iters=50,
    tol=1e-12,
    unroll=False,
    return_history=False,
):
    check_int("num_iters", num_iters, 0)
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    d = _pairwise_kl(f, g)  # (..., A, B)
    a_, b_ = log_pi.shape[-1], log_om.shape[-1]
    log_pi = log_pi.expand(*batch, a_)
    log_om = log_om.expand(*batch, b_)
    d = d.expand(*batch, a_, b_)
    om_zero = torch.isneginf(log_om).unsqueeze(-2)
    history = []
    with torch.set_grad_enabled(torch.is_grad_enabled() and unroll):
        dd = d if unroll else d.detach()
        lp = log_pi if unroll else log_pi.detach()
        lo = log_om if unroll else log_om.detach()
        # r_{b|a} = phi_{b|a} / pi_a, initialised at omega_b (phi =
        # pi_a omega_b: the convexity bound).
        log_r = lo.unsqueeze(-2).expand(*batch, a_, b_)
        prev = _vub_value(lp, lo, log_r, dd)
        if return_history:
            history.append(prev)
        for _ in range(num_iters):
            # psi_{a|b} = omega_b phi_{b|a} / Phi_b (Eq. 23),
            # then phi_{b|a} ∝ psi_{a|b} exp(-D_ab) (Eq. 24),
            # written for r: log r_ab <- log r_ab + log omega_b -
            # log Phi_b - D_ab, normalised over b.
            log_cap = torch.logsumexp(lp.unsqueeze(-1) + log_r, -2).unsqueeze(
                -2
            )
            shift = torch.where(
                om_zero, torch.zeros_like(log_cap), lo.unsqueeze(-2) - log_cap
            )
            log_r = torch.log_softmax(log_r + shift - dd, -1)
            cur = _vub_value(lp, lo, log_r, dd)
            if return_history:
                history.append(cur)
            done = tol > 0 and bool(((prev - cur).abs() <= tol).all())
            prev = cur
            if done:
                break
    # A valid bound for any fixed r: with r detached, the gradient is the
    # envelope gradient at the final iterate.
    val = _vub_value(log_pi, log_om, log_r if unroll else log_r.detach(), d)
    if return_history:
        hist = torch.stack(history)
        return val, (hist if unroll else hist.detach())
    return val


def _kl_unscented(log_pi, f, log_om, g, sigma_points="eigh"):
    if sigma_points not in ("eigh", "cholesky"):
        raise ValueError(
            f"sigma_points must be 'eigh' or 'cholesky', got {sigma_points!r}"
        )
    d = f.dim
    if f.diag:
        offsets = torch.diag_embed(
            torch.exp(0.5 * f.log_var) * math.sqrt(d)
        )  # (..., A, d, d), row k = offset k
    elif sigma_points == "eigh":
        lam, u = torch.linalg.eigh(f.cov())
        offsets = (
            u * torch.sqrt(d * lam.clamp_min(0.0)).unsqueeze(-2)
        ).transpose(-1, -2)
    else:
        offsets = f.tril.transpose(-1, -2) * math.sqrt(d)
    pts = f.loc.unsqueeze(-2) + torch.cat(
        [offsets, -offsets], -2
    )  # (..., A, 2d, d)
    a_ = pts.shape[-3]
    flat = pts.reshape(*pts.shape[:-3], a_ * 2 * d, d)
    ratio = _mixture_log_prob(log_pi, f, flat) - _mixture_log_prob(
        log_om, g, flat
    )
    ratio = ratio.reshape(*ratio.shape[:-1], a_, 2 * d).mean(-1)
    shape = torch.broadcast_shapes(ratio.shape, log_pi.shape)
    return _wsum(log_pi.expand(shape), ratio.expand(shape))


def _kl_mc(
    log_pi,
    f,
    log_om,
    g,
    batch,
    num_samples=10_000,
    generator=None,
    seed=None,
    return_stderr=False,
):
    check_int("num_samples", num_samples)
    if return_stderr and num_samples < 2:
        raise ValueError("num_samples must be >= 2 for return_stderr=True")
    if generator is not None and seed is not None:
        raise ValueError("give at most one of generator and seed")
    if seed is not None:
        check_int("seed", seed, 0)
        generator = torch.Generator(device=f.loc.device)
        generator.manual_seed(seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a torch.Generator, got "
            f"{type(generator).__name__}"
        )
    dtype, dev, d = f.loc.dtype, f.loc.device, f.dim
    k = log_pi.shape[-1]
    nb = math.prod(batch)
    cdf = (
        torch.cumsum(log_pi.detach().exp(), -1).expand(*batch, k).contiguous()
    )
    loc = f.loc.expand(*batch, k, d)
    scale = (
        torch.exp(0.5 * f.log_var).expand(*batch, k, d)
        if f.diag
        else f.tril.expand(*batch, k, d, d)
    )
    chunk = max(
        1,
        min(
            num_samples,
            (1 << 22)
            // max(
                1, nb * max(k, log_om.shape[-1]) * d * (d if not f.diag else 1)
            ),
        ),
    )
    count, mean, m2 = 0, None, None
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        u = torch.rand(*batch, n, generator=generator, dtype=dtype, device=dev)
        idx = torch.searchsorted(cdf, u, right=True).clamp_max(
            k - 1
        )  # (*batch, n)
        eps = torch.randn(
            *batch, n, d, generator=generator, dtype=dtype, device=dev
        )
        mu = loc.gather(-2, idx.unsqueeze(-1).expand(*batch, n, d))
        if f.diag:
            x = (
                mu
                + scale.gather(-2, idx.unsqueeze(-1).expand(*batch, n, d))
                * eps
            )
        else:
            l_ = scale.gather(-3, idx[..., None, None].expand(*batch, n, d, d))
            x = mu + (l_ @ eps.unsqueeze(-1)).squeeze(-1)
        r = _mixture_log_prob(log_pi, f, x) - _mixture_log_prob(
            log_om, g, x
        )  # (*batch, n)
        mc, m2c = r.mean(-1), (r - r.mean(-1, keepdim=True)).pow(2).sum(-1)
        if mean is None:
            mean, m2 = mc, m2c
        # Chan et al.'s pairwise combination of means and sums of
        # squares
        else:
            tot = count + n
            delta = mc - mean
            mean = mean + delta * (n / tot)
            m2 = m2 + m2c + delta.pow(2) * (count * n / tot)
        count += n
        done += n
    if return_stderr:
        return mean, torch.sqrt(m2 / (count - 1) / count)
    return mean


def kl_gmm(
    q: MixtureSameFamily,
    p: MixtureSameFamily,
    method: str = "mc",
    *,
    backend: str = "auto",
    **options,
):
    r"""KL divergence :math:`D(q\|p)` between two Gaussian mixtures, estimated, approximated or bounded.

    Args:
        q, p: ``torch.distributions.MixtureSameFamily`` with ``Independent(Normal, 1)`` (diagonal),
            ``MultivariateNormal`` (full) or, for 1-D mixtures, ``Normal`` components; same event dimension;
            batch shapes broadcast. Numbers of components may differ except for ``"matched"``.
        method: one of :data:`METHODS` (see the module docstring for formulas and which ones are bounds):

            * ``"mc"`` -- Monte Carlo with samples from ``q`` (unbiased; can be negative). Options:
              ``num_samples`` (default 10,000), ``seed`` (int) or ``generator`` (``torch.Generator``) for
              reproducibility (default: torch's global RNG), ``return_stderr`` (default ``False``; if ``True``
              returns ``(estimate, standard_error)``). Samples are drawn in chunks so memory stays bounded.
              Gradients: the component index is sampled (not reparameterisable), the Gaussian noise is
              reparameterised, so gradients with respect to component means and scales are unbiased, but the
              mixture weights only receive their direct (pathwise-free) dependence: biased. Use a closed-form
              method for gradients through weights.
            * ``"gaussian"`` -- KL between the moment-matched single Gaussians (exact when K = 1; poor otherwise).
            * ``"product"`` -- product-of-Gaussians approximation (Jensen on both terms). Zero for ``q == p``,
              **not** exact for single Gaussians, not a bound.
            * ``"matched"`` -- the matched bound :math:`\sum_a\pi_a[D(f_a\|g_{\sigma(a)})+\log\pi_a/\omega_{\sigma(a)}]`,
              an **upper bound for every bijection** :math:`\sigma` (needs equal component counts). Options:
              ``matching="given"`` (default: component ``a`` of ``q`` with component ``a`` of ``p``), ``"optimal"``
              (the best bijection: Hungarian algorithm on :math:`C_{ab}=\pi_a[D_{ab}+\log\pi_a-\log\omega_b]`,
              exact for this linear assignment; one ``scipy.optimize.linear_sum_assignment`` per batch element,
              exhaustive search over permutations for K <= 8 when scipy is missing), or an integer tensor
              ``(..., K)`` holding a permutation; ``return_matching`` (default ``False``; if ``True`` returns
              ``(value, perm)`` with ``perm[..., a]`` the component of ``p`` matched to component ``a`` of ``q``).
              Differentiable for a fixed matching (the optimal matching itself is piecewise constant).
              The exact gap is :math:`\mathbb E_{x\sim q}\mathrm{KL}(q(a|x)\|p_\sigma(a|x))` (see
              :func:`log_responsibilities`).
            * ``"variational"`` -- Hershey & Olsen's variational approximation; exact for K = 1, zero for
              ``q == p``, not a bound (can be negative).
            * ``"variational_upper"`` -- the variational upper bound, minimised by alternating exact updates
              (H&O Eqs. 23-24) in log space from :math:`\phi_{b|a}=\pi_a\omega_b` (the convexity bound
              :math:`\sum_{ab}\pi_a\omega_bD_{ab}`). The value reported after each iteration is the objective with
              :math:`\psi` optimal for the current :math:`\phi`,
              :math:`\mathrm{KL}(\Phi\|\omega)+\sum_{ab}\phi_{b|a}D_{ab}` with :math:`\Phi_b=\sum_a\phi_{b|a}`,
              which is finite even when component KLs are in the thousands. Every iterate is an upper bound and
              the sequence decreases monotonically to :math:`\min_{\phi,\psi}` (a convex problem), which is
              :math:`\le` the matched bound for every bijection. A hard matching is a fixed point of the updates
              (zeros stay zero), which is why the iteration starts from the interior, not from the matched bound.
              Options: ``num_iters`` (default 50), ``tol`` (default 1e-12: stop when no batch element decreased by
              more than ``tol``; 0 runs all iterations), ``unroll`` (default ``False``: iterate without autograd and
              differentiate the bound at the final :math:`\phi`, i.e. the envelope gradient -- still the exact
              gradient of a valid bound; ``True`` backpropagates through every iteration), ``return_history``
              (``True`` returns ``(value, history)`` with ``history[n]`` the bound after ``n`` iterations,
              ``history[0]`` the convexity bound).
            * ``"unscented"`` -- unscented transform with :math:`2d` sigma points
              :math:`\mu_a\pm\sqrt{d\lambda_{a,k}}u_{a,k}` per component of ``q``; exact for K = 1, not a bound.
              Option ``sigma_points="eigh"`` (default, H&O's eigendecomposition) or ``"cholesky"``
              (:math:`\mu_a\pm\sqrt d\,L_{a,:,k}`; also matches mean and covariance, and its gradient exists for
              repeated eigenvalues, where ``eigh``'s does not). Diagonal components use the axes directly.
            * ``"goldberger"`` -- matched bound with Goldberger's per-component argmin matching
              :math:`m(a)=\arg\min_b D_{ab}-\log\omega_b` (may be many-to-one: **not** a bound in general).
            * ``"min_pair"`` -- :math:`\min_{a,b}D(f_a\|g_b)`, ignores the weights.
        backend: ``"auto"`` (default), ``"torch"`` or ``"triton"``, the rule of :mod:`vaebook.kernels`: the matched
            bound with ``matching="given"`` between diagonal mixtures (the KL term of the mixture VAE) runs the fused
            Triton kernel :func:`vaebook.kernels.matched_kl` on CUDA tensors by default; everything else, and every
            CPU tensor under ``"auto"``, runs the PyTorch code here. ``"triton"`` for another method, matching or
            component family is a ``ValueError``.

    Returns:
        Tensor of the broadcast batch shape (or a tuple, for the ``return_*`` options above).

    Raises:
        TypeError: ``q``/``p`` is not a ``MixtureSameFamily`` of supported Gaussian components, or an option is not
            one of the chosen method's options.
        ValueError: unknown ``method``, different event dimensions, non-broadcastable batch shapes, non-positive
            or non-finite scales, different component counts for ``"matched"``, invalid option values.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"method must be one of {', '.join(repr(m) for m in METHODS)}; "
            f"got {method!r}"
        )
    unknown = set(options) - _OPTIONS[method]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[method])) or "none"
        raise TypeError(
            f"kl_gmm(method={method!r}) got unexpected option(s) "
            f"{', '.join(sorted(unknown))}; "
            f"its options are: {allowed}"
        )
    from . import kernels

    kernels._check_backend(backend)
    if backend == "triton" and method != "matched":
        raise ValueError(
            "backend='triton' has a kernel for method='matched' only, got "
            f"method={method!r}; use "
            f"backend='torch' or 'auto'"
        )
    log_pi, f, log_om, g, batch = _prepare(q, p)
    if method == "mc":
        return _kl_mc(log_pi, f, log_om, g, batch, **options)
    if method == "matched":
        _check_k(log_pi, log_om, "matched")
        matching = options.get("matching", "given")
        kernel_ok = (
            f.diag
            and g.diag
            and isinstance(matching, str)
            and matching == "given"
        )
        if backend == "triton" and not kernel_ok:
            raise ValueError(
                "backend='triton' runs the matched bound between mixtures of "
                "diagonal Gaussians with "
                "matching='given' only; use backend='torch' or 'auto' for "
                "full covariances or another "
                "matching"
            )
        if (
            kernel_ok
            and kernels.resolve_backend(backend, log_pi, f.loc, log_om, g.loc)
            == "triton"
        ):
            val = kernels.matched_kl(
                log_pi,
                f.loc,
                f.log_var,
                log_om,
                g.loc,
                g.log_var,
                backend="triton",
            )
            if options.get("return_matching", False):
                return val, torch.arange(
                    log_pi.shape[-1], device=val.device
                ).expand(*batch, log_pi.shape[-1])
            return val
        return _kl_matched(log_pi, f, log_om, g, batch, **options)
    if method == "variational_upper":
        return _kl_variational_upper(log_pi, f, log_om, g, batch, **options)
    if method == "unscented":
        out = _kl_unscented(log_pi, f, log_om, g, **options)
    else:
        fn = {
            "gaussian": _kl_gaussian,
            "product": _kl_product,
            "variational": _kl_variational,
            "goldberger": _kl_goldberger,
            "min_pair": _kl_min_pair,
        }[method]
        out = fn(log_pi, f, log_om, g)
    return out.expand(batch)


def durrieu_bounds(
    q: MixtureSameFamily, p: MixtureSameFamily
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Closed-form two-sided bounds :math:`(\ell, u)` with :math:`\ell\le D(q\|p)\le u` (Durrieu, Thiran & Kelly 2012).

    From the two Jensen bounds :math:`L_{\mathrm{var}}(f,g)\le\mathbb E_f\log g\le L_{\mathrm{prod}}(f,g)`, with
    :math:`L_{\mathrm{var}}(f,g)=\sum_a\pi_a[\log\sum_b\omega_be^{-D_{ab}}-H(f_a)]` and
    :math:`L_{\mathrm{prod}}(f,g)=\sum_a\pi_a\log\sum_b\omega_bt_{ab}`:
    :math:`\ell=L_{\mathrm{var}}(f,f)-L_{\mathrm{prod}}(f,g)` and :math:`u=L_{\mathrm{prod}}(f,f)-L_{\mathrm{var}}(f,g)`.
    Both ``kl_gmm(..., "variational")`` and ``kl_gmm(..., "product")`` always lie in :math:`[\ell,u]`.
    """
    log_pi, f, log_om, g, batch = _prepare(q, p)
    h = f.entropy()

    def l_var(log_w, c):
        return _wsum(
            log_pi,
            torch.logsumexp(log_w.unsqueeze(-2) - _pairwise_kl(f, c), -1) - h,
        )

    def l_prod(log_w, c):
        return _wsum(
            log_pi,
            torch.logsumexp(
                log_w.unsqueeze(-2) + _pairwise_log_overlap(f, c), -1
            ),
        )

    lower = l_var(log_pi, f) - l_prod(log_om, g)
    upper = l_prod(log_pi, f) - l_var(log_om, g)
    return lower.expand(batch), upper.expand(batch)
