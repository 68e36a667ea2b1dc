"""Figure helpers, the latent-traversal widget and the small utilities (Chapter 1)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vaebook import plot, utils, widgets  # noqa: E402
from vaebook.train import History  # noqa: E402


def test_image_grid_places_every_image():
    imgs = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 3) / 10
    ax = plot.image_grid(imgs, nrow=2, pad=1)
    canvas = ax.get_images()[0].get_array()
    assert canvas.shape == (2 * 3 + 1, 3 * 4 + 1)
    # image i sits at row i // 3, column i % 3
    for i in range(6):
        r, c = divmod(i, 3)
        assert np.allclose(canvas[1 + r * 3: 1 + r * 3 + 2, 1 + c * 4: 1 + c * 4 + 3], i / 10)
    plt.close("all")
    with pytest.raises(ValueError, match="images"):
        plot.image_grid(torch.zeros(3, 4))


def test_latent_map_curves_manifold_traversal():
    z = torch.randn(50, 2)
    ax = plot.latent_map(z, torch.arange(50) % 10)
    assert len(ax.collections) == 10 and ax.get_xlabel() == "$z_1$"
    h = History()
    h.epoch_logs["elbo"] += [-3.0, -2.0]
    ax = plot.curves(h, ["elbo"])
    assert np.allclose(ax.lines[0].get_ydata(), [-3, -2])
    seen = []

    def decode(zz):
        seen.append(zz.clone())
        return torch.sigmoid(zz[:, :1]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)

    plot.latent_manifold(decode, n=5)
    assert seen[-1].shape == (25, 2)
    # the grid is symmetric and spaced by normal quantiles
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 5))
    assert torch.allclose(seen[-1][:5, 0], q, atol=1e-6)
    plot.traversal_grid(decode, torch.zeros(3), dims=(0, 2), values=[-1.0, 0.0, 1.0])
    assert seen[-1].shape == (6, 3) and torch.equal(seen[-1][:3, 0], torch.tensor([-1.0, 0.0, 1.0]))
    plt.close("all")


def test_use_book_style_sets_palette():
    plot.use_book_style()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    assert set(colors) == set(plot.PALETTE)
    assert plt.rcParams["axes.spines.top"] is False


def test_latent_traversal_widget():
    pytest.importorskip("ipywidgets")
    calls = []

    def decode(z):
        calls.append(z.clone())
        return torch.zeros(1, 1, 4, 4)

    box = widgets.latent_traversal(decode, torch.tensor([0.5, -0.5, 9.0]), dims=(0, 2), value_range=3.0)
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["z1", "z3"]
    assert sliders[0].value == 0.5 and sliders[1].value == 3.0  # clamped to the range
    with pytest.raises(ValueError, match="dims"):
        widgets.latent_traversal(decode, torch.zeros(2), dims=(2,))
    plt.close("all")


def test_set_seed_reproducible_and_validated():
    utils.set_seed(3)
    a = torch.randn(4)
    g = utils.set_seed(3)
    assert torch.equal(a, torch.randn(4))
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="seed"):
        utils.set_seed(-1)


def test_get_device_and_threads(monkeypatch):
    monkeypatch.setenv("VAEBOOK_THREADS", "1")
    assert utils.get_device().type in ("cpu", "cuda")
    assert torch.get_num_threads() == 1
    assert utils.get_device("cpu") == torch.device("cpu")


def test_show_source_strips_docstring(capsys):
    from vaebook.divergences import kl_normal_diag

    utils.show_source(kl_normal_diag)
    out = capsys.readouterr().out
    assert out.startswith("def kl_normal_diag(") and "Chapter 1" not in out and "return" in out
    utils.show_source(kl_normal_diag, docstring=True)
    assert "Chapter 1" in capsys.readouterr().out


def test_checks():
    utils.check_positive("tau", 0.5)
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        utils.check_positive("tau", 0.0)
    with pytest.raises(ValueError, match="x must be finite"):
        utils.check_finite("x", torch.tensor([1.0, float("nan")]))
