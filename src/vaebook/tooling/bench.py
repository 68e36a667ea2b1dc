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
the device column says ``cuda``. The command also measures, once and in a fresh process, how much the process's
peak resident memory (``getrusage`` max RSS) grows during one call of the matched-bound reference at the largest
size (:func:`matched_reference_rss`), and prints the roofline estimate of every kernel on an NVIDIA H100 SXM
(:func:`roofline_estimates`; beside the measured time of each Triton row when a GPU is present).

**What to expect on a GPU (on paper).** :func:`roofline_estimates` counts, for each kernel, the bytes it must move
between HBM and the chip (its inputs read once, its outputs written once: the tiles that the SVGD and KSD kernels
re-read come from on-chip cache and are not counted) and its floating-point operations (each ``+ - * /``, ``exp``,
``log`` and comparison counted as one), and turns them into time at the published peaks of an NVIDIA H100 SXM5:
3.35 TB/s of HBM3 bandwidth and 67 TFLOP/s of FP32 non-tensor-core arithmetic. The estimate is
``max(bytes / bandwidth, flops / peak)``, a lower bound: it ignores the kernel launch (a few microseconds, which
dominates below about 10 microseconds), occupancy, and that ``exp`` runs on the special-function units at a
fraction of the FMA rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

__all__ = [
    "run",
    "format_table",
    "main",
    "roofline",
    "roofline_estimates",
    "matched_reference_rss",
    "H100_SXM",
]

# : the published peaks used by :func:`roofline_estimates` (NVIDIA H100 SXM5
# datasheet)
H100_SXM = {
    "name": "NVIDIA H100 SXM5",
    "bandwidth": 3.35e12,
    "flops": 67e12,
    "note": "3.35 TB/s HBM3; 67 TFLOP/s FP32 (non-tensor-core)",
}

# : sizes of :func:`roofline_estimates`: the appendix's cost table (B = 128,
# n = 500) and this benchmark's largest
ROOFLINE_SIZES = (
    ("svgd_direction", {"n": 500, "d": 2}),
    ("svgd_direction", {"n": 20_000, "d": 2}),
    ("ksd", {"n": 500, "d": 2}),
    ("ksd", {"n": 20_000, "d": 2}),
    ("gumbel_softmax_fwd", {"B": 128, "K": 10}),
    ("gumbel_softmax_fwd", {"B": 20_000, "K": 100}),
    ("gumbel_softmax_bwd", {"B": 128, "K": 10}),
    ("gumbel_softmax_bwd", {"B": 20_000, "K": 100}),
    ("matched_kl_fwd", {"B": 128, "K": 10, "D": 16, "shared_prior": True}),
    (
        "matched_kl_fwd",
        {"B": 100_000, "K": 10, "D": 16, "shared_prior": False},
    ),
    ("matched_kl_bwd", {"B": 128, "K": 10, "D": 16, "shared_prior": True}),
    (
        "matched_kl_bwd",
        {"B": 100_000, "K": 10, "D": 16, "shared_prior": False},
    ),
)


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
    v = torch.cat(
        [s - (2.0 / h) * x, torch.ones(n, 1, dtype=x.dtype, device=x.device)],
        1,
    )
    out = (k * LazyTensor(v[None, :, :])).sum(dim=1)
    return (out[:, :d] + (2.0 / h) * x * out[:, d:]) / n


def _methods(op, device):
    from vaebook import kernels, svgd

    triton_ok = device.type == "cuda" and kernels.triton_available()
    if op == "svgd":
        ms = {
            "blocked": lambda x, s, h: svgd.svgd_direction(x, s, h),
            "dense": lambda x, s, h: svgd.svgd_direction_dense(x, s, h),
        }
        try:
            import pykeops  # noqa: F401

            ms["keops"] = _keops_direction
        except ImportError:
            pass
        if triton_ok:  # pragma: no cover - needs a GPU
            ms["triton"] = lambda x, s, h: kernels.svgd_direction(
                x, s, h, backend="triton"
            )
        return ms
    if op == "gumbel_softmax":
        ms = {
            "torch": lambda lg, g: kernels.gumbel_softmax(
                lg, 0.5, hard=True, gumbel=g, backend="torch"
            )
        }
        if triton_ok:  # pragma: no cover
            ms["triton"] = lambda lg, g: kernels.gumbel_softmax(
                lg, 0.5, hard=True, gumbel=g, backend="triton"
            )
        return ms
    ms = {"torch": lambda *a: kernels.matched_kl(*a, backend="torch")}
    if triton_ok:  # pragma: no cover
        ms["triton"] = lambda *a: kernels.matched_kl(*a, backend="triton")
    return ms


def roofline(
    op: str, *, gpu: dict = H100_SXM, itemsize: int = 4, **size
) -> dict:
    r"""Bytes, flops and the implied time of one call of the Triton kernel ``op`` at ``size`` on ``gpu``.

    Counts (``itemsize`` bytes per number, float32 by default; flops per the kernels' source):

    * ``svgd_direction`` (``n`` particles in ``d`` dimensions): reads :math:`x,s`, writes :math:`\phi`:
      :math:`3nd` numbers; per pair :math:`5d+4` flops (difference, square and sum: :math:`3d`; scale, negate,
      ``exp``: 3; :math:`k_{ij}v_j` accumulated: :math:`2d`; :math:`\sum_jk_{ij}`: 1), plus :math:`3d` per particle.
    * ``ksd`` (row sums of the Stein kernel): reads :math:`x,s`, writes one sum per particle: :math:`2nd+n`
      numbers; :math:`8d+10` flops per pair.
    * ``gumbel_softmax_fwd`` (``B`` rows of ``K``): reads logits and noise, one temperature per row, writes the
      sample: :math:`3BK+B` numbers; 7 flops per entry (add, scale, max, subtract, ``exp``, sum, divide).
    * ``gumbel_softmax_bwd``: reads logits, noise, the incoming gradient and the temperatures, writes the logits'
      and the temperatures' gradients: :math:`4BK+2B` numbers; 14 flops per entry (7 to recompute the sample).
    * ``matched_kl_fwd`` (``B`` rows, ``K`` components, ``D`` dimensions; the prior shared by all rows or one per
      row): reads :math:`(a,m,u)` of q and :math:`(b,n,v)` of p, writes :math:`V`: :math:`B(K+2KD)+B_p(K+2KD)+B`
      numbers with :math:`B_p\in\{1,B\}`; 23 flops per :math:`(b,k,j)` (16 for :math:`e^x-1-x`, whose series and
      ``exp`` branches are both evaluated) and 19 per :math:`(b,k)` (two log-softmaxes, the weighted sum).
    * ``matched_kl_bwd``: reads the six inputs and the incoming gradient, writes six per-row gradients:
      :math:`B(K+2KD)+B_p(K+2KD)+B+2B(K+2KD)` numbers; 36 flops per :math:`(b,k,j)`, 26 per :math:`(b,k)`.

    Returns ``{"op", "size", "bytes", "flops", "memory_us", "compute_us", "us", "bound"}`` with
    ``us = max(memory_us, compute_us)`` and ``bound`` the larger one's name (``"memory"`` or ``"compute"``).
    """
    if op in ("svgd_direction", "ksd"):
        n, d = size["n"], size["d"]
        if op == "svgd_direction":
            numbers, flops = 3 * n * d, n * n * (5 * d + 4) + 3 * n * d
        else:
            numbers, flops = 2 * n * d + n, n * n * (8 * d + 10)
    elif op in ("gumbel_softmax_fwd", "gumbel_softmax_bwd"):
        b, k = size["B"], size["K"]
        numbers, flops = (
            (3 * b * k + b, 7 * b * k)
            if op.endswith("fwd")
            else (4 * b * k + 2 * b, 14 * b * k)
        )
    elif op in ("matched_kl_fwd", "matched_kl_bwd"):
        b, k, d = size["B"], size["K"], size["D"]
        bp = 1 if size.get("shared_prior", True) else b
        row = k + 2 * k * d
        numbers = b * row + bp * row + b
        if op.endswith("fwd"):
            flops = 23 * b * k * d + 19 * b * k
        else:
            numbers += 2 * b * row
            flops = 36 * b * k * d + 26 * b * k
    else:
        raise ValueError(
            "op must be one of svgd_direction, ksd, gumbel_softmax_fwd, "
            "gumbel_softmax_bwd, "
            f"matched_kl_fwd, matched_kl_bwd, got {op!r}"
        )
    nbytes = numbers * itemsize
    mem, comp = 1e6 * nbytes / gpu["bandwidth"], 1e6 * flops / gpu["flops"]
    label = ", ".join(
        f"{k}={v:,}" for k, v in size.items() if k != "shared_prior"
    )
    if "shared_prior" in size:
        label += (
            ", prior shared" if size["shared_prior"] else ", prior per row"
        )
    return {
        "op": op,
        "size": label,
        "bytes": nbytes,
        "flops": flops,
        "memory_us": mem,
        "compute_us": comp,
        "us": max(mem, comp),
        "bound": "memory" if mem >= comp else "compute",
    }


def roofline_estimates(
    sizes=ROOFLINE_SIZES, gpu: dict = H100_SXM
) -> list[dict]:
    """:func:`roofline` for every ``(op, size)`` of ``sizes`` (default: :data:`ROOFLINE_SIZES`) on ``gpu``."""
    return [roofline(op, gpu=gpu, **size) for op, size in sizes]


def format_roofline(rows: list[dict], gpu: dict = H100_SXM) -> str:
    """The estimates as a Markdown table, with the peaks they assume."""
    lines = [
        f"Roofline estimates on an {gpu['name']} ({gpu['note']}); float32; "
        "launch overhead not included.",
        "",
        "| kernel | size | bytes moved | flops | memory time (us) | compute "
        "time (us) | estimate (us) "
        "| bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['size']} | {_si(r['bytes'], 'B')} | "
            f"{_si(r['flops'], 'FLOP')} "
            f"| {r['memory_us']:.3g} | {r['compute_us']:.3g} | {r['us']:.3g} "
            f"| {r['bound']} |"
        )
    return "\n".join(lines)


def _si(v: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


_RSS_CODE = r"""
import json, resource, sys, time, torch
b, k, d = (int(v) for v in sys.argv[1:4])
g = torch.Generator().manual_seed(0)
args = [torch.randn(b, k, generator=g), torch.randn(b, k, d, generator=g), torch.randn(b, k, d, generator=g),
        torch.randn(b, k, generator=g), torch.randn(b, k, d, generator=g), torch.randn(b, k, d, generator=g)]
import vaebook.kernels as kn
kn.matched_kl(*[a[:2] for a in args], backend="torch")  # warm up: imports, allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
kn.matched_kl(*args, backend="torch")
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"inputs_mib": sum(a.numel() * a.element_size() for a in args) / 2**20,
                  "rss_before_mib": before / 1024, "rss_peak_mib": after / 1024,
                  "growth_mib": (after - before) / 1024, "seconds": seconds}))
"""


def matched_reference_rss(b: int = 100_000, k: int = 10, d: int = 16) -> dict:
    """Run the matched-bound reference (``kernels.matched_kl(backend="torch")``, float32, the benchmark's inputs)
    once in a fresh Python process and report how much its peak resident memory grew during the call:
    ``{"inputs_mib", "rss_before_mib", "rss_peak_mib", "growth_mib", "seconds"}`` (``getrusage`` max RSS, Linux
    and macOS; the inputs exist before the call, so ``growth_mib`` is what the call itself needed)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _RSS_CODE, str(b), str(k), str(d)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the RSS measurement failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    quick: bool = False,
    device: str | None = None,
    dense_max: int = 5000,
    max_n: int = 20_000,
    repeats: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Run every benchmark; return one row per (op, size, method): ``{"op", "size", "method", "device",
    "ms", "peak_mib", "note"}`` (``ms``/``peak_mib`` are ``None`` for a skipped method, with the reason in ``note``)."""
    from vaebook.svgd import peak_memory

    dev = torch.device(
        device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    g = torch.Generator().manual_seed(seed)
    rows: list[dict] = []

    def record(op, size, method, fn, args, note="", roof=None):
        _, peak = peak_memory(fn, *args)
        ms = 1e3 * _time(lambda: fn(*args), dev, repeats)
        row = {
            "op": op,
            "size": size,
            "method": method,
            "device": dev.type,
            "ms": round(ms, 3),
            "peak_mib": round(peak / 2**20, 2),
            "note": note,
        }
        if (
            roof is not None and method == "triton" and dev.type == "cuda"
        ):  # pragma: no cover - needs a GPU
            est = roofline(roof[0], **roof[1])
            row["roofline_ms"] = round(est["us"] / 1e3, 4)
            row["note"] = (
                note + "; " if note else ""
            ) + f"H100 roofline {est['us']:.1f} us ({est['bound']})"
        rows.append(row)

    sizes = [200, 500] if quick else [500, 2000, 5000, max_n]
    for n in sizes:
        x = torch.randn(n, 2, generator=g).to(dev)
        s, h = -x, 1.0
        for name, fn in _methods("svgd", dev).items():
            if name == "dense" and n > dense_max:
                rows.append(
                    {
                        "op": "svgd",
                        "size": f"n={n}",
                        "method": name,
                        "device": dev.type,
                        "ms": None,
                        "peak_mib": None,
                        "note": f"skipped: n x n matrix above --dense-max {dense_max}",
                    }
                )
                continue
            record(
                "svgd",
                f"n={n}",
                name,
                fn,
                (x, s, h),
                roof=("svgd_direction", {"n": n, "d": 2}),
            )
    for b, k in [(256, 10)] if quick else [(2000, 10), (20_000, 100)]:
        lg = torch.randn(b, k, generator=g).to(dev)
        gum = -torch.log(
            -torch.log(torch.rand(b, k, generator=g).clamp(1e-10, 1 - 1e-7))
        ).to(dev)
        for name, fn in _methods("gumbel_softmax", dev).items():
            record(
                "gumbel_softmax",
                f"{b}x{k}",
                name,
                fn,
                (lg, gum),
                roof=("gumbel_softmax_fwd", {"B": b, "K": k}),
            )
    for b in [64] if quick else [1000, 100_000]:
        kk, d = 10, 16
        args = [
            torch.randn(b, kk, generator=g),
            torch.randn(b, kk, d, generator=g),
            torch.randn(b, kk, d, generator=g),
            torch.randn(b, kk, generator=g),
            torch.randn(b, kk, d, generator=g),
            torch.randn(b, kk, d, generator=g),
        ]
        args = tuple(a.to(dev) for a in args)
        for name, fn in _methods("matched_kl", dev).items():
            record(
                "matched_kl",
                f"B={b}, K={kk}, D={d}",
                name,
                fn,
                args,
                roof=(
                    "matched_kl_fwd",
                    {"B": b, "K": kk, "D": d, "shared_prior": False},
                ),
            )
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| op | size | method | device | time (ms) | peak memory (MiB) | note "
        "|",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = "-" if r["ms"] is None else f"{r['ms']:.3f}"
        m = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.2f}"
        lines.append(
            f"| {r['op']} | {r['size']} | {r['method']} | {r['device']} | {t} "
            f"| {m} | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vaebook.bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="small sizes (a few seconds)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu or cuda (default: cuda when present)",
    )
    p.add_argument(
        "--dense-max",
        type=int,
        default=5000,
        help="largest n for the dense SVGD (O(n^2) memory)",
    )
    p.add_argument(
        "--max-n", type=int, default=20_000, help="largest n for SVGD"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument(
        "--no-rss",
        action="store_true",
        help="skip the peak-RSS measurement of the matched-bound "
        "reference (a fresh process at the largest size)",
    )
    args = p.parse_args(argv)
    rows = run(
        quick=args.quick,
        device=args.device,
        dense_max=args.dense_max,
        max_n=args.max_n,
        repeats=args.repeats,
    )
    print(format_table(rows))
    if not any(r["method"] == "keops" for r in rows):
        print(
            "\n(keops: not installed; `pip install pykeops` adds it. triton: "
            "only on a CUDA device.)"
        )
    if not args.no_rss:
        b = 64 if args.quick else 100_000
        r = matched_reference_rss(b, 10, 16)
        tensor_peak = [
            x["peak_mib"]
            for x in rows
            if x["op"] == "matched_kl" and x["method"] == "torch"
        ][-1]
        print(
            f"\nmatched-bound reference (PyTorch, float32) at B={b:,}, K=10, "
            f"D=16: inputs {r['inputs_mib']:.1f} MiB; "
            f"peak of the tensors it creates {tensor_peak:.1f} MiB; process "
            "peak RSS grew by "
            f"{r['growth_mib']:.1f} MiB during the call (fresh process, "
            "getrusage)"
        )
        for x in rows:
            x.setdefault("rss", None)
        rows.append(
            {
                "op": "matched_kl",
                "size": f"B={b}, K=10, D=16",
                "method": "torch",
                "device": "cpu",
                "ms": round(1e3 * r["seconds"], 3),
                "peak_mib": None,
                "note": "process RSS",
                "rss": r,
            }
        )
    print("\n" + format_roofline(roofline_estimates()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
