r"""Sequence models with latent variables (Chapter 9): the VRNN, two GM-VRNNs and an LSTM baseline.

* :class:`VRNN` -- the variational RNN of Chung et al. (2015): feature networks :math:`\varphi^x,\varphi^z`, a
  state-dependent prior :math:`p(z_t\mid h_{t-1})`, an encoder :math:`q(z_t\mid x_t,h_{t-1})`, a decoder
  :math:`p(x_t\mid z_t,h_{t-1})` and the recurrence :math:`h_t=f(\varphi^x(x_t),\varphi^z(z_t),h_{t-1})`. Its
  objective is the per-time-step ELBO of Chapter 9, eq. ``ch09-elbo``, with the closed-form Gaussian KL per step
  (eq. ``ch09-kl-step``, :func:`vaebook.divergences.kl_normal_diag`).
* :class:`GMVRNN` -- Gaussian-mixture latents per step (Harder's project report, section 5):
  ``variant="gumbel"`` (a): a mixture posterior and prior, a Gumbel-softmax sample and the matched-bound KL
  (eq. ``ch09-matched``, equal to :func:`vaebook.mixtures.kl_gmm` with ``method="matched"``);
  ``variant="gmvae"`` (b): GMVAE's latent per step, with the four terms reconstruction, conditional prior,
  w-prior and v-prior (eq. ``ch09-gmvae-terms``).
* :class:`LSTMBaseline` -- an autoregressive LSTM with the same Bernoulli output distribution; its
  log-likelihood is exact.

Every model follows the book's contract ``loss(batch) -> (loss, logs)`` (:func:`vaebook.train.fit`) and has
``log_weights(x, num_samples) -> (num_samples, B)`` for the importance-weighted bound of
:func:`vaebook.metrics.iwae_bound` (with sequential proposals :math:`\prod_tq(z_t\mid x_{\le t},z_{<t})`).

Shapes: a batch of sequences is ``(B, T, x_dim)`` (binarised sequential MNIST: ``(B, 28, 28)``, rows as time steps,
see :func:`vaebook.data.load_sequential_mnist`); an optional ``mask`` ``(B, T)`` holds 1 for real steps and 0 for
padding. Per-step terms are ``(B, T)`` and are 0 on padded steps; masked steps do not update the recurrent state,
so a padded sequence gives exactly the terms of the truncated one.

Pretrained checkpoints (``ch09_vrnn``, ``ch09_lstm``, ``ch09_gmvrnn_a``, ``ch09_gmvrnn_b``) are made with::

    python -m vaebook.vrnn train ch09_vrnn      # or ch09_lstm, ch09_gmvrnn_a, ch09_gmvrnn_b; --num-epochs N
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .divergences import kl_categorical, kl_normal_diag
from .kernels import _check_backend, matched_kl, resolve_backend
from .models import MLP
from .relaxed import gumbel_max, gumbel_softmax
from .utils import check_int, check_number

__all__ = [
    "VRNN",
    "GMVRNN",
    "LSTMBaseline",
    "log_normal_diag",
    "split_mask",
    "CONFIGS",
    "build",
    "train",
    "build_vrnn",
    "train_vrnn",
    "build_lstm",
    "train_lstm",
    "build_gmvrnn_a",
    "train_gmvrnn_a",
    "build_gmvrnn_b",
    "train_gmvrnn_b",
]

_LOG_2PI = math.log(2 * math.pi)


def log_normal_diag(
    x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    r""":math:`\log\mathcal N(x;\mu,\mathrm{diag}\,e^{v})` summed over the last dimension: ``(...)``."""
    if x.dim() == 0:
        raise ValueError(
            "x must have at least one dimension (the event dimension, summed "
            "over)"
        )
    try:
        torch.broadcast_shapes(x.shape, mean.shape, logvar.shape)
    except RuntimeError:
        raise ValueError(
            f"x, mean and logvar must broadcast, got shapes {tuple(x.shape)}, "
            f"{tuple(mean.shape)} and "
            f"{tuple(logvar.shape)}"
        ) from None
    if bool(torch.isnan(logvar.detach()).any()) or bool(
        torch.isnan(mean.detach()).any()
    ):
        raise ValueError("mean and logvar must not contain NaN")
    return -0.5 * (
        _LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar)
    ).sum(-1)


def split_mask(batch):
    """``(x, mask)`` from a batch: a tensor ``(B, T, D)``, or a tuple/list whose first item is ``x`` and whose
    second item, if it has shape ``(B, T)``, is the mask (labels ``(B,)`` from a ``TensorDataset`` are ignored)."""
    if isinstance(batch, (list, tuple)):
        x = batch[0]
        mask = (
            batch[1]
            if len(batch) > 1
            and torch.is_tensor(batch[1])
            and batch[1].shape == x.shape[:2]
            else None
        )
        return x, mask
    return batch, None


def _check_x(x: torch.Tensor, x_dim: int) -> None:
    if not torch.is_tensor(x) or x.dim() != 3 or x.shape[-1] != x_dim:
        raise ValueError(
            f"x must be a tensor of shape (B, T, {x_dim}), got "
            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
        )


def _check_mask(mask, x):
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must have shape (B, T) = {tuple(x.shape[:2])}, got "
            f"{tuple(mask.shape)}"
        )
    return mask.to(x.dtype)


class _GaussHead(nn.Module):
    """MLP whose output is split into a mean and a floored log-variance (``min_logvar + softplus(raw - min)``);
    the floor is what keeps the VRNN's variances from collapsing to 0 and the loss from becoming NaN."""

    def __init__(
        self, in_dim, hidden, out_dim, min_logvar=-9.0, max_logvar=9.0
    ):
        super().__init__()
        self.net = MLP(in_dim, hidden, 2 * out_dim, "relu")
        self.min_logvar, self.max_logvar = float(min_logvar), float(max_logvar)

    def forward(self, inp):
        mean, raw = self.net(inp).chunk(2, dim=-1)
        logvar = self.min_logvar + F.softplus(raw - self.min_logvar)
        return mean, logvar.clamp(max=self.max_logvar)


def _features(in_dim, feat_dim):
    return nn.Sequential(MLP(in_dim, (feat_dim,), feat_dim, "relu"), nn.ReLU())


class _RecurrentLatent(nn.Module):
    r"""Shared machinery: features, the recurrent cell, the decoder, the per-step loop with masking, the loss,
    the importance weights and generation. Subclasses define the latent part of one step."""

    terms: tuple = ("rec", "kl")

    def __init__(self, x_dim, h_dim, z_dim, feat_dim, cell, binarize):
        super().__init__()
        for name, v in (
            ("x_dim", x_dim),
            ("h_dim", h_dim),
            ("z_dim", z_dim),
            ("feat_dim", feat_dim),
        ):
            check_int(name, v)
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        self.x_dim, self.h_dim, self.z_dim, self.feat_dim = (
            x_dim,
            h_dim,
            z_dim,
            feat_dim,
        )
        self.cell_type, self.binarize = cell, binarize
        self.phi_x = _features(x_dim, feat_dim)
        self.phi_z = _features(z_dim, feat_dim)
        self.dec = MLP(
            feat_dim + h_dim, (feat_dim,), x_dim, "relu"
        )  # Bernoulli logits of x_t
        self.rnn = (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(
            2 * feat_dim, h_dim
        )

    # -- recurrent state
    # -------------------------------------------------------------------------
    def _device(self):
        return next(self.parameters()).device

    def init_state(self, batch_size: int):
        p = next(self.parameters())
        h = torch.zeros(batch_size, self.h_dim, device=p.device, dtype=p.dtype)
        return (h, torch.zeros_like(h)) if self.cell_type == "lstm" else (h,)

    def _update(self, fx_t, z, state, m=None):
        """:math:`h_t=f(\\varphi^x(x_t),\\varphi^z(z_t),h_{t-1})` (eq. ``ch09-recurrence``); steps with ``m == 0``
        keep the old state."""
        inp = torch.cat([fx_t, self.phi_z(z)], -1)
        new = self.rnn(inp, state if self.cell_type == "lstm" else state[0])
        new = new if self.cell_type == "lstm" else (new,)
        if m is None:
            return tuple(new)
        keep = m.unsqueeze(-1) > 0
        return tuple(torch.where(keep, n, o) for n, o in zip(new, state))

    def dec_logits(self, z, h):
        """Bernoulli logits of :math:`p(x_t\\mid z_t,h_{t-1})`, ``(B, x_dim)``."""
        return self.dec(torch.cat([self.phi_z(z), h], -1))

    def _rec(self, x_t, z, h):
        return -F.binary_cross_entropy_with_logits(
            self.dec_logits(z, h), x_t, reduction="none"
        ).sum(-1)

    # -- subclass hooks
    # -------------------------------------------------------------------------
    def _step(
        self, x_t, fx_t, h, noise
    ):  # -> (z, dict of (B,) terms incl. "rec", "kl", "kl_train", "logw")
        raise NotImplementedError

    def _prior_sample(self, h):
        raise NotImplementedError

    def _posterior_sample(self, fx_t, h):
        raise NotImplementedError

    # -- objectives
    # -------------------------------------------------------------------------
    def elbo_per_step(
        self, x: torch.Tensor, mask=None, noise=None
    ) -> dict[str, torch.Tensor]:
        r"""Per-step terms of the sequence ELBO (eq. ``ch09-elbo``), each ``(B, T)`` and 0 where ``mask == 0``.

        ``"rec"`` is :math:`\log p(x_t\mid z_t,h_{t-1})` at one sample :math:`z_t\sim q`; ``"kl"`` the per-step
        KL term (closed form given :math:`h_{t-1}`); ``"elbo"`` = ``rec - kl``, so ``out["elbo"].sum(1)`` is the
        one-sample sequence ELBO; ``"logw"`` the per-step log importance weight
        :math:`\log p(x_t,z_t\mid h_{t-1})-\log q(z_t\mid x_t,h_{t-1})`. Subclasses add their own terms.
        ``noise`` (optional) fixes the random numbers: for :class:`VRNN` a tensor ``(B, T, z_dim)`` of standard
        normals (used in the tests: a padded batch and its truncated sequences then give identical terms).
        """
        _check_x(x, self.x_dim)
        mask = _check_mask(mask, x)
        x = x.to(self._device())
        batch, steps, _ = x.shape
        fx = self.phi_x(x)
        state = self.init_state(batch)
        out: dict[str, list] = {}
        for t in range(steps):
            m = None if mask is None else mask[:, t]
            z, terms = self._step(
                x[:, t],
                fx[:, t],
                state[0],
                None if noise is None else noise[:, t],
            )
            for k, v in terms.items():
                out.setdefault(k, []).append(v if m is None else v * m)
            state = self._update(fx[:, t], z, state, m)
        res = {k: torch.stack(v, 1) for k, v in out.items()}
        res["elbo"] = res["rec"] - res["kl"]
        return res

    @torch.no_grad()
    def states(self, x: torch.Tensor) -> torch.Tensor:
        r"""The states :math:`h_{t-1}` seen by each step along one filtered pass (:math:`z_t\sim q`): ``(B, T, h_dim)``.
        With ``phi_x(x[:, t])`` they give every per-step distribution, e.g. ``mixture_params(fx_t, h[:, t])``."""
        _check_x(x, self.x_dim)
        fx = self.phi_x(x)
        state = self.init_state(x.shape[0])
        hs = []
        for t in range(x.shape[1]):
            hs.append(state[0])
            z, _ = self._step(x[:, t], fx[:, t], state[0], None)
            state = self._update(fx[:, t], z, state)
        return torch.stack(hs, 1)

    def elbo(self, x: torch.Tensor, mask=None) -> dict[str, torch.Tensor]:
        """Per-sequence ``{"elbo", "rec", "kl"}``, each ``(B,)`` (sums of :meth:`elbo_per_step` over time)."""
        terms = self.elbo_per_step(x, mask)
        return {k: terms[k].sum(1) for k in ("elbo", "rec", "kl")}

    def _prepare(self, batch):
        x, mask = split_mask(batch)
        x = x.to(self._device())
        if self.binarize == "dynamic" and self.training:
            x = torch.bernoulli(x)
        return x, mask

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative sequence ELBO averaged over the batch (nats per sequence), with the model's training KL
        (the same as the KL unless a free-bits clamp is set); ``batch`` as in :func:`split_mask`."""
        x, mask = self._prepare(batch)
        terms = self.elbo_per_step(x, mask)
        loss = -(terms["rec"] - terms["kl_train"]).sum(1).mean()
        logs = {
            "loss": loss.item(),
            "elbo": terms["elbo"].sum(1).mean().item(),
        }
        for k in self.terms:
            logs[k] = terms[k].sum(1).mean().item()
        return loss, logs

    def log_weights(
        self, x: torch.Tensor, num_samples: int, mask=None
    ) -> torch.Tensor:
        r"""Log importance weights :math:`\log p(x_{\le T},z_{\le T})-\log q(z_{\le T}\mid x_{\le T})` with the
        sequential proposal (eq. ``ch09-iw``): ``(num_samples, B)``; for :func:`vaebook.metrics.iwae_bound`."""
        _check_x(x, self.x_dim)
        b = x.shape[0]
        xs = x.repeat(num_samples, 1, 1)
        ms = (
            None
            if mask is None
            else _check_mask(mask, x).repeat(num_samples, 1)
        )
        return self.elbo_per_step(xs, ms)["logw"].sum(1).view(num_samples, b)

    # -- generation
    # -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        num: int,
        T: int = 28,
        prime=None,
        feed: str = "sample",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""``num`` sequences of length ``T``: ``(num, T, x_dim)``.

        Without ``prime``, every step draws :math:`z_t` from the prior :math:`p(z_t\mid h_{t-1})`, then
        :math:`x_t\sim p(x_t\mid z_t,h_{t-1})`. With ``prime`` (``(T0, x_dim)`` or ``(num, T0, x_dim)``, binary),
        the first ``T0`` rows are the prime, copied unchanged into the output, and the state is built by running the
        filter over them (:math:`z_t\sim q(z_t\mid x_t,h_{t-1})`); generation then continues from the prior.
        Generated rows are returned as pixel probabilities; what is fed back into the recurrence is a Bernoulli
        sample (``feed="sample"``, ancestral sampling) or the probabilities (``feed="mean"``).
        """
        if feed not in ("sample", "mean"):
            raise ValueError(f"feed must be 'sample' or 'mean', got {feed!r}")
        was = self.training
        self.eval()
        try:
            dev = self._device()
            out, t0 = _output_buffer(
                num, T, self.x_dim, prime, dev, next(self.parameters()).dtype
            )
            state = self.init_state(num)
            for t in range(T):
                h = state[0]
                if t < t0:
                    x_t = out[:, t]
                    fx_t = self.phi_x(x_t)
                    z = self._posterior_sample(fx_t, h)
                else:
                    z = self._prior_sample(h)
                    p = torch.sigmoid(self.dec_logits(z, h))
                    out[:, t] = p
                    x_t = (
                        torch.bernoulli(p, generator=generator)
                        if feed == "sample"
                        else p
                    )
                    fx_t = self.phi_x(x_t)
                state = self._update(fx_t, z, state)
            return out
        finally:
            self.train(was)


def _output_buffer(
    num: int, T: int, x_dim: int, prime, device, dtype=None
) -> tuple[torch.Tensor, int]:
    """The ``(num, T, x_dim)`` buffer a generator fills, with the priming rows copied in; returns it and their count.

    ``prime`` is ``None``, ``(T0, x_dim)`` (shared by all sequences) or ``(num, T0, x_dim)`` with ``T0 <= T``.
    """
    out = torch.zeros(num, T, x_dim, device=device, dtype=dtype)
    if prime is None:
        return out, 0
    prime = torch.as_tensor(prime, dtype=out.dtype, device=device)
    if prime.dim() == 2:
        prime = prime.expand(num, *prime.shape)
    if (
        prime.dim() != 3
        or prime.shape[0] != num
        or prime.shape[2] != x_dim
        or prime.shape[1] > T
    ):
        raise ValueError(
            f"prime must be (T0, {x_dim}) or ({num}, T0, {x_dim}) with T0 <= "
            f"{T}, "
            f"got {tuple(prime.shape)}"
        )
    out[:, : prime.shape[1]] = prime
    return out, prime.shape[1]


class VRNN(_RecurrentLatent):
    r"""The variational RNN (Chung et al., 2015) with a Bernoulli output, Chapter 9.

    One step, given the state :math:`h_{t-1}` (eqs. ``ch09-prior`` to ``ch09-recurrence``):

    * prior :math:`p(z_t\mid h_{t-1})=\mathcal N(\mu_{0,t},\mathrm{diag}\,\sigma^2_{0,t})` from ``prior(h)``;
    * encoder :math:`q(z_t\mid x_t,h_{t-1})=\mathcal N(\mu_{z,t},\mathrm{diag}\,\sigma^2_{z,t})` from
      ``enc([phi_x(x_t), h])``;
    * decoder :math:`p(x_t\mid z_t,h_{t-1})=\mathrm{Bern}(\sigma(\mathrm{dec}([\varphi^z(z_t),h_{t-1}])))`;
    * recurrence :math:`h_t=\mathrm{LSTM}([\varphi^x(x_t),\varphi^z(z_t)],h_{t-1})` (``cell="gru"`` for a GRU).

    Log-variances are floored at ``min_logvar`` (the missing floor is the NaN of the popular PyTorch port).
    ``beta`` weights the KL in :meth:`loss` (1: the ELBO). ``binarize="dynamic"`` draws a fresh binarisation of
    grey-level batches in training mode.
    """

    def __init__(
        self,
        x_dim: int = 28,
        h_dim: int = 128,
        z_dim: int = 16,
        feat_dim: int = 64,
        cell: str = "lstm",
        min_logvar: float = -9.0,
        beta: float = 1.0,
        binarize: str | None = "dynamic",
    ):
        super().__init__(x_dim, h_dim, z_dim, feat_dim, cell, binarize)
        check_number("beta", beta, 0.0)
        self.prior = _GaussHead(h_dim, (feat_dim,), z_dim, min_logvar)
        self.enc = _GaussHead(feat_dim + h_dim, (feat_dim,), z_dim, min_logvar)
        self.beta = float(beta)

    def prior_params(self, h):
        """``(p_mean, p_logvar)`` of :math:`p(z_t\\mid h_{t-1})`, each ``(B, z_dim)``."""
        return self.prior(h)

    def encode(self, fx_t, h):
        """``(q_mean, q_logvar)`` of :math:`q(z_t\\mid x_t,h_{t-1})` from the features ``phi_x(x_t)``."""
        return self.enc(torch.cat([fx_t, h], -1))

    def _step(self, x_t, fx_t, h, noise):
        p_mean, p_logvar = self.prior_params(h)
        q_mean, q_logvar = self.encode(fx_t, h)
        eps = torch.randn_like(q_mean) if noise is None else noise
        z = q_mean + torch.exp(0.5 * q_logvar) * eps
        rec = self._rec(x_t, z, h)
        kl = kl_normal_diag(q_mean, q_logvar, p_mean, p_logvar)
        logw = (
            rec
            + log_normal_diag(z, p_mean, p_logvar)
            - log_normal_diag(z, q_mean, q_logvar)
        )
        return z, {
            "rec": rec,
            "kl": kl,
            "kl_train": self.beta * kl,
            "logw": logw,
        }

    def step_params(
        self, x: torch.Tensor, noise=None
    ) -> dict[str, torch.Tensor]:
        """Prior and encoder parameters along one filtered pass, ``(B, T, z_dim)`` each (for tests and figures):
        ``{"p_mean", "p_logvar", "q_mean", "q_logvar", "z"}``, with the same ``noise`` convention as
        :meth:`elbo_per_step`."""
        _check_x(x, self.x_dim)
        fx = self.phi_x(x)
        state = self.init_state(x.shape[0])
        keys = ("p_mean", "p_logvar", "q_mean", "q_logvar", "z")
        out = {k: [] for k in keys}
        for t in range(x.shape[1]):
            h = state[0]
            p_mean, p_logvar = self.prior_params(h)
            q_mean, q_logvar = self.encode(fx[:, t], h)
            eps = torch.randn_like(q_mean) if noise is None else noise[:, t]
            z = q_mean + torch.exp(0.5 * q_logvar) * eps
            for k, v in zip(keys, (p_mean, p_logvar, q_mean, q_logvar, z)):
                out[k].append(v)
            state = self._update(fx[:, t], z, state)
        return {k: torch.stack(v, 1) for k, v in out.items()}

    def _prior_sample(self, h):
        p_mean, p_logvar = self.prior_params(h)
        return p_mean + torch.exp(0.5 * p_logvar) * torch.randn_like(p_mean)

    def _posterior_sample(self, fx_t, h):
        q_mean, q_logvar = self.encode(fx_t, h)
        return q_mean + torch.exp(0.5 * q_logvar) * torch.randn_like(q_mean)


class GMVRNN(_RecurrentLatent):
    r"""VRNN with a Gaussian-mixture latent per step (Harder's report, section 5), Chapter 9.

    ``variant="gumbel"`` (report 5.1, variant (a)): prior and encoder each output a ``K``-component diagonal mixture
    :math:`(\pi_t,\mu_{t,k},\sigma_{t,k})`. Training draws the relaxed sample
    :math:`z_t=\sum_kv_{t,k}(\mu^q_{t,k}+\sigma^q_{t,k}\odot\varepsilon_{t,k})`,
    :math:`v_t=\mathrm{softmax}((\log\pi^q_t+g)/\tau)` (``hard=True``: straight-through, an exact one-hot forward);
    the KL term is the matched bound with the identity pairing (eq. ``ch09-matched``),
    ``kl_categorical(q_logits, p_logits) + sum_k pi_q[k] * kl_normal_diag(q_k, p_k)``, an upper bound on the
    per-step KL between the mixtures. In eval mode the component is drawn exactly (Gumbel-max), so the ELBO is a
    valid bound and :meth:`log_weights` uses the exact mixture log-densities. ``tau`` is an attribute (annealed
    by :func:`train_gmvrnn_a` as :math:`\max(0.5,e^{-rt})`). Extra terms: ``"kl_cat"``, ``"kl_gauss"``.
    ``backend`` (``"auto"``, ``"torch"`` or ``"triton"``; the rule of :mod:`vaebook.kernels`) says where the
    Gumbel-softmax sample and the matched bound run: by default the Triton kernels for CUDA tensors (the matched
    bound then in one fused kernel, ``kl_gauss`` logged as ``kl - kl_cat``), the PyTorch code otherwise.

    ``variant="gmvae"`` (report 5.2, variant (b)): :math:`w_t\sim\mathcal N(\mu_{0,t},\sigma^2_{0,t})` and
    :math:`v_t\sim\mathrm{Cat}(\pi_{0,t})` from the prior network on :math:`h_{t-1}`;
    :math:`z_t\mid v_t=k,w_t\sim\mathcal N(\mu_k(w_t),\sigma^2_k(w_t))` (the mixture network ``gm``);
    :math:`q(z_t\mid x_t,h_{t-1})` and :math:`q(w_t\mid x_t,h_{t-1})` Gaussian; :math:`p(v_t\mid z_t,w_t,h_{t-1})` in
    closed form (the responsibilities :math:`r_t`). The per-step KL is the sum of the report's three
    regularisers (eq. ``ch09-gmvae-terms``), returned as ``"cond_prior"``, ``"w_prior"``, ``"v_prior"``, with one
    sample of :math:`(z_t,w_t)` (the report's eq. 19 with M = 1). ``free_bits`` (:math:`\lambda`) replaces the
    v-prior term in the training loss by :math:`\max(\lambda,\text{batch mean})` per step (GMVAE's clamp).
    :meth:`log_weights` uses the marginal :math:`p(z_t\mid w_t,h_{t-1})=\sum_k\pi_{0,t,k}\mathcal N(z_t;\mu_k(w_t),
    \sigma_k^2(w_t))`, so its mean is the exact ELBO (the four-term estimate is not unbiased for it, see Chapter 9).
    """

    def __init__(
        self,
        variant: str = "gumbel",
        x_dim: int = 28,
        h_dim: int = 128,
        z_dim: int = 16,
        num_components: int = 4,
        w_dim: int = 8,
        feat_dim: int = 64,
        cell: str = "lstm",
        tau: float = 1.0,
        hard: bool = False,
        free_bits: float = 0.0,
        min_logvar: float = -9.0,
        binarize: str | None = "dynamic",
        backend: str = "auto",
    ):
        super().__init__(x_dim, h_dim, z_dim, feat_dim, cell, binarize)
        self.backend = _check_backend(backend)
        if variant not in ("gumbel", "gmvae"):
            raise ValueError(
                f"variant must be 'gumbel' or 'gmvae', got {variant!r}"
            )
        check_int("num_components", num_components)
        check_int("w_dim", w_dim)
        check_number("tau", tau, 0.0, strict=True)
        check_number("free_bits", free_bits, 0.0)
        self.variant, self.K, self.w_dim = variant, num_components, w_dim
        self.tau, self.hard, self.free_bits = (
            float(tau),
            bool(hard),
            float(free_bits),
        )
        k = num_components
        if variant == "gumbel":
            self.terms = ("rec", "kl", "kl_cat", "kl_gauss")
            self.prior = MLP(h_dim, (feat_dim,), k + 2 * k * z_dim, "relu")
            self.enc = MLP(
                feat_dim + h_dim, (feat_dim,), k + 2 * k * z_dim, "relu"
            )
        else:
            self.terms = ("rec", "kl", "cond_prior", "w_prior", "v_prior")
            self.prior_w = _GaussHead(h_dim, (feat_dim,), w_dim, min_logvar)
            self.prior_v = MLP(h_dim, (feat_dim,), k, "relu")
            self.enc_w = _GaussHead(
                feat_dim + h_dim, (feat_dim,), w_dim, min_logvar
            )
            self.enc_z = _GaussHead(
                feat_dim + h_dim, (feat_dim,), z_dim, min_logvar
            )
            self.gm = MLP(w_dim, (feat_dim,), 2 * k * z_dim, "tanh")
        self.min_logvar = float(min_logvar)

    # -- variant (a)
    # -------------------------------------------------------------------------
    def _mixture(self, raw):
        k, d = self.K, self.z_dim
        logits = raw[..., :k]
        mean, lv = raw[..., k:].unflatten(-1, (2, k, d)).unbind(-3)
        logvar = (self.min_logvar + F.softplus(lv - self.min_logvar)).clamp(
            max=9.0
        )
        return logits, mean, logvar

    def mixture_params(self, fx_t, h):
        """Variant (a): ``((q_logits, q_mean, q_logvar), (p_logits, p_mean, p_logvar))``, logits ``(B, K)``,
        means and log-variances ``(B, K, z_dim)``."""
        return self._mixture(
            self.enc(torch.cat([fx_t, h], -1))
        ), self._mixture(self.prior(h))

    @staticmethod
    def matched_kl(q, p) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The matched bound of eq. ``ch09-matched`` with the identity pairing, as ``(kl_cat, kl_gauss)``, each
        ``(B,)``: :math:`\sum_k\pi^q_k\log(\pi^q_k/\pi^p_k)` and :math:`\sum_k\pi^q_k\mathrm{KL}(q_k\|p_k)`."""
        (q_logits, q_mean, q_logvar), (p_logits, p_mean, p_logvar) = q, p
        kl_cat = kl_categorical(q_logits, p_logits)
        kl_gauss = (
            torch.softmax(q_logits, -1)
            * kl_normal_diag(q_mean, q_logvar, p_mean, p_logvar)
        ).sum(-1)
        return kl_cat, kl_gauss

    @staticmethod
    def _mixture_log_prob(z, logits, mean, logvar):
        return torch.logsumexp(
            torch.log_softmax(logits, -1)
            + log_normal_diag(z.unsqueeze(-2), mean, logvar),
            -1,
        )

    def _sample_mixture(self, logits, mean, logvar, relaxed):
        w = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        if (
            self.K == 1
        ):  # one component: v = 1 exactly (gumbel_softmax needs K >= 2)
            return w[..., 0, :]
        if relaxed:
            v = gumbel_softmax(
                logits, self.tau, hard=self.hard, backend=self.backend
            )
        else:
            v = gumbel_max(logits)
        return (v.unsqueeze(-1) * w).sum(-2)

    # -- variant (b)
    # -------------------------------------------------------------------------
    def gm_params(self, w):
        """Variant (b): the mixture network, ``(mean, logvar)`` of :math:`p(z_t\\mid w_t,v_t=k)`, ``(B, K, z_dim)``."""
        mean, lv = self.gm(w).unflatten(-1, (2, self.K, self.z_dim)).unbind(-3)
        return mean, (
            self.min_logvar + F.softplus(lv - self.min_logvar)
        ).clamp(max=9.0)

    def gmvae_terms(
        self, x_t, fx_t, h, z_noise=None, w_noise=None
    ) -> tuple[torch.Tensor, dict]:
        """Variant (b): one step's four terms and the log weight (one sample of ``(z_t, w_t)``)."""
        pw_mean, pw_logvar = self.prior_w(h)
        pi_logits = torch.log_softmax(self.prior_v(h), -1)
        inp = torch.cat([fx_t, h], -1)
        qz_mean, qz_logvar = self.enc_z(inp)
        qw_mean, qw_logvar = self.enc_w(inp)
        z = qz_mean + torch.exp(0.5 * qz_logvar) * (
            torch.randn_like(qz_mean) if z_noise is None else z_noise
        )
        w = qw_mean + torch.exp(0.5 * qw_logvar) * (
            torch.randn_like(qw_mean) if w_noise is None else w_noise
        )
        gm_mean, gm_logvar = self.gm_params(w)
        joint = pi_logits + log_normal_diag(
            z.unsqueeze(-2), gm_mean, gm_logvar
        )  # log pi_k N(z; mu_k(w), .)
        log_r = torch.log_softmax(
            joint, -1
        )  # responsibilities p(v_t | z_t, w_t, h_{t-1})
        rec = self._rec(x_t, z, h)
        kl_k = kl_normal_diag(
            qz_mean.unsqueeze(-2), qz_logvar.unsqueeze(-2), gm_mean, gm_logvar
        )
        cond = (log_r.exp() * kl_k).sum(-1)
        w_prior = kl_normal_diag(qw_mean, qw_logvar, pw_mean, pw_logvar)
        v_prior = kl_categorical(log_r, pi_logits)
        logw = (
            rec
            + torch.logsumexp(joint, -1)
            + log_normal_diag(w, pw_mean, pw_logvar)
            - log_normal_diag(z, qz_mean, qz_logvar)
            - log_normal_diag(w, qw_mean, qw_logvar)
        )
        v_train = v_prior
        if self.free_bits > 0 and self.training:
            v_train = torch.clamp(
                v_prior.mean(), min=self.free_bits
            ).expand_as(v_prior)
        kl = cond + w_prior + v_prior
        return z, {
            "rec": rec,
            "kl": kl,
            "kl_train": cond + w_prior + v_train,
            "logw": logw,
            "cond_prior": cond,
            "w_prior": w_prior,
            "v_prior": v_prior,
        }

    # -- hooks
    # -------------------------------------------------------------------------
    def _step(self, x_t, fx_t, h, noise):
        if self.variant == "gmvae":
            return self.gmvae_terms(x_t, fx_t, h)
        q, p = self.mixture_params(fx_t, h)
        z = self._sample_mixture(*q, relaxed=self.training)
        rec = self._rec(x_t, z, h)
        if (
            resolve_backend(self.backend, q[0]) == "triton"
        ):  # the whole bound in one fused kernel
            kl = matched_kl(*q, *p, backend="triton")
            kl_cat = kl_categorical(q[0], p[0])
            kl_gauss = kl - kl_cat
        else:
            kl_cat, kl_gauss = self.matched_kl(q, p)
            kl = kl_cat + kl_gauss
        logw = (
            rec + self._mixture_log_prob(z, *p) - self._mixture_log_prob(z, *q)
        )
        return z, {
            "rec": rec,
            "kl": kl,
            "kl_train": kl,
            "logw": logw,
            "kl_cat": kl_cat,
            "kl_gauss": kl_gauss,
        }

    def _prior_sample(self, h):
        if self.variant == "gumbel":
            return self._sample_mixture(
                *self._mixture(self.prior(h)), relaxed=False
            )
        pw_mean, pw_logvar = self.prior_w(h)
        w = pw_mean + torch.exp(0.5 * pw_logvar) * torch.randn_like(pw_mean)
        logits_v = self.prior_v(h)
        v = gumbel_max(logits_v) if self.K > 1 else torch.ones_like(logits_v)
        mean, logvar = self.gm_params(w)
        comp = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return (v.unsqueeze(-1) * comp).sum(-2)

    def _posterior_sample(self, fx_t, h):
        if self.variant == "gumbel":
            return self._sample_mixture(
                *self._mixture(self.enc(torch.cat([fx_t, h], -1))),
                relaxed=False,
            )
        qz_mean, qz_logvar = self.enc_z(torch.cat([fx_t, h], -1))
        return qz_mean + torch.exp(0.5 * qz_logvar) * torch.randn_like(qz_mean)


class LSTMBaseline(nn.Module):
    r"""Autoregressive LSTM with the VRNN's output distribution (Chapter 9):
    :math:`p(x_{\le T})=\prod_t\mathrm{Bern}(x_t;\sigma(\mathrm{out}(h_t)))`, :math:`h_t=\mathrm{LSTM}(\varphi^x(x_{t-1}),h_{t-1})`,
    :math:`x_0=0`. Its log-likelihood is exact: :meth:`log_prob` (per sequence) and :meth:`log_prob_per_step`.
    :meth:`log_weights` repeats the exact value, so the "IWAE bound" of :mod:`vaebook.metrics` equals it."""

    terms = ("rec",)

    def __init__(
        self,
        x_dim: int = 28,
        h_dim: int = 128,
        feat_dim: int = 64,
        num_layers: int = 1,
        binarize: str | None = "dynamic",
    ):
        super().__init__()
        for name, v in (
            ("x_dim", x_dim),
            ("h_dim", h_dim),
            ("feat_dim", feat_dim),
            ("num_layers", num_layers),
        ):
            check_int(name, v)
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        self.x_dim, self.h_dim, self.binarize = x_dim, h_dim, binarize
        self.phi_x = _features(x_dim, feat_dim)
        self.rnn = nn.LSTM(
            feat_dim, h_dim, num_layers=num_layers, batch_first=True
        )
        self.out = MLP(h_dim, (feat_dim,), x_dim, "relu")

    def _device(self):
        return next(self.parameters()).device

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of :math:`p(x_t\\mid x_{<t})` for every step, ``(B, T, x_dim)``."""
        _check_x(x, self.x_dim)
        inp = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
        hs, _ = self.rnn(self.phi_x(inp))
        return self.out(hs)

    def log_prob_per_step(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        """:math:`\\log p(x_t\\mid x_{<t})`, ``(B, T)`` (0 where ``mask == 0``; the model is causal, so padding
        after a sequence's end changes nothing before it)."""
        x = x.to(self._device())
        mask = _check_mask(mask, x)
        lp = -F.binary_cross_entropy_with_logits(
            self.logits(x), x, reduction="none"
        ).sum(-1)
        return lp if mask is None else lp * mask

    def log_prob(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        """Exact per-sequence log-likelihood, ``(B,)``."""
        return self.log_prob_per_step(x, mask).sum(1)

    def elbo(self, x, mask=None):
        lp = self.log_prob(x, mask)
        return {"elbo": lp, "rec": lp, "kl": torch.zeros_like(lp)}

    def loss(self, batch):
        x, mask = split_mask(batch)
        x = x.to(self._device())
        if self.binarize == "dynamic" and self.training:
            x = torch.bernoulli(x)
        lp = self.log_prob(x, mask)
        loss = -lp.mean()
        return loss, {
            "loss": loss.item(),
            "elbo": -loss.item(),
            "rec": -loss.item(),
        }

    def log_weights(self, x, num_samples, mask=None):
        return self.log_prob(x, mask).expand(num_samples, -1)

    @torch.no_grad()
    def generate(
        self,
        num: int,
        T: int = 28,
        prime=None,
        feed: str = "sample",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """As :meth:`VRNN.generate`: ``(num, T, x_dim)``, the prime copied, generated rows as probabilities."""
        if feed not in ("sample", "mean"):
            raise ValueError(f"feed must be 'sample' or 'mean', got {feed!r}")
        dev = self._device()
        dtype = next(self.parameters()).dtype
        out, t0 = _output_buffer(num, T, self.x_dim, prime, dev, dtype)
        state = None
        x_prev = torch.zeros(num, 1, self.x_dim, device=dev, dtype=dtype)
        for t in range(T):
            hs, state = self.rnn(self.phi_x(x_prev), state)
            if t < t0:
                x_prev = out[:, t : t + 1]
                continue
            p = torch.sigmoid(self.out(hs))
            out[:, t : t + 1] = p
            x_prev = (
                torch.bernoulli(p, generator=generator)
                if feed == "sample"
                else p
            )
        return out


# -----------------------------------------------------------------------------
# Checkpoints: build() / train() per name (registered in vaebook.pretrained
# as ExternalRecipes)
# -----------------------------------------------------------------------------

#: model settings and training settings of the shipped checkpoints
CONFIGS = {
    "ch09_vrnn": dict(
        cls="VRNN", kwargs=dict(h_dim=128, z_dim=16, feat_dim=64), num_epochs=8
    ),
    "ch09_lstm": dict(
        cls="LSTMBaseline", kwargs=dict(h_dim=128, feat_dim=64), num_epochs=8
    ),
    "ch09_gmvrnn_a": dict(
        cls="GMVRNN",
        kwargs=dict(
            variant="gumbel",
            h_dim=128,
            z_dim=16,
            num_components=4,
            feat_dim=64,
        ),
        num_epochs=8,
    ),
    "ch09_gmvrnn_b": dict(
        cls="GMVRNN",
        kwargs=dict(
            variant="gmvae",
            h_dim=128,
            z_dim=16,
            num_components=4,
            w_dim=8,
            feat_dim=64,
        ),
        num_epochs=4,
    ),
}
TRAIN_SETTINGS = dict(
    batch_size=128,
    lr=2e-3,
    grad_clip=10.0,
    seed=0,
    eval_k=100,
    eval_num_test=500,
    monitor_num_test=500,
    tau_rate=1.5e-3,
    tau_min=0.5,
    num_test=None,
    # each epoch draws 10,000 of the 60,000 training sequences (a fresh
    # draw each epoch): the cost of a 10,000-image epoch, all the data
    images_per_epoch=10_000,
)


def _per_epoch(n, available):
    """``images_per_epoch`` capped at the training set (smoke runs use a few images)."""
    return None if n is None or n >= available else n


def build(name: str = "ch09_vrnn"):
    """The untrained model of checkpoint ``name`` (one of :data:`CONFIGS`)."""
    if name not in CONFIGS:
        raise ValueError(
            f"name must be one of {sorted(CONFIGS)}, got {name!r}"
        )
    c = CONFIGS[name]
    torch.manual_seed(TRAIN_SETTINGS["seed"])
    return {"VRNN": VRNN, "LSTMBaseline": LSTMBaseline, "GMVRNN": GMVRNN}[
        c["cls"]
    ](**c["kwargs"])


def train(
    name: str = "ch09_vrnn",
    out=None,
    num_epochs: int | None = None,
    progress: bool = True,
    num_train: int | None = None,
    root=None,
    **overrides,
):
    """Train checkpoint ``name`` on the sequential-MNIST training images (dynamically binarised), evaluate it on
    the statically binarised test set (ELBO on all test sequences, IWAE bound with ``eval_k`` samples on the first
    ``eval_num_test``) and save it to ``out`` with :func:`vaebook.train.save_checkpoint`. Returns ``(model, meta)``.

    Adam, batch 128, lr 2e-3, gradient norm clipped at 10 *before* each step (``fit(grad_clip=...)``); the GM-VRNN
    (a) anneals ``tau = max(0.5, exp(-1.5e-3 * step))`` per step. ``overrides`` replace :data:`TRAIN_SETTINGS`.
    """
    from .data import epoch_loader, load_sequential_mnist
    from .metrics import elbo as metrics_elbo
    from .metrics import evaluate
    from .train import fit, save_checkpoint

    s = dict(TRAIN_SETTINGS, **overrides)
    epochs = CONFIGS[name]["num_epochs"] if num_epochs is None else num_epochs
    x_train, _ = load_sequential_mnist("train", root=root)
    if num_train is not None:
        x_train = x_train[:num_train]
    x_test, _ = load_sequential_mnist("test", root=root, binarize="static")
    x_test = x_test[: s["num_test"]] if s["num_test"] else x_test
    model = build(name)
    loader = epoch_loader(
        x_train,
        batch_size=s["batch_size"],
        seed=s["seed"],
        images_per_epoch=_per_epoch(s["images_per_epoch"], len(x_train)),
    )
    if isinstance(model, GMVRNN) and model.variant == "gumbel":
        counter = {"step": 0}
        base_loss = model.loss

        def annealed_loss(batch):
            model.tau = max(
                s["tau_min"], math.exp(-s["tau_rate"] * counter["step"])
            )
            counter["step"] += 1
            return base_loss(batch)

        model.loss = annealed_loss
    monitor = x_test[: s["monitor_num_test"]]

    def val_fn(m, x):
        return {"elbo": m.elbo(x)["elbo"].mean().item()}

    hist = fit(
        model,
        loader,
        epochs,
        lr=s["lr"],
        grad_clip=s["grad_clip"],
        val_data=monitor,
        val_fn=val_fn,
        seed=s["seed"],
        progress=progress,
    )
    if "loss" in model.__dict__:
        del model.loss
    t0 = time.perf_counter()
    torch.manual_seed(1)
    ev = evaluate(model, x_test)
    ev_iw = evaluate(
        model, x_test[: s["eval_num_test"]], k=s["eval_k"], batch_size=100
    )
    # the one-sample ELBO from the log weights (for the GM-VRNN (b): the
    # exact ELBO)
    with torch.no_grad():
        lw = torch.cat(
            [metrics_elbo(model, xb) for xb in x_test.split(500)]
        ).double()
    meta = {
        "name": name,
        "config": CONFIGS[name],
        "settings": s,
        "backend": getattr(model, "backend", None),
        "num_epochs": epochs,
        "num_train": len(x_train),
        "history": hist.to_dict(),
        "eval": {
            "test_elbo": ev["elbo"],
            "test_elbo_se": ev["elbo_se"],
            "num_test": ev["n"],
            "test_elbo_logw": lw.mean().item(),
            "test_elbo_logw_se": (lw.std() / len(lw) ** 0.5).item(),
            "test_iwae": ev_iw["iwae"],
            "test_iwae_se": ev_iw["iwae_se"],
            "iwae_k": s["eval_k"],
            "iwae_num_test": ev_iw["n"],
            "eval_seconds": time.perf_counter() - t0,
        },
        "tau": getattr(model, "tau", None),
        "train_seconds": hist.seconds,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": f"python -m vaebook.vrnn train {name}"
        + (f" --num-epochs {epochs}" if num_epochs else ""),
    }
    if out is None:
        out = Path(__file__).resolve().parent / "checkpoints" / f"{name}.pt"
    save_checkpoint(model, out, **meta)
    model.eval()
    return model, meta


def _named(name):
    def b():
        return build(name)

    def t(out=None, num_epochs=None, progress=True, **kw):
        return train(
            name, out=out, num_epochs=num_epochs, progress=progress, **kw
        )

    b.__doc__ = f"The untrained model of checkpoint ``{name}``."
    t.__doc__ = (
        f"Train, evaluate and save checkpoint ``{name}`` (see :func:`train`)."
    )
    return b, t


build_vrnn, train_vrnn = _named("ch09_vrnn")
build_lstm, train_lstm = _named("ch09_lstm")
build_gmvrnn_a, train_gmvrnn_a = _named("ch09_gmvrnn_a")
build_gmvrnn_b, train_gmvrnn_b = _named("ch09_gmvrnn_b")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vaebook.vrnn",
        description="Train the Chapter 9 checkpoints.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name", choices=sorted(CONFIGS))
    t.add_argument("--out", default=None)
    t.add_argument("--num-epochs", type=int, default=None)
    t.add_argument("--num-train", type=int, default=None)
    t.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    _, meta = train(
        args.name,
        out=args.out,
        num_epochs=args.num_epochs,
        progress=not args.no_progress,
        num_train=args.num_train,
    )
    print(json.dumps(meta["eval"], indent=2))
    print(f"trained in {meta['train_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
