"""The book's headline results beside the papers' numbers, read from the shipped checkpoints' metadata.

Every number here is computed from a checkpoint's stored evaluation (``vaebook.pretrained``), never typed in;
the published numbers are the ones that could be checked against the papers (the source says where, and says
"not verified" where the paper's table could not be read). The results page of the book and each chapter show
these rows through :func:`table`, so the page and the chapters print the same digits::

    from vaebook import results
    results.table("ch01")          # Markdown table of Chapter 1's rows
    results.rows()                 # every row as a dict (value, standard error, published, source, setting)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

__all__ = ["ROWS", "Row", "rows", "table", "fmt", "metadata"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One headline number: how to read ours from a checkpoint's metadata, and the published one beside it."""

    chapter: str  # "ch01", ...
    result: str  # what is measured (lower is better unless said)
    checkpoint: str  # the vaebook.pretrained recipe whose metadata holds it
    ours: Callable[[dict], tuple[float, float | None]]  # meta -> (value, s.e.)
    published: float | None
    source: str  # where the published number is, and whether it was verified
    # how ours was obtained and what differs from the paper (a callable
    # gets the checkpoint's metadata)
    setting: str | Callable[[dict], str]
    digits: int = 2


_CACHE: dict[str, dict] = {}


def metadata(name: str) -> dict:
    """The stored metadata of the shipped checkpoint ``name`` (read once, without building the model)."""
    if name not in _CACHE:
        import json

        import torch

        from .pretrained import checkpoint_path

        blob = torch.load(
            checkpoint_path(name), map_location="cpu", weights_only=True
        )
        _CACHE[name] = json.loads(blob["meta"])
    return _CACHE[name]


def _neg(key, se_key):
    return lambda m: (-m["eval"][key], m["eval"][se_key])


def _over_seeds(key, arm, sign=-1.0):
    """Mean over seeds of ``results[arm/seed][key]`` (times ``sign``) with the standard error across seeds."""

    def f(m):
        vals = [
            sign * r[key]
            for name, r in m["results"].items()
            if name.rsplit("/", 1)[0] == arm
        ]
        n = len(vals)
        mean = sum(vals) / n
        se = (
            math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n)
            if n > 1
            else None
        )
        return mean, se

    return f


def _toy(model, data, key):
    def f(m):
        vals = [m["results"][f"{model}_{data}_{s}"][key] for s in m["seeds"]]
        n = len(vals)
        mean = sum(vals) / n
        se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n)
        return mean, se

    return f


_BURDA = "Burda et al. (2016), Table 1, MNIST, 1 stochastic layer, VAE k = 1"
_IGR_CLAIM = (
    "IGR paper (Potapczynski et al. 2020): IGR beats GS in the VAE; its "
    "tables could not be read (not verified)"
)

ROWS: list[Row] = [
    Row(
        "ch01",
        "test NLL (−L_5000, nats), VAE 784-200-200-50 tanh",
        "ch01_vae50_burda",
        _neg("test_iwae", "test_iwae_se"),
        86.76,
        _BURDA + " (verified)",
        lambda m: (
            f"all {m['num_train']:,} training images, dynamic "
            f"binarisation; {m['num_epochs']} passes with their 8-stage schedule "
            "compressed (theirs 3,280), batch 100 (theirs 20); L_5000 on all "
            f"{m['eval']['iwae_num_test']:,} test images"
        ),
    ),
    Row(
        "ch01",
        "active latent units (of 50)",
        "ch01_vae50_burda",
        lambda m: (m["eval"]["active_units"], None),
        19,
        _BURDA + " (verified)",
        "Cov_x E_q[z_u] > 0.01 on all 10,000 test images",
        digits=0,
    ),
    Row(
        "ch01",
        "test NLL (−L_5000, nats), the same VAE at the page's budget",
        "ch01_vae50",
        _neg("test_iwae", "test_iwae_se"),
        None,
        "—",
        "150 epochs of 10,000 images drawn from all 60,000; L_5000 on the "
        "first 1,000 test images (the Gaussian baseline of Chapter 7)",
    ),
    Row(
        "ch02",
        "clustering accuracy (majority), GMVAE, K = 10",
        "ch02_clustering",
        _over_seeds("accuracy_majority", "GMVAE", sign=1.0),
        None,
        "Dilokthanakul et al. (2016): best run 96.92 % with K = 14 and a "
        "larger network (secondary source only; not verified)",
        "10 passes over all 60,000 images, 3 seeds (s.e. across seeds); "
        "all 10,000 test digits; higher is better",
        digits=3,
    ),
    Row(
        "ch02",
        "clustering accuracy (majority), Gaussian VAE + k-means",
        "ch02_clustering",
        _over_seeds("accuracy_majority", "VAE + k-means", sign=1.0),
        None,
        "— (the baseline)",
        "same data, size, epochs and seeds as the GMVAE; k-means (K = 10) on "
        "the posterior means",
        digits=3,
    ),
    Row(
        "ch03",
        "−L_1000 (nats), categorical VAE 20 × 10, Gumbel-Softmax",
        "ch03_catvae",
        _neg("test_bound", "test_bound_se"),
        101.5,
        "Jang et al. (2017), Table 1, VAE (Cat.), Gumbel-S. (verified)",
        "categorical KL, τ annealed to 0.5, 10,000 steps of 100 images "
        "drawn from all 60,000 (dynamic binarisation; theirs fixed); bound "
        "with m = 1000 on the first 1,000 test images",
    ),
    *[
        Row(
            "ch04",
            f"−ELBO (test, discrete, nats), {arm}",
            "ch04_igr_vs_gs",
            _over_seeds("test_elbo", arm),
            None,
            _IGR_CLAIM,
            "20 × 10, 784-512-256 ReLU, 12 passes over all 60,000 images "
            "(theirs 300), lr 1e-3 (theirs 1e-4), 3 seeds (s.e. across "
            "seeds), all 10,000 test images",
        )
        for arm in (
            "GS (categorical KL)",
            "GS (relaxed KL)",
            "IGR-I",
            "IGR-SB",
            "IGR-Planar",
        )
    ],
    *[
        Row(
            "ch05",
            f"−ELBO (test, discrete, nats), ReCAB-VAE, {label}",
            "ch05_recab_vae",
            _over_seeds("test_elbo", arm),
            None,
            "ReCAB-VAE paper: abstract only, no number (not verified)",
            "Gaussian D = 8 + one 10-class relaxed categorical, 784-256; "
            "1,000 steps of 100 images drawn from all 60,000; 3 seeds (s.e. "
            "across seeds); all 10,000 test images",
        )
        for arm, label in (
            ("recab", "ReCAB bound"),
            ("recab_fb", "ReCAB bound + free bits"),
            ("relaxed_mc", "relaxed KL (Monte Carlo)"),
            ("categorical", "categorical KL"),
        )
    ],
    Row(
        "ch07",
        "test NLL (−L_5000, nats), Gaussian VAE of Chapter 1",
        "ch01_vae50",
        _neg("test_iwae", "test_iwae_se"),
        None,
        "— (the baseline)",
        "150 epochs of 10,000 images drawn from all 60,000; L_5000 on the "
        "first 1,000 test images",
    ),
    Row(
        "ch07",
        "test NLL (−L_5000, nats), LDC-VAE",
        "ch07_ldc",
        _neg("test_iwae", "test_iwae_se"),
        None,
        "LDC-VAE paper: abstract only, no number (not verified)",
        "the budget of ch01_vae50 (150 epochs of 10,000 of the 60,000 "
        "images); L_5000 on the first 1,000 test images (compare the "
        "ch01_vae50 row)",
    ),
    *[
        Row(
            "ch08",
            f"{metric} on {data}, {label}",
            ckpt,
            _toy(model, data, key),
            None,
            "Soft-IntroVAE paper: its 2-D table could not be read (not "
            "verified)",
            "their β's per data set (IntroVAE: the same reconstruction and "
            "KL weights, margin 8; control: β_rec 50, β_kl 1); 3,000 "
            "iterations of a 4 × 64 network (theirs 30,000, 3 × 256); 3 "
            "seeds (s.e. across seeds); KL and JSD of 100 × 100 histograms "
            "of 5,000 samples",
            digits=3,
        )
        for data in ("8gaussians", "2spirals", "checkerboard", "rings")
        for model, label, ckpt in (
            ("vae", "VAE", "ch08_toy2d"),
            ("vae_control", "VAE, small decoder variance", "ch08_toy2d_more"),
            ("intro", "IntroVAE", "ch08_toy2d_more"),
            ("soft_intro", "Soft-IntroVAE", "ch08_toy2d"),
        )
        for metric, key in (("KL", "kl"), ("JSD", "jsd"))
    ],
    *[
        Row(
            "ch09",
            f"{what} (test, nats), {label}",
            name,
            _neg(key, key + "_se"),
            None,
            "VRNN paper: no MNIST experiment (Chung et al. 2015 evaluate on "
            "speech and handwriting)",
            lambda m, key=key: (
                f"{m['num_epochs']} epochs of 10,000 sequences drawn from "
                f"all {m['num_train']:,}; "
                + (
                    f"all {m['eval']['num_test']:,} test sequences"
                    if key == "test_elbo"
                    else f"the first {m['eval']['iwae_num_test']:,} test "
                    "sequences"
                )
            ),
        )
        for name, label in (
            ("ch09_vrnn", "VRNN"),
            ("ch09_gmvrnn_a", "GM-VRNN (a)"),
            ("ch09_gmvrnn_b", "GM-VRNN (b)"),
            ("ch09_lstm", "LSTM"),
        )
        for what, key in (("−ELBO", "test_elbo"), ("−L_100", "test_iwae"))
    ],
]


def fmt(value: float, se: float | None, digits: int = 2) -> str:
    """``value ± se`` with ``digits`` decimals (the form every page prints)."""
    v = f"{value:.{digits}f}"
    return v if se is None else f"{v} ± {se:.{digits}f}"


def rows(chapter: str | None = None) -> list[dict]:
    """Every row (or ``chapter``'s) with its value, standard error and formatted text, read from the checkpoints."""
    chapters = sorted({r.chapter for r in ROWS})
    if chapter is not None and chapter not in chapters:
        raise ValueError(f"chapter must be one of {chapters}, got {chapter!r}")
    out = []
    for r in ROWS:
        if chapter is not None and r.chapter != chapter:
            continue
        meta = metadata(r.checkpoint)
        value, se = r.ours(meta)
        if not math.isfinite(value) or (
            se is not None and not math.isfinite(se)
        ):
            raise ValueError(
                f"{r.checkpoint}: non-finite result for {r.result!r}"
            )
        out.append(
            {
                **dataclasses.asdict(r),
                "ours": value,
                "se": se,
                "ours_text": fmt(value, se, r.digits),
                "setting": (
                    r.setting(meta) if callable(r.setting) else r.setting
                ),
                "published_text": (
                    "—" if r.published is None else f"{r.published:g}"
                ),
                "commit": (meta.get("git_commit") or "")[:7],
                "train_seconds": meta.get("train_seconds"),
            }
        )
    return out


def table(chapter: str | None = None, setting: bool = True):
    """A Markdown table (an ``IPython.display.Markdown`` object in a notebook) of the rows of ``chapter`` (all if
    None): result, ours ± s.e., published, source, and (``setting``) how ours was obtained."""
    head = "| result | ours | published | source |"
    rule = "|---|---|---|---|"
    if setting:
        head, rule = head + " our setting |", rule + "---|"
    lines = [head, rule]
    for r in rows(chapter):
        line = (
            f"| {r['result']} | {r['ours_text']} | {r['published_text']} "
            f"| {r['source']} |"
        )
        if setting:
            line += f" {r['setting']} |"
        lines.append(line)
    text = "\n".join(lines)
    try:
        from IPython.display import Markdown

        return Markdown(text)
    except ImportError:  # pragma: no cover - IPython is a dependency
        return text
