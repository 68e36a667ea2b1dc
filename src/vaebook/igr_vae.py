r"""Categorical VAEs with IGR latents (Chapter 4), built on :mod:`vaebook.discrete_vae` (Chapter 3).

:class:`IGRLatent` subclasses :class:`vaebook.discrete_vae.CategoricalLatent` and overrides its four hooks:

* ``param_dim``: :math:`2(K-1)` encoder outputs per variable, :math:`(\mu,\log\sigma)` of the Gaussian;
* :meth:`~IGRLatent.rsample`: the IGR sample :math:`x=\mathrm{softmax}_{++}(h(z)/\tau)` (decoder input);
* :meth:`~IGRLatent.kl`: the closed-form Gaussian KL (IGR-I, IGR-SB: the prior shares the map) or, for IGR-Planar,
  the single-sample Monte Carlo KL against a Gaussian prior on the post-flow space (the authors' choice);
* :meth:`~IGRLatent.discrete_logits`: the zero-temperature categorical :math:`q_\phi(z\mid x)` used at test time,
  Monte Carlo frequencies of the argmax (fixed seed, so every call agrees; as in the authors' evaluation of IGR-SB
  and IGR-Planar), or for IGR-I optionally the exact quadrature. Any categorical encoder gives a valid lower bound
  on the discrete model's likelihood, so the discrete ELBO stays a bound with the estimated probabilities.

The prior is calibrated so that its zero-temperature categorical is uniform (exactly for IGR-I and IGR-Planar,
whose prior is an IGR-I on the post-flow space; numerically for IGR-SB), and the discrete evaluation uses the
uniform categorical prior. The model is :class:`vaebook.discrete_vae.CategoricalVAE` with this latent
(:func:`build`), so training, the discrete ELBO and the importance-weighted bound are Chapter 3's code.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Sequence

import torch
from torch.distributions import kl_divergence

from .discrete_vae import CategoricalLatent, CategoricalVAE
from .distributions import (
    IGR,
    IGRPlanar,
    IGRStickBreaking,
    PlanarFlow,
    calibrate_uniform_prior,
    igr_limit_probs,
    log_softmax_pp,
    uniform_prior,
)
from .utils import check_int, check_number

__all__ = [
    "COMPARISON",
    "FAMILIES",
    "IGRLatent",
    "build",
    "build_arm",
    "train_comparison",
]

#: IGR families accepted by :class:`IGRLatent`
FAMILIES = ("I", "sb", "planar")


def _igr_kl(latent: "IGRLatent", params, sample, tau):
    return latent.kl(params, sample, tau)


class IGRLatent(CategoricalLatent):
    r"""``num_vars`` IGR-relaxed categorical latents with ``num_classes`` classes (Chapter 4).

    Args:
        num_vars, num_classes: :math:`N` and :math:`K\ge2`.
        family: ``"I"`` (IGR-I), ``"sb"`` (IGR-SB, finite: :math:`K` pieces, the last the remainder) or
            ``"planar"`` (IGR-Planar, a :class:`~vaebook.distributions.PlanarFlow` shared by all variables).
        delta: :math:`\delta` of softmax++.
        prior_scale: :math:`\sigma_0` of the prior; its ``loc`` is calibrated to a uniform zero-temperature
            categorical (:func:`~vaebook.distributions.uniform_prior`, or
            :func:`~vaebook.distributions.calibrate_uniform_prior` for IGR-SB).
        num_flows: planar layers (IGR-Planar).
        limit_samples: Monte Carlo samples for the zero-temperature probabilities.
        exact_limit: IGR-I only: quadrature (:func:`~vaebook.distributions.igr_limit_probs`, exact but about 100x
            slower) instead of Monte Carlo frequencies.
        log_scale_range: the encoder's :math:`\log\sigma` is clamped to this range (no overflow early in training).
    """

    def __init__(
        self,
        num_vars: int,
        num_classes: int,
        family: str = "I",
        delta: float = 1.0,
        prior_scale: float = 1.0,
        num_flows: int = 2,
        limit_samples: int = 200,
        exact_limit: bool = False,
        log_scale_range: tuple[float, float] = (-7.0, 4.0),
    ):
        super().__init__(num_vars, num_classes, kl=_igr_kl, prior="uniform")
        if family not in FAMILIES:
            raise ValueError(
                f"family must be one of {FAMILIES}, got {family!r}"
            )
        check_number("delta", delta, 0.0, strict=True)
        check_int("limit_samples", limit_samples, 10)
        check_int("num_flows", num_flows)
        check_number("prior_scale", prior_scale, 0.0, strict=True)
        lo_hi = tuple(log_scale_range)
        if (
            len(lo_hi) != 2
            or not all(
                isinstance(v, numbers.Real) and math.isfinite(v) for v in lo_hi
            )
            or not lo_hi[0] < lo_hi[1]
        ):
            raise ValueError(
                "log_scale_range must be two finite numbers (lo, hi) with lo "
                f"< hi, got {log_scale_range!r}"
            )
        self.family, self.delta, self.limit_samples = (
            family,
            float(delta),
            int(limit_samples),
        )
        self.exact_limit = bool(exact_limit)
        self.log_scale_range = tuple(float(v) for v in log_scale_range)
        K = self.num_classes
        if family == "sb":
            loc, scale = calibrate_uniform_prior(K, "sb", scale=prior_scale)
        else:
            loc, scale = uniform_prior(K, prior_scale)
        self.register_buffer("prior_loc", loc)
        self.register_buffer("prior_scale", scale)
        self.flow = (
            PlanarFlow(K - 1, num_flows) if family == "planar" else None
        )

    @property
    def param_dim(self) -> int:
        """:math:`2(K-1)`: the Gaussian's :math:`\\mu` and :math:`\\log\\sigma` per variable."""
        return 2 * (self.num_classes - 1)

    def loc_scale(
        self, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Split ``params`` ``(B, N, 2(K-1))`` into ``loc`` and ``scale`` ``(B, N, K-1)``."""
        k1 = self.num_classes - 1
        lo, hi = self.log_scale_range
        return params[..., :k1], params[..., k1:].clamp(lo, hi).exp()

    def distribution(self, params: torch.Tensor, tau: float) -> IGR:
        """The relaxed posterior :math:`q_\\phi(x\\mid\\cdot)`, batch shape ``(B, N)``, event ``(K,)``."""
        loc, scale = self.loc_scale(params)
        if self.family == "sb":
            return IGRStickBreaking(loc, scale, tau, self.delta)
        if self.family == "planar":
            return IGRPlanar(loc, scale, tau, self.flow, self.delta)
        return IGR(loc, scale, tau, self.delta)

    def prior(self, tau: float) -> IGR:
        """The relaxed prior (for IGR-Planar an IGR-I: a Gaussian on the post-flow space, as in the authors' code)."""
        if self.family == "sb":
            return IGRStickBreaking(
                self.prior_loc, self.prior_scale, tau, self.delta
            )
        return IGR(self.prior_loc, self.prior_scale, tau, self.delta)

    # -- hooks
    # -------------------------------------------------------------------------
    def rsample(
        self,
        params: torch.Tensor,
        tau: float,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        r"""``{"z": (S, B, N, K) IGR sample, "log_x": its log, "gauss": (S, B, N, K-1) Gaussian point}``."""
        q = self.distribution(params, tau)
        gauss = q.rsample_gauss((num_samples or 1,), generator)
        if (
            self.family == "planar"
        ):  # run the flow once; the KL needs its log-determinant too
            lam, logdet = self.flow(gauss)
            log_x = log_softmax_pp(lam / tau, self.delta)
            return {
                "z": log_x.exp(),
                "log_x": log_x,
                "gauss": gauss,
                "lam": lam,
                "logdet": logdet,
            }
        log_x = q.log_x_from_gauss(gauss)
        return {"z": log_x.exp(), "log_x": log_x, "gauss": gauss}

    def kl(
        self,
        params: torch.Tensor,
        sample: dict[str, torch.Tensor] | None,
        tau: float,
    ) -> torch.Tensor:
        r"""Training KL per example, ``(B,)``: closed form (I, SB) or single-sample MC in :math:`\lambda` space
        (Planar: :math:`\log\mathcal N(z;\mu,\sigma)-\log|\det J_f(z)|-\log\mathcal N(f(z);\mu_0,\sigma_0)`)."""
        q, p = self.distribution(params, tau), self.prior(tau)
        if self.family != "planar":
            return kl_divergence(q, p).sum(-1)
        if sample is None:
            raise ValueError(
                "the IGR-Planar KL is a Monte Carlo estimate: it needs the "
                "sample drawn by rsample"
            )
        gauss = sample["gauss"]
        lam, logdet = (
            (sample["lam"], sample["logdet"])
            if "lam" in sample
            else self.flow(gauss)
        )
        return (
            (q._gauss_log_prob(gauss) - logdet - p._gauss_log_prob(lam))
            .sum(-1)
            .mean(0)
        )

    def discrete_logits(self, params: torch.Tensor) -> torch.Tensor:
        r"""Log-probabilities ``(B, N, K)`` of the zero-temperature categorical (eq. ``ch04-limit``)."""
        loc, scale = self.loc_scale(params)
        tiny = torch.finfo(loc.dtype).tiny
        if self.family == "I" and self.exact_limit:
            return igr_limit_probs(loc, scale).clamp_min(tiny).log()
        # Monte Carlo frequencies of argmax(lambda, 0), with a fixed
        # seed so that repeated calls agree; the last
        # result is cached (sample_discrete and discrete_kl ask for
        # the same params in one ELBO evaluation)
        key = (
            params.data_ptr(),
            params._version,
            tuple(params.shape),
            self.training,
        )
        if getattr(self, "_cache", None) is not None and self._cache[0] == key:
            return self._cache[1]
        g = torch.Generator(device=loc.device).manual_seed(1234)
        q = self.distribution(params.detach(), 1.0)
        with torch.no_grad():
            lam = q.h(
                q.rsample_gauss((self.limit_samples,), g)
            )  # (S, B, N, K-1)
            idx = torch.cat([lam, torch.zeros_like(lam[..., :1])], -1).argmax(
                -1
            )  # (S, B, N)
            counts = torch.zeros(
                *idx.shape[1:],
                self.num_classes,
                dtype=loc.dtype,
                device=loc.device,
            )
            counts.scatter_add_(
                -1,
                idx.movedim(0, -1),
                torch.ones_like(idx.movedim(0, -1), dtype=loc.dtype),
            )
        # add-1/2 smoothing keeps every category possible (log q
        # finite); still a valid categorical
        out = torch.log(
            (counts + 0.5) / (self.limit_samples + 0.5 * self.num_classes)
        )
        self._cache = (key, out)
        return out


def build(
    family: str = "I",
    num_vars: int = 20,
    num_classes: int = 10,
    hidden: Sequence[int] = (256,),
    tau: float = 0.5,
    **latent_kwargs,
) -> CategoricalVAE:
    """A :class:`~vaebook.discrete_vae.CategoricalVAE` (Chapter 3's MLP encoder/decoder, dynamic binarisation) with
    an :class:`IGRLatent` of ``family`` at a constant temperature ``tau``."""
    latent = IGRLatent(num_vars, num_classes, family, **latent_kwargs)
    return CategoricalVAE.mlp(
        num_vars, num_classes, hidden=tuple(hidden), latent=latent, tau=tau
    )


#: Chapter 4's comparison in the IGR paper's VAE setting as far as a CPU
#: allows (authors' code, cunningham-lab/igr, vae_experiments): 20 variables
#: x 10 categories, the "dense_nonlinear" MLP 784-512-256 (ReLU), batch 100,
#: the cross-validated temperatures of their plots (GS 1.0, IGR-I 1.0, IGR-SB
#: 0.15, IGR-Planar 0.85). What differs: 12 epochs, not 300; Adam at 1e-3,
#: not 1e-4 (their rate does not get far in 12 epochs); dynamic binarisation.
COMPARISON = dict(
    num_vars=20,
    num_classes=10,
    hidden=(512, 256),
    batch_size=100,
    lr=1e-3,
    num_epochs=12,
    seeds=(0, 1, 2),
    eval_k=100,
    eval_k_num_test=1000,
    arms={
        "GS (categorical KL)": {
            "family": "GS",
            "kl": "categorical",
            "tau": 1.0,
        },
        "GS (relaxed KL)": {"family": "GS", "kl": "relaxed_mc", "tau": 1.0},
        "IGR-I": {"family": "I", "tau": 1.0},
        "IGR-SB": {"family": "sb", "tau": 0.15},
        "IGR-Planar": {"family": "planar", "tau": 0.85},
    },
    saved_arm="IGR-I",
)


def build_arm(arm: str = "IGR-I", **overrides) -> CategoricalVAE:
    """The untrained model of one arm of :data:`COMPARISON` (default: the arm whose seed-0 weights are shipped)."""
    c = {**COMPARISON, **overrides}
    if arm not in c["arms"]:
        raise ValueError(f"arm must be one of {list(c['arms'])}, got {arm!r}")
    a = c["arms"][arm]
    if a["family"] == "GS":
        return CategoricalVAE.mlp(
            c["num_vars"],
            c["num_classes"],
            hidden=tuple(c["hidden"]),
            kl=a["kl"],
            tau=a["tau"],
        )
    return build(
        a["family"],
        num_vars=c["num_vars"],
        num_classes=c["num_classes"],
        hidden=c["hidden"],
        tau=a["tau"],
    )


def train_comparison(
    out=None,
    num_epochs: int | None = None,
    progress: bool = True,
    num_train: int | None = None,
    num_test: int | None = None,
    seeds: Sequence[int] | None = None,
    root=None,
    **overrides,
):
    """Train every arm of :data:`COMPARISON` for every seed on all MNIST training images (dynamic binarisation),
    evaluate each on the same statically binarised test images (discrete ELBO on all of them with the same
    evaluation noise for every arm; the ``eval_k``-sample discrete bound on the first ``eval_k_num_test``), save
    the seed-0 model of ``saved_arm`` with every result in its metadata (``ch04_igr_vs_gs``) and return
    ``(model, meta)``. ``num_train``/``num_test``/``seeds`` shrink it for smoke runs."""
    import time

    from .data import epoch_loader, load_mnist
    from .metrics import evaluate
    from .train import fit, save_checkpoint

    c = {**COMPARISON, **overrides}
    epochs = c["num_epochs"] if num_epochs is None else int(num_epochs)
    seeds = list(c["seeds"] if seeds is None else seeds)
    x_train, _ = load_mnist("train", root=root)
    x_train = x_train[:num_train] if num_train else x_train
    x_test, _ = load_mnist("test", root=root, binarize="static")
    x_test = x_test[:num_test] if num_test else x_test
    results, per_image, saved, t_all = {}, {}, None, time.perf_counter()
    for arm in c["arms"]:
        for seed in seeds:
            torch.manual_seed(seed)
            model = build_arm(arm, **overrides)
            model.dec.init_bias(x_train)
            loader = epoch_loader(
                x_train, batch_size=c["batch_size"], seed=seed
            )
            hist = fit(
                model, loader, epochs, lr=c["lr"], seed=seed, progress=False
            )
            t0 = time.perf_counter()
            model.eval()
            torch.manual_seed(10_000 + seed)  # same noise for every arm
            with torch.no_grad():
                el = torch.cat(
                    [model.elbo(xb)["elbo"] for xb in x_test.split(500)]
                ).double()
            torch.manual_seed(20_000 + seed)
            ev_k = evaluate(
                model,
                x_test[: c["eval_k_num_test"]],
                k=c["eval_k"],
                chunk_size=50,
            )
            per_image[f"{arm}/{seed}"] = el
            results[f"{arm}/{seed}"] = {
                "test_elbo": el.mean().item(),
                "test_elbo_se": (el.std() / len(el) ** 0.5).item(),
                "test_bound": ev_k["iwae"],
                "test_bound_se": ev_k["iwae_se"],
                "train_objective_last_epoch": hist["elbo"][-1],
                "train_seconds": hist.seconds,
                "eval_seconds": time.perf_counter() - t0,
            }
            if progress:
                print(
                    f"{arm:>20} seed {seed}: test discrete ELBO "
                    f"{el.mean().item():.2f}, L_{c['eval_k']} "
                    f"{ev_k['iwae']:.2f} ({hist.seconds:.0f} s)",
                    flush=True,
                )
            if arm == c["saved_arm"] and seed == seeds[0]:
                saved = model
    # each arm minus the GS (relaxed KL) arm, per seed, on the same images
    base = "GS (relaxed KL)"
    paired = {
        f"{arm}/{seed}": {
            "diff": (per_image[f"{arm}/{seed}"] - per_image[f"{base}/{seed}"])
            .mean()
            .item(),
            "se": (
                (
                    per_image[f"{arm}/{seed}"] - per_image[f"{base}/{seed}"]
                ).std()
                / len(x_test) ** 0.5
            ).item(),
        }
        for arm in c["arms"]
        for seed in seeds
    }
    meta = {
        "name": "ch04_igr_vs_gs",
        "recipe": {**c, "hidden": list(c["hidden"]), "seeds": seeds},
        "num_epochs": epochs,
        "num_train": len(x_train),
        "num_test": len(x_test),
        "results": results,
        "paired_vs_gs_relaxed": paired,
        "saved": f"{c['saved_arm']}/{seeds[0]}",
        "train_seconds": time.perf_counter() - t_all,
        "command": "python -m vaebook.pretrained train ch04_igr_vs_gs",
    }
    path = Path(out) if out is not None else None
    save_checkpoint(saved, path, **meta)
    return saved, meta
