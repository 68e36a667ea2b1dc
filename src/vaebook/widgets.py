"""Small interactive explorers (core ``ipywidgets`` only, so they also run on Colab).

The rendered book has no kernel: a chapter always shows a static figure (e.g. :func:`vaebook.plot.traversal_grid`)
before an explorer.
"""

from __future__ import annotations

import torch

__all__ = ["latent_traversal"]


def latent_traversal(
    decode, z0, dims=(0, 1), value_range: float = 3.0, step: float = 0.25
):
    """Sliders for the latent coordinates ``dims`` of ``z0``; shows ``decode(z)`` as an image as they move.

    Args:
        decode: maps ``(1, latent_dim)`` codes to images ``(1, 1, H, W)`` (e.g. ``model.dec.mean``).
        z0: ``(latent_dim,)`` starting code (e.g. the posterior mean of a test image).
        dims: which coordinates get a slider; value_range, step: slider range ``[-r, r]`` and step.

    Returns:
        the ``ipywidgets`` container (display it, or let it be the cell's last expression).
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    z0 = torch.as_tensor(z0, dtype=torch.float32).flatten()
    for d in dims:
        if not 0 <= d < z0.numel():
            raise ValueError(
                f"dims must index z0 (0..{z0.numel() - 1}), got {d}"
            )
    sliders = {
        f"z{d + 1}": w.FloatSlider(
            value=float(z0[d].clamp(-value_range, value_range)),
            min=-value_range,
            max=value_range,
            step=step,
            description=f"z{d + 1}",
            continuous_update=False,
        )
        for d in dims
    }

    def show(**vals):
        z = z0.clone()
        for d in dims:
            z[d] = vals[f"z{d + 1}"]
        with torch.no_grad():
            img = decode(z[None])[0, 0].cpu().numpy()
        fig, ax = plt.subplots(figsize=(1.8, 1.8))
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
        ax.set_axis_off()
        plt.show()

    out = w.interactive_output(show, sliders)
    return w.HBox([w.VBox(list(sliders.values())), out])
