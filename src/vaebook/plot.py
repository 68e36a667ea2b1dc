"""Figures in the book's one look: small sizes, labelled axes, no titles (captions carry them), colour-blind-safe
colours (Okabe & Ito), retina PNG output for notebooks (set through ``matplotlib_inline``).

Every chapter calls :func:`use_book_style` once in its setup cell and draws with these helpers.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = [
    "PALETTE",
    "use_book_style",
    "image_grid",
    "latent_map",
    "latent_manifold",
    "curves",
    "traversal_grid",
]

#: Okabe & Ito's colour-blind-safe palette (black first).
PALETTE = [
    "#000000",
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
]
_CYCLE = PALETTE[1:] + PALETTE[:1]


def use_book_style(formats: str = "retina") -> None:
    """Set the book's matplotlib style; in a notebook also the inline figure format (``"retina"`` or ``"svg"``)."""
    from cycler import cycler

    plt.rcParams.update(
        {
            "figure.figsize": (5.0, 3.2),
            "figure.dpi": 100,
            "savefig.bbox": "tight",
            "axes.prop_cycle": cycler(color=_CYCLE),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "font.size": 10,
            "axes.labelsize": 10,
            "legend.frameon": False,
            "image.cmap": "gray_r",
        }
    )
    try:  # only inside IPython; never through the removed IPython.display API
        from IPython import get_ipython

        if get_ipython() is not None:
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats(formats)
    except ImportError:  # pragma: no cover
        pass


def _np(t):
    return t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)


def image_grid(
    images,
    nrow: int | None = None,
    ax=None,
    pad: int = 1,
    cmap: str = "gray_r",
    vmin=0.0,
    vmax=1.0,
):
    """Tile ``images`` ``(N, 1, H, W)`` or ``(N, H, W)`` into one image with ``nrow`` rows; returns the axes."""
    imgs = _np(images)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    if imgs.ndim != 3:
        raise ValueError(
            "images must have shape (N, 1, H, W) or (N, H, W), got "
            f"{images.shape}"
        )
    n, h, w = imgs.shape
    ncol = math.ceil(n / nrow) if nrow else math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.full(
        (nrow * (h + pad) + pad, ncol * (w + pad) + pad), vmin, dtype=float
    )
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = imgs[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * ncol + 0.2, 0.45 * nrow + 0.2))
    ax.imshow(canvas, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    return ax


def latent_map(
    z, labels=None, ax=None, s: float = 3.0, alpha: float = 0.6, dims=(0, 1)
):
    """Scatter 2-D codes ``z`` ``(N, >=2)`` coloured by ``labels`` (digits 0-9); returns the axes."""
    z = _np(z)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    cmap = plt.get_cmap("tab10")
    if labels is None:
        ax.scatter(
            z[:, dims[0]], z[:, dims[1]], s=s, alpha=alpha, color=PALETTE[5]
        )
    else:
        labels = _np(labels)
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(
                z[m, dims[0]],
                z[m, dims[1]],
                s=s,
                alpha=alpha,
                color=cmap(int(c) % 10),
                label=str(c),
            )
        ax.legend(
            markerscale=3,
            fontsize=7,
            ncol=1,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            handletextpad=0.1,
        )
    ax.set_xlabel(f"$z_{dims[0] + 1}$")
    ax.set_ylabel(f"$z_{dims[1] + 1}$")
    ax.set_aspect("equal", adjustable="datalim")
    return ax


@torch.no_grad()
def latent_manifold(decode, n: int = 15, ax=None, eps: float = 0.05):
    """Decode an ``n x n`` grid of a 2-D latent space, spaced through the inverse normal CDF (as in Kingma &
    Welling's manifold figures): ``decode`` maps ``(m, 2)`` codes to images ``(m, 1, H, W)``."""
    p = torch.linspace(eps, 1 - eps, n)
    q = torch.distributions.Normal(0.0, 1.0).icdf(p)
    zz = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(
        -1, 2
    )
    return image_grid(decode(zz), nrow=n, ax=ax)


def traversal_grid(decode, z0, dims, values, ax=None):
    """Rows: latent dimensions ``dims``; columns: ``z0`` with that dimension set to each of ``values``."""
    z0 = torch.as_tensor(z0).flatten()
    rows = []
    for d in dims:
        z = z0.repeat(len(values), 1)
        z[:, d] = torch.as_tensor(values, dtype=z.dtype)
        rows.append(z)
    with torch.no_grad():
        imgs = decode(torch.cat(rows))
    return image_grid(imgs, nrow=len(dims), ax=ax)


def curves(
    history,
    keys,
    ax=None,
    xlabel: str = "epoch",
    ylabel: str | None = None,
    labels=None,
):
    """Plot per-epoch values of ``keys`` from a :class:`~vaebook.train.History` (or a dict of lists)."""
    if ax is None:
        _, ax = plt.subplots()
    for i, k in enumerate(keys):
        y = history[k]
        ax.plot(np.arange(1, len(y) + 1), y, label=labels[i] if labels else k)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.legend()
    return ax
