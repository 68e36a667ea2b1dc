r"""Categorical VAEs with relaxed (Gumbel-Softmax / Concrete) training and discrete evaluation (Chapter 3).

The latent code is :math:`N` independent categorical variables with :math:`K` classes each, stored one-hot as
``(..., B, N, K)`` and fed to the decoder flattened, ``(..., B, N*K)``. Training replaces each one-hot sample by a
Concrete sample at temperature :math:`\tau` (optionally straight-through); evaluation uses the discrete model: hard
one-hot samples from :math:`q_\phi(z\mid x)=\prod_n\mathrm{Cat}(\pi_n(x))` and the exact categorical KL.

Two pieces, so that later chapters can swap one without touching the other:

* :class:`CategoricalLatent`: the latent layer. It turns the encoder's output ``params`` ``(B, N, param_dim)`` into
  relaxed samples (:meth:`~CategoricalLatent.rsample`), a KL term (:meth:`~CategoricalLatent.kl`), the discrete
  distribution used at test time (:meth:`~CategoricalLatent.discrete_logits`) and the prior. The KL is chosen by name
  (``"categorical"``, ``"relaxed_mc"``, ``"relaxed_exact"``, ``"recab"``) or given as a callable. Chapter 4 (IGR)
  subclasses it and overrides ``param_dim``, ``rsample``, ``kl`` and ``discrete_logits``.
* :class:`CategoricalVAE`: encoder + latent + decoder, with the book's model contract (``loss(batch) -> (loss,
  logs)`` for :func:`vaebook.train.fit`, ``elbo(x)``, ``log_weights(x, S)`` for :mod:`vaebook.metrics`). It owns the
  temperature schedule and the global step. In ``train()`` mode ``elbo`` is the relaxed training objective; in
  ``eval()`` mode it is the discrete ELBO, so :func:`vaebook.metrics.evaluate` and
  :func:`vaebook.metrics.iwae_bound` report discrete test bounds. Chapter 5 (ReCAB-VAE) composes a
  :class:`CategoricalLatent` with a Gaussian latent by overriding :meth:`CategoricalVAE.encode`,
  :meth:`CategoricalVAE.decode` and :meth:`CategoricalVAE.elbo`.

The checkpoint ``ch03_catvae`` (20 variables x 10 classes on all MNIST training images) is produced by :func:`train`
(``python -m vaebook.discrete_vae``, or ``python -m vaebook.pretrained train ch03_catvae`` once registered).
"""

from __future__ import annotations

import functools
import math
import numbers
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .divergences import kl_categorical
from .kernels import _check_backend, resolve_backend
from .models import MLP, BatchMixin, BernoulliDecoder
from .relaxed import (
    constant_tau_schedule,
    exp_concrete_log_prob,
    exp_concrete_sample,
    gumbel_max,
    gumbel_softmax,
    recab,
    relaxed_kl_equal_tau_exact,
    sample_gumbel,
    tau_schedule,
)
from .utils import check_int, check_number

__all__ = [
    "KL_CHOICES",
    "CategoricalEncoder",
    "CategoricalLatent",
    "CategoricalVAE",
    "jang_schedule",
    "build",
    "train",
    "RECIPE",
]

#: names accepted by ``CategoricalLatent(kl=...)``
KL_CHOICES = ("categorical", "relaxed_mc", "relaxed_exact", "recab")


def jang_schedule(
    tau0: float = 1.0,
    tau_min: float = 0.5,
    rate: float = 1e-4,
    every: int = 500,
) -> Callable:
    r"""Jang et al.'s annealing :math:`\tau(t)=\max(\tau_{\min},\tau_0e^{-rN\lfloor t/N\rfloor})` as a function of the
    step (a ``functools.partial`` of :func:`vaebook.relaxed.tau_schedule`; picklable, printable). The arguments are
    checked here, not at the first step."""
    tau_schedule(0, tau0, tau_min, rate, every)
    return functools.partial(
        tau_schedule, tau0=tau0, tau_min=tau_min, rate=rate, every=every
    )


def _as_schedule(tau) -> Callable[[int], float]:
    if callable(tau):
        return tau
    if (
        isinstance(tau, bool)
        or not isinstance(tau, numbers.Real)
        or not (0 < tau < math.inf)
    ):
        raise ValueError(
            "tau must be a number > 0 or a schedule step -> tau (e.g. "
            f"jang_schedule()), got {tau!r}"
        )
    return functools.partial(constant_tau_schedule, tau=float(tau))


class CategoricalEncoder(nn.Module):
    r"""MLP ``x -> params`` of shape ``(B, num_vars, param_dim)`` (logits of :math:`q_\phi(z_n\mid x)` when
    ``param_dim == num_classes``). Images are flattened first."""

    def __init__(
        self,
        data_dim: int,
        num_vars: int,
        param_dim: int,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
    ):
        super().__init__()
        for name, v in (
            ("data_dim", data_dim),
            ("num_vars", num_vars),
            ("param_dim", param_dim),
        ):
            check_int(name, v)
        self.num_vars, self.param_dim = int(num_vars), int(param_dim)
        self.net = MLP(
            int(data_dim), hidden, self.num_vars * self.param_dim, activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x.flatten(start_dim=1) if x.dim() > 2 else x)
        return h.unflatten(-1, (self.num_vars, self.param_dim))


class CategoricalLatent(nn.Module):
    r"""A layer of ``num_vars`` categorical latents with ``num_classes`` classes, relaxed for training.

    Args:
        num_vars, num_classes: :math:`N` and :math:`K \ge 2`.
        kl: the KL term used for training, per example summed over the :math:`N` variables:

            * ``"categorical"``: :math:`\sum_n\mathrm{KL}(\mathrm{Cat}(\pi^q_n)\|\mathrm{Cat}(\pi^p))` in closed
              form, paired with relaxed samples (Jang et al.; **not a bound** on the relaxed model's likelihood);
            * ``"relaxed_mc"``: :math:`\log q_{\mathrm{Exp}}(Y)-\log p_{\mathrm{Exp}}(Y)` at the ExpConcrete sample
              :math:`Y` used by the decoder (Maddison et al.; prior temperature ``tau_prior``, default :math:`\tau`);
            * ``"relaxed_exact"``: the equal-temperature relaxed KL, exactly (:func:`relaxed_kl_equal_tau_exact`,
              independent of :math:`\tau`; 1-D quadrature, slower);
            * ``"recab"``: the closed-form upper bound :func:`vaebook.relaxed.recab` (equal temperatures);
            * a callable ``kl(latent, params, sample, tau) -> (B,)``.
        prior: ``"uniform"`` (a fixed buffer of zero logits) or ``"learned"`` (a parameter, Jang et al.'s learned
            categorical prior), shape ``(N, K)``.
        tau_prior: prior temperature for ``"relaxed_mc"`` (``None``: the posterior's :math:`\tau`, the equal-temperature
            case); must be ``None`` for ``"relaxed_exact"``/``"recab"``.
        hard: straight-through samples (one-hot forward, Concrete gradient; Jang §2.2).
        backend: ``"auto"`` (default), ``"torch"`` or ``"triton"``: where the relaxed sample is computed (the rule of
            :mod:`vaebook.kernels`: the fused Gumbel-Softmax kernel for CUDA tensors by default; on the CPU the soft
            sample is ``exp`` of the ExpConcrete sample, as always). An attribute, not in the ``state_dict``.

    Hooks for other relaxations (Chapter 4): ``param_dim`` (encoder outputs per variable), :meth:`rsample`,
    :meth:`kl`, :meth:`discrete_logits`.
    """

    def __init__(
        self,
        num_vars: int,
        num_classes: int,
        kl="categorical",
        prior: str = "uniform",
        tau_prior: float | None = None,
        hard: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.backend = _check_backend(backend)
        for name, v, lo in (
            ("num_vars", num_vars, 1),
            ("num_classes", num_classes, 2),
        ):
            check_int(name, v, lo)
        if not callable(kl) and kl not in KL_CHOICES:
            raise ValueError(
                f"kl must be one of {KL_CHOICES} or a callable, got {kl!r}"
            )
        if tau_prior is not None and kl in (
            "relaxed_exact",
            "recab",
            "categorical",
        ):
            raise ValueError(
                f"tau_prior must be None unless kl='relaxed_mc' (the {kl!r} "
                "term has no prior "
                "temperature: it assumes equal temperatures or none)"
            )
        if tau_prior is not None and not (
            isinstance(tau_prior, numbers.Real) and 0 < tau_prior < math.inf
        ):
            raise ValueError(
                f"tau_prior must be None or a number > 0, got {tau_prior!r}"
            )
        if prior not in ("uniform", "learned"):
            raise ValueError(
                f"prior must be 'uniform' or 'learned', got {prior!r}"
            )
        self.num_vars, self.num_classes = int(num_vars), int(num_classes)
        self.kl_type, self.tau_prior, self.hard, self.prior_type = (
            kl,
            tau_prior,
            bool(hard),
            prior,
        )
        zeros = torch.zeros(self.num_vars, self.num_classes)
        if prior == "learned":
            self.prior_logits = nn.Parameter(zeros)
        else:
            self.register_buffer("prior_logits", zeros)

    @property
    def param_dim(self) -> int:
        """Encoder outputs per variable (``num_classes`` logits here)."""
        return self.num_classes

    @property
    def latent_dim(self) -> int:
        """Decoder input size ``N * K``."""
        return self.num_vars * self.num_classes

    # -- hooks
    # -------------------------------------------------------------------------
    def discrete_logits(self, params: torch.Tensor) -> torch.Tensor:
        r"""Logits ``(B, N, K)`` of the categorical :math:`q_\phi(z\mid x)` that hard samples follow (the
        :math:`\tau\to0` limit of the relaxation)."""
        return params

    def rsample(
        self,
        params: torch.Tensor,
        tau: float,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        r"""Relaxed sample(s) for training: ``{"z": (S, B, N, K) decoder input, "log_y": ExpConcrete sample}``
        (``S`` = ``num_samples`` or 1). ``z`` is the Concrete sample :math:`y=e^Y`, or its straight-through one-hot
        version when ``hard``; ``log_y`` is :math:`Y=\mathrm{log\_softmax}((\ell+g)/\tau)` from the same noise."""
        shape = (num_samples or 1, *params.shape)
        g = sample_gumbel(
            shape,
            generator=generator,
            dtype=params.dtype,
            device=params.device,
        )
        log_y = exp_concrete_sample(params, tau, gumbel=g)
        backend = getattr(self, "backend", "auto")
        if self.hard:
            z = gumbel_softmax(
                params, tau, hard=True, gumbel=g, backend=backend
            )
        elif (
            resolve_backend(backend, params) == "triton"
        ):  # the fused kernel's soft sample: softmax((l + g) / tau)
            z = gumbel_softmax(params, tau, gumbel=g, backend="triton")
        else:
            z = log_y.exp()  # the same sample, from the ExpConcrete one
        return {"z": z, "log_y": log_y}

    def kl(
        self,
        params: torch.Tensor,
        sample: dict[str, torch.Tensor] | None,
        tau: float,
    ) -> torch.Tensor:
        """The training KL term per example, ``(B,)`` (averaged over samples for ``"relaxed_mc"``)."""
        p = self.prior_logits
        if callable(self.kl_type):
            return self.kl_type(self, params, sample, tau)
        if self.kl_type == "categorical":
            return kl_categorical(params, p).sum(-1)
        if self.kl_type == "relaxed_exact":
            return relaxed_kl_equal_tau_exact(params, p).sum(-1)
        if self.kl_type == "recab":
            return recab(params, p).sum(-1)
        # relaxed_mc: log q - log p at the decoder's sample, in
        # ExpConcrete space
        if sample is None:
            raise ValueError(
                "kl='relaxed_mc' needs the sample drawn by rsample"
            )
        log_y = sample["log_y"]
        tau_p = tau if self.tau_prior is None else self.tau_prior
        lq = exp_concrete_log_prob(log_y, params, tau)
        lp = exp_concrete_log_prob(log_y, p.expand_as(params), tau_p)
        return (lq - lp).sum(-1).mean(0)

    # -- discrete model
    # -------------------------------------------------------------------------
    def sample_discrete(
        self,
        params: torch.Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Exact one-hot samples ``(S, B, N, K)`` from :meth:`discrete_logits` (Gumbel-max)."""
        logits = self.discrete_logits(params)
        return gumbel_max(
            logits.expand(num_samples or 1, *logits.shape), generator=generator
        )

    def discrete_kl(self, params: torch.Tensor) -> torch.Tensor:
        r"""Exact :math:`\sum_n\mathrm{KL}(\mathrm{Cat}(\pi^q_n)\|\mathrm{Cat}(\pi^p_n))`, ``(B,)``."""
        return kl_categorical(
            self.discrete_logits(params), self.prior_logits
        ).sum(-1)

    def discrete_log_q(
        self, params: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """:math:`\\log q(z\\mid x)` of one-hot ``z`` ``(S, B, N, K)``, ``(S, B)``."""
        return (torch.log_softmax(self.discrete_logits(params), -1) * z).sum(
            (-1, -2)
        )

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(z)` of one-hot ``z`` ``(..., N, K)``, ``(...)``."""
        return (torch.log_softmax(self.prior_logits, -1) * z).sum((-1, -2))

    def sample_prior(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` one-hot codes ``(n, N, K)`` from the prior."""
        return gumbel_max(
            self.prior_logits.detach().expand(n, -1, -1), generator=generator
        )


class CategoricalVAE(BatchMixin, nn.Module):
    r"""VAE with ``num_vars`` x ``num_classes`` categorical latents (Chapter 3; Jang et al. 2017 §4.2).

    Args:
        enc: maps ``x`` to ``params`` ``(B, N, latent.param_dim)`` (e.g. :class:`CategoricalEncoder`).
        dec: maps flattened codes ``(..., N*K)`` to a distribution over ``x`` (e.g.
            :class:`vaebook.models.BernoulliDecoder` with ``latent_dim = N*K``).
        num_vars, num_classes: :math:`N`, :math:`K` (ignored if ``latent`` is given).
        kl, prior, tau_prior, hard: passed to :class:`CategoricalLatent` (ignored if ``latent`` is given).
        tau: a temperature (number) or a schedule ``step -> tau`` (e.g. :func:`jang_schedule`); the step is the
            number of training ``loss`` calls so far, stored in the buffer ``step`` (saved in checkpoints).
        beta: weight of the KL term in the training loss (1 = the objective of Jang et al.).
        binarize: ``"dynamic"`` (a fresh Bernoulli sample of each training batch) or ``None``.
        latent: a :class:`CategoricalLatent` (or subclass) to use instead of building one.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the relaxed samples (see :class:`CategoricalLatent`);
            ``None`` (default) keeps the latent's own (``"auto"`` unless it was built with another). The model's
            ``backend`` attribute is the latent's.

    ``elbo(x)`` returns per-example ``{"elbo", "rec", "kl"}`` (``(B,)`` each): in ``train()`` mode the relaxed
    objective (``discrete=False``), in ``eval()`` mode the discrete ELBO (``discrete=True``: one-hot samples, exact
    categorical KL), which is a true lower bound on :math:`\log p_\theta(x)` of the discrete model.
    """

    def __init__(
        self,
        enc: nn.Module,
        dec: nn.Module,
        num_vars: int = 20,
        num_classes: int = 10,
        kl="categorical",
        tau=1.0,
        prior: str = "uniform",
        tau_prior: float | None = None,
        hard: bool = False,
        beta: float = 1.0,
        binarize: str | None = "dynamic",
        latent: CategoricalLatent | None = None,
        backend: str | None = None,
    ):
        super().__init__()
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        self.enc, self.dec = enc, dec
        self.latent = (
            latent
            if latent is not None
            else CategoricalLatent(
                num_vars, num_classes, kl, prior, tau_prior, hard
            )
        )
        if backend is not None:
            self.latent.backend = _check_backend(backend)
        self.num_vars, self.num_classes = (
            self.latent.num_vars,
            self.latent.num_classes,
        )
        self.tau_schedule = _as_schedule(tau)
        check_number("beta", beta, 0.0)
        self.beta, self.binarize = float(beta), binarize
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def mlp(
        cls,
        num_vars: int = 20,
        num_classes: int = 10,
        hidden: Sequence[int] = (512, 256),
        data_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
        **kwargs,
    ) -> "CategoricalVAE":
        """Jang et al.'s notebook architecture: encoder ``D-512-256-(N*K)``, Bernoulli decoder ``(N*K)-256-512-D``
        (ReLU). Keyword arguments go to :class:`CategoricalVAE`."""
        latent = kwargs.pop("latent", None) or CategoricalLatent(
            num_vars,
            num_classes,
            kwargs.pop("kl", "categorical"),
            kwargs.pop("prior", "uniform"),
            kwargs.pop("tau_prior", None),
            kwargs.pop("hard", False),
            kwargs.get("backend") or "auto",
        )
        enc = CategoricalEncoder(
            math.prod(data_shape),
            latent.num_vars,
            latent.param_dim,
            hidden,
            activation,
        )
        dec = BernoulliDecoder(
            latent.latent_dim, data_shape, tuple(reversed(hidden)), activation
        )
        return cls(enc, dec, latent=latent, **kwargs)

    # -- pieces
    # -------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """Where the relaxed samples are computed (``"auto"``, ``"torch"`` or ``"triton"``): the latent's."""
        return getattr(self.latent, "backend", "auto")

    @backend.setter
    def backend(self, value: str) -> None:
        self.latent.backend = _check_backend(value)

    @property
    def tau(self) -> float:
        """The current training temperature, ``tau_schedule(step)``."""
        return float(self.tau_schedule(int(self.step)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``params`` ``(B, N, param_dim)`` (logits for the plain categorical latent)."""
        return self.enc(x)

    def decode(self, z: torch.Tensor):
        """Decoder distribution for codes ``(..., N, K)`` (flattened to ``(..., N*K)``)."""
        return self.dec(z.flatten(start_dim=-2))

    # -- objectives
    # -------------------------------------------------------------------------
    def elbo(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        discrete: bool | None = None,
        tau: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example ``{"elbo", "rec", "kl"}`` (``(B,)``); ``discrete`` defaults to ``not self.training``;
        ``tau`` (relaxed mode) defaults to :attr:`tau`."""
        discrete = (not self.training) if discrete is None else discrete
        params = self.encode(x)
        if discrete:
            z = self.latent.sample_discrete(params, num_samples)
            rec = self.decode(z).log_prob(x).mean(0)
            kl = self.latent.discrete_kl(params)
        else:
            tau = self.tau if tau is None else tau
            sample = self.latent.rsample(params, tau, num_samples)
            rec = self.decode(sample["z"]).log_prob(x).mean(0)
            kl = self.latent.kl(params, sample, tau)
        return {"elbo": rec - kl, "rec": rec, "kl": kl}

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Relaxed training loss ``-(rec - beta * kl)`` averaged over the batch; advances :attr:`step` in training."""
        x = self._prepare(batch)
        tau = self.tau
        terms = self.elbo(x, discrete=False, tau=tau)
        loss = -(terms["rec"] - self.beta * terms["kl"]).mean()
        if self.training:
            self.step += 1
        return loss, {
            "loss": loss.item(),
            "elbo": terms["elbo"].mean().item(),
            "rec": terms["rec"].mean().item(),
            "kl": terms["kl"].mean().item(),
            "tau": tau,
        }

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        r"""Discrete log-weights :math:`\log p(x\mid z_s)+\log p(z_s)-\log q(z_s\mid x)` with one-hot
        :math:`z_s\sim q`, ``(num_samples, B)`` (for :func:`vaebook.metrics.iwae_bound`: Jang et al.'s
        multi-sample test bound)."""
        params = self.encode(x)
        z = self.latent.sample_discrete(params, num_samples)
        return (
            self.decode(z).log_prob(x)
            + self.latent.prior_log_prob(z)
            - self.latent.discrete_log_q(params, z)
        )

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images (pixel means) decoded from one-hot prior codes, ``(n, *data_shape)``."""
        z = self.latent.sample_prior(n, generator=generator).to(self._device())
        return self.dec.mean(z.flatten(start_dim=-2))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded most likely codes (one-hot argmax of :math:`q`), pixel means."""
        logits = self.latent.discrete_logits(self.encode(x.to(self._device())))
        z = F.one_hot(logits.argmax(-1), self.num_classes).to(logits.dtype)
        return self.dec.mean(z.flatten(start_dim=-2))


# -----------------------------------------------------------------------------
# the Chapter 3 checkpoint
# -----------------------------------------------------------------------------

# : settings of the ``ch03_catvae`` checkpoint (Jang et al.'s 20 x 10 latent,
# their notebook's MLP and optimiser)
RECIPE = dict(
    num_vars=20,
    num_classes=10,
    hidden=(512, 256),
    kl="categorical",
    tau0=1.0,
    tau_min=0.5,
    rate=1e-4,
    every=500,
    num_epochs=100,
    # each epoch draws 10,000 of the 60,000 training images afresh
    images_per_epoch=10_000,
    batch_size=100,
    lr=1e-3,
    lr_decay=0.9,
    lr_decay_every=1000,
    seed=0,
    eval_k=1000,
    eval_num_test=1000,
)


def build(**overrides) -> CategoricalVAE:
    """The untrained ``ch03_catvae`` model (:data:`RECIPE`, ``overrides`` replace its fields)."""
    r = {**RECIPE, **overrides}
    return CategoricalVAE.mlp(
        r["num_vars"],
        r["num_classes"],
        hidden=tuple(r["hidden"]),
        kl=r["kl"],
        tau=jang_schedule(r["tau0"], r["tau_min"], r["rate"], r["every"]),
        backend=r.get("backend", "auto"),
    )


def train(
    out: str | Path | None = None,
    num_epochs: int | None = None,
    progress: bool = True,
    root=None,
    num_train: int | None = None,
    **overrides,
) -> tuple[CategoricalVAE, dict]:
    """Train ``ch03_catvae`` on the MNIST training images (dynamic binarisation), evaluate it on the statically
    binarised test images (discrete ELBO on all of them, the ``eval_k``-sample bound on ``eval_num_test``), save
    it with :func:`vaebook.train.save_checkpoint` to ``out`` and return ``(model, meta)``."""
    from .data import epoch_loader, load_mnist
    from .metrics import evaluate
    from .train import fit, save_checkpoint

    r = {**RECIPE, **overrides}
    epochs = r["num_epochs"] if num_epochs is None else int(num_epochs)
    torch.manual_seed(r["seed"])
    x_train, _ = load_mnist("train", root=root)
    if num_train is not None:
        x_train = x_train[:num_train]
    x_test, _ = load_mnist("test", root=root, binarize="static")
    loader = epoch_loader(
        x_train,
        batch_size=r["batch_size"],
        seed=r["seed"],
        images_per_epoch=min(r["images_per_epoch"], len(x_train)),
    )
    model = build(**overrides)
    model.dec.init_bias(x_train)
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
    steps_per_epoch = len(loader)
    sched = torch.optim.lr_scheduler.ExponentialLR(
        opt, r["lr_decay"] ** (steps_per_epoch / r["lr_decay_every"])
    )
    monitor = x_test[:1000]

    def val_fn(m, x):
        return {"elbo": m.elbo(x)["elbo"].mean().item()}

    hist = fit(
        model,
        loader,
        epochs,
        optimizer=opt,
        scheduler=sched,
        val_data=monitor,
        val_fn=val_fn,
        seed=r["seed"],
        progress=progress,
    )
    t0 = time.perf_counter()
    torch.manual_seed(r["seed"] + 1)
    ev_test = evaluate(model, x_test)
    ev_k = evaluate(
        model, x_test[: r["eval_num_test"]], k=r["eval_k"], chunk_size=50
    )
    meta = {
        "name": "ch03_catvae",
        "recipe": {**r, "hidden": list(r["hidden"])},
        "num_epochs": epochs,
        "num_train": len(x_train),
        "num_test": len(x_test),
        "steps": int(model.step),
        "final_tau": model.tau,
        "backend": model.backend,
        "history": hist.to_dict(),
        "eval": {
            "test_elbo": ev_test["elbo"],
            "test_elbo_se": ev_test["elbo_se"],
            "test_bound": ev_k["iwae"],
            "test_bound_se": ev_k["iwae_se"],
            "bound_k": r["eval_k"],
            "bound_num_test": ev_k["n"],
            "eval_seconds": time.perf_counter() - t0,
        },
        "train_seconds": hist.seconds,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": "python -m vaebook.pretrained train ch03_catvae",
    }
    path = (
        Path(out)
        if out is not None
        else Path(__file__).resolve().parent / "checkpoints" / "ch03_catvae.pt"
    )
    save_checkpoint(model, path, **meta)
    return model, meta


if __name__ == "__main__":  # pragma: no cover
    import argparse
    import json

    ap = argparse.ArgumentParser(
        prog="python -m vaebook.discrete_vae",
        description="train the ch03_catvae checkpoint",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--num-epochs", type=int, default=None)
    a = ap.parse_args()
    _, meta = train(out=a.out, num_epochs=a.num_epochs)
    print(
        json.dumps(meta["eval"], indent=2),
        f"\ntrained in {meta['train_seconds']:.1f} s",
    )
