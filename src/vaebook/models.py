"""MLP encoders, decoders and the VAE (Chapter 1), written so that later chapters compose them.

Contract shared by every model in the book: ``model.loss(batch) -> (loss, logs)`` where ``loss`` is the scalar to
minimise and ``logs`` a dict of floats (every term of the objective), so that :func:`vaebook.train.fit` trains any
of them. Models with a tractable joint also implement ``log_weights(x, num_samples)`` for the importance-weighted
bound in :mod:`vaebook.metrics`.

Shapes: images are ``(B, 1, 28, 28)`` (any ``data_shape`` works); latents ``(..., B, latent_dim)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from .divergences import kl_normal_diag
from .utils import check_int, check_number

__all__ = [
    "MLP",
    "GaussianEncoder",
    "BernoulliDecoder",
    "GaussianDecoder",
    "BatchMixin",
    "VAE",
]

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> out_dim`` with ``activation`` between layers (none after the last)."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        activation: str = "tanh",
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got "
                f"{activation!r}"
            )
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim)):
            check_int(name, v)
        hidden = tuple(hidden)
        if not all(
            isinstance(h, numbers.Integral)
            and not isinstance(h, bool)
            and h >= 1
            for h in hidden
        ):
            raise ValueError(
                "hidden must be a sequence of positive ints (layer widths), "
                f"got {hidden!r}"
            )
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)


class GaussianEncoder(nn.Module):
    r"""Amortised diagonal Gaussian posterior :math:`q_\phi(z\mid x)=\mathcal N(\mu_\phi(x),\mathrm{diag}\,e^{v_\phi(x)})`.

    ``forward(x)`` flattens ``x`` to ``(B, prod(data_shape))`` and returns ``(q_mean, q_logvar)``, each ``(B, latent_dim)``.
    The log-variance is soft-clamped to ``[-logvar_bound, logvar_bound]`` (``bound * tanh(v / bound)``) so that an
    early, too-large learning rate cannot produce ``exp`` overflows; the default bound (12) never binds in practice.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "tanh",
        logvar_bound: float = 12.0,
    ):
        super().__init__()
        check_int("data_dim", data_dim)
        check_int("latent_dim", latent_dim)
        self.latent_dim = latent_dim
        self.logvar_bound = check_number(
            "logvar_bound", logvar_bound, 0.0, strict=True
        )
        self.net = MLP(data_dim, hidden, 2 * latent_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x.flatten(start_dim=1) if x.dim() > 2 else x)
        q_mean, raw = h.chunk(2, dim=-1)
        b = self.logvar_bound
        return q_mean, b * torch.tanh(raw / b)


class BernoulliDecoder(nn.Module):
    r"""Bernoulli likelihood :math:`p_\theta(x\mid z)=\prod_i \mathrm{Bern}(x_i;\sigma(f_\theta(z)_i))`.

    ``forward(z)`` returns a ``torch.distributions.Independent(Bernoulli(logits=...))`` with event shape
    ``data_shape``; its ``log_prob`` is the stable binary cross-entropy with logits. ``validate_args=False`` lets it
    score grey-level targets too (as most code does); the book trains on binarised data.
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (400,),
        activation: str = "tanh",
    ):
        super().__init__()
        check_int("latent_dim", latent_dim)
        self.data_shape = _check_shape(data_shape)
        self.net = MLP(
            latent_dim, hidden, math.prod(self.data_shape), activation
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(-1, self.data_shape)

    def forward(self, z: torch.Tensor) -> Independent:
        return Independent(
            Bernoulli(logits=self.logits(z), validate_args=False),
            len(self.data_shape),
        )

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoded image :math:`\\mathbb E[x\\mid z]` (pixel probabilities), shape ``(..., *data_shape)``."""
        return torch.sigmoid(self.logits(z))

    @torch.no_grad()
    def init_bias(self, x_train: torch.Tensor, eps: float = 1e-3) -> None:
        """Set the output bias to the training pixels' log-odds (Burda et al.'s initialisation)."""
        p = x_train.float().mean(0).flatten().clamp(eps, 1 - eps)
        self.net[-1].bias.copy_(torch.log(p) - torch.log1p(-p))


class GaussianDecoder(nn.Module):
    r"""Gaussian likelihood :math:`p_\theta(x\mid z)=\mathcal N(x;\mu_\theta(z),\mathrm{diag}\,\sigma^2_\theta(z))`.

    ``learn_var="output"`` predicts a per-pixel log-variance, ``"global"`` learns one per pixel shared over ``z``,
    ``"fixed"`` uses ``fixed_logvar``. Means pass through a sigmoid when ``squash=True`` (Kingma & Welling's Frey
    Face decoder). Log-variances are floored at ``min_logvar`` (a floor avoids the classic NaN of unbounded
    likelihoods); predicted ones (``"output"``) are also capped at ``max_logvar`` (without a cap, large latent codes
    through ReLU layers overflowed ``exp(logvar / 2)`` to ``inf``).
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (400,),
        activation: str = "tanh",
        learn_var: str = "global",
        fixed_logvar: float = 0.0,
        min_logvar: float = -9.0,
        squash: bool = False,
        max_logvar: float = 30.0,
    ):
        super().__init__()
        if learn_var not in ("output", "global", "fixed"):
            raise ValueError(
                "learn_var must be 'output', 'global' or 'fixed', got "
                f"{learn_var!r}"
            )
        check_int("latent_dim", latent_dim)
        self.data_shape = _check_shape(data_shape)
        check_number("fixed_logvar", fixed_logvar)
        self.min_logvar = check_number("min_logvar", min_logvar)
        self.max_logvar = check_number(
            "max_logvar", max_logvar, self.min_logvar, strict=True
        )
        self.learn_var, self.squash = learn_var, squash
        d = math.prod(self.data_shape)
        self.net = MLP(
            latent_dim,
            hidden,
            2 * d if learn_var == "output" else d,
            activation,
        )
        if learn_var == "global":
            self.logvar = nn.Parameter(torch.zeros(d))
        else:
            self.register_buffer(
                "logvar", torch.full((d,), float(fixed_logvar))
            )

    def _params(self, z):
        h = self.net(z)
        if self.learn_var == "output":
            mean, logvar = h.chunk(2, dim=-1)
        else:
            mean, logvar = h, self.logvar.expand_as(h)
        if self.squash:
            mean = torch.sigmoid(mean)
        logvar = self.min_logvar + nn.functional.softplus(
            logvar - self.min_logvar
        )
        if (
            self.learn_var == "output"
            # an unbounded network output: a ceiling keeps exp(logvar /
            # 2) finite
        ):
            logvar = logvar.clamp(max=self.max_logvar)
        return mean.unflatten(-1, self.data_shape), logvar.unflatten(
            -1, self.data_shape
        )

    def forward(self, z: torch.Tensor) -> Independent:
        mean, logvar = self._params(z)
        return Independent(
            Normal(mean, torch.exp(0.5 * logvar)), len(self.data_shape)
        )

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self._params(z)[0]


def _check_shape(data_shape) -> tuple:
    shape = tuple(data_shape)
    if not shape or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
        for v in shape
    ):
        raise ValueError(
            "data_shape must be a non-empty sequence of positive ints, got "
            f"{data_shape!r}"
        )
    return tuple(int(v) for v in shape)


class BatchMixin:
    """Batch handling shared by every model of the book: ``_prepare(batch)`` takes a tensor or a ``(x, ...)`` tuple
    from a DataLoader, moves ``x`` to the model's device and, if ``self.binarize == "dynamic"`` and the model is
    training, draws a fresh binarisation (Burda et al.'s dynamic binarisation)."""

    def _device(self):
        return next(self.parameters()).device

    def _prepare(self, x):
        if isinstance(x, (list, tuple)):
            x = x[0]
        x = x.to(self._device())
        if self.binarize == "dynamic" and self.training:
            x = torch.bernoulli(x)
        return x


class VAE(BatchMixin, nn.Module):
    r"""The variational autoencoder of Chapter 1 with a standard normal prior.

    ``elbo(x)`` returns per-example terms of eq. ``elbo`` of Chapter 1,
    :math:`\mathcal L = \mathbb E_q[\log p_\theta(x\mid z)] - \mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z))`, with the KL in
    closed form (``kl="analytic"``, eq. ``kl-gauss-diag``) or estimated from the same samples (``kl="mc"``).
    ``loss(x)`` is the negative ELBO averaged over the batch, with a KL weight ``beta`` (1 = the true ELBO).

    Later chapters subclass it and override :meth:`kl_term` (mixture priors, relaxed categoricals) or
    :meth:`encode`/:meth:`sample_latent`.
    """

    def __init__(
        self,
        enc: nn.Module,
        dec: nn.Module,
        latent_dim: int | None = None,
        beta: float = 1.0,
        kl: str = "analytic",
        binarize: str | None = None,
    ):
        super().__init__()
        self.enc, self.dec = enc, dec
        self.latent_dim = (
            latent_dim if latent_dim is not None else enc.latent_dim
        )
        if kl not in ("analytic", "mc"):
            raise ValueError(f"kl must be 'analytic' or 'mc', got {kl!r}")
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        self.beta, self.kl, self.binarize = (
            check_number("beta", beta, 0.0),
            kl,
            binarize,
        )

    @classmethod
    def mlp(
        cls,
        latent_dim: int = 20,
        hidden: Sequence[int] = (400,),
        data_shape: Sequence[int] = (1, 28, 28),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        **kwargs,
    ) -> "VAE":
        """An MLP VAE: encoder ``D -> hidden -> 2*latent_dim``, decoder mirrored (``hidden`` reversed).

        ``likelihood`` is ``"bernoulli"`` or ``"gaussian"``; extra keyword arguments go to :class:`VAE`.
        """
        d = math.prod(data_shape)
        enc = GaussianEncoder(d, latent_dim, hidden, activation)
        if likelihood == "bernoulli":
            dec = BernoulliDecoder(
                latent_dim, data_shape, tuple(reversed(hidden)), activation
            )
        elif likelihood == "gaussian":
            dec = GaussianDecoder(
                latent_dim, data_shape, tuple(reversed(hidden)), activation
            )
        else:
            raise ValueError(
                "likelihood must be 'bernoulli' or 'gaussian', got "
                f"{likelihood!r}"
            )
        return cls(enc, dec, latent_dim, **kwargs)

    # -- pieces
    # -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_mean, q_logvar)``, each ``(B, latent_dim)``."""
        return self.enc(x)

    @staticmethod
    def reparameterize(
        q_mean: torch.Tensor,
        q_logvar: torch.Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""The reparameterisation :math:`z=\mu+\sigma\odot\epsilon`, :math:`\epsilon\sim\mathcal N(0,I)` (Chapter 1).

        Returns ``(B, D)``, or ``(num_samples, B, D)`` when ``num_samples`` is given.
        """
        if num_samples is not None:
            check_int("num_samples", num_samples)
        shape = (
            q_mean.shape
            if num_samples is None
            else (num_samples, *q_mean.shape)
        )
        eps = torch.randn(
            shape,
            dtype=q_mean.dtype,
            device=q_mean.device,
            generator=generator,
        )
        return q_mean + torch.exp(0.5 * q_logvar) * eps

    def prior(self) -> Independent:
        """:math:`p(z)=\\mathcal N(0, I)`."""
        zero = torch.zeros(self.latent_dim, device=self._device())
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def kl_term(self, q_mean, q_logvar, z=None) -> torch.Tensor:
        """Per-example KL(q(z|x) || p(z)), ``(B,)``; ``z`` (``(S, B, D)``) is used by the Monte Carlo estimate."""
        if self.kl == "analytic" or z is None:
            return kl_normal_diag(q_mean, q_logvar)
        q = Independent(Normal(q_mean, torch.exp(0.5 * q_logvar)), 1)
        return (q.log_prob(z) - self.prior().log_prob(z)).mean(0)

    # -- objectives
    # -------------------------------------------------------------------------
    def elbo(
        self, x: torch.Tensor, num_samples: int = 1
    ) -> dict[str, torch.Tensor]:
        """Per-example ``{"elbo", "rec", "kl"}``, each ``(B,)``; ``rec`` is :math:`\\mathbb E_q\\log p(x|z)` (L samples)."""
        q_mean, q_logvar = self.encode(x)
        z = self.reparameterize(q_mean, q_logvar, num_samples)
        rec = self.dec(z).log_prob(x).mean(0)
        kl = self.kl_term(q_mean, q_logvar, z)
        return {"elbo": rec - kl, "rec": rec, "kl": kl}

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x = self._prepare(batch)
        terms = self.elbo(x)
        loss = -(terms["rec"] - self.beta * terms["kl"]).mean()
        return loss, {
            "loss": loss.item(),
            "elbo": terms["elbo"].mean().item(),
            "rec": terms["rec"].mean().item(),
            "kl": terms["kl"].mean().item(),
        }

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""Importance log-weights :math:`\log p(x,z_s)-\log q(z_s\mid x)`, ``(num_samples, B)`` (for the IWAE bound)."""
        q_mean, q_logvar = self.encode(x)
        z = self.reparameterize(q_mean, q_logvar, num_samples)
        q = Independent(Normal(q_mean, torch.exp(0.5 * q_logvar)), 1)
        return (
            self.dec(z).log_prob(x) + self.prior().log_prob(z) - q.log_prob(z)
        )

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images decoded from prior samples (pixel means), ``(n, *data_shape)``."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(
            self._device()
        )
        return self.dec.mean(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded posterior means, ``dec.mean(q_mean)``."""
        return self.dec.mean(self.encode(x.to(self._device()))[0])
