"""Small shipped checkpoints, and the command that reproduces each one.

Training that does not fit a chapter's CPU budget runs here, once, and the chapter loads the result::

    python -m vaebook.pretrained list
    python -m vaebook.pretrained train ch01_vae50            # writes src/vaebook/checkpoints/ch01_vae50.pt
    python -m vaebook.pretrained train ch01_vae50 --num-epochs 2 --out /tmp/smoke.pt   # a quick smoke run

A checkpoint is a ``state_dict`` (a few MB) plus JSON metadata: the recipe, the per-epoch history, the final
evaluation, the wall time and the versions. Chapters call :func:`load` with ``retrain=RETRAIN``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

__all__ = [
    "RECIPES",
    "Recipe",
    "SMOKE",
    "build_model",
    "burda_stages",
    "train",
    "load",
    "checkpoint_path",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that defines a checkpoint: model, data, optimisation and evaluation settings."""

    description: str
    latent_dim: int
    hidden: tuple = (200, 200)
    activation: str = "tanh"
    num_epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    lr_final: float = (
        1e-4  # cosine-free: exponential decay from lr to lr_final over the run
    )
    seed: int = 0
    num_train: int | None = None  # None: all training images found
    num_test: int | None = None  # None: all test images (for the test ELBO)
    eval_k: int = 5000
    # test images for the k=eval_k IWAE bound (the ELBO uses the whole
    # test set)
    eval_num_test: int = 1000
    monitor_num_test: int = (
        1000  # test images for the per-epoch test ELBO curve
    )
    # None: an epoch is a pass over all training images; n: each epoch
    # draws n of them afresh (vaebook.data.epoch_loader)
    images_per_epoch: int | None = None
    # "exponential": lr -> lr_final over the run; "burda": Burda et al.'s
    # 3^i passes at lr * 10^(-i/7), i = 0..7, scaled to num_epochs
    schedule: str = "exponential"
    adam_eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class ExternalRecipe:
    """A checkpoint whose model and training live in a chapter's module.

    ``module`` must define ``build()`` (the untrained model) and ``train(out, num_epochs=None, progress=True)``
    (train, evaluate, save with :func:`vaebook.train.save_checkpoint`, return ``(model, meta)``); the names of these
    two functions are ``build`` and ``train`` unless given.
    """

    description: str
    module: str
    build: str = "build"
    train: str = "train"
    num_epochs: int | None = None

    def functions(self):
        import importlib

        mod = importlib.import_module(self.module)
        return getattr(mod, self.build), getattr(mod, self.train)


RECIPES: dict[str, Recipe | ExternalRecipe] = {
    "ch01_vae50": Recipe(
        description="Chapter 1: Bernoulli MLP VAE 784-200-200-50 (tanh), "
        "Burda et al.'s one-layer architecture; "
        "dynamically binarised MNIST training images, statically binarised "
        "test images",
        latent_dim=50,
        num_epochs=150,
        images_per_epoch=10_000,
    ),
    "ch01_vae50_burda": Recipe(
        description="Chapter 1: the same VAE in Burda et al.'s setting as "
        "far as a CPU allows: all 60,000 dynamically binarised training "
        "images per epoch, Adam (eps 1e-4), their 8-stage learning-rate "
        "schedule compressed from 3,280 to 152 passes, batch 100 (theirs "
        "20); test NLL by L_5000 on all 10,000 test images",
        latent_dim=50,
        num_epochs=150,
        schedule="burda",
        adam_eps=1e-4,
        eval_num_test=10_000,
    ),
    "ch02_clustering": ExternalRecipe(
        description="Chapter 2: GMVAE and Gaussian VAE + k-means (10-d "
        "latent, K = 10, 784-256 ReLU), 10 passes over all 60,000 images, 3 "
        "seeds; clustering accuracy on all 10,000 test digits",
        module="vaebook.mixture_vae",
        build="build_gmvae",
        train="train_clustering",
        num_epochs=10,
    ),
    "ch03_catvae": ExternalRecipe(
        description="Chapter 3: categorical VAE, 20 variables x 10 classes, "
        "MLP 784-512-256-(20x10) (ReLU), "
        "Jang et al.'s categorical KL with relaxed samples and temperature "
        "annealing",
        module="vaebook.discrete_vae",
        num_epochs=100,
    ),
    "ch04_igr_vs_gs": ExternalRecipe(
        description="Chapter 4: Gumbel-Softmax (categorical and relaxed KL) "
        "vs IGR-I, IGR-SB and IGR-Planar VAEs, 3 seeds each, in the IGR "
        "paper's MNIST setting as far as a CPU allows (20 x 10, "
        "784-512-256 ReLU, their temperatures; 12 epochs at lr 1e-3)",
        module="vaebook.igr_vae",
        build="build_arm",
        train="train_comparison",
        num_epochs=12,
    ),
    "ch05_recab_vae": ExternalRecipe(
        description="Chapter 5: ReCAB-VAE (Gaussian D=8 + one 10-class "
        "relaxed categorical latent), MLP 784-256, "
        "the discrete KL by the closed-form bound with free bits; its "
        "metadata holds the comparison "
        "over 3 seeds x 4 discrete KL terms",
        module="vaebook.recab_vae",
        num_epochs=10,
    ),
    "ch07_ldc": ExternalRecipe(
        description="Chapter 7: LDC-VAE as formalised in the book: implicit "
        "noise-input encoder (784-200-200 trunk, "
        "200-unit residual head, K=8 particles) trained by amortized SVGD on "
        "the Gibbs posterior "
        "p(z) p(x|z); Bernoulli decoder 50-200-200-784 (tanh) trained on the "
        "particles",
        module="vaebook.ldc",
        num_epochs=150,
    ),
    "ch09_vrnn": ExternalRecipe(
        description="Chapter 9: VRNN (LSTM 128, z 16, 64-unit ReLU networks), "
        "Bernoulli output, binarised sequential MNIST",
        module="vaebook.vrnn",
        build="build_vrnn",
        train="train_vrnn",
        num_epochs=8,
    ),
    "ch09_lstm": ExternalRecipe(
        description="Chapter 9: LSTM baseline (LSTM 128, 64-unit ReLU "
        "networks), Bernoulli output, binarised sequential MNIST",
        module="vaebook.vrnn",
        build="build_lstm",
        train="train_lstm",
        num_epochs=8,
    ),
    "ch09_gmvrnn_a": ExternalRecipe(
        description="Chapter 9: GM-VRNN (a), 4-component mixture latent, "
        "Gumbel-softmax sample, matched-bound KL",
        module="vaebook.vrnn",
        build="build_gmvrnn_a",
        train="train_gmvrnn_a",
        num_epochs=8,
    ),
    "ch09_gmvrnn_b": ExternalRecipe(
        description="Chapter 9: GM-VRNN (b), GMVAE-style latent per step (4 "
        "components, w_dim 8), four-term ELBO",
        module="vaebook.vrnn",
        build="build_gmvrnn_b",
        train="train_gmvrnn_b",
        num_epochs=4,
    ),
    "ch08_toy2d": ExternalRecipe(
        description="Chapter 8: VAE and Soft-IntroVAE on the four 2-D toy "
        "densities (8gaussians, 2spirals, "
        "checkerboard, rings), 3 seeds each, reduced CPU setting, with all "
        "metrics in the metadata",
        module="vaebook.introspective",
    ),
    "ch08_toy2d_more": ExternalRecipe(
        description="Chapter 8: IntroVAE (margin 8, the data set's betas) "
        "and a small-variance VAE control (beta_rec 50, beta_kl 1) on the "
        "four 2-D toys, 3 seeds each, in ch08_toy2d's setting",
        module="vaebook.introspective",
        build="build_more",
        train="train_more",
    ),
    "ch08_mnist": ExternalRecipe(
        description="Chapter 8: MLP VAE and Soft-IntroVAE (784-400-32, "
        "Bernoulli decoder), 10 epochs of 10,000 images drawn from all "
        "60,000",
        module="vaebook.introspective",
        build="build_mnist",
        train="train_mnist",
    ),
}


def burda_stages(num_epochs: int) -> list[int]:
    """The stage ``i`` (0..7) of each epoch in Burda et al.'s schedule compressed to about ``num_epochs``.

    Their schedule runs 3^i passes at learning rate 1e-3 * 10^(-i/7) for i = 0..7 (3,280 passes). Here stage i
    gets ``max(1, round(3^i * num_epochs / 3280))`` epochs, so each stage keeps its share of the run and its
    learning rate; the list has one entry per epoch (its length can differ from ``num_epochs`` by rounding;
    :func:`train` uses the last stage for any extra epoch).
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    out = []
    for i in range(8):
        out += [i] * max(1, round(3**i * num_epochs / 3280))
    return out


#: the arguments of :func:`train` for a smoke run of each recipe (seconds on
#: a CPU): ``python -m vaebook.pretrained train NAME --smoke --out F``
SMOKE: dict[str, dict] = {
    "ch01_vae50": dict(
        num_epochs=1,
        num_train=500,
        eval_k=5,
        eval_num_test=50,
        monitor_num_test=50,
    ),
    "ch01_vae50_burda": dict(
        num_epochs=1,
        num_train=300,
        eval_k=5,
        eval_num_test=50,
        monitor_num_test=50,
    ),
    "ch02_clustering": dict(
        num_epochs=1,
        num_train=300,
        num_test=200,
        seeds=[0],
        eval_k=4,
        eval_num_test=20,
    ),
    "ch03_catvae": dict(
        num_epochs=1, num_train=300, eval_k=5, eval_num_test=20
    ),
    "ch04_igr_vs_gs": dict(
        num_epochs=1,
        num_train=300,
        num_test=200,
        seeds=[0],
        eval_k=4,
        eval_k_num_test=20,
    ),
    "ch05_recab_vae": dict(
        num_epochs=1,
        arms=["recab"],
        seeds=[0],
        num_train=200,
        num_test=300,
        eval_k=2,
        eval_num_test=20,
    ),
    "ch07_ldc": dict(num_epochs=1, num_train=200, eval_k=2, eval_num_test=20),
    "ch08_toy2d": dict(num_epochs=20, eval_reference=False),
    "ch08_toy2d_more": dict(num_epochs=20, eval_reference=False),
    "ch08_mnist": dict(num_epochs=1, num_train=256),
    **{
        name: dict(
            num_epochs=1,
            num_train=128,
            num_test=40,
            eval_k=2,
            eval_num_test=8,
            monitor_num_test=8,
        )
        for name in (
            "ch09_vrnn",
            "ch09_gmvrnn_a",
            "ch09_gmvrnn_b",
            "ch09_lstm",
        )
    },
}


def checkpoint_path(name: str) -> Path:
    return CHECKPOINT_DIR / f"{name}.pt"


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(
            f"name must be one of {sorted(RECIPES)}, got {name!r}"
        )
    return RECIPES[name]


def build_model(name: str):
    """The untrained model of recipe ``name``."""
    from .models import VAE

    r = _recipe(name)
    if isinstance(r, ExternalRecipe):
        return r.functions()[0]()
    return VAE.mlp(
        latent_dim=r.latent_dim,
        hidden=r.hidden,
        activation=r.activation,
        binarize="dynamic",
    )


def train(
    name: str,
    out: str | Path | None = None,
    num_epochs: int | None = None,
    progress: bool = True,
    root=None,
    **overrides,
) -> tuple[torch.nn.Module, dict]:
    """Train recipe ``name`` from scratch, evaluate it, save it to ``out`` (default: the package's checkpoint).

    ``overrides`` replace fields of the :class:`Recipe` (e.g. ``num_train=500, eval_k=10`` for a smoke test).
    """
    from .data import epoch_loader, load_mnist
    from .metrics import evaluate
    from .train import fit, save_checkpoint

    if isinstance(_recipe(name), ExternalRecipe):
        return _recipe(name).functions()[1](
            out=out if out is not None else checkpoint_path(name),
            num_epochs=num_epochs,
            progress=progress,
            **overrides,
        )
    r = dataclasses.replace(_recipe(name), **overrides)
    epochs = r.num_epochs if num_epochs is None else num_epochs
    torch.manual_seed(r.seed)
    x_train, _ = load_mnist("train", root=root)
    if r.num_train is not None:
        x_train = x_train[: r.num_train]
    x_test, _ = load_mnist("test", root=root, binarize="static")
    if r.num_test is not None:
        x_test = x_test[: r.num_test]
    gen = torch.Generator().manual_seed(r.seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train),
        batch_size=r.batch_size,
        shuffle=True,
        generator=gen,
    )
    if r.images_per_epoch is not None:
        loader = epoch_loader(
            x_train,
            batch_size=r.batch_size,
            seed=r.seed,
            images_per_epoch=min(r.images_per_epoch, len(x_train)),
        )
    model = build_model(name)
    model.dec.init_bias(x_train)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr, eps=r.adam_eps)
    if r.schedule == "burda":
        stages = burda_stages(epochs)
        epochs = len(stages)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 10.0 ** (-stages[min(e, len(stages) - 1)] / 7)
        )
    elif r.schedule == "exponential":
        gamma = (r.lr_final / r.lr) ** (1.0 / max(epochs, 1))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    else:
        raise ValueError(
            f"schedule must be 'exponential' or 'burda', got {r.schedule!r}"
        )
    monitor = x_test[: r.monitor_num_test]

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
        seed=r.seed,
        progress=progress,
    )
    t0 = time.perf_counter()
    x_train_bin = torch.bernoulli(
        x_train[: len(x_test)], generator=torch.Generator().manual_seed(1)
    )
    ev_train = evaluate(model, x_train_bin)
    ev_test = evaluate(model, x_test)
    ev_iwae = evaluate(model, x_test[: r.eval_num_test], k=r.eval_k)
    with torch.no_grad():
        mu = torch.cat([model.encode(xb)[0] for xb in x_test.split(1000)])
    # Burda et al.'s active units: Cov_x(E_q[z_u]) > 1e-2
    active = int((mu.double().var(0) > 1e-2).sum())
    meta = {
        "name": name,
        "recipe": dataclasses.asdict(r),
        "num_epochs": epochs,
        "num_train": len(x_train),
        "num_test": len(x_test),
        "history": hist.to_dict(),
        "eval": {
            "train_elbo": ev_train["elbo"],
            "train_elbo_se": ev_train["elbo_se"],
            "test_elbo": ev_test["elbo"],
            "test_elbo_se": ev_test["elbo_se"],
            "test_iwae": ev_iwae["iwae"],
            "test_iwae_se": ev_iwae["iwae_se"],
            "iwae_k": r.eval_k,
            "iwae_num_test": ev_iwae["n"],
            "active_units": active,
            "eval_seconds": time.perf_counter() - t0,
        },
        "train_seconds": hist.seconds,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "command": f"python -m vaebook.pretrained train {name}"
        + (f" --num-epochs {epochs}" if num_epochs else ""),
    }
    path = Path(out) if out is not None else checkpoint_path(name)
    save_checkpoint(model, path, **meta)
    return model, meta


def load(
    name: str,
    retrain: bool = False,
    path: str | Path | None = None,
    progress: bool = True,
):
    """``(model, meta)`` for recipe ``name``: the shipped checkpoint, or a fresh training run if ``retrain``.

    With ``retrain=True`` the model is trained as ``python -m vaebook.pretrained train NAME`` would, but the
    result is saved beside the chapter (``./NAME.pt``) rather than over the shipped file.
    """
    from .train import load_checkpoint

    if retrain:
        return train(name, out=path or Path(f"{name}.pt"), progress=progress)
    model = build_model(name)
    meta = load_checkpoint(model, path or checkpoint_path(name))
    model.eval()
    return model, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vaebook.pretrained",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the recipes")
    t = sub.add_parser("train", help="train a recipe and save its checkpoint")
    t.add_argument("name", choices=sorted(RECIPES))
    t.add_argument(
        "--out",
        default=None,
        help="where to write (default: the package's checkpoints folder)",
    )
    t.add_argument(
        "--num-epochs",
        type=int,
        default=None,
        help="override the recipe's epochs (smoke runs)",
    )
    t.add_argument("--no-progress", action="store_true")
    t.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny run (a few hundred images, one epoch, one seed) that "
        "checks the command end to end in seconds; give --out",
    )
    args = p.parse_args(argv)
    from .utils import get_device

    get_device()  # applies $VAEBOOK_THREADS
    if args.cmd == "list":
        for k, r in RECIPES.items():
            print(f"{k}: {r.description} ({r.num_epochs} epochs)")
        return 0
    if args.smoke and args.out is None:
        p.error("--smoke needs --out (it must not overwrite the shipped file)")
    kwargs = dict(SMOKE[args.name]) if args.smoke else {}
    if args.num_epochs is not None:
        kwargs["num_epochs"] = args.num_epochs
    _, meta = train(
        args.name,
        out=args.out,
        progress=not args.no_progress,
        **kwargs,
    )
    summary = meta.get("eval", meta.get("results"))
    print(json.dumps(summary, indent=2))
    seconds = meta.get("train_seconds", meta.get("seconds"))
    print(
        f"trained in {seconds:.1f} s; written to {args.out or checkpoint_path(args.name)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
