r"""The Invertible Gaussian Reparameterization, IGR (Chapter 4; Potapczynski, Loaiza-Ganem & Cunningham 2020).

An IGR sample on the :math:`K`-simplex is Gaussian noise in :math:`K-1` dimensions pushed through an invertible map:

.. math:: z=\mu+\sigma\odot\varepsilon,\ \varepsilon\sim\mathcal N(0,I_{K-1}),\qquad \lambda=h(z),\qquad
          x=\mathrm{softmax}_{++}(\lambda/\tau;\delta),

with :math:`\mathrm{softmax}_{++}(v;\delta)=\mathrm{softmax}(v_1,\dots,v_{K-1},\log\delta)` (Chapter 4, eq.
``ch04-softmaxpp``). The families differ only in :math:`h`:

* :class:`IGR` (IGR-I): :math:`h` is the identity;
* :class:`IGRStickBreaking` (IGR-SB): :math:`\lambda_k=z_k+\sum_{j>k}\mathrm{softplus}(z_j)`, the additive log-ratio
  of the stick-breaking point with :math:`\eta_k=\mathrm{sigmoid}(z_k)` (eq. ``ch04-sb-map``; unit Jacobian), with a
  truncation rule for countably infinite support (:func:`sb_truncation_level`, :meth:`IGRStickBreaking.truncate`);
* :class:`IGRPlanar` (IGR-Planar): :math:`h` is a stack of planar flows (:class:`PlanarFlow`).

Shapes follow ``torch.distributions``: ``loc`` and ``scale`` are ``(..., K-1)`` (broadcast together), the batch
shape is their leading shape broadcast with the temperature's shape, the event shape is ``(K,)``. The temperature
is a number or a tensor broadcastable to the batch shape (one temperature per distribution).

Every density is computed in log space: :meth:`IGR.rsample_log` returns :math:`\log x` and :meth:`IGR.log_prob_log`
takes it, so that samples and densities stay finite in float32 down to :math:`\tau=0.01`, where :math:`x` itself
has entries that underflow to exact zeros (:meth:`IGR.log_prob` of such an :math:`x` raises a clear error).

KL: when :math:`q` and :math:`p` share the map (same family, :math:`\tau`, :math:`\delta` and flow), the KL between
them equals the KL between their Gaussians, registered with ``torch.distributions.kl.register_kl``; otherwise there
is no closed form and :func:`igr_kl_mc` estimates it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from .divergences import kl_normal_diag
from .utils import check_int, check_number

__all__ = [
    "log_softmax_pp",
    "softmax_pp",
    "inverse_softmax_pp",
    "stick_breaking",
    "inverse_stick_breaking",
    "sb_map",
    "sb_map_inverse",
    "sb_truncation_level",
    "PlanarFlow",
    "IGR",
    "IGRStickBreaking",
    "IGRPlanar",
    "igr_limit_probs",
    "uniform_prior",
    "calibrate_uniform_prior",
    "igr_kl_mc",
]

_LOG_2PI = math.log(2 * math.pi)


# -----------------------------------------------------------------------------
# argument checks
# -----------------------------------------------------------------------------


def _floating(t, name: str, ref: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(t, bool) or (torch.is_tensor(t) and t.dtype == torch.bool):
        raise ValueError(
            f"{name} must be a real number or a floating tensor, got a bool"
        )
    if not (
        torch.is_tensor(t)
        or isinstance(t, numbers.Real)
        or isinstance(t, (list, tuple, np.ndarray))
    ):
        raise ValueError(
            f"{name} must be a number or a tensor, got {type(t).__name__}"
        )
    if ref is not None:
        return torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    t = torch.as_tensor(t)
    return t if torch.is_floating_point(t) else t.to(torch.get_default_dtype())


def _check_positive(t: torch.Tensor, name: str) -> None:
    d = t.detach()
    if not bool((torch.isfinite(d) & (d > 0)).all()):
        bad = d[~(torch.isfinite(d) & (d > 0))].flatten()[0].item()
        raise ValueError(
            f"{name} must be > 0 and finite (allowed range: 0 < {name} < "
            f"inf), got {bad!r}"
        )


def _check_loc_scale(loc, scale):
    loc = _floating(loc, "loc")
    if loc.dim() == 0:
        raise ValueError(
            "loc must have shape (..., K-1) with K-1 >= 1 (K >= 2 "
            "categories), got a scalar"
        )
    if loc.shape[-1] < 1:
        raise ValueError(
            "loc must have shape (..., K-1) with K-1 >= 1, got shape "
            f"{tuple(loc.shape)}"
        )
    if not bool(torch.isfinite(loc.detach()).all()):
        raise ValueError("loc must be finite (no NaN or inf)")
    scale = _floating(scale, "scale", loc)
    _check_positive(scale, "scale")
    try:
        shape = torch.broadcast_shapes(loc.shape, scale.shape)
    except RuntimeError:
        raise ValueError(
            f"scale must be broadcastable to loc's shape {tuple(loc.shape)} = "
            "(..., K-1), "
            f"got shape {tuple(scale.shape)}"
        ) from None
    if shape[-1] != loc.shape[-1]:
        raise ValueError(
            f"scale's last dimension must be 1 or K-1 = {loc.shape[-1]}, got "
            f"shape {tuple(scale.shape)}"
        )
    return loc.expand(shape), scale.expand(shape)


def _check_temperature(
    temperature, loc: torch.Tensor, name: str = "temperature"
) -> torch.Tensor:
    t = _floating(temperature, name, loc)
    _check_positive(t, name)
    try:
        torch.broadcast_shapes(t.shape, loc.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{name} must be a number or a tensor broadcastable to the batch "
            "shape "
            f"{tuple(loc.shape[:-1])} (loc.shape[:-1]), got shape "
            f"{tuple(t.shape)}"
        ) from None
    return t


def _check_delta(delta) -> float:
    check_number("delta", delta, 0.0, strict=True)
    return float(delta)


def _check_vector(t, name: str, min_size: int = 1) -> torch.Tensor:
    """A floating tensor of shape ``(..., n)`` with ``n >= min_size`` and finite entries, or a ``ValueError``."""
    t = _floating(t, name)
    if t.dim() == 0 or t.shape[-1] < min_size:
        raise ValueError(
            f"{name} must have shape (..., n) with n >= {min_size}, got shape "
            f"{tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return t


def _event(t: torch.Tensor) -> torch.Tensor:
    """A batch-shaped tensor with a trailing singleton, so that it broadcasts against ``(..., K-1)``."""
    return t.unsqueeze(-1) if t.dim() else t


# -----------------------------------------------------------------------------
# softmax++ and stick-breaking
# -----------------------------------------------------------------------------


def log_softmax_pp(v: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    r""":math:`\log\mathrm{softmax}_{++}(v;\delta)` (Chapter 4, eq. ``ch04-softmaxpp``), ``(..., K-1) -> (..., K)``.

    .. math:: \mathrm{softmax}_{++}(v;\delta)_k=\frac{e^{v_k}}{\sum_{j<K}e^{v_j}+\delta}\ (k<K),\qquad
              \mathrm{softmax}_{++}(v;\delta)_K=\frac{\delta}{\sum_{j<K}e^{v_j}+\delta},

    i.e. ``log_softmax`` of :math:`(v_1,\dots,v_{K-1},\log\delta)`: finite for any finite ``v``.
    """
    delta = _check_delta(delta)
    v = _check_vector(v, "v")
    last = torch.full_like(v[..., :1], math.log(delta))
    return torch.log_softmax(torch.cat([v, last], dim=-1), dim=-1)


def softmax_pp(v: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    r""":math:`\mathrm{softmax}_{++}(v;\delta)`, ``(..., K-1) -> (..., K)`` on the simplex (see :func:`log_softmax_pp`)."""
    return log_softmax_pp(v, delta).exp()


def inverse_softmax_pp(
    log_x: torch.Tensor, delta: float = 1.0
) -> torch.Tensor:
    r"""Inverse of :func:`softmax_pp` from :math:`\log x`: :math:`v_k=\log x_k-\log x_K+\log\delta`, ``(..., K) ->
    (..., K-1)`` (Chapter 4, eq. ``ch04-inverse``)."""
    delta = _check_delta(delta)
    log_x = _check_vector(log_x, "log_x", 2)
    return log_x[..., :-1] - log_x[..., -1:] + math.log(delta)


def stick_breaking(z: torch.Tensor) -> torch.Tensor:
    r"""Log stick pieces :math:`\log\pi`, ``(..., K-1) -> (..., K)``, from logits :math:`z` of the break fractions
    :math:`\eta_k=\mathrm{sigmoid}(z_k)`: :math:`\pi_k=\eta_k\prod_{j<k}(1-\eta_j)` for :math:`k<K` and the remainder
    :math:`\pi_K=\prod_{j<K}(1-\eta_j)` (Chapter 4, eq. ``ch04-sb``). Computed in log space (``logsigmoid``)."""
    z = _check_vector(z, "z")
    log_eta = F.logsigmoid(z)
    log_rest = F.logsigmoid(-z)
    before = (
        torch.cumsum(log_rest, dim=-1) - log_rest
    )  # sum_{j<k} log(1 - eta_j)
    return torch.cat(
        [log_eta + before, log_rest.sum(-1, keepdim=True)], dim=-1
    )


def inverse_stick_breaking(log_pi: torch.Tensor) -> torch.Tensor:
    r"""Inverse of :func:`stick_breaking`: :math:`z_k=\log\pi_k-\log\sum_{j>k}\pi_j`, ``(..., K) -> (..., K-1)``."""
    log_pi = _check_vector(log_pi, "log_pi", 2)
    tail = torch.logcumsumexp(log_pi.flip(-1), dim=-1).flip(
        -1
    )  # log sum_{j>=k} pi_j
    return log_pi[..., :-1] - tail[..., 1:]


def sb_map(z: torch.Tensor) -> torch.Tensor:
    r"""The IGR-SB map :math:`h(z)=\lambda`, :math:`\lambda_k=\log\pi_k-\log\pi_K=z_k+\sum_{j>k}\mathrm{softplus}(z_j)`
    (Chapter 4, eq. ``ch04-sb-map``), ``(..., K-1) -> (..., K-1)``. Triangular with unit diagonal: volume preserving."""
    z = _check_vector(z, "z")
    sp = F.softplus(z)
    tail = sp.flip(-1).cumsum(-1).flip(-1) - sp  # sum_{j>k} softplus(z_j)
    return z + tail


def sb_map_inverse(lam: torch.Tensor) -> torch.Tensor:
    r"""Inverse of :func:`sb_map`: the stick pieces are :math:`\pi=\mathrm{softmax}(\lambda,0)`, then
    :func:`inverse_stick_breaking`."""
    lam = _check_vector(lam, "lam")
    log_pi = torch.log_softmax(
        torch.cat([lam, torch.zeros_like(lam[..., :1])], -1), -1
    )
    return inverse_stick_breaking(log_pi)


def sb_truncation_level(
    log_pi: torch.Tensor, threshold: float = 0.99, quantile: float = 70.0
) -> int:
    r"""Truncation rule for IGR-SB with countably infinite support (Chapter 4, eq. ``ch04-truncation``).

    For each sample of stick pieces :math:`\pi` (``log_pi``, ``(..., K)``, the last entry the remainder), let
    :math:`c=\min\{n:\sum_{k\le n}\pi_k>\eta\}` be the number of leading pieces needed to cover more than the
    ``threshold`` :math:`\eta` of the mass (:math:`c=K-1`, the cap, if the first :math:`K-1` pieces never do). The
    level is the ``quantile``-th percentile of :math:`c` over all samples (the smallest level :math:`L` with
    :math:`c\le L` for at least ``quantile`` % of them), so the kept pieces cover more than :math:`\eta` in at
    least ``quantile`` % of the samples.

    The authors' code (``igr:Utils/Distributions.py``, ``perform_truncation_via_threshold``) uses the same
    threshold / percentile idea (defaults 0.99 and 70) and keeps one piece fewer, its extra softmax++ category
    standing in for the rest.

    Returns:
        the number of stick pieces to keep, an int in ``[1, K-1]``.
    """
    if not (isinstance(threshold, numbers.Real) and 0 < threshold < 1):
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if not (isinstance(quantile, numbers.Real) and 0 <= quantile <= 100):
        raise ValueError(f"quantile must be in [0, 100], got {quantile!r}")
    if log_pi.dim() == 0 or log_pi.shape[-1] < 2:
        raise ValueError(
            "log_pi must have shape (..., K) with K >= 2, got shape "
            f"{tuple(log_pi.shape)}"
        )
    if bool(torch.isnan(log_pi).any()):
        raise ValueError(
            "log_pi must not contain NaN (log stick pieces, <= 0)"
        )
    km1 = log_pi.shape[-1] - 1
    cum = torch.logcumsumexp(
        log_pi[..., :-1].detach().double(), dim=-1
    ).exp()  # (..., K-1)
    covered = cum > threshold
    c = torch.where(
        covered.any(-1),
        covered.double().argmax(-1) + 1.0,
        torch.full_like(cum[..., 0], km1),
    )
    c = c.flatten().sort().values
    idx = max(
        math.ceil(quantile / 100.0 * c.numel()) - 1, 0
    )  # the smallest level covering >= quantile %
    return int(min(max(c[idx].item(), 1), km1))


class PlanarFlow(nn.Module):
    r"""A stack of planar flows :math:`f_\ell(z)=z+\tilde u_\ell\tanh(w_\ell^\top z+b_\ell)` on :math:`\mathbb R^d`
    (Rezende & Mohamed 2015; Chapter 4, eq. ``ch04-planar``), the map :math:`h` of IGR-Planar.

    Invertibility needs :math:`w^\top\tilde u\ge-1`; the free vector :math:`u` is mapped to
    :math:`\tilde u=u+(\mathrm{softplus}(w^\top u)-1-w^\top u)\,w/\lVert w\rVert^2`, which gives
    :math:`w^\top\tilde u=\mathrm{softplus}(w^\top u)-1>-1`. (The IGR code divides by :math:`\lVert w\rVert`, not
    its square, which does not guarantee the condition.)

    Args:
        dim: :math:`d=K-1`; num_layers: :math:`L`; init_scale: standard deviation of the initial parameters.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 2,
        init_scale: float = 0.1,
        generator=None,
    ):
        super().__init__()
        for name, v in (("dim", dim), ("num_layers", num_layers)):
            check_int(name, v)
        self.dim, self.num_layers = int(dim), int(num_layers)
        self.u = nn.Parameter(
            init_scale * torch.randn(num_layers, dim, generator=generator)
        )
        self.w = nn.Parameter(
            init_scale * torch.randn(num_layers, dim, generator=generator)
            + 0.5
        )
        self.b = nn.Parameter(torch.zeros(num_layers))

    def u_tilde(self) -> torch.Tensor:
        """The constrained vectors :math:`\\tilde u_\\ell`, ``(L, d)``."""
        wu = (self.w * self.u).sum(-1, keepdim=True)
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / self.w.pow(2).sum(
            -1, keepdim=True
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(f(z), log|det J_f(z)|)``: ``(..., d)`` and ``(...)``, with
        :math:`\log|\det J|=\sum_\ell\log|1+(1-\tanh^2(w_\ell^\top z_\ell+b_\ell))\,w_\ell^\top\tilde u_\ell|`."""
        if z.shape[-1] != self.dim:
            raise ValueError(
                f"z must have shape (..., {self.dim}), got shape "
                f"{tuple(z.shape)}"
            )
        ut = self.u_tilde().to(z.dtype)
        w, b = self.w.to(z.dtype), self.b.to(z.dtype)
        logdet = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for l in range(self.num_layers):
            a = (z * w[l]).sum(-1) + b[l]
            t = torch.tanh(a)
            z = z + ut[l] * t.unsqueeze(-1)
            logdet = logdet + torch.log1p((1 - t * t) * (w[l] * ut[l]).sum())
        return z, logdet

    def inverse(self, y: torch.Tensor, num_iters: int = 100) -> torch.Tensor:
        r""":math:`f^{-1}(y)` layer by layer: :math:`a=w^\top z` solves the monotone scalar equation
        :math:`a+(w^\top\tilde u)\tanh(a+b)=w^\top y` (bisection on :math:`[w^\top y-|c|,\,w^\top y+|c|]`), then
        :math:`z=y-\tilde u\tanh(a+b)`. For checks, not for training."""
        ut = self.u_tilde().detach().to(y.dtype)
        w, b = self.w.detach().to(y.dtype), self.b.detach().to(y.dtype)
        for l in reversed(range(self.num_layers)):
            c = (w[l] * ut[l]).sum()
            target = (y * w[l]).sum(-1)
            lo, hi = target - c.abs() - 1e-12, target + c.abs() + 1e-12
            for _ in range(num_iters):
                mid = 0.5 * (lo + hi)
                above = mid + c * torch.tanh(mid + b[l]) > target
                hi, lo = (
                    torch.where(above, mid, hi),
                    torch.where(above, lo, mid),
                )
            a = 0.5 * (lo + hi)
            y = y - ut[l] * torch.tanh(a + b[l]).unsqueeze(-1)
        return y


# -----------------------------------------------------------------------------
# the distributions
# -----------------------------------------------------------------------------


class IGR(Distribution):
    r"""IGR-I: :math:`x=\mathrm{softmax}_{++}(z/\tau;\delta)`, :math:`z\sim\mathcal N(\mu,\mathrm{diag}\,\sigma^2)` in
    :math:`K-1` dimensions (Chapter 4, eq. ``ch04-igr``), a distribution on the open :math:`K`-simplex.

    Density (exact change of variables, eq. ``ch04-density``), with :math:`\lambda=h(z)` the pre-softmax point
    recovered from :math:`x` by eq. ``ch04-inverse``:

    .. math:: \log q(x)=\log\mathcal N\big(h^{-1}(\lambda);\mu,\sigma^2\big)-\log|\det J_h(h^{-1}(\lambda))|
              +(K-1)\log\tau-\sum_{k=1}^K\log x_k,\qquad \lambda_k=\tau(\log x_k-\log x_K+\log\delta),

    with respect to Lebesgue measure on :math:`(x_1,\dots,x_{K-1})` (:math:`h` is the identity here).

    **KL.** ``kl_divergence(q, p)`` for two IGRs of the same family that share :math:`\tau`, :math:`\delta` (and
    the flow, for :class:`IGRPlanar`) is the closed-form Gaussian KL
    :math:`\mathrm{KL}(\mathcal N(\mu_q,\sigma_q^2)\,\|\,\mathcal N(\mu_p,\sigma_p^2))` (eq. ``ch04-kl``): the map
    :math:`g=\mathrm{softmax}_{++}(h(\cdot)/\tau)` is shared and invertible, so the Jacobian factors of the two
    densities cancel pointwise, :math:`q_X(x)/p_X(x)=q_Z(z)/p_Z(z)` with :math:`z=g^{-1}(x)`, and KL is invariant
    under a shared bijection. Different maps: no closed form (``NotImplementedError``); use :func:`igr_kl_mc`.

    Args:
        loc: :math:`\mu`, ``(..., K-1)``; :math:`K` = ``loc.shape[-1] + 1``.
        scale: :math:`\sigma>0`, broadcastable to ``loc``.
        temperature: :math:`\tau>0`, a number or a tensor broadcastable to the batch shape ``loc.shape[:-1]``.
        delta: :math:`\delta>0` of softmax++ (1 in the authors' final code).

    Bad input (non-positive or non-finite ``scale``/``temperature``/``delta``, a scalar ``loc``, shapes that do not
    broadcast) raises a ``ValueError`` naming the argument.
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "scale": constraints.positive,
    }
    support = constraints.simplex
    has_rsample = True

    def __init__(
        self, loc, scale, temperature, delta: float = 1.0, validate_args=None
    ):
        self.loc, self.scale = _check_loc_scale(loc, scale)
        self.temperature = _check_temperature(temperature, self.loc)
        self.delta = _check_delta(delta)
        batch = torch.broadcast_shapes(
            self.loc.shape[:-1], self.temperature.shape
        )
        super().__init__(
            batch_shape=batch,
            event_shape=(self.loc.shape[-1] + 1,),
            validate_args=False,
        )
        self._validate_args = (
            True if validate_args is None else bool(validate_args)
        )

    # -- shapes and the map h
    # -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """:math:`K`."""
        return self.loc.shape[-1] + 1

    def _same_map(self, other: "IGR") -> bool:
        if (
            type(self) is not type(other)
            or self.num_classes != other.num_classes
            or self.delta != other.delta
        ):
            return False
        try:
            shape = torch.broadcast_shapes(
                self.temperature.shape, other.temperature.shape
            )
        except RuntimeError:
            return False
        return bool(
            torch.equal(
                self.temperature.detach().expand(shape),
                other.temperature.detach()
                .to(self.temperature.dtype)
                .expand(shape),
            )
        )

    def h(self, z: torch.Tensor) -> torch.Tensor:
        """The invertible map :math:`h` (identity for IGR-I), ``(..., K-1) -> (..., K-1)``."""
        return z

    def h_inverse(self, lam: torch.Tensor) -> torch.Tensor:
        """:math:`h^{-1}`."""
        return lam

    def log_abs_det_h(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log|\det J_h(z)|`, ``(...)`` (0 for IGR-I)."""
        return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)

    def _gauss_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        u = (z - self.loc) / self.scale
        return (-0.5 * u * u - torch.log(self.scale) - 0.5 * _LOG_2PI).sum(-1)

    # -- sampling
    # -------------------------------------------------------------------------
    def rsample_gauss(
        self,
        sample_shape=torch.Size(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""The Gaussian sample :math:`z=\mu+\sigma\odot\varepsilon`, ``(*sample_shape, *batch_shape, K-1)``."""
        shape = (
            torch.Size(sample_shape)
            + self.batch_shape
            + (self.num_classes - 1,)
        )
        eps = torch.randn(
            shape,
            dtype=self.loc.dtype,
            device=self.loc.device,
            generator=generator,
        )
        return self.loc + self.scale * eps

    def log_x_from_gauss(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log x=\log\mathrm{softmax}_{++}(h(z)/\tau;\delta)` for Gaussian points ``z``, ``(..., K)``."""
        return log_softmax_pp(self.h(z) / _event(self.temperature), self.delta)

    def rsample_log(
        self,
        sample_shape=torch.Size(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Reparameterised sample of :math:`\log x`, ``(*sample_shape, *batch_shape, K)``: finite in float32 at any
        temperature (use it with :meth:`log_prob_log`)."""
        return self.log_x_from_gauss(
            self.rsample_gauss(sample_shape, generator)
        )

    def rsample(
        self,
        sample_shape=torch.Size(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reparameterised sample :math:`x` on the simplex, ``(*sample_shape, *batch_shape, K)`` (in float32 at small
        temperature some entries are exact zeros: the density needs :meth:`rsample_log`)."""
        return self.rsample_log(sample_shape, generator).exp()

    def sample(
        self,
        sample_shape=torch.Size(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    # -- density
    # -------------------------------------------------------------------------
    def log_prob_log(self, log_x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(x)` from :math:`\log x` (``(..., K)``, finite): eq. ``ch04-density``, all in log space."""
        log_x = torch.as_tensor(
            log_x, dtype=self.loc.dtype, device=self.loc.device
        )
        if self._validate_args:
            if log_x.dim() == 0 or log_x.shape[-1] != self.num_classes:
                raise ValueError(
                    "log_x must have shape (..., K) with K = "
                    f"{self.num_classes}, "
                    f"got shape {tuple(log_x.shape)}"
                )
            if not bool(torch.isfinite(log_x.detach()).all()):
                raise ValueError(
                    "log_x must be finite: x must lie in the open simplex "
                    "(entries > 0)"
                )
            tol = math.sqrt(torch.finfo(log_x.dtype).eps) * 4
            lse = torch.logsumexp(log_x.detach(), -1)
            if bool((lse.abs() > tol).any()):
                raise ValueError(
                    "log_x must be the log of a point on the simplex "
                    "(logsumexp(log_x) = 0 within "
                    f"{tol:.1e}), got {lse.abs().max().item():.3g}"
                )
        tau = _event(self.temperature)
        lam = tau * inverse_softmax_pp(log_x, self.delta)
        z = self.h_inverse(lam)
        K = self.num_classes
        return (
            self._gauss_log_prob(z)
            - self.log_abs_det_h(z)
            + (K - 1) * torch.log(self.temperature)
            - log_x.sum(-1)
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(x)` for ``x`` ``(..., K)`` in the open simplex (eq. ``ch04-density``)."""
        value = torch.as_tensor(
            value, dtype=self.loc.dtype, device=self.loc.device
        )
        if self._validate_args:
            if value.dim() == 0 or value.shape[-1] != self.num_classes:
                raise ValueError(
                    "value must have shape (..., K) with K = "
                    f"{self.num_classes}, "
                    f"got shape {tuple(value.shape)}"
                )
            d = value.detach()
            if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
                raise ValueError(
                    "value must be a point of the simplex (finite, entries >= "
                    "0)"
                )
            if bool((d == 0).any()):
                raise ValueError(
                    "value has entries equal to 0 (the boundary of the "
                    "simplex, where the density is not "
                    "defined; in float32 at small temperature samples "
                    "underflow): use rsample_log and "
                    "log_prob_log"
                )
            tol = math.sqrt(torch.finfo(d.dtype).eps) * 4
            if bool(((d.sum(-1) - 1).abs() > tol).any()):
                raise ValueError(
                    "value must sum to 1 over the last dimension (within "
                    f"{tol:.1e})"
                )
        return self.log_prob_log(torch.log(value))

    # -- the discrete limit
    # -------------------------------------------------------------------------
    def limit_probs(
        self,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Category probabilities in the zero-temperature limit, :math:`P(\arg\max_k x_k=k)` as :math:`\tau\to0`
        (eq. ``ch04-limit``): ``(*batch_shape, K)``. For IGR-I exact (quadrature, :func:`igr_limit_probs`); with
        ``num_samples`` (or for the other families) Monte Carlo frequencies of
        :math:`\arg\max(\lambda_1,\dots,\lambda_{K-1},0)`."""
        if num_samples is None and type(self) is IGR:
            loc, scale = torch.broadcast_tensors(self.loc, self.scale)
            shape = self.batch_shape + loc.shape[-1:]
            return igr_limit_probs(loc.expand(shape), scale.expand(shape))
        n = 4000 if num_samples is None else int(num_samples)
        with torch.no_grad():
            lam = self.h(self.rsample_gauss((n,), generator))
            idx = torch.cat([lam, torch.zeros_like(lam[..., :1])], -1).argmax(
                -1
            )
            return F.one_hot(idx, self.num_classes).to(lam.dtype).mean(0)

    @classmethod
    def uniform_prior(
        cls,
        num_classes: int,
        temperature,
        scale: float = 1.0,
        delta: float = 1.0,
        dtype: torch.dtype | None = None,
    ) -> "IGR":
        """The IGR-I prior whose zero-temperature categorical is exactly uniform (:func:`uniform_prior`)."""
        loc, sc = uniform_prior(num_classes, scale, dtype=dtype)
        return cls(loc, sc, temperature, delta)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        loc = self.loc.expand(batch_shape + self.loc.shape[-1:])
        scale = self.scale.expand(batch_shape + self.scale.shape[-1:])
        new = self._get_checked_instance(type(self), _instance)
        new.__dict__.update(self.__dict__)
        new.loc, new.scale = loc, scale
        new.temperature = (
            self.temperature.expand(batch_shape)
            if self.temperature.dim()
            else self.temperature
        )
        Distribution.__init__(
            new, batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(K={self.num_classes}, "
            f"batch_shape={tuple(self.batch_shape)}, "
            f"delta={self.delta})"
        )


class IGRStickBreaking(IGR):
    r"""IGR-SB: :math:`x=\mathrm{softmax}_{++}(\lambda/\tau;\delta)` with :math:`\lambda=h(z)` the additive log-ratio
    of the stick-breaking point (Chapter 4, eq. ``ch04-sb-map``):

    .. math:: \eta_k=\mathrm{sigmoid}(z_k),\quad \pi_k=\eta_k\prod_{j<k}(1-\eta_j),\quad
              \lambda_k=\log\frac{\pi_k}{\pi_K}=z_k+\sum_{j>k}\mathrm{softplus}(z_j).

    At :math:`\tau=1,\ \delta=1` the sample is the stick-breaking point :math:`\pi` itself; as :math:`\tau\to0` it
    is the vertex of the largest stick piece (the remainder :math:`\pi_K` included). :math:`h` is triangular with
    unit diagonal, so :math:`\log|\det J_h|=0` and the density is that of IGR-I at :math:`h^{-1}(\lambda)`.

    **Countably infinite support.** ``loc`` has the length of a cap :math:`K_{\max}-1`; categories
    :math:`1,2,\dots` are the stick pieces in order. :meth:`truncation_level` applies the rule of
    :func:`sb_truncation_level` to samples; :meth:`truncate` keeps the first ``level`` pieces, which is exactly the
    IGR-SB with those coordinates (the pieces :math:`\pi_1,\dots,\pi_\ell` and the rest :math:`1-\sum_{k\le\ell}\pi_k`
    are the same random variables).

    **Difference from the authors' code:** it feeds the pieces :math:`\pi_{1:K-1}\in(0,1)` themselves into
    :math:`\mathrm{softmax}_{++}(\cdot/\tau)`, which with :math:`\delta=1` makes the last category never the
    argmax; we feed their log-ratios, so every piece, the remainder included, can win.

    Args:
        loc, scale, temperature, delta: as :class:`IGR`.
        threshold, quantile: defaults of the truncation rule (0.99 and 70, as in the authors' code).
    """

    def __init__(
        self,
        loc,
        scale,
        temperature,
        delta: float = 1.0,
        threshold: float = 0.99,
        quantile: float = 70.0,
        validate_args=None,
    ):
        super().__init__(loc, scale, temperature, delta, validate_args)
        if not (isinstance(threshold, numbers.Real) and 0 < threshold < 1):
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if not (isinstance(quantile, numbers.Real) and 0 <= quantile <= 100):
            raise ValueError(f"quantile must be in [0, 100], got {quantile!r}")
        self.threshold, self.quantile = float(threshold), float(quantile)

    def h(self, z):
        return sb_map(z)

    def h_inverse(self, lam):
        return sb_map_inverse(lam)

    def log_abs_det_h(self, z):
        return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)

    def stick_pieces_log(
        self, sample_shape=torch.Size(), generator=None
    ) -> torch.Tensor:
        r"""Samples of :math:`\log\pi`, ``(*sample_shape, *batch_shape, K)`` (the temperature-free stick pieces)."""
        return stick_breaking(self.rsample_gauss(sample_shape, generator))

    def truncation_level(
        self,
        num_samples: int = 1000,
        threshold: float | None = None,
        quantile: float | None = None,
        generator=None,
    ) -> int:
        """The truncation level from ``num_samples`` samples (:func:`sb_truncation_level`)."""
        with torch.no_grad():
            log_pi = self.stick_pieces_log((num_samples,), generator)
        return sb_truncation_level(
            log_pi,
            self.threshold if threshold is None else threshold,
            self.quantile if quantile is None else quantile,
        )

    def truncate(self, level: int) -> "IGRStickBreaking":
        """The IGR-SB on ``level + 1`` categories: the first ``level`` pieces and the rest."""
        if (
            isinstance(level, bool)
            or not isinstance(level, numbers.Integral)
            or not 1 <= level <= self.num_classes - 1
        ):
            raise ValueError(
                f"level must be an int in [1, {self.num_classes - 1}], got "
                f"{level!r}"
            )
        return IGRStickBreaking(
            self.loc[..., :level],
            self.scale[..., :level],
            self.temperature,
            self.delta,
            self.threshold,
            self.quantile,
            self._validate_args,
        )

    def expand(self, batch_shape, _instance=None):
        return super().expand(batch_shape, _instance)


class IGRPlanar(IGR):
    r"""IGR-Planar: :math:`x=\mathrm{softmax}_{++}(f(z)/\tau;\delta)` with :math:`f` a :class:`PlanarFlow` (shared by
    the whole batch, as in the authors' VAE). :math:`\log|\det J_h|` is the flow's; :math:`h^{-1}` is computed by
    bisection (:meth:`PlanarFlow.inverse`), so :meth:`log_prob` is exact but meant for checks.

    KL: closed form only against an IGR-Planar with the **same** flow, :math:`\tau` and :math:`\delta`. The
    authors' prior is a Gaussian on the post-flow space, i.e. an :class:`IGR` (no flow), and that KL has no closed
    form: estimate it with :func:`igr_kl_mc` (or its single-sample version in a VAE).

    Args:
        loc, scale, temperature, delta: as :class:`IGR`; flow: a :class:`PlanarFlow` with ``dim = K-1``.
    """

    def __init__(
        self,
        loc,
        scale,
        temperature,
        flow: PlanarFlow,
        delta: float = 1.0,
        validate_args=None,
    ):
        super().__init__(loc, scale, temperature, delta, validate_args)
        if not isinstance(flow, PlanarFlow):
            raise ValueError(
                f"flow must be a PlanarFlow, got {type(flow).__name__}"
            )
        if flow.dim != self.num_classes - 1:
            raise ValueError(
                f"flow.dim must be K-1 = {self.num_classes - 1}, got "
                f"{flow.dim}"
            )
        self.flow = flow

    def _same_map(self, other):
        return super()._same_map(other) and (
            other.flow is self.flow
            or all(
                torch.equal(a, b)
                for a, b in zip(
                    self.flow.parameters(), other.flow.parameters()
                )
            )
        )

    def h(self, z):
        return self.flow(z)[0]

    def h_inverse(self, lam):
        return self.flow.inverse(lam)

    def log_abs_det_h(self, z):
        return self.flow(z)[1]


def _kl_same_map(p: IGR, q: IGR) -> torch.Tensor:
    r"""Closed-form KL between two IGRs sharing the map (Chapter 4, eq. ``ch04-kl``), summed over the K-1 coordinates."""
    if not p._same_map(q):
        raise NotImplementedError(
            f"KL({type(p).__name__} || {type(q).__name__}) has a closed form "
            "only when both use the same map (same "
            "family, temperature, delta and flow); otherwise estimate it with "
            "vaebook.distributions.igr_kl_mc"
        )
    return kl_normal_diag(
        p.loc, 2 * torch.log(p.scale), q.loc, 2 * torch.log(q.scale)
    )


@register_kl(IGR, IGR)
def _kl_igr_igr(p, q):
    return _kl_same_map(p, q)


def igr_kl_mc(
    q: IGR,
    p: IGR,
    num_samples: int = 1000,
    generator: torch.Generator | None = None,
    return_stderr: bool = False,
):
    r"""Monte Carlo :math:`\mathrm{KL}(q\,\|\,p)=\mathbb E_q[\log q(x)-\log p(x)]` for any two IGR distributions on
    the same simplex (any families, temperatures, deltas), computed through :meth:`IGR.log_prob_log` at samples of
    :math:`\log x` (finite in float32). Reparameterised. Returns ``(*batch)`` or ``(estimate, stderr)``."""
    if not (isinstance(q, IGR) and isinstance(p, IGR)):
        raise ValueError("q and p must be IGR distributions")
    if q.num_classes != p.num_classes:
        raise ValueError(
            f"q and p must have the same K, got {q.num_classes} and "
            f"{p.num_classes}"
        )
    check_int("num_samples", num_samples, 2)
    log_x = q.rsample_log((num_samples,), generator)
    lr = q.log_prob_log(log_x) - p.log_prob_log(log_x)
    est = lr.mean(0)
    if return_stderr:
        return est, lr.std(0) / math.sqrt(num_samples)
    return est


# -----------------------------------------------------------------------------
# zero-temperature probabilities and the uniform prior
# -----------------------------------------------------------------------------


def igr_limit_probs(
    loc, scale, num_nodes: int = 5, panel: float = 1.5, u_max: float = 7.0
) -> torch.Tensor:
    r"""IGR-I category probabilities as :math:`\tau\to0` (Chapter 4, eq. ``ch04-limit``), ``(..., K-1) -> (..., K)``:

    .. math:: P(k)=\int_0^\infty\mathcal N(t;\mu_k,\sigma_k^2)\prod_{j\ne k,\,j<K}\Phi\Big(\frac{t-\mu_j}{\sigma_j}\Big)dt
              \ (k<K),\qquad P(K)=\prod_{j<K}\Phi(-\mu_j/\sigma_j).

    (With :math:`\delta\ne1` the argmax at temperature :math:`\tau` compares :math:`z` with :math:`\tau\log\delta`;
    the limit is the same.) Each integral, in :math:`u=(t-\mu_k)/\sigma_k\in[\max(-\mu_k/\sigma_k,-u_{\max}),u_{\max}]`,
    is composite Gauss-Legendre quadrature (``num_nodes`` per panel) on panels that end at every competitor's
    :math:`\mu_j` (where a factor :math:`\Phi` with a small :math:`\sigma_j` is a near-step) and at a grid of
    spacing ``panel``; the integrand is formed in log space (``log_ndtr``). Error below 1e-6 for comparable scales
    and about 1e-3 in the worst case (competitors with :math:`\sigma_j\ll\sigma_k`); the result is renormalised
    to sum to one. Differentiable in ``loc`` and ``scale``; computed in chunks (bounded memory).
    """
    loc, scale = _check_loc_scale(loc, scale)
    check_int("num_nodes", num_nodes)
    for name, v in (("panel", panel), ("u_max", u_max)):
        check_number(name, v, 0.0, strict=True)
    batch, km1 = loc.shape[:-1], loc.shape[-1]
    loc, scale = loc.reshape(-1, km1), scale.reshape(-1, km1)
    x, w = np.polynomial.legendre.leggauss(int(num_nodes))
    x = torch.as_tensor(x, dtype=loc.dtype, device=loc.device)
    w = torch.as_tensor(w, dtype=loc.dtype, device=loc.device)
    grid = torch.arange(
        -u_max + panel, u_max, panel, dtype=loc.dtype, device=loc.device
    )
    eye = torch.eye(km1, dtype=torch.bool, device=loc.device).unsqueeze(-1)
    nodes = (2 + km1 + grid.numel()) * int(num_nodes)
    chunk = max(1, (1 << 23) // (km1 * km1 * nodes))
    out = []
    for m, s in zip(loc.split(chunk), scale.split(chunk)):
        mu, sd = m.unsqueeze(-1), s.unsqueeze(-1)  # (M, K-1 [winner k], 1)
        lo = torch.clamp(-mu / sd, min=-u_max)
        hi = torch.full_like(lo, u_max)
        brk = (m.unsqueeze(-2) - mu) / sd  # (M, k, j): u where t = mu_j
        edges = torch.cat([lo, brk, hi, grid.expand(*lo.shape[:-1], -1)], -1)
        edges = torch.minimum(torch.maximum(edges, lo), hi).sort(-1).values
        half, mid = (
            0.5 * (edges[..., 1:] - edges[..., :-1]),
            0.5 * (edges[..., 1:] + edges[..., :-1]),
        )
        u = (half.unsqueeze(-1) * x + mid.unsqueeze(-1)).flatten(
            -2
        )  # (M, k, nodes)
        wt = (half.unsqueeze(-1) * w).flatten(-2)
        t = mu + sd * u
        lphi = torch.special.log_ndtr(
            (t.unsqueeze(-2) - m.unsqueeze(-2).unsqueeze(-1))
            / s.unsqueeze(-2).unsqueeze(-1)
        )  # (M, k, j, nodes)
        lphi = lphi.masked_fill(eye, 0.0).sum(-2)  # product over j != k
        pk = (wt * (lphi - 0.5 * u * u - 0.5 * _LOG_2PI).exp()).sum(-1)
        pK = torch.special.log_ndtr(-m / s).sum(-1, keepdim=True).exp()
        p = torch.cat([pk, pK], -1)
        out.append(p / p.sum(-1, keepdim=True))
    return torch.cat(out).reshape(*batch, km1 + 1)


def uniform_prior(
    num_classes: int, scale: float = 1.0, dtype: torch.dtype | None = None
):
    r"""``(loc, scale)`` of the IGR-I prior with a shared :math:`(\mu_0,\sigma_0)` whose zero-temperature categorical
    is exactly uniform (Chapter 4, eq. ``ch04-uniform-prior``): :math:`P(K)=\Phi(-\mu_0/\sigma_0)^{K-1}=1/K` gives

    .. math:: \mu_0=-\sigma_0\,\Phi^{-1}\big(K^{-1/(K-1)}\big)\qquad(K=10:\ \mu_0/\sigma_0=-0.7530),

    and the other :math:`K-1` categories are exchangeable, so each has probability :math:`1/K` too. With
    :math:`\delta=1` the argmax of the sample follows this categorical at **every** temperature.

    Returns:
        two tensors of shape ``(K-1,)``.
    """
    check_int("num_classes", num_classes, 2)
    check_number("scale", scale, 0.0, strict=True)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    K = int(num_classes)
    q = torch.tensor(K ** (-1.0 / (K - 1)), dtype=torch.float64)
    ratio = -torch.special.ndtri(q).item()
    return (
        torch.full((K - 1,), scale * ratio, dtype=dtype),
        torch.full((K - 1,), float(scale), dtype=dtype),
    )


def calibrate_uniform_prior(
    num_classes: int,
    family: str = "sb",
    scale: float = 1.0,
    num_steps: int = 300,
    num_samples: int = 4000,
    tau: float = 0.02,
    lr: float = 0.05,
    seed: int = 0,
    flow: PlanarFlow | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A prior ``(loc, scale)`` whose zero-temperature categorical is close to uniform, found numerically as in the
    authors' ``set_prior.py`` (Chapter 4): Adam on the per-coordinate ``loc`` (``scale`` fixed) minimising
    :math:`\sum_k(\bar x_k-1/K)^2`, :math:`\bar x` the mean of ``num_samples`` soft samples at temperature ``tau``
    with fixed noise (common random numbers). For ``family="I"`` use the exact :func:`uniform_prior` instead.

    Args:
        family: ``"sb"`` (:class:`IGRStickBreaking`), ``"I"`` or ``"planar"`` (needs ``flow``).

    Returns:
        ``(loc, scale)``, float32 tensors of shape ``(K-1,)``.
    """
    if family not in ("sb", "I", "planar"):
        raise ValueError(
            f"family must be 'sb', 'I' or 'planar', got {family!r}"
        )
    for name, v, lo in (
        ("num_classes", num_classes, 2),
        ("num_steps", num_steps, 0),
        ("num_samples", num_samples, 1),
    ):
        check_int(name, v, lo)
    for name, v in (("scale", scale), ("tau", tau), ("lr", lr)):
        check_number(name, v, 0.0, strict=True)
    if family == "planar" and not isinstance(flow, PlanarFlow):
        raise ValueError(
            "flow must be a PlanarFlow with dim = num_classes - 1 for "
            f"family='planar', got {flow!r}"
        )
    K = int(num_classes)
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(num_samples, K - 1, generator=g, dtype=torch.float64)
    init = uniform_prior(K, scale, dtype=torch.float64)[0]
    if family == "sb":  # start where every break fraction is 1/(pieces left)
        init = torch.logit(1.0 / torch.arange(K, 1, -1, dtype=torch.float64))
    loc = init.clone().requires_grad_(True)
    sc = torch.full((K - 1,), float(scale), dtype=torch.float64)
    opt = torch.optim.Adam([loc], lr=lr)
    target = torch.full((K,), 1.0 / K, dtype=torch.float64)
    for _ in range(num_steps):
        d = (
            IGRStickBreaking(loc, sc, tau)
            if family == "sb"
            else IGRPlanar(loc, sc, tau, flow)
            if family == "planar"
            else IGR(loc, sc, tau)
        )
        xbar = d.log_x_from_gauss(loc + sc * eps).exp().mean(0)
        loss = (xbar - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loc.detach().float(), sc.float()
