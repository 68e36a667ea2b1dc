"""The benchmark command (python -m vaebook.bench) runs and reports sensible numbers."""
import json

import torch

from vaebook import bench


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
    assert len(json.loads(out.read_text())) == len(rows)


def test_keops_formula_matches_the_reference_when_installed():
    import pytest

    pytest.importorskip("pykeops")
    from vaebook.svgd import svgd_direction

    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bench._keops_direction(x, -x, 0.7), svgd_direction(x, -x, 0.7),
                               rtol=1e-4, atol=1e-5)
