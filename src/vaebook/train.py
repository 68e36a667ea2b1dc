"""The one training loop of the book, and ``state_dict`` checkpoints.

:func:`fit` trains any model that follows the book's contract ``model.loss(batch) -> (loss, logs)`` (see
:mod:`vaebook.models`) and records every logged term, per step and per epoch, in a :class:`History`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

from .utils import check_int, set_seed

__all__ = [
    "History",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
]


class History:
    """Every logged term of training: ``history["elbo"]`` is the list of per-epoch means, ``history.steps["elbo"]``
    the per-step values; ``history.epochs`` counts finished epochs and ``history.seconds`` the wall time."""

    def __init__(self):
        self.epoch_logs: dict[str, list[float]] = defaultdict(list)
        self.steps: dict[str, list[float]] = defaultdict(list)
        self.epochs = 0
        self.seconds = 0.0

    def __getitem__(self, key: str) -> list[float]:
        return self.epoch_logs[key]

    def __contains__(self, key: str) -> bool:
        return key in self.epoch_logs

    def keys(self):
        return self.epoch_logs.keys()

    def last(self) -> dict[str, float]:
        """The last epoch's means."""
        return {k: v[-1] for k, v in self.epoch_logs.items() if v}

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "seconds": self.seconds,
            "epoch_logs": dict(self.epoch_logs),
        }

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.last().items())
        return f"History(epochs={self.epochs}, {last})"


def fit(
    model: torch.nn.Module,
    train_loader,
    num_epochs: int,
    lr: float = 1e-3,
    optimizer=None,
    device: torch.device | str | None = None,
    val_data=None,
    val_fn=None,
    grad_clip: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
    history: History | None = None,
    scheduler=None,
    on_epoch_end=None,
) -> History:
    """Train ``model`` for ``num_epochs`` epochs on ``train_loader`` with Adam (or ``optimizer``).

    Args:
        model: follows the contract ``model.loss(batch) -> (loss, logs)``.
        train_loader: an iterable of batches (a ``DataLoader``).
        num_epochs: epochs (>= 0); lr: Adam's learning rate (ignored if ``optimizer`` is given).
        device: moved to before training (default: where the model already is).
        val_data, val_fn: if both given, ``val_fn(model, val_data) -> dict`` is called after each epoch in eval
            mode under ``no_grad`` and its values are logged with the prefix ``val_``.
        grad_clip: clip the global gradient norm (the VRNN chapter needs it).
        seed: reseeds torch before training so that a rerun gives the same numbers (None: leave the RNG alone).
        history: continue an existing history (a second call to ``fit`` appends to it).
        scheduler: an optional ``torch.optim.lr_scheduler`` stepped once per epoch.
        on_epoch_end: optional ``callback(epoch, model, history)``.

    Returns:
        the :class:`History`. Raises ``FloatingPointError`` as soon as the loss is NaN or infinite, naming the step.
    """
    from tqdm.auto import tqdm

    check_int("num_epochs", num_epochs, 0)
    if not (0 < lr < math.inf):
        raise ValueError(f"lr must be > 0 and finite, got {lr!r}")
    if grad_clip is not None and not (0 < grad_clip < math.inf):
        raise ValueError(
            "grad_clip must be None or a number > 0 and finite, got "
            f"{grad_clip!r}"
        )
    if seed is not None:
        set_seed(seed)
    if device is not None:
        model.to(device)
    opt = (
        optimizer
        if optimizer is not None
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    history = history if history is not None else History()
    start = time.perf_counter()
    bar = tqdm(range(num_epochs), desc="epochs", disable=not progress)
    for _ in bar:
        model.train()
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for batch in train_loader:
            loss, logs = model.loss(batch)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch "
                    f"{history.epochs + 1}, step {n + 1}; "
                    "lower the learning rate or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            for k, v in logs.items():
                history.steps[k].append(float(v))
                sums[k] += float(v)
            n += 1
        if n == 0:
            raise ValueError(
                "train_loader must yield at least one batch per epoch (it "
                "yielded none)"
            )
        for k, v in sums.items():
            history.epoch_logs[k].append(v / n)
        if val_data is not None and val_fn is not None:
            model.eval()
            with torch.no_grad():
                for k, v in val_fn(model, val_data).items():
                    history.epoch_logs[f"val_{k}"].append(float(v))
        if scheduler is not None:
            scheduler.step()
        history.epochs += 1
        if on_epoch_end is not None:
            on_epoch_end(history.epochs, model, history)
        if progress:
            bar.set_postfix(
                {k: f"{v:.3g}" for k, v in list(history.last().items())[:3]}
            )
    history.seconds += time.perf_counter() - start
    model.eval()
    return history


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or does not match the model."""


def provenance() -> dict:
    """Where a result came from: git commit (and whether the tree had uncommitted changes), the command line,
    the date, torch and Python versions and torch's thread count. :func:`save_checkpoint` adds these to every
    checkpoint's metadata (keys already given are kept)."""
    import datetime
    import platform
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    commit, dirty = None, None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
        if commit:
            dirty = bool(
                subprocess.run(
                    ["git", "-C", str(repo), "status", "--porcelain", "src"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
            )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "argv": " ".join(sys.argv),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def save_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, **meta
) -> Path:
    """Save ``model.state_dict()`` (tensors only, CPU) and JSON-serialisable ``meta`` to ``path``.

    Loaded with ``torch.load(..., weights_only=True)`` by :func:`load_checkpoint`; ``meta`` is stored as a JSON
    string so that nothing but tensors and strings is unpickled.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, v in provenance().items():
        meta.setdefault(k, v)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": json.dumps(meta)}, path)
    return path


def load_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, map_location="cpu"
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (``weights_only=True``); return its meta.

    Raises :class:`CheckpointError` (a ``ValueError``) that names the file and says what to do when the file is
    missing, corrupted, or holds weights for a different architecture.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint path {path} is a directory, not a checkpoint file: "
            "give the path of the "
            f".pt file itself (e.g. {path / 'NAME.pt'}); see "
            "vaebook.pretrained for the names"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; retrain it (see "
            "vaebook.pretrained) or fix the path"
        )
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        state, meta = blob["state_dict"], json.loads(blob.get("meta", "{}"))
    # noqa: BLE001 - any unpickling/zip error means a damaged file
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(e).__name__}: {e}); "
            "delete it and retrain it (see vaebook.pretrained)"
        ) from e
    bad = [
        k
        for k, v in state.items()
        if torch.is_tensor(v)
        and v.is_floating_point()
        and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite (NaN or inf) weights in "
            f"{len(bad)} tensor(s): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; a "
            "diverged training run was "
            "saved: delete it and retrain it (see vaebook.pretrained)"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path} does not match this model's architecture: "
            f"{e}. "
            "Build the model with the checkpoint's settings or retrain it."
        ) from e
    return meta
