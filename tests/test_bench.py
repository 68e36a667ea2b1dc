"""The benchmark command (python -m vaebook.bench) runs and reports sensible numbers."""
import json

import pytest
import torch

from vaebook.tooling import bench


def test_quick_benchmark_rows_and_memory_ordering():
    rows = bench.run(quick=True, repeats=1)
    ops = {r["op"] for r in rows}
    assert ops == {"svgd", "gumbel_softmax", "matched_kl"}
    for r in rows:
        assert r["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert r["ms"] is not None and r["ms"] > 0 and r["peak_mib"] >= 0
    # the blocked SVGD never builds the n x n matrix: less memory than the dense one at every size
    for size in ("n=200", "n=500"):
        mem = {r["method"]: r["peak_mib"] for r in rows if r["op"] == "svgd" and r["size"] == size}
        assert mem["blocked"] < mem["dense"]


def test_dense_is_skipped_above_the_limit_and_cli_writes_json(tmp_path, capsys):
    rows = bench.run(quick=True, repeats=1, dense_max=300)
    skipped = [r for r in rows if r["method"] == "dense" and r["ms"] is None]
    assert [r["size"] for r in skipped] == ["n=500"] and "dense-max" in skipped[0]["note"]
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--repeats", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| op | size | method |") and "blocked" in table
    assert "matched-bound reference (PyTorch, float32) at B=64, K=10, D=16" in table and "process peak RSS" in table
    assert "Roofline estimates on an NVIDIA H100 SXM5 (3.35 TB/s HBM3; 67 TFLOP/s FP32" in table
    saved = json.loads(out.read_text())
    assert len(saved) == len(rows) + 1 and saved[-1]["rss"]["growth_mib"] >= 0  # + the RSS measurement


def test_keops_formula_matches_the_reference_when_installed():
    import pytest

    pytest.importorskip("pykeops")
    from vaebook.svgd import svgd_direction

    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bench._keops_direction(x, -x, 0.7), svgd_direction(x, -x, 0.7),
                               rtol=1e-4, atol=1e-5)


def test_roofline_arithmetic_by_hand():
    # matched bound, forward, B = 100,000 rows, K = 10, D = 16, a prior per row, float32:
    # numbers moved = 2 B (K + 2 K D) + B = 2 * 100,000 * 330 + 100,000 = 66,100,000 -> 264,400,000 bytes;
    # 264.4e6 B / 3.35e12 B/s = 78.925 us; flops = 23 B K D + 19 B K = 368e6 + 19e6 = 387e6 -> / 67e12 = 5.776 us
    r = bench.roofline("matched_kl_fwd", B=100_000, K=10, D=16, shared_prior=False)
    assert r["bytes"] == 264_400_000 and r["flops"] == 387_000_000
    assert abs(r["memory_us"] - 78.925373) < 1e-5 and abs(r["compute_us"] - 5.776119) < 1e-5
    assert r["us"] == r["memory_us"] and r["bound"] == "memory"
    # SVGD direction, n = 20,000 particles in 2-D: 3 n d = 120,000 numbers = 480,000 bytes (0.1433 us);
    # n^2 (5 d + 4) + 3 n d = 5,600,120,000 flops -> 83.584 us: compute-bound
    r = bench.roofline("svgd_direction", n=20_000, d=2)
    assert r["bytes"] == 480_000 and r["flops"] == 5_600_120_000 and r["bound"] == "compute"
    assert abs(r["us"] - 83.58388) < 1e-4 and abs(r["memory_us"] - 0.143284) < 1e-5
    assert bench.H100_SXM["bandwidth"] == 3.35e12 and bench.H100_SXM["flops"] == 67e12
    rows = bench.roofline_estimates()
    assert {r["op"] for r in rows} == {"svgd_direction", "ksd", "gumbel_softmax_fwd", "gumbel_softmax_bwd",
                                       "matched_kl_fwd", "matched_kl_bwd"}
    assert all(r["us"] == max(r["memory_us"], r["compute_us"]) > 0 for r in rows)
    with pytest.raises(ValueError, match="op must be one of"):
        bench.roofline("conv2d", n=1)


def test_matched_reference_rss_is_measured_in_a_fresh_process():
    r = bench.matched_reference_rss(256, 10, 16)
    assert set(r) == {"inputs_mib", "rss_before_mib", "rss_peak_mib", "growth_mib", "seconds"}
    assert abs(r["inputs_mib"] - (2 * 256 * 10 + 4 * 256 * 10 * 16) * 4 / 2**20) < 1e-9
    assert r["rss_peak_mib"] >= r["rss_before_mib"] > 0 and r["growth_mib"] >= 0
