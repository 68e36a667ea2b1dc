r"""ReCAB-VAE (Chapter 5): a VAE with a Gaussian latent and a relaxed-categorical latent, whose discrete KL term is
the closed-form bound :func:`vaebook.relaxed.recab` (``vaebook.divergences.recab``).

Only the abstract of Oh, Um and Kang's ReCAB-VAE paper (2022) was available: it says that the model has "both
continuous and relaxed discrete latent representations" and a closed-form upper bound on the relaxed-categorical KL.
The objective below is **our template**, not the paper's (whose weights, capacities and architecture are unknown):

.. math:: \mathcal J(x)=\mathbb E_{q(z\mid x)\,q(y\mid x)}\big[\log p_\theta(x\mid z,y)\big]
          -\beta_c\,\mathrm{KL}\big(\mathcal N(\mu,\mathrm{diag}\,\sigma^2)\,\|\,\mathcal N(0,I)\big)
          -\beta_d\,\mathrm{KL}_d(x),

with :math:`z\in\mathbb R^D` Gaussian, :math:`y=(y_1,\dots,y_N)` independent Concrete samples at temperature
:math:`\tau` (prior: uniform Concrete at the same :math:`\tau`) and :math:`\mathrm{KL}_d` one of the terms of
:class:`vaebook.discrete_vae.CategoricalLatent` (``"recab"`` by default; ``"relaxed_mc"``, ``"categorical"``,
``"relaxed_exact"`` for comparison). Two remedies against posterior collapse of the discrete code are built in:

* **KL weight** :math:`\beta_d` (``beta``) with an optional linear warm-up over ``warmup_steps`` training steps:
  the weight at step :math:`t` is :math:`\beta_d\min(1,(t+1)/T)`.
* **Free bits** (Kingma et al. 2016) per categorical variable (``free_bits`` :math:`=\lambda` nats): the loss uses
  :math:`\sum_n\max\big(\lambda,\ \overline{\mathrm{KL}}_{d,n}\big)`, with :math:`\overline{\mathrm{KL}}_{d,n}` the
  batch mean of variable :math:`n`'s KL term, so a variable that carries less than :math:`\lambda` nats pays a
  constant and gets no gradient pushing it towards the prior. Neither remedy changes the reported ``elbo``.

:class:`ReCABVAE` subclasses :class:`vaebook.discrete_vae.CategoricalVAE` (the step counter, the temperature schedule,
the discrete evaluation): in ``train()`` mode ``elbo`` is the relaxed objective with the chosen KL term, in
``eval()`` mode the ELBO of the discrete model (one-hot codes, exact categorical KL), a true lower bound on
:math:`\log p_\theta(x)` that :func:`vaebook.metrics.evaluate` and :func:`vaebook.metrics.iwae_bound` report.

The checkpoint ``ch05_recab_vae`` and the results of the comparison (several seeds x KL terms) are produced by
:func:`train` (``python -m vaebook.recab_vae``, or ``python -m vaebook.pretrained train ch05_recab_vae`` once
registered).
"""

from __future__ import annotations

import math
import numbers
import platform
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .discrete_vae import (
    KL_CHOICES,
    CategoricalLatent,
    CategoricalVAE,
    jang_schedule,
)
from .divergences import kl_categorical, kl_normal_diag
from .models import MLP, BernoulliDecoder
from .relaxed import exp_concrete_log_prob, recab, relaxed_kl_equal_tau_exact
from .utils import check_int, check_number

__all__ = [
    "JointEncoder",
    "ReCABVAE",
    "discrete_kl_per_variable",
    "code_purity",
    "RECIPE",
    "ARMS",
    "build",
    "train",
]


def discrete_kl_per_variable(
    latent: CategoricalLatent,
    params: torch.Tensor,
    sample: dict | None,
    tau: float,
) -> torch.Tensor:
    r"""The training KL term of ``latent`` **per categorical variable**, ``(B, N)``; summed over ``N`` it equals
    ``latent.kl(params, sample, tau)`` (free bits need the per-variable terms). ``"recab"`` is
    :func:`vaebook.relaxed.recab` on the same logits."""
    p = latent.prior_logits
    kind = latent.kl_type
    if kind == "recab":
        return recab(params, p)
    if kind == "categorical":
        return kl_categorical(params, p)
    if kind == "relaxed_exact":
        return relaxed_kl_equal_tau_exact(params, p)
    if kind == "relaxed_mc":
        if sample is None:
            raise ValueError(
                "kl='relaxed_mc' needs the sample drawn by rsample"
            )
        tau_p = tau if latent.tau_prior is None else latent.tau_prior
        log_y = sample["log_y"]
        lq = exp_concrete_log_prob(log_y, params, tau)
        lp = exp_concrete_log_prob(log_y, p.expand_as(params), tau_p)
        return (lq - lp).mean(0)
    raise ValueError(
        f"per-variable KL terms are defined for {KL_CHOICES}, not for a "
        "callable kl"
    )


class JointEncoder(nn.Module):
    r"""MLP ``x -> (q_mean, q_logvar, logits)``: a diagonal Gaussian over :math:`z\in\mathbb R^D` (``(B, D)`` each) and
    the logits ``(B, N, K)`` of :math:`N` categorical variables, from one shared trunk. The log-variance is
    soft-clamped to ``[-logvar_bound, logvar_bound]`` as in :class:`vaebook.models.GaussianEncoder`."""

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        num_vars: int,
        num_classes: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        logvar_bound: float = 12.0,
    ):
        super().__init__()
        for name, v, lo in (
            ("data_dim", data_dim, 1),
            ("latent_dim", latent_dim, 1),
            ("num_vars", num_vars, 1),
            ("num_classes", num_classes, 2),
        ):
            check_int(name, v, lo)
        if (
            isinstance(logvar_bound, bool)
            or not isinstance(logvar_bound, numbers.Real)
            or not 0 < logvar_bound < math.inf
        ):
            raise ValueError(
                "logvar_bound must be a number > 0 and finite, got "
                f"{logvar_bound!r}"
            )
        self.latent_dim, self.num_vars, self.num_classes = (
            int(latent_dim),
            int(num_vars),
            int(num_classes),
        )
        self.logvar_bound = float(logvar_bound)
        self.net = MLP(
            data_dim,
            hidden,
            2 * self.latent_dim + self.num_vars * self.num_classes,
            activation,
        )

    def forward(self, x: torch.Tensor):
        h = self.net(x.flatten(start_dim=1) if x.dim() > 2 else x)
        D = self.latent_dim
        b = self.logvar_bound
        q_mean, raw, logits = h[..., :D], h[..., D : 2 * D], h[..., 2 * D :]
        return (
            q_mean,
            b * torch.tanh(raw / b),
            logits.unflatten(-1, (self.num_vars, self.num_classes)),
        )


class ReCABVAE(CategoricalVAE):
    r"""VAE with a Gaussian latent :math:`z\in\mathbb R^D` and ``num_vars`` relaxed categorical latents (Chapter 5).

    Args:
        enc: maps ``x`` to ``(q_mean, q_logvar, logits)`` (e.g. :class:`JointEncoder`).
        dec: maps ``(..., D + N*K)`` (the Gaussian code, then the flattened discrete codes) to a distribution over
            ``x`` (e.g. :class:`vaebook.models.BernoulliDecoder`).
        latent_dim: :math:`D`; num_vars, num_classes: :math:`N`, :math:`K`.
        kl: the discrete KL term, ``"recab"`` (default), ``"relaxed_mc"``, ``"categorical"`` or ``"relaxed_exact"``
            (see :class:`vaebook.discrete_vae.CategoricalLatent`; the prior is uniform).
        tau: a temperature or a schedule ``step -> tau`` (e.g. :func:`vaebook.discrete_vae.jang_schedule`).
        beta: :math:`\beta_d`, the weight of the discrete KL term in the loss.
        beta_c: :math:`\beta_c`, the weight of the Gaussian KL term in the loss.
        free_bits: :math:`\lambda\ge0` nats per categorical variable (0: off); see the module docstring.
        warmup_steps: linear warm-up of :math:`\beta_d` over this many training steps (0: off).
        binarize: ``"dynamic"`` or ``None``, as in :class:`vaebook.discrete_vae.CategoricalVAE`.

    ``elbo(x)`` returns per-example ``{"elbo", "rec", "kl", "kl_c", "kl_d"}`` with ``kl = kl_c + kl_d``: the
    Gaussian KL (:func:`vaebook.divergences.kl_normal_diag`) and the discrete term (training mode: the chosen
    ``kl``; evaluation mode: the exact categorical KL of the discrete model).
    """

    def __init__(
        self,
        enc: nn.Module,
        dec: nn.Module,
        latent_dim: int,
        num_vars: int = 1,
        num_classes: int = 10,
        kl="recab",
        tau=0.5,
        beta: float = 1.0,
        beta_c: float = 1.0,
        free_bits: float = 0.0,
        warmup_steps: int = 0,
        binarize: str | None = "dynamic",
    ):
        if callable(kl) or kl not in KL_CHOICES:
            raise ValueError(f"kl must be one of {KL_CHOICES}, got {kl!r}")
        for name, v in (
            ("beta", beta),
            ("beta_c", beta_c),
            ("free_bits", free_bits),
        ):
            check_number(name, v, 0.0)
        check_int("warmup_steps", warmup_steps, 0)
        check_int("latent_dim", latent_dim)
        latent = CategoricalLatent(
            num_vars, num_classes, kl=kl, prior="uniform"
        )
        super().__init__(
            enc,
            dec,
            kl=kl,
            tau=tau,
            beta=beta,
            binarize=binarize,
            latent=latent,
        )
        self.latent_dim = int(latent_dim)
        self.beta_c, self.free_bits, self.warmup_steps = (
            float(beta_c),
            float(free_bits),
            int(warmup_steps),
        )

    @classmethod
    def mlp(
        cls,
        latent_dim: int = 8,
        num_vars: int = 1,
        num_classes: int = 10,
        hidden: Sequence[int] = (256,),
        data_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
        **kwargs,
    ) -> "ReCABVAE":
        """Encoder ``D_x-hidden-(2D + N*K)`` and Bernoulli decoder ``(D + N*K)-reversed(hidden)-D_x``; keyword
        arguments go to :class:`ReCABVAE`."""
        enc = JointEncoder(
            math.prod(data_shape),
            latent_dim,
            num_vars,
            num_classes,
            hidden,
            activation,
        )
        dec = BernoulliDecoder(
            latent_dim + num_vars * num_classes,
            data_shape,
            tuple(reversed(hidden)),
            activation,
        )
        return cls(enc, dec, latent_dim, num_vars, num_classes, **kwargs)

    # -- pieces
    # -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        """``(q_mean, q_logvar, logits)``: ``(B, D)``, ``(B, D)``, ``(B, N, K)``."""
        return self.enc(x)

    def decode(self, z: torch.Tensor, y: torch.Tensor):
        """Decoder distribution for Gaussian codes ``z`` ``(..., D)`` and discrete codes ``y`` ``(..., N, K)``."""
        shape = torch.broadcast_shapes(z.shape[:-1], y.shape[:-2])
        z = z.expand(*shape, z.shape[-1])
        y = y.expand(*shape, *y.shape[-2:]).flatten(start_dim=-2)
        return self.dec(torch.cat([z, y], -1))

    def kl_weight(self, step: int | None = None) -> float:
        r""":math:`\beta_d` at training step ``step`` (default: the current step), with the linear warm-up."""
        step = int(self.step) if step is None else int(step)
        if self.warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.warmup_steps)

    def _gauss_sample(self, q_mean, q_logvar, num_samples):
        eps = torch.randn(
            (num_samples, *q_mean.shape),
            dtype=q_mean.dtype,
            device=q_mean.device,
        )
        return q_mean + torch.exp(0.5 * q_logvar) * eps

    # -- objectives
    # -------------------------------------------------------------------------
    def _terms(self, x, num_samples=1, discrete=None, tau=None):
        discrete = (not self.training) if discrete is None else discrete
        q_mean, q_logvar, params = self.encode(x)
        S = num_samples or 1
        z = self._gauss_sample(q_mean, q_logvar, S)
        kl_c = kl_normal_diag(q_mean, q_logvar)
        if discrete:
            y = self.latent.sample_discrete(params, S)
            kl_dn = kl_categorical(params, self.latent.prior_logits)
        else:
            tau = self.tau if tau is None else tau
            sample = self.latent.rsample(params, tau, S)
            y = sample["z"]
            kl_dn = discrete_kl_per_variable(self.latent, params, sample, tau)
        rec = self.decode(z, y).log_prob(x).mean(0)
        return rec, kl_c, kl_dn

    def elbo(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        discrete: bool | None = None,
        tau: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example ``{"elbo", "rec", "kl", "kl_c", "kl_d"}`` (``(B,)`` each); ``discrete`` defaults to
        ``not self.training``, ``tau`` (relaxed mode) to :attr:`tau`."""
        rec, kl_c, kl_dn = self._terms(x, num_samples, discrete, tau)
        kl_d = kl_dn.sum(-1)
        return {
            "elbo": rec - kl_c - kl_d,
            "rec": rec,
            "kl": kl_c + kl_d,
            "kl_c": kl_c,
            "kl_d": kl_d,
        }

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        r"""Relaxed training loss :math:`-\overline{\mathrm{rec}}+\beta_c\overline{\mathrm{KL}}_c+\beta_d(t)\,P_d`
        with :math:`P_d=\sum_n\max(\lambda,\overline{\mathrm{KL}}_{d,n})` (batch means; :math:`\lambda` = ``free_bits``,
        0 gives the plain mean KL); advances :attr:`step` in training."""
        x = self._prepare(batch)
        tau, weight = self.tau, self.kl_weight()
        rec, kl_c, kl_dn = self._terms(x, 1, False, tau)
        penalty = (
            kl_dn.mean(0).clamp_min(self.free_bits).sum()
            if self.free_bits > 0
            else kl_dn.sum(-1).mean()
        )
        loss = -rec.mean() + self.beta_c * kl_c.mean() + weight * penalty
        if self.training:
            self.step += 1
        kl_d = kl_dn.sum(-1)
        return loss, {
            "loss": loss.item(),
            "elbo": (rec - kl_c - kl_d).mean().item(),
            "rec": rec.mean().item(),
            "kl_c": kl_c.mean().item(),
            "kl_d": kl_d.mean().item(),
            "tau": tau,
            "beta_d": weight,
        }

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""Discrete-model log-weights :math:`\log p(x\mid z_s,y_s)+\log p(z_s)+\log p(y_s)-\log q(z_s\mid x)
        -\log q(y_s\mid x)`, one-hot :math:`y_s`, ``(num_samples, B)`` (for :func:`vaebook.metrics.iwae_bound`)."""
        q_mean, q_logvar, params = self.encode(x)
        z = self._gauss_sample(q_mean, q_logvar, num_samples)
        y = self.latent.sample_discrete(params, num_samples)
        std = torch.exp(0.5 * q_logvar)
        log_q_z = torch.distributions.Normal(q_mean, std).log_prob(z).sum(-1)
        log_p_z = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return (
            self.decode(z, y).log_prob(x)
            + log_p_z
            - log_q_z
            + self.latent.prior_log_prob(y)
            - self.latent.discrete_log_q(params, y)
        )

    # -- reading the model
    # -------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class of each categorical variable, ``(B, N)`` (``long``)."""
        return self.encode(x.to(self._device()))[2].argmax(-1)

    @torch.no_grad()
    def decode_classes(
        self, z: torch.Tensor | None = None, var: int = 0
    ) -> torch.Tensor:
        """Images (pixel means) decoded from each class ``k`` of variable ``var`` (the others at class 0), with the
        Gaussian code ``z`` ``(D,)`` (default 0): ``(K, *data_shape)``."""
        K = self.num_classes
        z = (
            torch.zeros(self.latent_dim, device=self._device())
            if z is None
            else z.to(self._device())
        )
        y = torch.zeros(K, self.num_vars, K, device=self._device())
        y[:, :, 0] = 1.0
        y[:, var] = torch.eye(K, device=self._device())
        return self.dec.mean(
            torch.cat([z.expand(K, -1), y.flatten(start_dim=-2)], -1)
        )

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images decoded from prior codes (standard normal ``z``, uniform one-hot ``y``)."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(
            self._device()
        )
        y = self.latent.sample_prior(n, generator=generator).to(self._device())
        return self.dec.mean(torch.cat([z, y.flatten(start_dim=-2)], -1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded posterior mean ``z`` and most likely classes, pixel means."""
        q_mean, _, params = self.encode(x.to(self._device()))
        y = F.one_hot(params.argmax(-1), self.num_classes).to(q_mean.dtype)
        return self.dec.mean(torch.cat([q_mean, y.flatten(start_dim=-2)], -1))


def code_purity(
    train_codes, train_labels, test_codes, test_labels, num_classes: int = 10
) -> dict[str, float]:
    r"""How much of the digit identity a discrete code carries (Chapter 5).

    Codes are either class indices ``(M,)`` (e.g. the arg max of the posterior) or posterior probabilities
    ``(M, K)`` :math:`q(c\mid x_i)` of one categorical variable. With probabilities the statistics are those of a
    code **sampled** from the posterior, which is what the decoder sees: a collapsed posterior (nearly uniform) then
    carries no information even though the arg max of its logits may still depend on :math:`x`.

    Each class :math:`c` is mapped to the digit with the largest (soft) count among the training images; ``accuracy``
    is the (expected) fraction of test images whose code maps to their digit (a code independent of the input scores
    at most the largest digit share, about 0.11 on MNIST); ``nmi`` is the normalised mutual information
    :math:`I(c;\ell)/\sqrt{H(c)H(\ell)}` of the test joint (0: independent, 1: a relabelling); ``used`` counts the
    classes with at least 1 % of the test mass.

    Args:
        train_codes, test_codes: ``(M,)`` integer codes in ``[0, num_classes)`` or ``(M, num_classes)`` probabilities;
        train_labels, test_labels: ``(M,)`` integer labels.
    """
    check_int("num_classes", num_classes)

    def joint(codes, labels):
        codes, labels = torch.as_tensor(codes), torch.as_tensor(labels)
        if (
            labels.dim() != 1
            or labels.is_floating_point()
            or bool(((labels < 0) | (labels > 9)).any())
        ):
            raise ValueError("labels must be (M,) integer digits in [0, 9]")
        labels = labels.long()
        if codes.dim() == 1:
            if codes.is_floating_point() or bool(
                ((codes < 0) | (codes >= num_classes)).any()
            ):
                raise ValueError(
                    "codes must be (M,) integer class indices in [0, "
                    f"num_classes) = [0, {num_classes}) "
                    "or (M, num_classes) probabilities"
                )
            codes = F.one_hot(codes.long(), num_classes)
        if codes.dim() != 2 or codes.shape != (labels.shape[0], num_classes):
            raise ValueError(
                "codes must be (M,) class indices or (M, num_classes) "
                "probabilities, labels (M,)"
            )
        if not bool(((codes >= 0) & (codes <= 1)).all()):  # also NaN
            raise ValueError(
                "codes must be probabilities in [0, 1] (no NaN) when given as "
                "(M, num_classes)"
            )
        return codes.double().T @ F.one_hot(
            labels, 10
        ).double(), codes.double()  # (K, 10) soft counts

    counts, _ = joint(train_codes, train_labels)
    test_joint, probs = joint(test_codes, test_labels)
    mapping = counts.argmax(-1)  # class -> digit
    hit = (
        mapping[:, None] == torch.as_tensor(test_labels).long()[None, :]
    ).double()  # (K, M)
    accuracy = (probs.T * hit).sum(0).mean().item()
    pj = test_joint / test_joint.sum()
    pc, pl = pj.sum(1), pj.sum(0)
    nz = pj > 0
    mi = (
        (pj[nz] * (pj[nz] / (pc[:, None] * pl[None, :])[nz]).log())
        .sum()
        .item()
    )
    h = lambda p: -(p[p > 0] * p[p > 0].log()).sum().item()  # noqa: E731
    hc, hl = h(pc), h(pl)
    nmi = max(0.0, mi) / math.sqrt(hc * hl) if hc > 0 and hl > 0 else 0.0
    return {"accuracy": accuracy, "nmi": nmi, "used": int((pc >= 0.01).sum())}


# -----------------------------------------------------------------------------
# the Chapter 5 checkpoint and comparison
# -----------------------------------------------------------------------------

#: model and training settings shared by every arm of the comparison
RECIPE = dict(
    latent_dim=8,
    num_vars=1,
    num_classes=10,
    hidden=(256,),
    tau0=1.0,
    tau_min=0.5,
    rate=5e-4,
    every=100,
    num_epochs=10,
    # an epoch draws 10,000 of the 60,000 training images afresh
    images_per_epoch=10_000,
    batch_size=100,
    lr=1e-3,
    num_train=None,
    num_test=None,
    seeds=(0, 1, 2),
    eval_k=100,
    eval_num_test=500,
    saved_arm="recab_fb",
    saved_seed=0,
)

#: the arms of the comparison: name -> keyword arguments of :class:`ReCABVAE`
ARMS = {
    "recab": dict(kl="recab"),
    "relaxed_mc": dict(kl="relaxed_mc"),
    "categorical": dict(kl="categorical"),
    "recab_fb": dict(kl="recab", free_bits=3.0),
}


def build(arm: str = "recab_fb", **overrides) -> ReCABVAE:
    """The untrained model of ``arm`` (:data:`ARMS`) with :data:`RECIPE`'s settings (``overrides`` replace fields of
    the recipe or of the arm); the default is the ``ch05_recab_vae`` checkpoint's model."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {sorted(ARMS)}, got {arm!r}")
    r = {**RECIPE, **ARMS[arm], **overrides}
    kw = {
        k: r[k]
        for k in ("kl", "beta", "beta_c", "free_bits", "warmup_steps")
        if k in r
    }
    return ReCABVAE.mlp(
        r["latent_dim"],
        r["num_vars"],
        r["num_classes"],
        hidden=tuple(r["hidden"]),
        tau=jang_schedule(r["tau0"], r["tau_min"], r["rate"], r["every"]),
        **kw,
    )


def _train_one(arm, seed, x_train, r, progress):
    from .data import epoch_loader
    from .train import fit

    torch.manual_seed(seed)
    model = build(
        arm,
        **{
            k: v
            for k, v in r.items()
            if k in ("latent_dim", "num_vars", "num_classes", "hidden")
        },
    )
    model.dec.init_bias(x_train)
    loader = epoch_loader(
        x_train,
        batch_size=r["batch_size"],
        seed=seed,
        images_per_epoch=min(r["images_per_epoch"], len(x_train)),
    )
    hist = fit(
        model,
        loader,
        r["num_epochs"],
        lr=r["lr"],
        seed=seed,
        progress=progress,
    )
    return model, hist


@torch.no_grad()
def _evaluate(model, x_tr, y_tr, x_te, y_te, r, seed):
    from .metrics import evaluate

    torch.manual_seed(seed + 1000)
    model.eval()
    ev = evaluate(model, x_te)
    ev_k = evaluate(model, x_te[: r["eval_num_test"]], k=r["eval_k"])
    model.train()
    relaxed_terms = model.elbo(
        x_te, discrete=False, tau=model.tau
    )  # relaxed model with the training KL term
    model.latent.kl_type, kind = "relaxed_exact", model.latent.kl_type
    exact = model.elbo(
        x_te, discrete=False, tau=model.tau
    )  # the relaxed model's true ELBO
    model.latent.kl_type = kind
    model.eval()
    params = model.encode(x_te)[2]
    # noqa: E731  (variable 0)
    probs = lambda x: torch.softmax(model.encode(x)[2][:, 0], -1)
    purity = code_purity(
        probs(x_tr), y_tr, probs(x_te), y_te, model.num_classes
    )
    hard = code_purity(
        model.codes(x_tr)[:, 0],
        y_tr,
        model.codes(x_te)[:, 0],
        y_te,
        model.num_classes,
    )
    return {
        "test_elbo": ev["elbo"],
        "test_elbo_se": ev["elbo_se"],
        "test_bound": ev_k["iwae"],
        "test_bound_se": ev_k["iwae_se"],
        "relaxed_elbo": exact["elbo"].mean().item(),
        "train_objective_elbo": relaxed_terms["elbo"].mean().item(),
        "kl_c": kl_normal_diag(*model.encode(x_te)[:2]).mean().item(),
        "kl_cat": kl_categorical(params, model.latent.prior_logits)
        .sum(-1)
        .mean()
        .item(),
        "kl_relaxed": relaxed_kl_equal_tau_exact(
            params, model.latent.prior_logits
        )
        .sum(-1)
        .mean()
        .item(),
        "kl_recab": recab(params, model.latent.prior_logits)
        .sum(-1)
        .mean()
        .item(),
        **{f"code_{k}": v for k, v in purity.items()},
        **{f"argmax_{k}": v for k, v in hard.items()},
    }


def train(
    out: str | Path | None = None,
    num_epochs: int | None = None,
    progress: bool = True,
    root=None,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    num_train: int | None = None,
    **overrides,
) -> tuple[ReCABVAE, dict]:
    """Run the Chapter 5 comparison: every arm of :data:`ARMS` x every seed on the MNIST training images (dynamic
    binarisation), evaluated on the statically binarised test images (discrete ELBO; the ``eval_k``-sample bound
    on ``eval_num_test`` images; the relaxed model's ELBO with the exact relaxed KL; the KL terms; what the code
    captures, :func:`code_purity`). Saves the model of ``saved_arm`` / ``saved_seed`` with all results and
    histories in its metadata to ``out`` (default: the package's ``checkpoints/ch05_recab_vae.pt``) and returns
    ``(model, meta)``."""
    from .data import load_mnist
    from .train import save_checkpoint

    r = {**RECIPE, **overrides}
    if num_epochs is not None:
        r["num_epochs"] = int(num_epochs)
    if num_train is not None:
        r["num_train"] = int(num_train)
    arms = list(ARMS) if arms is None else list(arms)
    seeds = list(r["seeds"] if seeds is None else seeds)
    if r["saved_arm"] not in arms or r["saved_seed"] not in seeds:
        arms, seeds = (
            arms + [r["saved_arm"]] * (r["saved_arm"] not in arms),
            seeds,
        )
        if r["saved_seed"] not in seeds:
            seeds = [r["saved_seed"], *seeds]
    x_tr, y_tr = load_mnist("train", root=root)
    if r["num_train"] is not None:
        x_tr, y_tr = x_tr[: r["num_train"]], y_tr[: r["num_train"]]
    x_te, y_te = load_mnist("test", root=root, binarize="static")
    if r["num_test"] is not None:
        x_te, y_te = x_te[: r["num_test"]], y_te[: r["num_test"]]
    x_tr_bin = torch.bernoulli(
        x_tr, generator=torch.Generator().manual_seed(1)
    )
    results, histories, saved, t_all = {}, {}, None, time.perf_counter()
    for arm in arms:
        for seed in seeds:
            model, hist = _train_one(arm, seed, x_tr, r, progress)
            ev = _evaluate(model, x_tr_bin, y_tr, x_te, y_te, r, seed)
            ev["train_seconds"] = hist.seconds
            results[f"{arm}/{seed}"] = ev
            histories[f"{arm}/{seed}"] = {
                k: hist[k] for k in ("elbo", "kl_c", "kl_d", "rec")
            }
            if progress:
                print(
                    f"{arm:>12} seed {seed}: test ELBO {ev['test_elbo']:.2f}, "
                    f"KL_cat {ev['kl_cat']:.2f}, "
                    f"code accuracy {ev['code_accuracy']:.3f} "
                    f"({hist.seconds:.0f} s)"
                )
            if arm == r["saved_arm"] and seed == r["saved_seed"]:
                saved = model
    meta = {
        "name": "ch05_recab_vae",
        "recipe": {**r, "hidden": list(r["hidden"]), "seeds": seeds},
        "arms": {a: ARMS[a] for a in arms},
        "num_train": len(x_tr),
        "num_test": len(x_te),
        "steps": int(saved.step),
        "final_tau": saved.tau,
        "results": results,
        "histories": histories,
        "seconds": time.perf_counter() - t_all,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": "python -m vaebook.pretrained train ch05_recab_vae",
    }
    path = (
        Path(out)
        if out is not None
        else Path(__file__).resolve().parent
        / "checkpoints"
        / "ch05_recab_vae.pt"
    )
    save_checkpoint(saved, path, **meta)
    saved.eval()
    return saved, meta


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m vaebook.recab_vae",
        description="train the ch05_recab_vae checkpoint and the Chapter 5 "
        "comparison",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--num-epochs", type=int, default=None)
    ap.add_argument("--num-train", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--arms", nargs="*", default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    from .utils import get_device

    get_device()  # applies $VAEBOOK_THREADS (use 1 on a small shared machine)
    _, meta = train(
        out=a.out,
        num_epochs=a.num_epochs,
        progress=not a.no_progress,
        arms=a.arms,
        seeds=a.seeds,
        num_train=a.num_train,
    )
    print(f"done in {meta['seconds']:.0f} s")
