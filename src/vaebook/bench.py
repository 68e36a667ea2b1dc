"""Benchmarks of the book's hot paths: each op's reference against its alternatives, at growing sizes.

    python -m vaebook.bench                 # on the CPU (or the GPU when one is present)
    python -m vaebook.bench --quick         # small sizes, a few seconds
    python -m vaebook.bench --json out.json

Ops and methods (the Appendix explains them):

* ``svgd``: the SVGD direction for ``n`` particles in 2-D. ``blocked`` is :func:`vaebook.svgd.svgd_direction`
  (memory O(n d)); ``dense`` is :func:`vaebook.svgd.svgd_direction_dense` (the n x n kernel matrix, autograd
  repulsion; skipped above ``--dense-max``); ``keops`` uses pykeops' lazy reductions when pykeops is installed;
  ``triton`` is :func:`vaebook.kernels.svgd_direction` on a CUDA device with triton.
* ``gumbel_softmax``: straight-through samples, the PyTorch reference vs the fused Triton kernel (CUDA only).
* ``matched_kl``: the matched bound between diagonal Gaussian mixtures, reference vs fused kernel (CUDA only).

Times are the minimum over repeats (with ``torch.cuda.synchronize`` on a GPU); peak memory is the peak of tensor
storages created during one call (:func:`vaebook.svgd.peak_memory`). No number printed here is a GPU number unless
the device column says ``cuda``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

__all__ = ["run", "format_table", "main"]


def _time(fn, device, repeats):
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":  # pragma: no cover - no GPU in CI
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":  # pragma: no cover
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _keops_direction(x, s, h):
    """The SVGD direction with pykeops' lazy reductions (no n x n matrix in memory)."""
    from pykeops.torch import LazyTensor

    n, d = x.shape
    xi, xj = LazyTensor(x[:, None, :]), LazyTensor(x[None, :, :])
    k = (-((xi - xj) ** 2).sum(-1) / h).exp()
    v = torch.cat([s - (2.0 / h) * x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
    out = (k * LazyTensor(v[None, :, :])).sum(dim=1)
    return (out[:, :d] + (2.0 / h) * x * out[:, d:]) / n


def _methods(op, device):
    from . import kernels, svgd

    triton_ok = device.type == "cuda" and kernels.triton_available()
    if op == "svgd":
        ms = {"blocked": lambda x, s, h: svgd.svgd_direction(x, s, h),
              "dense": lambda x, s, h: svgd.svgd_direction_dense(x, s, h)}
        try:
            import pykeops  # noqa: F401

            ms["keops"] = _keops_direction
        except ImportError:
            pass
        if triton_ok:  # pragma: no cover - needs a GPU
            ms["triton"] = lambda x, s, h: kernels.svgd_direction(x, s, h, backend="triton")
        return ms
    if op == "gumbel_softmax":
        ms = {"torch": lambda lg, g: kernels.gumbel_softmax(lg, 0.5, hard=True, gumbel=g, backend="torch")}
        if triton_ok:  # pragma: no cover
            ms["triton"] = lambda lg, g: kernels.gumbel_softmax(lg, 0.5, hard=True, gumbel=g, backend="triton")
        return ms
    ms = {"torch": lambda *a: kernels.matched_kl(*a, backend="torch")}
    if triton_ok:  # pragma: no cover
        ms["triton"] = lambda *a: kernels.matched_kl(*a, backend="triton")
    return ms


def run(quick: bool = False, device: str | None = None, dense_max: int = 5000, max_n: int = 20_000,
        repeats: int = 3, seed: int = 0) -> list[dict]:
    """Run every benchmark; return one row per (op, size, method): ``{"op", "size", "method", "device",
    "ms", "peak_mib", "note"}`` (``ms``/``peak_mib`` are ``None`` for a skipped method, with the reason in ``note``)."""
    from .svgd import peak_memory

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(seed)
    rows: list[dict] = []

    def record(op, size, method, fn, args, note=""):
        _, peak = peak_memory(fn, *args)
        ms = 1e3 * _time(lambda: fn(*args), dev, repeats)
        rows.append({"op": op, "size": size, "method": method, "device": dev.type, "ms": round(ms, 3),
                     "peak_mib": round(peak / 2**20, 2), "note": note})

    sizes = [200, 500] if quick else [500, 2000, 5000, max_n]
    for n in sizes:
        x = torch.randn(n, 2, generator=g).to(dev)
        s, h = -x, 1.0
        for name, fn in _methods("svgd", dev).items():
            if name == "dense" and n > dense_max:
                rows.append({"op": "svgd", "size": f"n={n}", "method": name, "device": dev.type, "ms": None,
                             "peak_mib": None, "note": f"skipped: n x n matrix above --dense-max {dense_max}"})
                continue
            record("svgd", f"n={n}", name, fn, (x, s, h))
    for b, k in ([(256, 10)] if quick else [(2000, 10), (20_000, 100)]):
        lg = torch.randn(b, k, generator=g).to(dev)
        gum = -torch.log(-torch.log(torch.rand(b, k, generator=g).clamp(1e-10, 1 - 1e-7))).to(dev)
        for name, fn in _methods("gumbel_softmax", dev).items():
            record("gumbel_softmax", f"{b}x{k}", name, fn, (lg, gum))
    for b in ([64] if quick else [1000, 100_000]):
        kk, d = 10, 16
        args = [torch.randn(b, kk, generator=g), torch.randn(b, kk, d, generator=g),
                torch.randn(b, kk, d, generator=g), torch.randn(b, kk, generator=g),
                torch.randn(b, kk, d, generator=g), torch.randn(b, kk, d, generator=g)]
        args = tuple(a.to(dev) for a in args)
        for name, fn in _methods("matched_kl", dev).items():
            record("matched_kl", f"B={b}, K={kk}, D={d}", name, fn, args)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| op | size | method | device | time (ms) | peak memory (MiB) | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = "-" if r["ms"] is None else f"{r['ms']:.3f}"
        m = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.2f}"
        lines.append(f"| {r['op']} | {r['size']} | {r['method']} | {r['device']} | {t} | {m} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vaebook.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dense-max", type=int, default=5000, help="largest n for the dense SVGD (O(n^2) memory)")
    p.add_argument("--max-n", type=int, default=20_000, help="largest n for SVGD")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = run(quick=args.quick, device=args.device, dense_max=args.dense_max, max_n=args.max_n,
               repeats=args.repeats)
    print(format_table(rows))
    if not any(r["method"] == "keops" for r in rows):
        print("\n(keops: not installed; `pip install pykeops` adds it. triton: only on a CUDA device.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
