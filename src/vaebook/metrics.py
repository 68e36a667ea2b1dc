"""Evaluation: the ELBO and the importance-weighted bound (Chapter 1, eqs. ``elbo`` and ``iwae``).

Both work for any model with ``log_weights(x, num_samples) -> (num_samples, B)`` (the log importance weights
:math:`\\log p_\\theta(x,z_s)-\\log q_\\phi(z_s\\mid x)`, :math:`z_s\\sim q_\\phi(z\\mid x)`).
"""

from __future__ import annotations

import math

import torch
from .utils import check_int

__all__ = ["iwae_bound", "elbo", "evaluate", "gradient_samples"]


@torch.no_grad()
def iwae_bound(
    model, x: torch.Tensor, k: int = 5000, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Per-example importance-weighted bound :math:`\mathcal L_k(x)=\log\frac1k\sum_{s=1}^k w_s` (Burda et al.).

    :math:`\mathcal L_1` is the ELBO; :math:`\mathcal L_k` increases with :math:`k` towards :math:`\log p_\theta(x)`.
    The ``k`` samples are drawn in chunks of ``chunk_size`` and combined with a running ``logsumexp``, so memory is
    ``O(chunk_size * B)`` whatever ``k`` is.

    Args:
        x: ``(B, ...)`` data; k: number of importance samples (>= 1); chunk_size: samples per chunk (>= 1); the
            default keeps ``chunk_size * B`` at about 8,192 decoded samples (about 25 MB per MNIST-sized tensor).

    Returns:
        ``(B,)`` in nats (higher is better; the negative is the usual "NLL" estimate).
    """
    check_int("k", k)
    if chunk_size is None:
        chunk_size = max(1, 8192 // max(1, x.shape[0]))
    check_int("chunk_size", chunk_size)
    was_training = model.training
    model.eval()
    try:
        acc = None
        done = 0
        while done < k:
            s = min(chunk_size, k - done)
            lw = torch.logsumexp(model.log_weights(x, s), dim=0)
            acc = lw if acc is None else torch.logaddexp(acc, lw)
            done += s
    finally:
        model.train(was_training)
    return acc - math.log(k)


@torch.no_grad()
def elbo(model, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    r"""Per-example ELBO estimate, the mean of ``num_samples`` log-weights (``(B,)``).

    With a closed-form KL the model's own ``elbo`` has lower variance; this generic version only needs ``log_weights``.
    """
    check_int("num_samples", num_samples)
    was_training = model.training
    model.eval()
    try:
        return model.log_weights(x, num_samples).mean(0)
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model,
    data,
    k: int | None = None,
    batch_size: int = 500,
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Average ELBO (closed-form KL where the model has it) and, if ``k`` is given, the IWAE bound over ``data``.

    ``data`` is a tensor ``(N, ...)`` or a DataLoader. Returns means and standard errors over examples:
    ``{"elbo", "elbo_se", "iwae", "iwae_se", "k", "n"}`` (nats per example).
    """
    from tqdm.auto import tqdm

    check_int("batch_size", batch_size)
    if k is not None and (
        isinstance(k, bool) or not isinstance(k, int) or k < 1
    ):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    if torch.is_tensor(data):
        batches = data.split(batch_size)
    else:
        batches = (b[0] if isinstance(b, (list, tuple)) else b for b in data)
    device = next(model.parameters()).device
    elbos, iwaes = [], []
    was_training = model.training
    model.eval()
    try:
        for xb in tqdm(
            batches, disable=not progress, desc="evaluate", leave=False
        ):
            xb = xb.to(device)
            e = (
                model.elbo(xb)["elbo"]
                if hasattr(model, "elbo")
                else elbo(model, xb)
            )
            elbos.append(e.cpu())
            if k is not None:
                iwaes.append(
                    iwae_bound(model, xb, k=k, chunk_size=chunk_size).cpu()
                )
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    e = torch.cat(elbos).double()
    out.update(elbo=e.mean().item(), elbo_se=_se(e), n=len(e))
    if k is not None:
        w = torch.cat(iwaes).double()
        out.update(iwae=w.mean().item(), iwae_se=_se(w), k=k)
    return out


def _se(v: torch.Tensor) -> float:
    """Standard error of the mean; NaN (without a warning) for a single value."""
    return (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else math.nan


def gradient_samples(loss_fn, params, repeats: int = 100) -> torch.Tensor:
    """``repeats`` independent draws of the stochastic gradient of ``loss_fn()`` w.r.t. ``params``, ``(repeats, P)``.

    Each call of ``loss_fn`` must draw fresh noise. Chapter 1 compares the analytic and the Monte Carlo KL term with
    it; Chapter 3 compares gradient estimators (straight-through, REINFORCE). The total variance is
    ``g.var(0).sum()``; the bias of one estimator against another is the difference of ``g.mean(0)``.
    """
    params = [p for p in params]
    check_int("repeats", repeats, 2)
    rows = []
    for _ in range(repeats):
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).flatten()
                    for p, g in zip(params, grads)
                ]
            )
        )
    return torch.stack(rows)
