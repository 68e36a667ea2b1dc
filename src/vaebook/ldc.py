r"""LDC-VAE, as formalised in Chapter 7: a Gibbs posterior sampled by an amortized-SVGD encoder.

Only the abstract of LDC-VAE {Chen et al. 2021} is available. It says that the true latent posterior is *assumed to
be of Gibbs form*, that the encoder approximates it with SVGD, and that SVGD also trains a *sampler net* that draws
samples from it efficiently. Everything else here is **the book's formalisation** (Chapter 7, box
``ch07-formalisation``), not the paper's method:

* Gibbs posterior (eq. ``ch07-gibbs``): :math:`\pi_\lambda(z\mid x)\propto p(z)\,p_\theta(x\mid z)^\lambda`, i.e. energy
  :math:`E_\theta(x,z)=-\log p(z)-\lambda\log p_\theta(x\mid z)`; :math:`\lambda=1` is the Bayes posterior of the
  decoder. Its score needs only the prior and the decoder (autograd through the decoder).
* Sampler net = the encoder, an implicit, noise-input network :class:`ParticleEncoder` that returns ``K`` particles
  per image, ``(B, K, latent_dim)``. It is trained by amortized SVGD (:func:`vaebook.svgd.amortized_svgd_loss`, one
  particle set of ``K`` per image, median bandwidth per set).
* Decoder trained on the (detached) particles: maximise :math:`\frac1K\sum_k\log p_\theta(x\mid z_k)`. With particles
  from the exact posterior this is an unbiased estimate of :math:`\nabla_\theta\log p_\theta(x)` (Fisher's identity,
  eq. ``ch07-fisher``).
* Generation decodes prior samples :math:`z\sim p(z)`.

Evaluation (the implicit encoder has no density, so there is no ELBO or IWAE bound *of the encoder*):
:meth:`LDCVAE.log_weights` uses as importance proposal a diagonal Gaussian fitted to fresh particles
(:func:`fitted_gaussian`) or the prior; every weight is unbiased for :math:`p_\theta(x)`, so
:func:`vaebook.metrics.iwae_bound` on this model is a valid stochastic lower bound on :math:`\log p_\theta(x)`.

Latent distribution consistency (aggregate posterior vs prior): :func:`mmd` (unbiased RBF MMD² with a
permutation-free standard error), :func:`ksd_with_se` (the KSD U-statistic of :mod:`vaebook.svgd` with the same
standard error), both built on :func:`u_statistic`.

``build()`` / ``train()`` produce the checkpoint ``ch07_ldc`` (``python -m vaebook.pretrained train ch07_ldc``).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Independent, Normal

from .models import MLP, BatchMixin, BernoulliDecoder
from .kernels import _check_backend
from .svgd import (
    BANDWIDTH_RULES,
    amortized_svgd_loss,
    median_bandwidth,
    rbf_kernel,
    stein_kernel_matrix,
)
from .utils import check_finite, check_int, check_number

__all__ = [
    "ParticleEncoder",
    "LDCVAE",
    "fitted_gaussian",
    "u_statistic",
    "mmd",
    "ksd_with_se",
    "latent_consistency",
    "build",
    "train",
]

_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU}


# -----------------------------------------------------------------------------
# the implicit encoder (sampler net)
# -----------------------------------------------------------------------------


class ParticleEncoder(nn.Module):
    r"""Noise-input encoder :math:`z=g_\phi(x,\xi)`, :math:`\xi\sim\mathcal N(0,I_d)`, drawing ``K`` particles per image.

    .. math:: z=\mu_\phi(x)+e^{v_\phi(x)/2}\odot\xi+r_\phi\big(h_\phi(x),\xi\big),

    with a trunk :math:`h_\phi` (``data_dim -> hidden``, applied once per image), linear heads :math:`\mu_\phi, v_\phi`
    and a residual MLP :math:`r_\phi` (``hidden[-1] + d -> head_hidden -> d``, applied per particle) whose last layer
    starts at zero. So the encoder *starts* as a reparameterised Gaussian (well spread: no collapse to one point,
    Chapter 6's check A3) and amortized SVGD can bend it into any shape: the law of :math:`z` has no tractable density.

    ``forward(x, num_particles)`` returns ``(B, num_particles, latent_dim)``; ``x`` is ``(B, ...)`` (flattened).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (200, 200),
        head_hidden: Sequence[int] = (200,),
        activation: str = "tanh",
        logvar_bound: float = 12.0,
    ):
        super().__init__()
        if activation not in _ACT:
            raise ValueError(
                f"activation must be one of {sorted(_ACT)}, got {activation!r}"
            )
        check_int("latent_dim", latent_dim)
        check_int("data_dim", data_dim)
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError(
                "hidden must list at least one layer width (the trunk's "
                "output feeds the heads)"
            )
        self.latent_dim = latent_dim
        self.logvar_bound = check_number(
            "logvar_bound", logvar_bound, 0.0, strict=True
        )
        self.trunk = nn.Sequential(
            MLP(data_dim, hidden[:-1], hidden[-1], activation),
            _ACT[activation](),
        )
        self.gauss = nn.Linear(hidden[-1], 2 * latent_dim)
        self.residual = MLP(
            hidden[-1] + latent_dim, tuple(head_hidden), latent_dim, activation
        )
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)

    def forward(
        self,
        x: torch.Tensor,
        num_particles: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        check_int("num_particles", num_particles)
        h = self.trunk(x.flatten(start_dim=1) if x.dim() > 2 else x)  # (B, H)
        mu, raw = self.gauss(h).chunk(2, dim=-1)
        b = self.logvar_bound
        logvar = b * torch.tanh(raw / b)
        shape = (h.shape[0], num_particles, self.latent_dim)
        xi = torch.randn(
            shape, dtype=h.dtype, device=h.device, generator=generator
        )
        hk = h.unsqueeze(1).expand(-1, num_particles, -1)
        return (
            mu.unsqueeze(1)
            + torch.exp(0.5 * logvar).unsqueeze(1) * xi
            + self.residual(torch.cat([hk, xi], -1))
        )


# -----------------------------------------------------------------------------
# the model
# -----------------------------------------------------------------------------


def fitted_gaussian(
    z: torch.Tensor, inflate: float = 2.0, min_var: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A diagonal Gaussian fitted to particles ``z`` ``(..., K, d)``: ``(q_mean, q_logvar)``, each ``(..., d)``.

    Mean = particle mean; variance = ``inflate`` times the unbiased particle variance (``K >= 2``), floored at
    ``min_var``. Inflating makes the proposal's tails heavier than the (under-dispersed, few-particle) cloud, which
    keeps importance weights bounded; any choice gives a valid bound, only its tightness changes.
    """
    if z.dim() < 2 or z.shape[-2] < 2:
        raise ValueError(
            "z must have shape (..., K, d) with K >= 2: fitting a Gaussian "
            "needs at least 2 particles "
            f"per set, got shape {tuple(z.shape)}"
        )
    check_finite("z", z.detach())
    check_number("inflate", inflate, 0.0, strict=True)
    check_number("min_var", min_var, 0.0, strict=True)
    var = z.var(dim=-2, unbiased=True) * inflate
    return z.mean(-2), var.clamp_min(min_var).log()


class LDCVAE(BatchMixin, nn.Module):
    r"""The book's formalisation of LDC-VAE (Chapter 7): Gibbs posterior + amortized-SVGD encoder + decoder on particles.

    Args:
        enc: a :class:`ParticleEncoder` (``enc(x, K) -> (B, K, d)``).
        dec: a decoder ``z -> torch.distributions`` over images (e.g. :class:`~vaebook.models.BernoulliDecoder`).
        num_particles: ``K``, particles per image in training (the SVGD particle set).
        lam: :math:`\lambda` of the Gibbs posterior :math:`\pi_\lambda(z\mid x)\propto p(z)p_\theta(x\mid z)^\lambda`.
        rule: the median-bandwidth rule of the SVGD kernel (:func:`vaebook.svgd.median_bandwidth`).
        binarize: ``"dynamic"`` draws a fresh binarisation of grey-level images at every training step.
        backend: ``"auto"`` (default), ``"torch"`` or ``"triton"``, passed to
            :func:`vaebook.svgd.amortized_svgd_loss` (the rule of :mod:`vaebook.kernels`: the tiled SVGD kernel, one
            grid column per image's particle set, for CUDA tensors by default); an attribute, not in the
            ``state_dict``.

    ``loss(batch) -> (loss, logs)`` (the book's contract) returns the sum of the amortized-SVGD surrogate for the
    encoder (eq. ``ch06-amortized``) and the decoder's negative particle log-likelihood; the two touch disjoint
    parameters (the particles are detached for the decoder; the SVGD direction is detached for the encoder).
    Logs: ``rec`` (mean :math:`\log p_\theta(x\mid z_k)` over particles), ``phi_norm``, ``surrogate``, ``spread``
    (mean particle s.d. per coordinate).
    """

    def __init__(
        self,
        enc: ParticleEncoder,
        dec: nn.Module,
        latent_dim: int | None = None,
        num_particles: int = 8,
        lam: float = 1.0,
        rule: str = "code",
        binarize: str | None = "dynamic",
        backend: str = "auto",
    ):
        super().__init__()
        self.backend = _check_backend(backend)
        check_int("num_particles", num_particles, 2)
        check_number("lam", lam, 0.0, strict=True)
        if rule not in BANDWIDTH_RULES:
            raise ValueError(
                f"rule must be one of {BANDWIDTH_RULES}, got {rule!r}"
            )
        if binarize not in (None, "dynamic"):
            raise ValueError(
                f"binarize must be None or 'dynamic', got {binarize!r}"
            )
        self.enc, self.dec = enc, dec
        self.latent_dim = (
            latent_dim if latent_dim is not None else enc.latent_dim
        )
        self.num_particles, self.lam, self.rule, self.binarize = (
            num_particles,
            float(lam),
            rule,
            binarize,
        )

    def prior(self) -> Independent:
        zero = torch.zeros(self.latent_dim, device=self._device())
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def log_lik(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p_\\theta(x\\mid z_k)` for ``x`` ``(B, ...)`` and particles ``z`` ``(B, K, d)``: ``(B, K)``."""
        return self.dec(z).log_prob(x.unsqueeze(1))

    def gibbs_score(
        self, x: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Score of the Gibbs posterior (eq. ``ch07-gibbs-score``) at particles ``z`` ``(B, K, d)``:
        :math:`-z+\lambda\nabla_z\log p_\theta(x\mid z)`. Returns ``(score, log_lik)`` with ``log_lik`` ``(B, K)``
        still attached to the decoder's graph (so the decoder loss reuses the same forward pass)."""
        with torch.enable_grad():
            zr = z.detach().requires_grad_(True)
            ll = self.dec(zr).log_prob(x.unsqueeze(1))
            (g,) = torch.autograd.grad(
                ll.sum(), zr, retain_graph=torch.is_grad_enabled()
            )
        return -zr.detach() + self.lam * g, ll

    def loss(self, batch):
        x = self._prepare(batch)
        z = self.enc(
            x, self.num_particles
        )  # (B, K, d), attached to the encoder
        score, ll = self.gibbs_score(x, z)
        surrogate, phi = amortized_svgd_loss(
            z,
            score,
            rule=self.rule,
            return_direction=True,
            backend=self.backend,
        )
        rec = ll.mean()
        loss = surrogate - rec
        return loss, {
            "loss": loss.item(),
            "rec": rec.item(),
            "phi_norm": phi.norm(dim=-1).mean().item(),
            "surrogate": surrogate.item(),
            "spread": z.detach().std(dim=1).mean().item(),
        }

    @torch.no_grad()
    def particles(
        self,
        x: torch.Tensor,
        num_particles: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, K, d)`` encoder particles for ``x`` (no training, no binarisation)."""
        return self.enc(
            x.to(self._device()),
            num_particles or self.num_particles,
            generator=generator,
        )

    @torch.no_grad()
    def log_weights(
        self,
        x: torch.Tensor,
        num_samples: int,
        proposal: str = "fitted",
        num_fit: int | None = None,
        inflate: float = 2.0,
    ) -> torch.Tensor:
        r"""Importance log-weights :math:`\log p_\theta(x,z_s)-\log r(z_s\mid x)`, ``(num_samples, B)``.

        ``proposal="fitted"``: :math:`r` = :func:`fitted_gaussian` of ``num_fit`` (default ``2 * K``) fresh encoder
        particles; ``"prior"``: :math:`r=p(z)`. Either way :math:`\mathbb E_r[w]=p_\theta(x)` (for the fitted
        proposal, conditionally on the particles), so :func:`vaebook.metrics.iwae_bound` of this model is a valid
        lower bound on :math:`\log p_\theta(x)` and its ``k = 1`` value is the ELBO **of the proposal** (not of the
        implicit encoder, whose entropy is unknown). Each call fits a fresh proposal; the bound stays valid.
        """
        x = x.to(self._device())
        prior = self.prior()
        if proposal == "prior":
            z = prior.sample((num_samples, x.shape[0]))
            return self.dec(z).log_prob(x)
        if proposal != "fitted":
            raise ValueError(
                f"proposal must be 'fitted' or 'prior', got {proposal!r}"
            )
        q_mean, q_logvar = fitted_gaussian(
            self.particles(x, num_fit or 2 * self.num_particles), inflate
        )
        q = Independent(Normal(q_mean, torch.exp(0.5 * q_logvar)), 1)
        z = q.sample((num_samples,))
        return self.dec(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images decoded from prior samples (pixel means)."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(
            self._device()
        )
        return self.dec.mean(z)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decoded particle means (one particle per image)."""
        return self.dec.mean(self.particles(x, 1, generator)[:, 0])


# -----------------------------------------------------------------------------
# latent distribution consistency: MMD and KSD with standard errors
# -----------------------------------------------------------------------------


def u_statistic(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The U-statistic :math:`U=\frac1{n(n-1)}\sum_{i\ne j}H_{ij}` of a symmetric kernel matrix ``H`` ``(n, n)``
    (diagonal ignored) and an **unbiased estimate of its standard error** (Chapter 7, eq. ``ch07-ustat-var``):

    .. math:: \mathrm{Var}(U)=\frac{4(n-2)\zeta_1+2\zeta_2}{n(n-1)},\quad
              \zeta_1=\mathrm{E}[H_{12}H_{13}]-\mu^2,\ \zeta_2=\mathrm{E}[H_{12}^2]-\mu^2,\ \mu=\mathrm{E}[H_{12}],

    with each expectation replaced by its unbiased U-estimate over distinct indices (``n >= 4``): with
    :math:`S_i=\sum_{j\ne i}H_{ij}`, :math:`Q=\sum_{i\ne j}H_{ij}^2`, :math:`C=\sum_iS_i^2-Q` and :math:`T=\sum_iS_i`,
    :math:`\widehat{\mathrm E}[H_{12}H_{13}]=C/n^{(3)}`, :math:`\widehat{\mathrm E}[H_{12}^2]=Q/n^{(2)}` and
    :math:`\widehat{\mu^2}=(T^2-2Q-4C)/n^{(4)}` (falling factorials). No permutations, one pass over ``H``.
    When the two laws are equal :math:`\zeta_1=0` (a *degenerate* U-statistic) and its estimate is as often negative
    as positive; each :math:`\hat\zeta` is therefore clipped at 0, which makes the standard error slightly
    conservative there and leaves it unbiased (to first order) otherwise. Returns ``(U, se)`` as 0-d tensors.
    """
    n = H.shape[-1]
    if H.ndim != 2 or H.shape[0] != n or n < 4:
        raise ValueError(
            "H must be a square (n, n) matrix with n >= 4, got "
            f"{tuple(H.shape)}"
        )
    check_finite("H", H.detach())
    H = H.double()
    off = H - torch.diag_embed(torch.diagonal(H))
    S = off.sum(1)
    T = S.sum()
    Q = off.square().sum()
    C = S.square().sum() - Q
    n2, n3, n4 = (
        n * (n - 1),
        n * (n - 1) * (n - 2),
        n * (n - 1) * (n - 2) * (n - 3),
    )
    mu2 = (T * T - 2 * Q - 4 * C) / n4
    zeta1 = C / n3 - mu2
    zeta2 = Q / n2 - mu2
    var = (4 * (n - 2) * zeta1.clamp_min(0) + 2 * zeta2.clamp_min(0)) / n2
    return T / n2, var.sqrt()


def mmd(
    x: torch.Tensor, y: torch.Tensor, bandwidth=None, return_se: bool = False
):
    r"""Unbiased squared maximum mean discrepancy with the RBF kernel :math:`k(a,b)=\exp(-\|a-b\|^2/h)`
    (Chapter 7, eq. ``ch07-mmd``), for equal-size samples ``x``, ``y`` ``(n, d)``:

    .. math:: \widehat{\mathrm{MMD}}{}^2_u=\frac1{n(n-1)}\sum_{i\ne j}H_{ij},\quad
              H_{ij}=k(x_i,x_j)+k(y_i,y_j)-k(x_i,y_j)-k(x_j,y_i).

    Unbiased (may be slightly negative when the laws are equal). ``bandwidth=None``: the median rule ``"ksd"`` of
    :func:`vaebook.svgd.median_bandwidth` on ``y`` (pass the **prior** sample as ``y`` so that every model is measured
    with the same kernel, or pass ``h`` explicitly). Dense: memory :math:`O(n^2)`. With ``return_se`` returns
    ``(mmd2, se)`` with the standard error of :func:`u_statistic`; else ``mmd2`` (0-d tensors, float64).
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape (n, d), got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    check_finite("x", x.detach())
    check_finite("y", y.detach())
    x, y = x.double(), y.double()
    h = (
        median_bandwidth(y, rule="ksd")
        if bandwidth is None
        else torch.as_tensor(bandwidth, dtype=torch.float64)
    )
    if not (h.dim() == 0 and bool(torch.isfinite(h)) and h.item() > 0):
        raise ValueError(
            "bandwidth must be a number > 0 and finite (h in "
            f"exp(-|a-b|^2/h)) or None, got {bandwidth!r}"
        )
    kxy = rbf_kernel(x, y, h)
    H = rbf_kernel(x, x, h) + rbf_kernel(y, y, h) - kxy - kxy.T
    u, se = u_statistic(H)
    return (u, se) if return_se else u


def ksd_with_se(
    x: torch.Tensor, score, bandwidth
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The KSD U-statistic of :func:`vaebook.svgd.ksd` (Chapter 6, eq. ``ch06-ksd-rbf``) at bandwidth ``h`` with the
    standard error of :func:`u_statistic`; ``x`` ``(n, d)``, ``score`` a tensor or callable. Dense, :math:`O(n^2)`."""
    x = x.double()
    return u_statistic(stein_kernel_matrix(x, score, bandwidth))


@torch.no_grad()
def latent_consistency(
    z_agg: torch.Tensor,
    generator: torch.Generator | None = None,
    bandwidth=None,
) -> dict:
    r"""How far an aggregate-posterior sample ``z_agg`` ``(n, d)`` is from the prior :math:`\mathcal N(0,I)`:
    ``{"mmd2", "mmd2_se", "ksd", "ksd_se", "h", "mean_norm", "var_mean"}``. MMD against ``n`` fresh prior samples
    (drawn with ``generator``); KSD with the prior score :math:`-z`. Both use one bandwidth ``h`` (default: the
    ``"ksd"`` median rule on the prior sample, which depends only on ``n`` and ``d``), so models are comparable."""
    if z_agg.dim() != 2 or z_agg.shape[0] < 4:
        raise ValueError(
            "z_agg must have shape (n, d) with n >= 4, got "
            f"{tuple(z_agg.shape)}"
        )
    z_agg = z_agg.double().cpu()
    prior = torch.randn(z_agg.shape, generator=generator, dtype=torch.float64)
    h = (
        median_bandwidth(prior, rule="ksd")
        if bandwidth is None
        else torch.as_tensor(bandwidth, dtype=torch.float64)
    )
    m, m_se = mmd(z_agg, prior, h, return_se=True)
    k, k_se = ksd_with_se(z_agg, -z_agg, h)
    return {
        "mmd2": m.item(),
        "mmd2_se": m_se.item(),
        "ksd": k.item(),
        "ksd_se": k_se.item(),
        "h": float(h),
        "mean_norm": z_agg.mean(0).norm().item(),
        "var_mean": z_agg.var(0).mean().item(),
    }


# -----------------------------------------------------------------------------
# the checkpoint ch07_ldc
# -----------------------------------------------------------------------------

# : settings of the shipped checkpoint; the decoder is Chapter 1's ch01_vae50
# architecture
CONFIG = dict(
    latent_dim=50,
    hidden=(200, 200),
    head_hidden=(200,),
    activation="tanh",
    num_particles=8,
    lam=1.0,
    num_epochs=150,
    # each epoch draws 10,000 of the 60,000 training images afresh (the
    # budget of ch01_vae50)
    images_per_epoch=10_000,
    batch_size=100,
    lr=1e-3,
    lr_final=1e-4,
    seed=0,
    eval_k=5000,
    eval_num_test=1000,
    monitor_num_test=500,
)


def build(
    latent_dim: int = CONFIG["latent_dim"],
    hidden=CONFIG["hidden"],
    head_hidden=CONFIG["head_hidden"],
    activation: str = CONFIG["activation"],
    num_particles: int = CONFIG["num_particles"],
    lam: float = CONFIG["lam"],
) -> LDCVAE:
    """The untrained model of the ``ch07_ldc`` checkpoint: a :class:`ParticleEncoder` with Chapter 1's trunk
    (784-200-200) and a Bernoulli decoder 50-200-200-784 (tanh), ``K = 8`` particles, :math:`\\lambda=1`."""
    enc = ParticleEncoder(784, latent_dim, hidden, head_hidden, activation)
    dec = BernoulliDecoder(
        latent_dim, (1, 28, 28), tuple(reversed(hidden)), activation
    )
    return LDCVAE(enc, dec, latent_dim, num_particles=num_particles, lam=lam)


def train(
    out,
    num_epochs: int | None = None,
    progress: bool = True,
    num_train: int | None = None,
    eval_k: int | None = None,
    eval_num_test: int | None = None,
) -> tuple[LDCVAE, dict]:
    """Train :func:`build` exactly like Chapter 1's ``ch01_vae50`` (same data, batches, Adam with the learning rate
    decaying from 1e-3 to 1e-4, epochs), evaluate it and save it to ``out`` with its metadata (history, bounds,
    latent consistency, wall time). Returns ``(model, meta)``. The smaller arguments are for smoke tests."""
    from .data import epoch_loader, load_mnist
    from .metrics import evaluate
    from .train import fit, save_checkpoint

    cfg = dict(CONFIG)
    epochs = cfg["num_epochs"] if num_epochs is None else num_epochs
    k = cfg["eval_k"] if eval_k is None else eval_k
    n_eval = cfg["eval_num_test"] if eval_num_test is None else eval_num_test
    torch.manual_seed(cfg["seed"])
    x_train, _ = load_mnist("train")
    if num_train is not None:
        x_train = x_train[:num_train]
    x_test, _ = load_mnist("test", binarize="static")
    loader = epoch_loader(
        x_train,
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        images_per_epoch=min(cfg["images_per_epoch"], len(x_train)),
    )
    model = build()
    model.dec.init_bias(x_train)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.ExponentialLR(
        opt, (cfg["lr_final"] / cfg["lr"]) ** (1.0 / max(epochs, 1))
    )
    monitor = x_test[: cfg["monitor_num_test"]]

    def val_fn(m, x):
        return {"rec": m.log_lik(x, m.particles(x)).mean().item()}

    hist = fit(
        model,
        loader,
        epochs,
        optimizer=opt,
        scheduler=sched,
        val_data=monitor,
        val_fn=val_fn,
        seed=cfg["seed"],
        progress=progress,
    )
    t0 = time.perf_counter()
    torch.manual_seed(1)
    ev = evaluate(model, x_test[:n_eval], k=k)
    z_agg = model.particles(
        x_test[:2000], 1, torch.Generator().manual_seed(2)
    )[:, 0]
    cons = latent_consistency(z_agg, torch.Generator().manual_seed(3))
    meta = {
        "name": "ch07_ldc",
        "config": cfg,
        "backend": model.backend,
        "num_epochs": epochs,
        "num_train": len(x_train),
        "history": hist.to_dict(),
        "eval": {
            "test_elbo_fitted": ev["elbo"],
            "test_elbo_fitted_se": ev["elbo_se"],
            "test_iwae": ev["iwae"],
            "test_iwae_se": ev["iwae_se"],
            "iwae_k": k,
            "iwae_num_test": ev["n"],
            "proposal": "fitted",
            "consistency_2000": cons,
            "eval_seconds": time.perf_counter() - t0,
        },
        "train_seconds": hist.seconds,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": "python -m vaebook.pretrained train ch07_ldc"
        + (f" --num-epochs {epochs}" if num_epochs is not None else ""),
    }
    save_checkpoint(model, Path(out), **meta)
    return model, meta
