"""Introspective VAEs (Chapter 8): the Soft-IntroVAE trainer, IntroVAE's hinge loss, and metrics for 2-D densities.

The encoder of an introspective VAE doubles as a discriminator: real data should get a high ELBO, data produced by
the decoder a low one. :class:`SoftIntroVAE` implements the soft exponential game of Daniel & Tamar (CVPR 2021)
exactly as their reference code runs it (``taldatech/soft-intro-vae-pytorch``, ``train_soft_intro_vae.py`` and
``soft_intro_vae_2d/train_soft_intro_vae_2d.py``), and :class:`IntroVAE` the hinge game of Huang et al. (NeurIPS 2018)
as its official code runs it (``hhb072/IntroVAE``, ``main.py``). Both are
subclasses of :class:`vaebook.models.VAE`, so they work with any encoder returning ``(q_mean, q_logvar)`` and any
decoder of the library (``dec(z)`` a distribution, ``dec.mean(z)`` its mean), and keep ``elbo``, ``log_weights``
(hence :func:`vaebook.metrics.iwae_bound`), ``sample`` and ``reconstruct``.

Training needs two optimisers and a fixed order of steps, so it has its own loop, :func:`train_introspective`
(``model.loss`` is the warm-up beta-VAE loss, so :func:`vaebook.train.fit` still trains the plain baseline).

2-D metrics (:func:`grid_nll`, :func:`histogram_kl`, :func:`histogram_jsd`) are the textbook quantities; the
``reference_*`` functions reproduce the reference code's metrics *with their quirks* (the end of
``train_soft_intro_vae_toy`` in ``soft_intro_vae_2d/train_soft_intro_vae_2d.py``) so that numbers
can be set beside the paper's. Shipped results: ``python -m vaebook.pretrained train ch08_toy2d`` (all 2-D runs,
several seeds) and ``... train ch08_mnist`` (MNIST); see :func:`train` and :func:`train_mnist`.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data import EIGHT_GAUSSIANS_CENTRES, toy2d
from .divergences import kl_normal_diag
from .models import VAE, BernoulliDecoder, GaussianDecoder, GaussianEncoder
from .train import History, save_checkpoint
from .utils import check_int

__all__ = [
    "reconstruction_error",
    "SoftIntroVAE",
    "IntroVAE",
    "train_introspective",
    "TOY2D_BETAS",
    "TOY2D_LIMITS",
    "TOY2D_SEEDS",
    "toy2d_model",
    "fit_toy2d",
    "energy",
    "grid",
    "grid_log_density",
    "grid_nll",
    "histogram2d",
    "histogram_kl",
    "histogram_jsd",
    "reference_gnelbo",
    "reference_histogram_kl",
    "reference_histogram_jsd",
    "modes_covered",
    "toy2d_metrics",
    "auroc",
    "mnist_model",
    "build",
    "train",
    "build_mnist",
    "train_mnist",
]


# -----------------------------------------------------------------------------
# Loss pieces
# -----------------------------------------------------------------------------


def reconstruction_error(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    r"""Per-example **sum** of squared errors :math:`\|x-\hat x\|^2` (no factor ½), shape ``(B,)``.

    This is the reference code's ``calc_reconstruction_loss(..., "mse", reduction="none")`` and the
    :math:`\mathcal L_r` of eq. ``ch08-soft-losses`` (Chapter 8) for ``rec_loss="mse"``: for a Gaussian decoder of
    variance :math:`\sigma^2` it equals :math:`2\sigma^2(-\log p(x\mid z))` up to a constant.
    """
    if x.dim() < 2:
        raise ValueError(
            "x must have shape (B, ...) with at least one feature dimension, "
            f"got {tuple(x.shape)}"
        )
    if x_rec.shape != x.shape:
        raise ValueError(
            f"x_rec must have the shape of x {tuple(x.shape)}, got "
            f"{tuple(x_rec.shape)}"
        )
    return (x - x_rec).pow(2).flatten(start_dim=1).sum(1)


def _kl(q_mean, q_logvar):
    """KL(N(mu, diag e^v) || N(0, I)) per example, in the reference code's form (the same value as
    :func:`vaebook.divergences.kl_normal_diag`, checked in the tests, without its argument validation, which costs
    a tenth of a 2-D training iteration)."""
    return -0.5 * (1 + q_logvar - q_mean.pow(2) - q_logvar.exp()).sum(-1)


class _Introspective(VAE):
    """Shared pieces: the decoder's output ``D(z)`` and the reconstruction term."""

    def __init__(self, enc, dec, latent_dim=None, rec_loss: str = "mse"):
        super().__init__(enc, dec, latent_dim)
        if rec_loss not in ("mse", "nll"):
            raise ValueError(
                f"rec_loss must be 'mse' or 'nll', got {rec_loss!r}"
            )
        self.rec_loss = rec_loss

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z)``: the decoder's mean, the "generated data" of the game (shape ``(B, *data_shape)``)."""
        return self.dec.mean(z)

    def rec(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        x_rec: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-example reconstruction term ``(B,)``: squared error of ``D(z)`` (``"mse"``) or ``-log p(x|z)``."""
        if self.rec_loss == "mse":
            return reconstruction_error(
                x, self.generate(z) if x_rec is None else x_rec
            )
        return -self.dec(z).log_prob(x)

    def _set_trainable(self, encoder: bool, decoder: bool):
        for p in self.enc.parameters():
            p.requires_grad_(encoder)
        for p in self.dec.parameters():
            p.requires_grad_(decoder)


class SoftIntroVAE(_Introspective):
    r"""Soft-IntroVAE (Daniel & Tamar, 2021), Chapter 8, eqs. ``ch08-soft-losses``.

    Encoder loss (minimised), with :math:`s` = ``scale``, :math:`x_g\in\{D(z_\text{prior}),\,\hat x\}` the two kinds
    of generated data and every term per example before the batch mean,

    .. math::
        s(\beta_{rec}\mathcal L_r(x)+\beta_{kl}\mathrm{KL}(x))
        +\tfrac14\sum_{g}\overline{\exp\big(-2s(\beta_{rec}\mathcal L_r(x_g)+\beta_{neg}\mathrm{KL}(x_g))\big)},

    decoder loss :math:`s\big(\beta_{rec}\mathcal L_r(x)+\tfrac12\beta_{kl}\sum_g\mathrm{KL}(x_g)
    +\tfrac12\gamma_r\beta_{rec}\sum_g\mathcal L_r(x_g)\big)`.

    Args:
        enc, dec: any library encoder (``enc(x) -> (q_mean, q_logvar)``) and decoder (``dec.mean(z)``).
        beta_rec, beta_kl, beta_neg: the weights of the reconstruction, the real-data KL and (inside the
            exponential only) the generated-data KL.
        gamma_r: weight of the generated data's reconstruction in the decoder loss (1e-8 in all the paper's runs).
        scale: :math:`s`; default ``1 / prod(dec.data_shape)`` (images: 1/784 for MNIST; the 2-D code uses 0.5).
        rec_loss: ``"mse"`` (the reference: sum of squared errors of ``dec.mean``) or ``"nll"`` (``-log p(x|z)``
            of the decoder's distribution, e.g. for a Bernoulli decoder).

    ``loss(batch)`` is the warm-up objective :math:`\beta_{rec}\mathcal L_r+\beta_{kl}\mathrm{KL}` (no :math:`s`), so
    the same object trained only with it is the plain beta-VAE baseline.
    """

    def __init__(
        self,
        enc,
        dec,
        latent_dim=None,
        beta_rec: float = 1.0,
        beta_kl: float = 1.0,
        beta_neg: float = 256.0,
        gamma_r: float = 1e-8,
        scale: float | None = None,
        rec_loss: str = "mse",
    ):
        super().__init__(enc, dec, latent_dim, rec_loss)
        if scale is None:
            if not hasattr(dec, "data_shape"):
                raise ValueError(
                    "scale must be given when the decoder has no data_shape"
                )
            scale = 1.0 / math.prod(dec.data_shape)
        for name, v in (
            ("beta_rec", beta_rec),
            ("beta_kl", beta_kl),
            ("beta_neg", beta_neg),
            ("scale", scale),
        ):
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if not (0 <= gamma_r < math.inf):
            raise ValueError(
                f"gamma_r must be >= 0 and finite, got {gamma_r!r}"
            )
        self.beta_rec, self.beta_kl, self.beta_neg = (
            float(beta_rec),
            float(beta_kl),
            float(beta_neg),
        )
        self.gamma_r, self.scale = float(gamma_r), float(scale)

    # -- the warm-up / plain beta-VAE objective
    # ---------------------------------------------------------------
    def loss(self, batch):
        x = self._prepare(batch)
        q_mean, q_logvar = self.encode(x)
        z = self.reparameterize(q_mean, q_logvar)
        rec, kl = self.rec(x, z).mean(), _kl(q_mean, q_logvar).mean()
        loss = self.beta_rec * rec + self.beta_kl * kl
        return loss, {"loss": loss.item(), "rec": rec.item(), "kl": kl.item()}

    # -- the two players
    # -------------------------------------------------------------------------
    def encoder_loss(self, x: torch.Tensor, z_prior: torch.Tensor):
        """The encoder step's loss (step 1 of "One training iteration, exactly" in Chapter 8; reference code:
        the encoder update of ``train_soft_intro_vae.py``).

        Returns ``(loss_e, logs, z)``; ``z`` (the real data's latent sample) is reused by :meth:`decoder_loss`.
        Generated data enter the encoder **detached** (``x_r.detach()``, ``fake.detach()``); the target ``x_r`` of
        the reconstructions' reconstruction error is *not* detached, as in the reference code.
        """
        s, b_rec, b_neg = self.scale, self.beta_rec, self.beta_neg
        fake = self.generate(z_prior)
        q_mean, q_logvar = self.encode(x)
        z = self.reparameterize(q_mean, q_logvar)
        x_r = self.generate(z)
        loss_rec = self.rec(x, z, x_r).mean()
        kl_real = _kl(q_mean, q_logvar).mean()
        exp_terms, kls = [], []
        for x_g in (x_r, fake):
            mu_g, lv_g = self.encode(x_g.detach())
            z_g = self.reparameterize(mu_g, lv_g)
            kl_g = _kl(mu_g, lv_g)
            rec_g = self.rec(x_g, z_g)  # target not detached (reference code)
            exp_terms.append(
                torch.exp(-2 * s * (b_rec * rec_g + b_neg * kl_g)).mean()
            )
            kls.append(kl_g.mean())
        exp_rec, exp_fake = exp_terms
        loss_e = s * (b_rec * loss_rec + self.beta_kl * kl_real) + 0.25 * (
            exp_rec + exp_fake
        )
        logs = {
            "loss_e": loss_e.item(),
            "rec": loss_rec.item(),
            "kl_real": kl_real.item(),
            "exp_elbo_rec": exp_rec.item(),
            "exp_elbo_fake": exp_fake.item(),
        }
        return loss_e, logs, z

    def decoder_loss(
        self, x: torch.Tensor, z_prior: torch.Tensor, z: torch.Tensor
    ):
        """The decoder step's loss (step 2 of "One training iteration, exactly" in Chapter 8): ``(loss_d, logs)``.

        Uses the same prior noise and the encoder step's latent ``z`` (detached). The KL of generated data is
        back-propagated *through the (frozen) encoder* into the decoder; the re-encoded latents are detached before
        the second decoding, and the generated data are detached as targets of that reconstruction.
        """
        s, b_rec = self.scale, self.beta_rec
        fake = self.generate(z_prior)
        x_r = self.generate(z.detach())
        loss_rec = self.rec(x, z.detach(), x_r).mean()
        kls, recs = [], []
        for x_g in (x_r, fake):
            mu_g, lv_g = self.encode(
                x_g
            )  # not detached: gradient flows through the encoder into D
            z_g = self.reparameterize(mu_g, lv_g)
            kls.append(_kl(mu_g, lv_g).mean())
            recs.append(self.rec(x_g.detach(), z_g.detach()).mean())
        kl_rec, kl_fake = kls
        loss_d = s * (
            b_rec * loss_rec
            + 0.5 * self.beta_kl * (kl_fake + kl_rec)
            + self.gamma_r * 0.5 * b_rec * (recs[0] + recs[1])
        )
        return loss_d, {
            "loss_d": loss_d.item(),
            "kl_fake": kl_fake.item(),
            "kl_rec": kl_rec.item(),
        }

    def train_step(
        self,
        x,
        opt_e,
        opt_d,
        warmup: bool = False,
        generator: torch.Generator | None = None,
    ):
        """One iteration: the encoder step, then the decoder step (or one beta-VAE step on both if ``warmup``).

        The prior noise ``z_prior`` is drawn once and used by both steps. Returns a dict of floats.
        """
        x = self._prepare(x)
        if warmup:
            self._set_trainable(True, True)
            loss, logs = self.loss(x)
            opt_e.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_e.step()
            opt_d.step()
            return logs
        z_prior = torch.randn(
            x.shape[0], self.latent_dim, generator=generator
        ).to(x.device, x.dtype)
        try:
            self._set_trainable(True, False)
            loss_e, logs, z = self.encoder_loss(x, z_prior)
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            opt_e.step()
            self._set_trainable(False, True)
            loss_d, logs_d = self.decoder_loss(x, z_prior, z)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        finally:
            self._set_trainable(True, True)
        logs.update(logs_d)
        logs["kl_fake_minus_real"] = logs["kl_fake"] - logs["kl_real"]
        return logs


class IntroVAE(_Introspective):
    r"""IntroVAE's hinge game (Huang et al., 2018) as the official code optimises it (``hhb072/IntroVAE``,
    ``main.py``, function ``train``), Chapter 8.

    Encoder: :math:`w_{rec}\,\mathcal L_r+w_{kl}\big(\mathrm{KL}(x)
    +\tfrac12w_{neg}\sum_g[m-\overline{\mathrm{KL}}(\mathrm{ng}\,x_g)]^+\big)` (bar: batch mean, see below);
    generator: :math:`\tfrac12w_{kl}\sum_g\mathrm{KL}(x_g)`, whose gradient is *added* to the decoder gradient that
    :math:`w_{rec}\mathcal L_r` left from the encoder step. ``m`` is the margin.

    ``hinge_form`` says where the batch mean goes (:meth:`hinge_term`): ``"batch_mean"`` (default, the official
    code: ``relu(m_plus - kl.mean())``, one hinge on the batch-mean KL of each kind of generated data) or
    ``"per_example"`` (``relu(m - kl).mean()``, one hinge per generated example, then averaged). They differ as
    soon as the batch straddles the margin: KLs (0, 10) with ``m = 3`` give 0 and 1.5. Which form the paper's
    equation means is not verified against the paper; the default follows the code the authors published.
    """

    HINGE_FORMS = ("batch_mean", "per_example")

    def __init__(
        self,
        enc,
        dec,
        latent_dim=None,
        margin: float = 120.0,
        w_rec: float = 0.05,
        w_kl: float = 1.0,
        w_neg: float = 0.5,
        rec_loss: str = "mse",
        hinge_form: str = "batch_mean",
    ):
        super().__init__(enc, dec, latent_dim, rec_loss)
        if not (0 < margin < math.inf):
            raise ValueError(f"margin must be > 0 and finite, got {margin!r}")
        if hinge_form not in self.HINGE_FORMS:
            raise ValueError(
                f"hinge_form must be one of {self.HINGE_FORMS}, got "
                f"{hinge_form!r}"
            )
        self.hinge_form = hinge_form
        for name, v in (("w_rec", w_rec), ("w_kl", w_kl), ("w_neg", w_neg)):
            if not (0 <= v < math.inf):
                raise ValueError(
                    f"{name} must be a number >= 0 and finite, got {v!r}"
                )
        self.margin, self.w_rec, self.w_kl, self.w_neg = (
            float(margin),
            float(w_rec),
            float(w_kl),
            float(w_neg),
        )

    def loss(self, batch):
        """Plain VAE warm-up: :math:`w_{rec}\\mathcal L_r+w_{kl}\\mathrm{KL}`."""
        x = self._prepare(batch)
        q_mean, q_logvar = self.encode(x)
        z = self.reparameterize(q_mean, q_logvar)
        rec, kl = self.rec(x, z).mean(), _kl(q_mean, q_logvar).mean()
        loss = self.w_rec * rec + self.w_kl * kl
        return loss, {"loss": loss.item(), "rec": rec.item(), "kl": kl.item()}

    def hinge(self, kl_g: torch.Tensor) -> torch.Tensor:
        """:math:`[m-\\mathrm{KL}]^+` elementwise: zero (and without gradient) once the KL exceeds the margin."""
        return torch.relu(self.margin - kl_g)

    def hinge_term(self, kl_g: torch.Tensor) -> torch.Tensor:
        """The encoder's hinge for one kind of generated data, a scalar, from the per-example KLs ``kl_g`` ``(B,)``:
        ``hinge(kl_g.mean())`` for ``hinge_form="batch_mean"`` (the official code), ``hinge(kl_g).mean()`` for
        ``"per_example"``."""
        if self.hinge_form == "batch_mean":
            return self.hinge(kl_g.mean())
        return self.hinge(kl_g).mean()

    def train_step(
        self,
        x,
        opt_e,
        opt_d,
        warmup: bool = False,
        generator: torch.Generator | None = None,
    ):
        x = self._prepare(x)
        if warmup:
            return SoftIntroVAE.train_step(self, x, opt_e, opt_d, warmup=True)
        z_prior = torch.randn(
            x.shape[0], self.latent_dim, generator=generator
        ).to(x.device, x.dtype)
        q_mean, q_logvar = self.encode(x)
        z = self.reparameterize(q_mean, q_logvar)
        x_r, x_p = self.generate(z), self.generate(z_prior)
        loss_rec = self.rec(x, z, x_r).mean()
        kl_real = _kl(q_mean, q_logvar).mean()
        hinges = [
            self.hinge_term(_kl(*self.encode(x_g.detach())))
            for x_g in (x_r, x_p)
        ]
        loss_e = self.w_rec * loss_rec + self.w_kl * (
            kl_real + 0.5 * self.w_neg * (hinges[0] + hinges[1])
        )
        opt_e.zero_grad(set_to_none=True)
        opt_d.zero_grad(
            set_to_none=True
        )  # the decoder keeps w_rec * rec's gradient from this backward
        loss_e.backward()
        opt_e.step()
        # generator step with the updated encoder; x_r is decoded
        # again from z.detach() (same values) because
        # the encoder's weights changed in place; the encoder
        # gradient of this loss is discarded anyway
        x_r2 = self.generate(z.detach())
        try:
            self._set_trainable(
                False, True
            )  # the encoder's gradient stays that of loss_e
            kl_r, kl_p = (_kl(*self.encode(x_g)).mean() for x_g in (x_r2, x_p))
            loss_g = 0.5 * self.w_kl * (kl_r + kl_p)
            loss_g.backward()
        finally:
            self._set_trainable(True, True)
        opt_d.step()
        return {
            "loss_e": loss_e.item(),
            "loss_g": loss_g.item(),
            "rec": loss_rec.item(),
            "kl_real": kl_real.item(),
            "kl_rec": kl_r.item(),
            "kl_fake": kl_p.item(),
            "hinge_rec": hinges[0].item(),
            "hinge_fake": hinges[1].item(),
        }


# -----------------------------------------------------------------------------
# The training loop
# -----------------------------------------------------------------------------


def train_introspective(
    model: _Introspective,
    next_batch: Callable[[], torch.Tensor],
    num_iters: int,
    lr: float = 2e-4,
    lr_d: float | None = None,
    num_vae: int = 0,
    milestones: Sequence[int] = (),
    seed: int | None = 0,
    progress: bool = True,
    log_every: int = 1,
) -> History:
    """Train an introspective VAE for ``num_iters`` iterations with two Adam optimisers (encoder, decoder).

    ``next_batch()`` returns a fresh batch (2-D toys draw new samples every iteration, as the reference code does;
    images cycle through a loader). Iterations ``< num_vae`` are beta-VAE warm-up steps (``num_vae >= num_iters``
    gives the plain VAE baseline). Learning rates drop tenfold at ``milestones`` (MultiStepLR, as in the
    reference). Logged terms are averaged over blocks of ``log_every`` iterations into ``history.steps``; the
    history's ``epochs`` counts iterations. Raises ``FloatingPointError`` on a NaN loss (the reference aborts too).
    """
    from tqdm.auto import tqdm

    for name, v, lo in (
        ("num_iters", num_iters, 0),
        ("num_vae", num_vae, 0),
        ("log_every", log_every, 1),
    ):
        check_int(name, v, lo)
    for name, v in (("lr", lr), ("lr_d", lr if lr_d is None else lr_d)):
        if not (0 < v < math.inf):
            raise ValueError(
                f"{name} must be a number > 0 and finite, got {v!r}"
            )
    if seed is not None:
        torch.manual_seed(seed)
    opt_e = torch.optim.Adam(model.enc.parameters(), lr=lr)
    opt_d = torch.optim.Adam(
        model.dec.parameters(), lr=lr if lr_d is None else lr_d
    )
    scheds = [
        torch.optim.lr_scheduler.MultiStepLR(o, list(milestones), gamma=0.1)
        for o in (opt_e, opt_d)
    ]
    history = History()
    start = time.perf_counter()
    block: dict[str, list[float]] = {}
    model.train()
    for it in tqdm(
        range(num_iters),
        desc="iterations",
        disable=not progress,
        mininterval=1.0,
    ):
        logs = model.train_step(
            next_batch(), opt_e, opt_d, warmup=it < num_vae
        )
        for k, v in logs.items():
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"{k} became {v} at iteration {it}; lower beta_neg or the "
                    "learning rate"
                )
            block.setdefault(k, []).append(v)
        if (it + 1) % log_every == 0 or it == num_iters - 1:
            for k, v in block.items():
                history.steps[k].append(sum(v) / len(v))
            block = {}
        for sch in scheds:
            sch.step()
        history.epochs += 1
    history.seconds += time.perf_counter() - start
    model.eval()
    return history


# -----------------------------------------------------------------------------
# 2-D toys: models and settings of the reference code (soft_intro_vae_2d/ of
# taldatech/soft-intro-vae-pytorch)
# -----------------------------------------------------------------------------

# : recommended (beta_kl, beta_rec, beta_neg) of the reference 2-D code
# (README / main.py / issue #17)
TOY2D_BETAS = {
    "8gaussians": {"beta_kl": 0.3, "beta_rec": 0.2, "beta_neg": 0.9},
    "2spirals": {"beta_kl": 0.5, "beta_rec": 0.2, "beta_neg": 1.0},
    "checkerboard": {"beta_kl": 0.1, "beta_rec": 0.2, "beta_neg": 0.2},
    "rings": {"beta_kl": 0.2, "beta_rec": 0.2, "beta_neg": 1.0},
}
# : half-width of the square used for plots and metrics: [-L, L]^2
# (reference: 2 for 8 Gaussians, 4 otherwise)
TOY2D_LIMITS = {
    "8gaussians": 2.0,
    "2spirals": 4.0,
    "checkerboard": 4.0,
    "rings": 4.0,
}
#: seeds of the shipped multi-seed runs
TOY2D_SEEDS = (0, 1, 2)
# : the reduced CPU setting of the shipped runs (the reference: width 256,
# batch 512, lr 2e-4, 30,000 iterations)
TOY2D_SETTING = {
    "width": 64,
    "depth": 4,
    "num_iters": 3000,
    "num_vae": 500,
    "batch_size": 256,
    "lr": 1e-3,
    "milestones": (0.5, 0.75),
}


def toy2d_model(
    name: str,
    width: int = 64,
    depth: int = 4,
    latent_dim: int = 2,
    **overrides,
) -> SoftIntroVAE:
    """The 2-D model of the reference code at a chosen width: ReLU MLPs with ``depth`` hidden layers, a 2-D latent,
    a deterministic decoder mean scored by squared error (a Gaussian with variance ½ for ``log_weights``), the
    recommended betas of ``name`` (:data:`TOY2D_BETAS`), ``gamma_r = 1e-8`` and ``s = 0.5``."""
    if not isinstance(name, str) or name.lower() not in TOY2D_BETAS:
        raise ValueError(
            f"name must be one of {sorted(TOY2D_BETAS)}, got {name!r}"
        )
    hidden = (width,) * depth
    enc = GaussianEncoder(2, latent_dim, hidden, activation="relu")
    dec = GaussianDecoder(
        latent_dim,
        (2,),
        hidden,
        activation="relu",
        learn_var="fixed",
        fixed_logvar=math.log(0.5),
    )
    kw = dict(TOY2D_BETAS[name.lower()], gamma_r=1e-8, scale=0.5)
    kw.update(overrides)
    return SoftIntroVAE(enc, dec, latent_dim, **kw)


def fit_toy2d(
    name: str,
    kind: str = "soft_intro",
    seed: int = 0,
    num_iters: int | None = None,
    num_vae: int | None = None,
    progress: bool = False,
    model_kw: dict | None = None,
    **setting,
):
    """Train a 2-D model with :data:`TOY2D_SETTING` (overridable): ``kind`` is ``"soft_intro"``, ``"vae"`` (the
    same model and betas trained only on the warm-up beta-VAE loss) or ``"intro"`` (the same networks in an
    :class:`IntroVAE`). ``model_kw`` are keyword arguments of the model: overrides of :func:`toy2d_model` (e.g.
    ``beta_rec``, ``beta_kl``) for ``"soft_intro"`` / ``"vae"``, and :class:`IntroVAE`'s (``margin``, ``w_rec``,
    ``w_kl``, ``w_neg``, ``hinge_form``) for ``"intro"``. The learning rate drops tenfold at the fractions
    ``milestones`` of the run (the reference: 1/3 and 1/2 of 30,000 iterations). Returns ``(model, history)``."""
    if kind not in ("soft_intro", "vae", "intro"):
        raise ValueError(
            f"kind must be 'soft_intro', 'vae' or 'intro', got {kind!r}"
        )
    cfg = dict(TOY2D_SETTING, **setting)
    n_it = cfg["num_iters"] if num_iters is None else num_iters
    n_vae = cfg["num_vae"] if num_vae is None else num_vae
    torch.manual_seed(seed)
    if kind == "intro":
        base = toy2d_model(name, cfg["width"], cfg["depth"])
        model = IntroVAE(
            base.enc, base.dec, base.latent_dim, **(model_kw or {})
        )
    else:
        model = toy2d_model(
            name, cfg["width"], cfg["depth"], **(model_kw or {})
        )
    g = torch.Generator().manual_seed(10_000 + seed)
    hist = train_introspective(
        model,
        lambda: toy2d(name, cfg["batch_size"], g),
        n_it,
        lr=cfg["lr"],
        num_vae=n_it if kind == "vae" else n_vae,
        milestones=[int(f * n_it) for f in cfg["milestones"]],
        seed=seed,
        progress=progress,
        log_every=max(1, n_it // 100),
    )
    return model, hist


# -----------------------------------------------------------------------------
# 2-D density metrics
# -----------------------------------------------------------------------------


@torch.no_grad()
def energy(
    model, x: torch.Tensor, beta_rec: float = 1.0, beta_kl: float = 1.0
) -> torch.Tensor:
    r""":math:`e(x)=\beta_{kl}\mathrm{KL}(q(z\mid x)\|p(z))+\beta_{rec}\|x-D(\mu(x))\|^2`, shape ``(B,)``.

    The negative "ELBO" the reference code uses for density plots and for its metric (deterministic
    reconstruction from the posterior mean); :math:`e^{-e(x)}` is the unnormalised model density of the chapter.
    """
    q_mean, q_logvar = model.encode(x)
    return beta_kl * kl_normal_diag(
        q_mean, q_logvar
    ) + beta_rec * reconstruction_error(x, model.dec.mean(q_mean))


def grid(lim: float, n: int) -> tuple[torch.Tensor, float]:
    """``(points, cell_area)``: the ``n x n`` cell centres of ``[-lim, lim]^2`` as ``(n*n, 2)`` (row ``i`` = y index,
    column ``j`` = x index, so ``values.reshape(n, n)`` is an image with ``origin="lower"``)."""
    _check_lim(lim)
    check_int("n", n)
    h = 2 * lim / n
    c = -lim + h * (torch.arange(n, dtype=torch.float32) + 0.5)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1), h * h


@torch.no_grad()
def _energies(model, x, chunk=65536, **betas):
    return torch.cat([energy(model, xb, **betas) for xb in x.split(chunk)])


@torch.no_grad()
def grid_log_density(
    model,
    lim: float,
    n: int = 256,
    beta_rec: float = 1.0,
    beta_kl: float = 1.0,
):
    r"""The model density :math:`\hat p(x)=e^{-e(x)}/Z` normalised on the grid of ``[-lim, lim]^2``:
    returns ``(log_density (n, n), log_Z)`` with :math:`Z=\sum_\text{cells}e^{-e}\,\Delta A` (a Riemann sum)."""
    pts, area = grid(lim, n)
    e = _energies(model, pts, beta_rec=beta_rec, beta_kl=beta_kl)
    log_z = torch.logsumexp(-e, 0) + math.log(area)
    return (-e - log_z).reshape(n, n), log_z.item()


@torch.no_grad()
def grid_nll(
    model,
    x: torch.Tensor,
    lim: float,
    n: int = 256,
    beta_rec: float = 1.0,
    beta_kl: float = 1.0,
):
    r"""Grid NLL: :math:`-\frac1N\sum_i\log\hat p(x_i)` in nats, with :math:`\hat p` of :func:`grid_log_density`
    (a proper density on the square). Points outside the square are dropped. Returns ``(nll, standard_error)``.

    It estimates the cross-entropy :math:`H(p_\text{data},\hat p)=H(p_\text{data})+\mathrm{KL}(p_\text{data}\|\hat p)`,
    so it is the textbook "negative log-likelihood of held-out data" (lower is better; bounded below by the data
    entropy), unlike the reference's gnELBO (:func:`reference_gnelbo`).
    """
    x = x[(x.abs() <= lim).all(1)]
    _, log_z = grid_log_density(model, lim, n, beta_rec, beta_kl)
    nll = (
        _energies(model, x, beta_rec=beta_rec, beta_kl=beta_kl).double()
        + log_z
    )
    return nll.mean().item(), (nll.std() / math.sqrt(len(nll))).item() if len(
        nll
    ) > 1 else math.nan


@torch.no_grad()
def reference_gnelbo(
    model, x: torch.Tensor, lim: float, n: int = 1024
) -> float:
    r"""The reference code's "grid-normalised ELBO" (``train_soft_intro_vae_2d.py``), **reproduced with its quirks**.

    :math:`\frac1N\sum_i e(x_i)/\big(\sum_\text{grid}e+\sum_i e(x_i)\big)` with :math:`e` = :func:`energy` (betas 1),
    the grid of ``n x n`` *points* ``linspace(-lim, lim, n)`` and ``x`` the data points (the reference: 100 batches of
    128). It normalises the positive energy, not a density: the value is about ``mean e(data) / (n^2 mean e(grid))``,
    so it depends on ``n`` and on how large the energy is *away* from the data, and is not a likelihood.
    """
    c = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(c, c, indexing="ij")
    e_grid = _energies(
        model, torch.stack([xx.flatten(), yy.flatten()], 1)
    ).double()
    e_data = _energies(model, x).double()
    return (e_data / (e_grid.sum() + e_data.sum())).mean().item()


def _check_lim(lim) -> None:
    if (
        isinstance(lim, bool)
        or not isinstance(lim, (int, float))
        or not 0 < lim < math.inf
    ):
        raise ValueError(
            "lim must be a number > 0 and finite (the square [-lim, lim]^2), "
            f"got {lim!r}"
        )


def histogram2d(x: torch.Tensor, lim: float, bins: int = 100) -> np.ndarray:
    """Bin probabilities ``(bins, bins)`` of the points of ``x`` inside ``[-lim, lim]^2`` (they sum to 1)."""
    _check_lim(lim)
    check_int("bins", bins)
    x = np.asarray(x.detach().cpu().double() if torch.is_tensor(x) else x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {x.shape}")
    h, _, _ = np.histogram2d(
        x[:, 0], x[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]]
    )
    if h.sum() == 0:
        raise ValueError(
            "x must have at least one point inside the square [-lim, lim]^2 "
            f"= [-{lim}, {lim}]^2 "
            "(no point of x lies inside it)"
        )
    return h / h.sum()


def histogram_kl(
    x_real, x_fake, lim: float, bins: int = 100, smoothing: float = 1e-6
) -> float:
    r""":math:`\mathrm{KL}(P_\text{real}\|P_\text{fake})=\sum_b p_b\log(p_b/q_b)` in nats between bin probabilities.

    The KL is infinite as soon as the model leaves a data bin empty, so the model's histogram is mixed with the
    uniform one, :math:`q\leftarrow(1-\lambda)q+\lambda/B` (``smoothing`` :math:`=\lambda`, :math:`B` = bins²): the
    value is then at most :math:`\log(B/\lambda)` (about 23 nats for the defaults).
    """
    if not (0 < smoothing <= 1):
        raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
    p, q = histogram2d(x_real, lim, bins), histogram2d(x_fake, lim, bins)
    q = (1 - smoothing) * q + smoothing / q.size
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def histogram_jsd(x_real, x_fake, lim: float, bins: int = 100) -> float:
    r"""The Jensen-Shannon divergence :math:`\tfrac12\mathrm{KL}(P\|M)+\tfrac12\mathrm{KL}(Q\|M)`, :math:`M=\tfrac12(P+Q)`,
    in nats between bin probabilities: finite, symmetric, in :math:`[0,\log2]` (``log 2`` = disjoint supports)."""
    p, q = histogram2d(x_real, lim, bins), histogram2d(x_fake, lim, bins)
    m = 0.5 * (p + q)

    def kl(a):
        k = a > 0
        return float(np.sum(a[k] * np.log(a[k] / m[k])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def _reference_hist(x, lim, bins):
    x = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x)
    h, _, _ = np.histogram2d(
        x[:, 0],
        x[:, 1],
        bins=bins,
        density=True,
        range=[[-lim, lim], [-lim, lim]],
    )
    return torch.tensor(h)


def reference_histogram_kl(
    x_real, x_fake, lim: float, bins: int = 100
) -> float:
    r"""The reference code's "KL" (``train_soft_intro_vae_2d.py``), **with its quirks**:
    ``F.kl_div(log(h_fake + 1e-14), h_real, reduction="batchmean")`` on histogram *densities* (``density=True``), i.e.
    :math:`\mathrm{KL}(P_\text{real}\|P_\text{fake})/(\text{bins}\cdot A)` (bin area :math:`A`) with a 1e-14 floor.
    It saturates near 220 for ``lim = 2`` when the supports are disjoint."""
    h_r, h_f = (
        _reference_hist(x_real, lim, bins),
        _reference_hist(x_fake, lim, bins),
    )
    return torch.nn.functional.kl_div(
        torch.log(h_f + 1e-14), h_r, reduction="batchmean"
    ).item()


def reference_histogram_jsd(
    x_real, x_fake, lim: float, bins: int = 100
) -> float:
    r"""The reference code's "JSD", **with its quirks**: ``0.5 * (kl_div(log(h_real + 1e-14), M) + kl_div(log(h_fake
    + 1e-14), M))`` with ``M = (h_real + h_fake) / 2``. ``F.kl_div(input, target)`` computes KL(target ‖ input), so this
    is :math:`\tfrac12[\mathrm{KL}(M\|P_\text{real})+\mathrm{KL}(M\|P_\text{fake})]/(\text{bins}\cdot A)`: not the JSD,
    not bounded by log 2 (it reaches about 100 for disjoint supports)."""
    h_r, h_f = (
        _reference_hist(x_real, lim, bins),
        _reference_hist(x_fake, lim, bins),
    )
    m = 0.5 * (h_r + h_f)
    f = torch.nn.functional.kl_div
    return (
        0.5
        * (
            f(torch.log(h_r + 1e-14), m, reduction="batchmean")
            + f(torch.log(h_f + 1e-14), m, reduction="batchmean")
        )
    ).item()


def modes_covered(
    x: torch.Tensor,
    centres: torch.Tensor = EIGHT_GAUSSIANS_CENTRES,
    radius: float = 0.1,
    min_frac: float = 0.01,
) -> tuple[float, int]:
    """``(fraction of x within radius of its nearest centre, number of centres receiving > min_frac of x within
    radius)``: sample quality and mode coverage on "8gaussians" (Chapter 8's table)."""
    if (
        x.dim() != 2
        or x.shape[0] < 1
        or centres.dim() != 2
        or x.shape[1] != centres.shape[1]
    ):
        raise ValueError(
            "x must have shape (n, d) with n >= 1 and d = centres.shape[1], "
            f"got {tuple(x.shape)} and "
            f"centres {tuple(centres.shape)}"
        )
    if not (0 < radius < math.inf):
        raise ValueError(
            f"radius must be a number > 0 and finite, got {radius!r}"
        )
    if not (0 <= min_frac < 1):
        raise ValueError(f"min_frac must be in [0, 1), got {min_frac!r}")
    d = torch.cdist(x.double(), centres.double())
    dmin, k = d.min(1)
    near = dmin < radius
    counts = torch.bincount(k[near], minlength=len(centres)).double() / len(x)
    return near.double().mean().item(), int((counts > min_frac).sum())


@torch.no_grad()
def toy2d_metrics(
    model,
    name: str,
    seed: int = 0,
    num_samples: int = 5000,
    n_grid: int = 256,
    reference: bool = True,
) -> dict:
    """All 2-D metrics of Chapter 8's table for one model (fresh data and prior samples from ``seed``).

    Keys: ``grid_nll`` (nats, :func:`grid_nll` on ``num_samples`` data points, grid ``n_grid``²), ``kl`` and ``jsd``
    (:func:`histogram_kl`, :func:`histogram_jsd`, 100² bins), and with ``reference`` the reference code's ``ref_kl``,
    ``ref_jsd`` and ``ref_gnelbo`` (1024² grid, 12,800 data points); for "8gaussians" also ``within_0.1`` and
    ``modes`` (:func:`modes_covered`).
    """
    name = name.lower()
    lim = TOY2D_LIMITS[name]
    model.eval()
    x_real = toy2d(name, num_samples, seed=20_000 + seed)
    x_fake = model.sample(
        num_samples, generator=torch.Generator().manual_seed(30_000 + seed)
    )
    nll, nll_se = grid_nll(model, x_real, lim, n_grid)
    out = {
        "grid_nll": nll,
        "grid_nll_se": nll_se,
        "kl": histogram_kl(x_real, x_fake, lim),
        "jsd": histogram_jsd(x_real, x_fake, lim),
    }
    if reference:
        out.update(
            ref_kl=reference_histogram_kl(x_real, x_fake, lim),
            ref_jsd=reference_histogram_jsd(x_real, x_fake, lim),
            ref_gnelbo=reference_gnelbo(
                model, toy2d(name, 12_800, seed=40_000 + seed), lim
            ),
        )
    if name == "8gaussians":
        out["within_0.1"], out["modes"] = modes_covered(x_fake)
    return out


# -----------------------------------------------------------------------------
# Out-of-distribution score
# -----------------------------------------------------------------------------


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve for "in-distribution scores higher": P(s_in > s_out) + ½ P(tie) (Mann-Whitney)."""
    a = torch.as_tensor(scores_in, dtype=torch.float64).flatten()
    b = torch.as_tensor(scores_out, dtype=torch.float64).flatten()
    for name, t in (("scores_in", a), ("scores_out", b)):
        if t.numel() == 0 or bool(torch.isnan(t).any()):
            raise ValueError(
                f"{name} must be a non-empty set of scores without NaN, got "
                f"{t.numel()} values"
            )
    allv = torch.cat([a, b])
    order = torch.argsort(allv, stable=True)
    ranks = torch.empty_like(allv)
    ranks[order] = torch.arange(1, len(allv) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inv = torch.unique(allv, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
        0, inv, ranks
    )
    cnts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
        0, inv, torch.ones_like(ranks)
    )
    ranks = (sums / cnts)[inv]
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2
    return (u / (len(a) * len(b))).item()


# -----------------------------------------------------------------------------
# Shipped runs: the multi-seed 2-D table and MNIST (python -m
# vaebook.pretrained train ch08_toy2d / ch08_mnist)
# -----------------------------------------------------------------------------


def _toy_key(kind, name, seed):
    return f"{kind}_{name}_{seed}"


def build(seeds: Sequence[int] = TOY2D_SEEDS) -> nn.ModuleDict:
    """All 2-D models of the shipped table (untrained): keys ``"{vae|soft_intro}_{dataset}_{seed}"``."""
    return nn.ModuleDict(
        {
            _toy_key(k, n, s): toy2d_model(
                n, TOY2D_SETTING["width"], TOY2D_SETTING["depth"]
            )
            for k in ("vae", "soft_intro")
            for n in TOY2D_BETAS
            for s in seeds
        }
    )


def _toy_job(args):
    kind, name, seed, num_iters, reference = args
    torch.set_num_threads(1)
    t0 = time.process_time()
    model, hist = fit_toy2d(
        name,
        kind,
        seed,
        num_iters=num_iters,
        num_vae=None if num_iters is None else max(1, num_iters // 6),
    )
    secs = time.process_time() - t0
    metrics = toy2d_metrics(model, name, seed, reference=reference)
    curves = {k: v for k, v in hist.steps.items()}
    return (
        _toy_key(kind, name, seed),
        model.state_dict(),
        metrics,
        secs,
        curves,
    )


def train(
    out=None,
    num_epochs: int | None = None,
    progress: bool = True,
    jobs: int = 1,
    seeds: Sequence[int] = TOY2D_SEEDS,
    eval_reference: bool = True,
):
    """Train every 2-D model of :func:`build` (4 data sets x {VAE, Soft-IntroVAE} x ``seeds``), evaluate them with
    :func:`toy2d_metrics`, and save one checkpoint with all weights and a ``results`` table in its metadata.

    ``num_epochs`` overrides the number of iterations (smoke runs); ``jobs`` trains in parallel processes (one
    thread each). About 15 min on one core of a loaded 2-core machine.
    """
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    from tqdm.auto import tqdm

    models = build(seeds)
    tasks = [
        (k, n, s, num_epochs, eval_reference)
        for k in ("vae", "soft_intro")
        for n in TOY2D_BETAS
        for s in seeds
    ]
    t0 = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(
            jobs, mp_context=mp.get_context("spawn")
        ) as ex:
            done = list(
                tqdm(
                    ex.map(_toy_job, tasks),
                    total=len(tasks),
                    disable=not progress,
                )
            )
    else:
        done = [_toy_job(t) for t in tqdm(tasks, disable=not progress)]
    results, curves = {}, {}
    for key, state, metrics, secs, c in done:
        models[key].load_state_dict(state)
        results[key] = dict(metrics, cpu_seconds=secs)
        if key.endswith("_0"):
            curves[key] = c
    setting = dict(TOY2D_SETTING)
    if num_epochs is not None:
        setting.update(num_iters=num_epochs, num_vae=max(1, num_epochs // 6))
    wall = time.perf_counter() - t0
    summary = {
        f"{k}_{n}": {
            m: float(np.mean([results[_toy_key(k, n, s)][m] for s in seeds]))
            for m in ("grid_nll", "kl", "jsd")
        }
        for k in ("vae", "soft_intro")
        for n in TOY2D_BETAS
    }
    meta = {
        "name": "ch08_toy2d",
        "setting": setting,
        "betas": TOY2D_BETAS,
        "seeds": list(seeds),
        "results": results,
        "eval": summary,
        "curves_seed0": curves,
        "train_seconds": wall,
        "wall_seconds": wall,
        "jobs": jobs,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python -m vaebook.pretrained train ch08_toy2d"
        + (f" --num-epochs {num_epochs}" if num_epochs else ""),
    }
    from .pretrained import checkpoint_path

    path = Path(out) if out is not None else checkpoint_path("ch08_toy2d")
    save_checkpoint(models, path, **meta)
    models.eval()
    return models, meta


# : MNIST setting of the shipped checkpoint (the reference README's MNIST
# command: residual conv nets, z = 32,
# : batch 128, lr 2e-4, beta_kl = beta_rec = 1, beta_neg = 256, 200 epochs
# (the argparse default is 250), no
#: warm-up (num_vae = 0); here MLPs, epochs of 10,000 of the 60,000 images)
MNIST_SETTING = {
    "latent_dim": 32,
    "hidden": (400,),
    "beta_rec": 1.0,
    "beta_kl": 1.0,
    "beta_neg": 256.0,
    "batch_size": 128,
    "lr": 5e-4,
    "num_epochs": 10,
    # an "epoch" is 10,000 images of a running permutation of all 60,000
    "images_per_epoch": 10_000,
    "num_vae_epochs": 1,
    "seed": 0,
    "likelihood": "bernoulli",
}


def mnist_model(
    latent_dim: int = 32,
    hidden=(400,),
    beta_rec=1.0,
    beta_kl=1.0,
    beta_neg=256.0,
    likelihood: str = "gaussian",
) -> SoftIntroVAE:
    """MLP Soft-IntroVAE for MNIST: ReLU encoder ``784 -> hidden -> 2*latent_dim``, decoder mirrored, ``s = 1/784``.

    ``likelihood="gaussian"`` (the reference): a sigmoid-squashed mean scored by squared error, with a
    **unit-variance** Gaussian for ``log_weights`` (so :func:`vaebook.metrics.iwae_bound` is the reference's OOD
    score). ``"bernoulli"``: a Bernoulli decoder scored by its negative log-likelihood (``rec_loss="nll"``).
    """
    enc = GaussianEncoder(784, latent_dim, hidden, activation="relu")
    if likelihood == "gaussian":
        dec = GaussianDecoder(
            latent_dim,
            (1, 28, 28),
            tuple(reversed(hidden)),
            activation="relu",
            learn_var="fixed",
            fixed_logvar=0.0,
            squash=True,
        )
        rec_loss = "mse"
    elif likelihood == "bernoulli":
        dec = BernoulliDecoder(
            latent_dim, (1, 28, 28), tuple(reversed(hidden)), activation="relu"
        )
        rec_loss = "nll"
    else:
        raise ValueError(
            f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}"
        )
    return SoftIntroVAE(
        enc,
        dec,
        latent_dim,
        beta_rec=beta_rec,
        beta_kl=beta_kl,
        beta_neg=beta_neg,
        rec_loss=rec_loss,
    )


def build_mnist() -> nn.ModuleDict:
    """``{"vae": ..., "soft_intro": ...}``: two :func:`mnist_model` s with :data:`MNIST_SETTING`."""
    s = MNIST_SETTING
    kw = dict(
        latent_dim=s["latent_dim"],
        hidden=s["hidden"],
        beta_rec=s["beta_rec"],
        beta_kl=s["beta_kl"],
        beta_neg=s["beta_neg"],
        likelihood=s["likelihood"],
    )
    return nn.ModuleDict(
        {"vae": mnist_model(**kw), "soft_intro": mnist_model(**kw)}
    )


def train_mnist(
    out=None,
    num_epochs: int | None = None,
    progress: bool = True,
    num_train: int | None = None,
):
    """Train the plain VAE and Soft-IntroVAE of :func:`build_mnist` on the MNIST training images (grey levels) and
    save both in one checkpoint (``ch08_mnist``) with their loss curves. ``num_train`` keeps the first images only
    (smoke runs)."""
    from .data import load_mnist

    s = MNIST_SETTING
    epochs = s["num_epochs"] if num_epochs is None else num_epochs
    x_train, _ = load_mnist("train")
    if num_train is not None:
        x_train = x_train[:num_train]
    models = build_mnist()
    for model in models.values():
        if hasattr(
            model.dec, "init_bias"
        ):  # Bernoulli decoder: output bias = the pixels' log-odds
            model.dec.init_bias(x_train)
    per_epoch = math.ceil(
        min(s["images_per_epoch"], len(x_train)) / s["batch_size"]
    )
    hists, secs = {}, {}
    for kind, model in models.items():
        g = torch.Generator().manual_seed(s["seed"])
        state = {"perm": torch.randperm(len(x_train), generator=g), "pos": 0}

        def next_batch():
            if state["pos"] >= len(x_train):
                state["perm"], state["pos"] = (
                    torch.randperm(len(x_train), generator=g),
                    0,
                )
            idx = state["perm"][state["pos"] : state["pos"] + s["batch_size"]]
            state["pos"] += s["batch_size"]
            return x_train[idx]

        n_it = epochs * per_epoch
        n_vae = n_it if kind == "vae" else s["num_vae_epochs"] * per_epoch
        h = train_introspective(
            model,
            next_batch,
            n_it,
            lr=s["lr"],
            num_vae=n_vae,
            seed=s["seed"],
            progress=progress,
            log_every=per_epoch,
        )
        hists[kind], secs[kind] = dict(h.steps), h.seconds
    meta = {
        "name": "ch08_mnist",
        "setting": dict(MNIST_SETTING, num_epochs=epochs),
        "num_train": len(x_train),
        "history": hists,
        "train_seconds": sum(secs.values()),
        "train_seconds_per_model": secs,
        "eval": {
            k: {m: v[-1] for m, v in h.items()} for k, h in hists.items()
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": "python -m vaebook.pretrained train ch08_mnist"
        + (f" --num-epochs {num_epochs}" if num_epochs else ""),
    }
    from .pretrained import checkpoint_path

    path = Path(out) if out is not None else checkpoint_path("ch08_mnist")
    save_checkpoint(models, path, **meta)
    models.eval()
    return models, meta


#: The two arms that complete Chapter 8's 2-D table (``ch08_toy2d_more``),
#: in the setting of :data:`TOY2D_SETTING`, for every data set and seed:
#: IntroVAE (the official code's hinge game on the same networks, its
#: reconstruction and KL weights set to the data set's beta_rec and beta_kl,
#: w_neg 0.5, margin 8: the sweep of the chapter finds the hinge active
#: throughout at that margin) and the control the review asked for, a plain
#: VAE with a small decoder variance (beta_rec 50, beta_kl 1).
TOY2D_MORE = {
    "intro": {"w_neg": 0.5, "margin": 8.0},
    "vae_control": {"beta_rec": 50.0, "beta_kl": 1.0},
}


def _more_kw(kind, name):
    if kind == "intro":
        b = TOY2D_BETAS[name]
        return dict(
            TOY2D_MORE["intro"], w_rec=b["beta_rec"], w_kl=b["beta_kl"]
        )
    return dict(TOY2D_MORE["vae_control"])


def build_more(seeds: Sequence[int] = TOY2D_SEEDS) -> nn.ModuleDict:
    """The untrained models of ``ch08_toy2d_more``: keys ``"{intro|vae_control}_{dataset}_{seed}"``."""
    out = {}
    for n in TOY2D_BETAS:
        for s in seeds:
            base = toy2d_model(
                n, TOY2D_SETTING["width"], TOY2D_SETTING["depth"]
            )
            out[_toy_key("intro", n, s)] = IntroVAE(
                base.enc, base.dec, base.latent_dim, **_more_kw("intro", n)
            )
            out[_toy_key("vae_control", n, s)] = toy2d_model(
                n,
                TOY2D_SETTING["width"],
                TOY2D_SETTING["depth"],
                **_more_kw("vae_control", n),
            )
    return nn.ModuleDict(out)


def train_more(
    out=None,
    num_epochs: int | None = None,
    progress: bool = True,
    seeds: Sequence[int] = TOY2D_SEEDS,
    eval_reference: bool = True,
):
    """Train and evaluate (:func:`toy2d_metrics`, the reference code's metrics included) the models of
    :func:`build_more` and save them in one checkpoint with a ``results`` table like ``ch08_toy2d``'s.
    ``num_epochs`` overrides the number of iterations (smoke runs)."""
    from .pretrained import checkpoint_path

    models = build_more(seeds)
    results, t0 = {}, time.perf_counter()
    for kind in TOY2D_MORE:
        for n in TOY2D_BETAS:
            for s in seeds:
                c0 = time.process_time()
                model, _ = fit_toy2d(
                    n,
                    "intro" if kind == "intro" else "vae",
                    s,
                    num_iters=num_epochs,
                    num_vae=None
                    if num_epochs is None
                    else max(1, num_epochs // 6),
                    model_kw=_more_kw(kind, n),
                )
                secs = time.process_time() - c0
                key = _toy_key(kind, n, s)
                models[key].load_state_dict(model.state_dict())
                results[key] = dict(
                    toy2d_metrics(model, n, s, reference=eval_reference),
                    cpu_seconds=secs,
                )
                if progress:
                    r = results[key]
                    print(
                        f"{key}: KL {r['kl']:.3f}, JSD {r['jsd']:.3f} "
                        f"({secs:.0f} s)",
                        flush=True,
                    )
    setting = dict(TOY2D_SETTING)
    if num_epochs is not None:
        setting.update(num_iters=num_epochs, num_vae=max(1, num_epochs // 6))
    meta = {
        "name": "ch08_toy2d_more",
        "setting": setting,
        "arms": {
            k: {n: _more_kw(k, n) for n in TOY2D_BETAS} for k in TOY2D_MORE
        },
        "seeds": list(seeds),
        "results": results,
        "train_seconds": time.perf_counter() - t0,
        "command": "python -m vaebook.pretrained train ch08_toy2d_more",
    }
    path = Path(out) if out is not None else checkpoint_path("ch08_toy2d_more")
    save_checkpoint(models, path, **meta)
    models.eval()
    return models, meta
