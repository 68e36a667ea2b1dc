r"""VAEs with Gaussian-mixture latents (Chapter 2), the two constructions of the VRNN project report (§5).

* :class:`GumbelMixtureVAE` (report §5.1): posterior and prior are both Gaussian mixtures with ``K`` components,
  :math:`q(z\mid x)=\sum_k\pi^q_k(x)\,\mathcal N(\mu^q_k(x),\mathrm{diag}\,\sigma^{q2}_k(x))` and a learned
  :math:`p(z)=\sum_k\pi^p_k\,\mathcal N(\mu^p_k,\mathrm{diag}\,\sigma^{p2}_k)`. Training samples are
  :math:`z=\sum_kv_k(\mu^q_k+\sigma^q_k\odot\epsilon_k)` with :math:`v` a Gumbel-softmax sample at temperature
  :math:`\tau` (Chapter 2, eq. ``ch02-gumbel-mixture-sample``), and the KL term is the matched bound with the
  identity matching (eq. ``ch02-matched``), i.e. ``kl_gmm(q, p, method="matched")``: the component order is
  "learned" by the networks. For :math:`\tau>0` the relaxed sample is *not* distributed as :math:`q`, so the
  training objective is not a bound; :meth:`GumbelMixtureVAE.elbo` therefore reports the exact (stratified) ELBO
  with the same matched-bound KL, which *is* a lower bound on :math:`\log p_\theta(x)`, and
  :meth:`GumbelMixtureVAE.log_weights` uses exact mixture samples and exact mixture densities.
* :class:`GMVAE` (Dilokthanakul et al. 2016; report §5.2): a Gaussian posterior :math:`q(z\mid x)`, an auxiliary
  Gaussian :math:`q(w\mid x)`, a prior :math:`p(z\mid w,c)=\mathcal N(\mu_c(w),\mathrm{diag}\,\sigma_c^2(w))` with a
  uniform cluster :math:`c\in\{1..K\}` and :math:`w\sim\mathcal N(0,I)`, and the cluster posterior
  :math:`p(c\mid z,w)` in closed form (Bayes' rule). Its ELBO has four terms (Chapter 2, eq. ``ch02-gmvae-elbo``).
  Notation: the paper's data :math:`y`, latent :math:`x` and cluster :math:`z` are this book's :math:`x`, :math:`z`
  and :math:`c`.

Both follow the book's model contract (``loss(batch) -> (loss, logs)``, ``elbo(x)``, ``log_weights(x, S)``) so that
:func:`vaebook.train.fit` and :mod:`vaebook.metrics` work unchanged. :func:`cluster_accuracy` and :func:`kmeans`
evaluate clusterings. Shapes: images ``(B, 1, 28, 28)``; ``K`` components; latents ``(..., B, latent_dim)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)

from .divergences import kl_normal_diag
from .mixtures import kl_gmm
from .models import MLP, BatchMixin, BernoulliDecoder
from .kernels import _check_backend
from .relaxed import _as_tau, gumbel_softmax
from .utils import check_int

__all__ = [
    "CLUSTERING",
    "build_gmvae",
    "train_clustering",
    "GumbelMixtureVAE",
    "GMVAE",
    "relaxed_mixture_sample",
    "cluster_accuracy",
    "kmeans",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _diag_log_normal(z, mean, logvar):
    """log N(z; mean, diag exp(logvar)) summed over the last dimension (broadcasting)."""
    return -0.5 * (
        _LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar)
    ).sum(-1)


def _soft_clamp(v, bound=12.0):
    return bound * torch.tanh(v / bound)


def relaxed_mixture_sample(
    logits,
    q_mean,
    q_logvar,
    tau,
    hard=False,
    num_samples=None,
    generator=None,
    *,
    backend="auto",
):
    r"""Report eqs. (4)-(8): :math:`z=\sum_kv_k(\mu_k+\sigma_k\odot\epsilon_k)` with :math:`v` a Gumbel-softmax sample.

    Args:
        logits ``(..., K)``; q_mean, q_logvar ``(..., K, D)``; tau > 0; hard: straight-through one-hot ``v``;
        num_samples: ``S`` leading samples; generator: for both noises; backend: for the Gumbel-softmax sample
        (:func:`vaebook.relaxed.gumbel_softmax`, the rule of :mod:`vaebook.kernels`).

    Returns ``z`` ``(..., D)`` (or ``(S, ..., D)``) and ``v`` ``(..., K)`` (or ``(S, ..., K)``). For ``tau > 0`` and
    ``hard=False``, ``z`` is *not* distributed as the mixture (Chapter 2).
    """
    lead = () if num_samples is None else (num_samples,)
    if (
        logits.dim() == 0
        or q_mean.dim() < 2
        or q_mean.shape[-2] != logits.shape[-1]
    ):
        raise ValueError(
            "q_mean must have shape (..., K, D) with K = logits.shape[-1], "
            "got logits "
            f"{tuple(logits.shape)} and q_mean {tuple(q_mean.shape)}"
        )
    if q_logvar.shape != q_mean.shape:
        raise ValueError(
            f"q_logvar must have the shape of q_mean {tuple(q_mean.shape)}, "
            f"got {tuple(q_logvar.shape)}"
        )
    for name, t in (("q_mean", q_mean), ("q_logvar", q_logvar)):
        if not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{name} must be finite (no NaN or inf)")
    if (
        logits.shape[-1] == 1
        # one component: the (relaxed) one-hot vector is exactly 1
        # (gumbel_softmax needs K >= 2)
    ):
        _as_tau(tau, logits)
        v = torch.ones(
            (*lead, *logits.shape), dtype=logits.dtype, device=logits.device
        )
    else:
        v = gumbel_softmax(
            logits.expand(*lead, *logits.shape),
            tau,
            hard=hard,
            generator=generator,
            backend=backend,
        )
    eps = torch.randn(
        *lead,
        *q_mean.shape,
        dtype=q_mean.dtype,
        device=q_mean.device,
        generator=generator,
    )
    w = q_mean + torch.exp(0.5 * q_logvar) * eps
    return (v.unsqueeze(-1) * w).sum(-2), v


class _Base(BatchMixin, nn.Module):
    """Shared base of the two mixture-latent models (batch handling from :class:`vaebook.models.BatchMixin`)."""


# -----------------------------------------------------------------------------
# (a) Gumbel-softmax mixture posterior + mixture prior, matched-bound KL
# (report §5.1)
# -----------------------------------------------------------------------------
class GumbelMixtureVAE(_Base):
    r"""Mixture posterior and mixture prior, relaxed mixture samples, matched-bound KL (Chapter 2, report §5.1).

    Args:
        data_shape: image shape (default ``(1, 28, 28)``).
        latent_dim: :math:`D`; num_components: :math:`K` (both > 0).
        hidden: encoder hidden sizes (the decoder mirrors them); activation: as in :class:`vaebook.models.MLP`.
        tau: Gumbel-softmax temperature (> 0) used by :meth:`loss`; change ``model.tau`` to anneal it.
        hard: straight-through samples (exact one-hot forward, biased soft gradient).
        kl: ``"matched"`` (the report's bound, identity matching) or ``"variational_upper"`` (no fixed
            correspondence; a tighter certified bound, Chapter 2).
        prior_spread: standard deviation of the initial prior means (breaks the symmetry between components).
        binarize: ``"dynamic"`` (fresh Bernoulli pixels every training step) or ``None``.
        backend: ``"auto"`` (default), ``"torch"`` or ``"triton"``, for the Gumbel-softmax sample and the
            matched-bound KL (the rule of :mod:`vaebook.kernels`: the Triton kernels on a GPU by default); kept as
            the attribute ``backend``, not in the ``state_dict``.
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 10,
        num_components: int = 10,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        tau: float = 1.0,
        hard: bool = False,
        kl: str = "matched",
        prior_spread: float = 1.0,
        binarize: str | None = "dynamic",
        backend: str = "auto",
    ):
        super().__init__()
        self.backend = _check_backend(backend)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.num_components = check_int("num_components", num_components)
        if not (
            isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)
        ):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        if kl not in ("matched", "variational_upper"):
            raise ValueError(
                f"kl must be 'matched' or 'variational_upper', got {kl!r}"
            )
        if (
            isinstance(prior_spread, bool)
            or not isinstance(prior_spread, (int, float))
            or not 0 <= prior_spread < math.inf
        ):
            raise ValueError(
                "prior_spread must be a number >= 0 and finite, got "
                f"{prior_spread!r}"
            )
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        self.tau, self.hard, self.kl, self.binarize = (
            float(tau),
            bool(hard),
            kl,
            binarize,
        )
        self.data_shape = tuple(data_shape)
        k, d = self.num_components, self.latent_dim
        self.enc = MLP(
            math.prod(self.data_shape), hidden, k * (1 + 2 * d), activation
        )
        self.dec = BernoulliDecoder(
            d, self.data_shape, tuple(reversed(hidden)), activation
        )
        g = torch.Generator().manual_seed(12345)
        self.prior_logits = nn.Parameter(torch.zeros(k))
        self.prior_mean = nn.Parameter(
            prior_spread * torch.randn(k, d, generator=g)
        )
        self.prior_logvar = nn.Parameter(torch.zeros(k, d))

    # -- distributions
    # -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        """``(logits, q_mean, q_logvar)`` with shapes ``(B, K)``, ``(B, K, D)``, ``(B, K, D)``."""
        h = self.enc(x.flatten(start_dim=1))
        k, d = self.num_components, self.latent_dim
        logits, q_mean, q_logvar = h.split([k, k * d, k * d], dim=-1)
        return (
            torch.log_softmax(logits, -1),
            q_mean.unflatten(-1, (k, d)),
            _soft_clamp(q_logvar.unflatten(-1, (k, d))),
        )

    @staticmethod
    def mixture(logits, mean, logvar) -> MixtureSameFamily:
        """The ``MixtureSameFamily`` with weights ``softmax(logits)`` and diagonal Gaussian components."""
        return MixtureSameFamily(
            Categorical(logits=logits),
            Independent(Normal(mean, torch.exp(0.5 * logvar)), 1),
        )

    def posterior(self, x: torch.Tensor) -> MixtureSameFamily:
        r""":math:`q_\phi(z\mid x)`, batch shape ``(B,)``."""
        return self.mixture(*self.encode(x))

    def prior(self) -> MixtureSameFamily:
        r""":math:`p(z)`, the learned mixture (batch shape ``()``)."""
        return self.mixture(
            self.prior_logits, self.prior_mean, _soft_clamp(self.prior_logvar)
        )

    def kl_term(self, logits, q_mean, q_logvar) -> torch.Tensor:
        """The KL term, ``(B,)``: ``kl_gmm(q, p, method=self.kl)`` (an upper bound on KL(q || p))."""
        return kl_gmm(
            self.mixture(logits, q_mean, q_logvar),
            self.prior(),
            method=self.kl,
            backend=self.backend if self.kl == "matched" else "torch",
        )

    def kl_categorical_part(self, logits) -> torch.Tensor:
        r""":math:`\sum_k\pi^q_k\log(\pi^q_k/\pi^p_k)`, the component-choice part of the matched bound, ``(B,)``."""
        return (
            logits.exp() * (logits - torch.log_softmax(self.prior_logits, -1))
        ).sum(-1)

    def relaxed_sample(
        self,
        logits,
        q_mean,
        q_logvar,
        tau=None,
        hard=None,
        num_samples=None,
        generator=None,
    ):
        """:func:`relaxed_mixture_sample` with the model's ``tau`` and ``hard`` unless given."""
        return relaxed_mixture_sample(
            logits,
            q_mean,
            q_logvar,
            self.tau if tau is None else tau,
            self.hard if hard is None else hard,
            num_samples,
            generator,
            backend=self.backend,
        )

    # -- objectives
    # -------------------------------------------------------------------------
    def elbo(
        self, x: torch.Tensor, num_samples: int = 1
    ) -> dict[str, torch.Tensor]:
        r"""Per-example exact (stratified) bound ``{"elbo", "rec", "kl", "kl_cat"}``, each ``(B,)``.

        ``rec`` :math:`=\sum_k\pi^q_k\,\mathbb E_{\mathcal N^q_k}\log p_\theta(x\mid z)` with one reparameterised draw per
        component (an unbiased estimate of :math:`\mathbb E_q\log p_\theta(x\mid z)` under the *exact* mixture), and
        ``elbo = rec - kl`` with the matched-bound KL: a valid lower bound on :math:`\log p_\theta(x)`.
        """
        logits, q_mean, q_logvar = self.encode(x)
        eps = torch.randn(
            num_samples,
            *q_mean.shape,
            dtype=q_mean.dtype,
            device=q_mean.device,
        )
        z = q_mean + torch.exp(0.5 * q_logvar) * eps  # (S, B, K, D)
        ll = (
            self.dec(z.transpose(-2, -3)).log_prob(x).transpose(-1, -2)
        )  # (S, K, B) -> (S, B, K)
        rec = (logits.exp() * ll.mean(0)).sum(-1)
        kl = self.kl_term(logits, q_mean, q_logvar)
        return {
            "elbo": rec - kl,
            "rec": rec,
            "kl": kl,
            "kl_cat": self.kl_categorical_part(logits),
        }

    def objective(
        self, x: torch.Tensor, tau=None, hard=None
    ) -> dict[str, torch.Tensor]:
        r"""The report's training objective per example: ``rec_relaxed - kl`` with one relaxed sample, ``(B,)`` each.

        Not a bound on :math:`\log p_\theta(x)` for :math:`\tau>0` (the sample is not distributed as :math:`q`).
        """
        logits, q_mean, q_logvar = self.encode(x)
        z, _ = self.relaxed_sample(
            logits, q_mean, q_logvar, tau=tau, hard=hard
        )
        rec = self.dec(z).log_prob(x)
        kl = self.kl_term(logits, q_mean, q_logvar)
        return {
            "objective": rec - kl,
            "rec": rec,
            "kl": kl,
            "kl_cat": self.kl_categorical_part(logits),
        }

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x = self._prepare(batch)
        t = self.objective(x)
        loss = -t["objective"].mean()
        return loss, {
            "loss": loss.item(),
            "objective": t["objective"].mean().item(),
            "rec": t["rec"].mean().item(),
            "kl": t["kl"].mean().item(),
            "kl_cat": t["kl_cat"].mean().item(),
        }

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""``(S, B)`` log-weights with *exact* mixture samples: :math:`\log p(x\mid z)+\log p(z)-\log q(z\mid x)`."""
        q = self.posterior(x)
        z = q.sample((num_samples,))
        return (
            self.dec(z).log_prob(x) + self.prior().log_prob(z) - q.log_prob(z)
        )

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        r"""Cluster of each image: :math:`\arg\max_k\pi^q_k(x)`, ``(B,)``."""
        return self.encode(x.to(self._device()))[0].argmax(-1)

    @torch.no_grad()
    def sample_components(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` decoded samples from each prior component: ``(K * n, *data_shape)``, component-major."""
        p = self.prior().component_distribution.base_dist
        eps = torch.randn(
            n, *p.loc.shape, generator=generator, dtype=p.loc.dtype
        ).to(p.loc.device)
        z = (
            (p.loc + p.scale * eps)
            .transpose(0, 1)
            .reshape(-1, self.latent_dim)
        )
        return self.dec.mean(z)


# -----------------------------------------------------------------------------
# (b) The Gaussian-mixture VAE of Dilokthanakul et al. (report §5.2)
# -----------------------------------------------------------------------------
class GMVAE(_Base):
    r"""Gaussian-mixture VAE (Dilokthanakul et al. 2016) with its four-term ELBO (Chapter 2, eq. ``ch02-gmvae-elbo``).

    Generative model: :math:`w\sim\mathcal N(0,I)`, :math:`c\sim\mathrm{Uniform}\{1..K\}`,
    :math:`z\mid w,c\sim\mathcal N(\mu_c(w),\mathrm{diag}\,\sigma_c^2(w))`, :math:`x\mid z\sim p_\theta(x\mid z)` (Bernoulli).
    Inference: :math:`q(z\mid x)q(w\mid x)p(c\mid z,w)` with a shared encoder trunk and :math:`p(c\mid z,w)` by Bayes' rule.

    Args:
        latent_dim: :math:`D` (dimension of z); w_dim: dimension of w; num_components: :math:`K`.
        hidden: encoder trunk sizes (decoder mirrored); prior_hidden: hidden units of the tanh prior network.
        free_bits: :math:`\lambda` of the z-prior clamp (the loss uses :math:`\max(\lambda,\text{batch mean})`; the
            code's default is 0.5; 0 gives the plain ELBO).
        cond_prior: ``"analytic"`` (the paper's code: responsibilities times the closed-form Gaussian KL) or
            ``"sample"`` (responsibilities times :math:`\log q(z\mid x)-\log p(z\mid w,c)` at the same sample: with it the
            four terms add up to the exact single-sample ELBO).
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 10,
        w_dim: int = 10,
        num_components: int = 10,
        hidden: Sequence[int] = (256,),
        prior_hidden: int = 64,
        activation: str = "relu",
        free_bits: float = 0.5,
        cond_prior: str = "analytic",
        binarize: str | None = "dynamic",
    ):
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.w_dim = check_int("w_dim", w_dim)
        self.num_components = check_int("num_components", num_components)
        check_int("prior_hidden", prior_hidden)
        if not (isinstance(free_bits, (int, float)) and free_bits >= 0):
            raise ValueError(
                f"free_bits must be a number >= 0, got {free_bits!r}"
            )
        if cond_prior not in ("analytic", "sample"):
            raise ValueError(
                "cond_prior must be 'analytic' or 'sample', got "
                f"{cond_prior!r}"
            )
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        if len(hidden) < 1:
            raise ValueError("hidden must list at least one layer size")
        self.free_bits, self.cond_prior, self.binarize = (
            float(free_bits),
            cond_prior,
            binarize,
        )
        self.data_shape = tuple(data_shape)
        k, d = self.num_components, self.latent_dim
        self.trunk = MLP(
            math.prod(self.data_shape), hidden[:-1], hidden[-1], activation
        )
        self.act = {
            "relu": nn.ReLU,
            "tanh": nn.Tanh,
            "elu": nn.ELU,
            "softplus": nn.Softplus,
        }[activation]()
        self.z_head = nn.Linear(hidden[-1], 2 * d)
        self.w_head = nn.Linear(hidden[-1], 2 * self.w_dim)
        self.prior_net = MLP(self.w_dim, (prior_hidden,), 2 * k * d, "tanh")
        self.dec = BernoulliDecoder(
            d, self.data_shape, tuple(reversed(hidden)), activation
        )

    def encode(self, x: torch.Tensor):
        """``(q_mean, q_logvar, w_mean, w_logvar)``: ``(B, D)``, ``(B, D)``, ``(B, w_dim)``, ``(B, w_dim)``."""
        h = self.act(self.trunk(x.flatten(start_dim=1)))
        q_mean, q_logvar = self.z_head(h).chunk(2, -1)
        w_mean, w_logvar = self.w_head(h).chunk(2, -1)
        return q_mean, _soft_clamp(q_logvar), w_mean, _soft_clamp(w_logvar)

    def prior_components(self, w: torch.Tensor):
        r""":math:`(\mu_c(w),\log\sigma^2_c(w))` for every cluster: ``(..., K, D)`` each."""
        h = self.prior_net(w).unflatten(
            -1, (self.num_components, 2 * self.latent_dim)
        )
        mean, logvar = h.chunk(2, -1)
        return mean, _soft_clamp(logvar)

    def log_responsibilities(self, z, p_mean, p_logvar) -> torch.Tensor:
        r""":math:`\log p(c\mid z,w)` with a uniform :math:`p(c)`: ``(..., K)``."""
        return torch.log_softmax(
            _diag_log_normal(z.unsqueeze(-2), p_mean, p_logvar), -1
        )

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four ELBO terms per example (one sample of z and w), each ``(B,)``, plus ``elbo`` and ``log_resp``."""
        q_mean, q_logvar, w_mean, w_logvar = self.encode(x)
        z = q_mean + torch.exp(0.5 * q_logvar) * torch.randn_like(q_mean)
        w = w_mean + torch.exp(0.5 * w_logvar) * torch.randn_like(w_mean)
        p_mean, p_logvar = self.prior_components(w)
        log_resp = self.log_responsibilities(z, p_mean, p_logvar)
        resp = log_resp.exp()
        rec = self.dec(z).log_prob(x)
        if self.cond_prior == "analytic":
            kl_k = kl_normal_diag(
                q_mean.unsqueeze(-2), q_logvar.unsqueeze(-2), p_mean, p_logvar
            )
        else:
            kl_k = _diag_log_normal(z, q_mean, q_logvar).unsqueeze(
                -1
            ) - _diag_log_normal(z.unsqueeze(-2), p_mean, p_logvar)
        cond = (resp * kl_k).sum(-1)
        w_prior = kl_normal_diag(w_mean, w_logvar)
        z_prior = (resp * (log_resp + math.log(self.num_components))).sum(-1)
        return {
            "elbo": rec - cond - w_prior - z_prior,
            "rec": rec,
            "cond_prior": cond,
            "w_prior": w_prior,
            "z_prior": z_prior,
            "log_resp": log_resp,
        }

    def elbo(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example four-term ELBO estimate and its terms, each ``(B,)``."""
        t = self.terms(x)
        t.pop("log_resp")
        return t

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x = self._prepare(batch)
        t = self.terms(x)
        z_prior = torch.clamp(
            t["z_prior"].mean(), min=self.free_bits
        )  # batch-level free bits (no gradient below)
        loss = -(t["rec"] - t["cond_prior"] - t["w_prior"]).mean() + z_prior
        logs = {"loss": loss.item()}
        logs.update(
            {
                k: t[k].mean().item()
                for k in ("elbo", "rec", "cond_prior", "w_prior", "z_prior")
            }
        )
        return loss, logs

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""``(S, B)``: :math:`\log p(x\mid z)+\log p(z\mid w)+\log p(w)-\log q(z\mid x)-\log q(w\mid x)`, c summed out."""
        q_mean, q_logvar, w_mean, w_logvar = self.encode(x)
        z = q_mean + torch.exp(0.5 * q_logvar) * torch.randn(
            num_samples,
            *q_mean.shape,
            device=q_mean.device,
            dtype=q_mean.dtype,
        )
        w = w_mean + torch.exp(0.5 * w_logvar) * torch.randn(
            num_samples,
            *w_mean.shape,
            device=w_mean.device,
            dtype=w_mean.dtype,
        )
        p_mean, p_logvar = self.prior_components(w)
        log_pz = torch.logsumexp(
            _diag_log_normal(z.unsqueeze(-2), p_mean, p_logvar), -1
        ) - math.log(self.num_components)
        log_pw = _diag_log_normal(w, torch.zeros_like(w), torch.zeros_like(w))
        log_q = _diag_log_normal(z, q_mean, q_logvar) + _diag_log_normal(
            w, w_mean, w_logvar
        )
        return self.dec(z).log_prob(x) + log_pz + log_pw - log_q

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\arg\max_c p(c\mid z,w)` at the posterior means of z and w, ``(B,)``."""
        q_mean, _, w_mean, _ = self.encode(x.to(self._device()))
        return self.log_responsibilities(
            q_mean, *self.prior_components(w_mean)
        ).argmax(-1)

    @torch.no_grad()
    def sample_components(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` decoded samples per cluster (each with its own w): ``(K * n, *data_shape)``, cluster-major."""
        ref = next(self.parameters())
        w = torch.randn(
            n, self.w_dim, generator=generator, dtype=ref.dtype
        ).to(ref.device)
        p_mean, p_logvar = self.prior_components(w)  # (n, K, D)
        eps = torch.randn(
            p_mean.shape, generator=generator, dtype=ref.dtype
        ).to(ref.device)
        z = (
            (p_mean + torch.exp(0.5 * p_logvar) * eps)
            .transpose(0, 1)
            .reshape(-1, self.latent_dim)
        )
        return self.dec.mean(z)


# -----------------------------------------------------------------------------
# Clustering helpers
# -----------------------------------------------------------------------------
def cluster_accuracy(clusters, labels, method: str = "majority") -> float:
    """Unsupervised clustering accuracy in [0, 1].

    Args:
        clusters: ``(N,)`` integer cluster indices; labels: ``(N,)`` integer class labels (same length).
        method: ``"majority"`` (each cluster predicts its most frequent label; several clusters may predict the same
            label -- forgiving when there are more clusters than classes) or ``"hungarian"`` (a one-to-one map from
            clusters to labels maximising the matches, ``scipy.optimize.linear_sum_assignment``; examples in
            unmatched clusters count as errors).
    """
    clusters, labels = (
        torch.as_tensor(clusters).long().flatten(),
        torch.as_tensor(labels).long().flatten(),
    )
    if clusters.shape != labels.shape or clusters.numel() == 0:
        raise ValueError(
            "clusters and labels must be non-empty and of the same length, "
            f"got {clusters.numel()} "
            f"and {labels.numel()}"
        )
    if (clusters < 0).any() or (labels < 0).any():
        raise ValueError("clusters and labels must be non-negative integers")
    counts = torch.zeros(
        int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long
    )
    counts.index_put_(
        (clusters, labels), torch.ones_like(clusters), accumulate=True
    )
    if method == "majority":
        correct = counts.max(1).values.sum().item()
    elif method == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
        correct = (
            counts[torch.as_tensor(rows), torch.as_tensor(cols)].sum().item()
        )
    else:
        raise ValueError(
            f"method must be 'majority' or 'hungarian', got {method!r}"
        )
    return correct / clusters.numel()


def kmeans(
    z: torch.Tensor,
    k: int,
    num_iters: int = 50,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on ``z`` ``(N, D)``; returns cluster indices ``(N,)``."""
    check_int("k", k)
    check_int("num_iters", num_iters, 0)
    z = torch.as_tensor(z, dtype=torch.float64)
    if z.dim() != 2 or z.shape[0] < k:
        raise ValueError(
            f"z must have shape (N, D) with N >= k={k}, got {tuple(z.shape)}"
        )
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z must be finite (no NaN or inf)")
    idx = [int(torch.randint(z.shape[0], (1,), generator=generator))]
    for _ in range(
        1,
        k,
        # k-means++: next centre with probability proportional to the squared
        # distance
    ):
        d2 = torch.cdist(z, z[idx]).pow(2).min(1).values
        if not bool(
            (d2 > 0).any()
        ):  # every point is already a centre (duplicates): any point will do
            d2 = torch.ones_like(d2)
        idx.append(
            int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        )
    centres = z[idx].clone()
    for _ in range(num_iters):
        assign = torch.cdist(z, centres).argmin(1)
        new = torch.stack(
            [
                z[assign == j].mean(0) if (assign == j).any() else centres[j]
                for j in range(k)
            ]
        )
        if torch.allclose(new, centres):
            break
        centres = new
    return torch.cdist(z, centres).argmin(1)


#: Chapter 2's clustering comparison on all of MNIST, at a larger budget than
#: the page's: the GMVAE (b) of the chapter and a Gaussian VAE of the same
#: size whose posterior means are clustered by k-means, both trained on all
#: 60,000 images for ``num_epochs`` full passes, 3 seeds; clustering accuracy
#: on all 10,000 test digits. The GMVAE paper's own setting (K = 14, 1,000
#: hidden units, 200-d latent, 100 epochs, Adam 1e-4, batch 50) is larger
#: than a CPU-hour allows; its accuracy table could not be checked.
CLUSTERING = dict(
    latent_dim=10,
    num_components=10,
    hidden=(256,),
    batch_size=100,
    lr=1e-3,
    num_epochs=10,
    seeds=(0, 1, 2),
    eval_k=100,
    eval_num_test=1000,
)


def build_gmvae(**overrides) -> GMVAE:
    """The untrained GMVAE of :data:`CLUSTERING` (free bits 0, as in the chapter)."""
    c = {**CLUSTERING, **overrides}
    return GMVAE(
        latent_dim=c["latent_dim"],
        num_components=c["num_components"],
        hidden=tuple(c["hidden"]),
        free_bits=0.0,
    )


def train_clustering(
    out=None,
    num_epochs: int | None = None,
    progress: bool = True,
    num_train: int | None = None,
    num_test: int | None = None,
    seeds=None,
    root=None,
    **overrides,
):
    """Train the GMVAE and the Gaussian VAE of :data:`CLUSTERING` for every seed on all training images, measure
    clustering accuracy (majority and Hungarian) on the test digits (k-means on the VAE's posterior means, K
    clusters), the test ELBO and the ``eval_k``-sample bound; save the seed-0 GMVAE with every result in its
    metadata (``ch02_clustering``) and return ``(model, meta)``. The smaller arguments are for smoke runs."""
    import time
    from pathlib import Path

    from . import metrics
    from .data import epoch_loader, load_mnist
    from .models import VAE
    from .train import fit, save_checkpoint

    c = {**CLUSTERING, **overrides}
    epochs = c["num_epochs"] if num_epochs is None else int(num_epochs)
    seeds = list(c["seeds"] if seeds is None else seeds)
    x_train, _ = load_mnist("train", root=root)
    x_train = x_train[:num_train] if num_train else x_train
    x_test, y_test = load_mnist("test", root=root, binarize="static")
    if num_test:
        x_test, y_test = x_test[:num_test], y_test[:num_test]
    k = c["num_components"]
    results, saved, t_all = {}, None, time.perf_counter()
    for seed in seeds:
        models = {}
        torch.manual_seed(seed)
        models["GMVAE"] = build_gmvae(**overrides)
        torch.manual_seed(seed)
        models["VAE + k-means"] = VAE.mlp(
            latent_dim=c["latent_dim"],
            hidden=tuple(c["hidden"]),
            activation="relu",
            binarize="dynamic",
        )
        for name, model in models.items():
            model.dec.init_bias(x_train)
            loader = epoch_loader(
                x_train, batch_size=c["batch_size"], seed=seed
            )
            hist = fit(
                model, loader, epochs, lr=c["lr"], seed=seed, progress=False
            )
            model.eval()
            with torch.no_grad():
                if name == "GMVAE":
                    clusters = torch.cat(
                        [model.cluster(xb) for xb in x_test.split(1000)]
                    )
                else:
                    mu = torch.cat(
                        [model.encode(xb)[0] for xb in x_test.split(1000)]
                    )
                    clusters = kmeans(
                        mu, k, generator=torch.Generator().manual_seed(seed)
                    )
            torch.manual_seed(10_000 + seed)
            ev = metrics.evaluate(
                model, x_test[: c["eval_num_test"]], k=c["eval_k"]
            )
            results[f"{name}/{seed}"] = {
                "accuracy_majority": cluster_accuracy(clusters, y_test),
                "accuracy_hungarian": cluster_accuracy(
                    clusters, y_test, "hungarian"
                ),
                "clusters_used": int(clusters.unique().numel()),
                "test_elbo": ev["elbo"],
                "test_elbo_se": ev["elbo_se"],
                "test_bound": ev["iwae"],
                "test_bound_se": ev["iwae_se"],
                "train_seconds": hist.seconds,
            }
            if progress:
                r = results[f"{name}/{seed}"]
                print(
                    f"{name:>14} seed {seed}: accuracy "
                    f"{r['accuracy_majority']:.3f} (majority), "
                    f"{r['accuracy_hungarian']:.3f} (Hungarian), "
                    f"L_{c['eval_k']} {r['test_bound']:.2f} "
                    f"({hist.seconds:.0f} s)",
                    flush=True,
                )
            if name == "GMVAE" and seed == seeds[0]:
                saved = model
    meta = {
        "name": "ch02_clustering",
        "recipe": {**c, "hidden": list(c["hidden"]), "seeds": seeds},
        "num_epochs": epochs,
        "num_train": len(x_train),
        "num_test": len(x_test),
        "results": results,
        "saved": f"GMVAE/{seeds[0]}",
        "train_seconds": time.perf_counter() - t_all,
        "command": "python -m vaebook.pretrained train ch02_clustering",
    }
    save_checkpoint(saved, Path(out), **meta)
    return saved, meta
