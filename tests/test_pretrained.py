"""Shipped checkpoints load with weights_only=True and match their recipes; the training command works."""
import json

import pytest
import torch

from vaebook import pretrained
from vaebook.train import CheckpointError


@pytest.mark.parametrize("name", sorted(pretrained.RECIPES))
def test_shipped_checkpoint_loads_and_is_small(name):
    path = pretrained.checkpoint_path(name)
    assert path.is_file(), f"{path} missing: run python -m vaebook.pretrained train {name}"
    assert path.stat().st_size < 8_000_000, "checkpoints stay a few MB"
    blob = torch.load(path, weights_only=True)  # nothing but tensors and strings inside
    meta = json.loads(blob["meta"])
    model, meta2 = pretrained.load(name)
    assert meta == meta2 and meta["name"] == name


def test_ch01_checkpoint_metadata_is_consistent(mnist_test):
    model, meta = pretrained.load("ch01_vae50")
    ev = meta["eval"]
    # the IWAE bound is above the ELBO, and the shipped number is reproducible on the same images
    assert ev["test_iwae"] > ev["test_elbo"]
    assert ev["train_elbo"] >= ev["test_elbo"] - 3 * ev["test_elbo_se"]
    x = mnist_test[0][:500]
    elbo = model.elbo(x)["elbo"].mean().item()
    assert abs(elbo - ev["test_elbo"]) < 4.0  # 500 of the 10,000 images: within a few nats
    hist = meta["history"]["epoch_logs"]
    assert len(hist["elbo"]) == meta["num_epochs"] and hist["elbo"][-1] > hist["elbo"][0]


def test_training_command_smoke(tmp_path, mnist_test):
    out = tmp_path / "smoke.pt"
    model, meta = pretrained.train("ch01_vae50", out=out, num_epochs=1, progress=False, num_train=500,
                                   num_test=200, eval_k=5, eval_num_test=50, monitor_num_test=50)
    assert out.is_file() and meta["num_epochs"] == 1 and meta["num_train"] == 500
    model2, meta2 = pretrained.load("ch01_vae50", path=out)
    assert meta2["eval"] == meta["eval"]


def test_cli_list(capsys):
    assert pretrained.main(["list"]) == 0
    assert "ch01_vae50" in capsys.readouterr().out


def test_unknown_recipe_and_mismatched_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        pretrained.build_model("nope")
    from vaebook.models import VAE
    from vaebook.train import save_checkpoint

    wrong = save_checkpoint(VAE.mlp(latent_dim=3, hidden=(8,)), tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        pretrained.load("ch01_vae50", path=wrong)


def test_checkpoint_path_that_is_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file") as e:
        pretrained.load("ch01_vae50", path=tmp_path)
    assert str(tmp_path) in str(e.value) and "does not exist" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path, bad):
    from vaebook.models import VAE
    from vaebook.train import load_checkpoint, save_checkpoint

    model = VAE.mlp(latent_dim=3, hidden=(8,))
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = bad
    path = save_checkpoint(model, tmp_path / "diverged.pt", note="a diverged run")
    fresh = VAE.mlp(latent_dim=3, hidden=(8,))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"non-finite \(NaN or inf\) weights") as e:
        load_checkpoint(fresh, path)
    assert str(path) in str(e.value) and next(iter(model.state_dict())) in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing was loaded
    model.load_state_dict(fresh.state_dict())  # finite weights again: the same file format loads
    load_checkpoint(fresh, save_checkpoint(model, tmp_path / "fine.pt"))


def _torch_load_calls(source: str):
    """Every call to ``torch.load`` in ``source`` (Python), with whether it passes ``weights_only=True``."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            yield node.lineno, safe


def test_torch_load_calls_are_safe_helper_can_fail():
    assert list(_torch_load_calls("import torch\ntorch.load('a.pt', weights_only=True)")) == [(2, True)]
    assert list(_torch_load_calls("import torch\ntorch.load('a.pt')")) == [(2, False)]
    assert list(_torch_load_calls("import torch\ntorch.load('a.pt', weights_only=False)")) == [(2, False)]


def test_every_torch_load_in_the_library_and_the_chapters_uses_weights_only():
    """A checkpoint is data, never code: no ``torch.load`` without ``weights_only=True`` (library and chapters)."""
    from pathlib import Path

    import nbformat

    root = Path(__file__).resolve().parents[1]
    unsafe, seen = [], 0
    for path in sorted((root / "src" / "vaebook").rglob("*.py")):
        for line, safe in _torch_load_calls(path.read_text()):
            seen += 1
            if not safe:
                unsafe.append(f"{path.relative_to(root)}:{line}")
    for path in sorted((root / "book").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            code = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
            for line, safe in _torch_load_calls(code):
                seen += 1
                if not safe:
                    unsafe.append(f"{path.name}, cell {i}, line {line}")
    assert seen >= 1, "the scan found no torch.load at all: is it looking in the right place?"
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
