"""Reproducibility and offline execution of the chapters.

Every chapter seeds its random number generators, so executing it twice must print the same numbers: each chapter
is executed twice, each time in a fresh ``python3`` kernel in ``book/`` (nbclient, 300 s per cell), and what it
printed is compared cell by cell -- stdout, stderr, and the ``text/plain``, ``text/markdown`` and ``text/html`` of
every result and display, plus the number of images per cell (not the image bytes, which carry matplotlib
metadata). Only wall-clock timings, progress-bar rates, memory addresses and temporary paths are masked (see
``_nbrun.normalise`` and its tests below); any other difference fails with the chapter, the cell index and a diff.

Both executions also prove that a chapter never needs the network: a cell inserted before the chapter (in memory,
never on disk) makes every non-loopback connection and name lookup raise ``OSError("network access is forbidden in
this test: <host>")``, so a chapter that tries to download anything fails here. The guard itself is tested on two
tiny notebooks.

The two executions of each chapter are the items ``book/<chapter>.ipynb::runs`` and ``::prints the same twice``
(``tests/_chapter_runs.py``, loaded by the root ``conftest.py``); this file tests the pieces they use: the
normaliser, the comparison and the network guard.
"""
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nbrun  # noqa: E402



def _fake_cell(**outputs):
    cell = {"index": 7, "stdout": "", "stderr": "", "results": [], "images": 0}
    cell.update(outputs)
    return cell


# ---------------------------------------------------------------------------------------------------------------
# The normaliser masks what legitimately varies, and nothing else.

@pytest.mark.parametrize("text, expected", [
    ("epoch 3: 12.3 s", "epoch 3: <time>"),
    ("dense SVGD reference, 100 particles: 0.84 ms", "dense SVGD reference, 100 particles: <time>"),
    ("| matched | upper | 1,234 µs |", "| matched | upper | <time> |"),
    ("trained in 95s; 3 min in total", "trained in <time>; <time> in total"),
    ("last 5 steps 171.3 nats; 4.2 s", "last 5 steps 171.3 nats; <time>"),
    ("100%|##########| 50/50 [00:03<00:00, 14.21it/s]", "100%|##########| 50/50 [<elapsed>]"),
    ("epoch 1:  40%|####      | 2/5 [00:01<00:02,  1.52s/it]", "epoch 1:  40%|####      | 2/5 [<elapsed>]"),
    ("throughput 3,400 samples/s", "throughput <rate>"),
    ("<vaebook.models.VAE object at 0x7f3a2b4c5d60>", "<vaebook.models.VAE object at 0x<addr>>"),
    ("saved to /tmp/tmpk2j4_x9a/vae.pt", "saved to <tmp>"),
])
def test_normalise_masks_timings_rates_addresses_and_temp_paths(text, expected):
    assert _nbrun.normalise(text) == expected


@pytest.mark.parametrize("text", [
    "test ELBO -103.40 nats",
    "ELBO, k = 1: -103.40 ± 0.85",
    "KL per sequence 12.35 nats; rows 1-4 and 25-28: 0.41 nats",
    "d = 2: all bounds hold on 100 pairs; mean MC s.e. 0.012",
    "| 1,000 | 0.1234 | 5e-03 | 1.0e+02 |",
    "tau 0.5: 0.1234, tau 1: -0.0012",
    "train: (20000, 1, 28, 28), grey levels",
    "epoch 15 elbo -140.2 val_elbo -139.8",
    "first step 543.2, last 5 steps 201.7 nats",
    "mean over 4 s.e. of 10 samples and 5 seeds; 3 heads",  # units only count as whole words
    "seed 0x1F",            # short hex is not an address
])
def test_normalise_keeps_every_other_number(text):
    assert _nbrun.normalise(text) == text


def test_normalise_ignores_the_padding_of_right_aligned_timings():
    a = "        exact relaxed KL:  12.3 µs\n   bound (recab):    8.1 µs"
    b = "        exact relaxed KL: 123.4 µs\n   bound (recab):   18.0 µs"
    assert _nbrun.normalise(a) == _nbrun.normalise(b) == ("        exact relaxed KL: <time>\n"
                                                          "   bound (recab): <time>")
    # leading indentation and the blanks between other fields are kept
    assert _nbrun.normalise("   KL  1.25  12.3 ms") == "   KL  1.25 <time>"


def test_normalise_keeps_the_final_state_of_a_redrawn_line():
    bar = "\r  0%|          | 0/3 [00:00<?, ?it/s]\r 67%|######6   | 2/3 [00:01<00:00, 1.9it/s, loss=101.25]"
    assert _nbrun.normalise(bar + "\nELBO -99.5\n") == " 67%|######6   | 2/3 [<elapsed>, loss=101.25]\nELBO -99.5\n"
    # the final state is compared, postfix included
    assert _nbrun.normalise(bar) != _nbrun.normalise(bar.replace("101.25]", "101.26]"))
    assert _nbrun.normalise("\rstep 1\rstep 2") != _nbrun.normalise("\rstep 1\rstep 3")
    # a bar that clears itself when closed (leave=False) leaves an empty line, whatever its width was
    assert _nbrun.normalise(bar + "\r" + " " * 61 + "\r") == _nbrun.normalise("\r" + " " * 40 + "\r") == ""


def test_normalise_masks_only_the_timing_columns_of_a_markdown_table():
    table = ("**Scaling**\n\n| n (d = 2) | dense: ms | dense: peak MiB | ELBO | time per pair |\n|---|---|---|---|---|\n"
             "| 1000 | 8.4 | 15.3 | -103.40 | 1,234 |\n| 2000 | 68.2 | 61.1 | -99.87 | 5 |\n\nafter the table: 3.5")
    expected = ("**Scaling**\n\n| n (d = 2) | dense: ms | dense: peak MiB | ELBO | time per pair |\n|---|---|---|---|---|\n"
                "| 1000 | <time> | 15.3 | -103.40 | <time> |\n| 2000 | <time> | 61.1 | -99.87 | <time> |\n\n"
                "after the table: 3.5")
    assert _nbrun.normalise(table) == expected
    # a table without a timing column is left alone, and so is a row whose cells do not line up with the header
    plain = "| method | bound? | d=2, K=3 | s.e. |\n|---|---|---|---|\n| matched | upper | +2.44 (2.44) | 0.01 |"
    assert _nbrun.normalise(plain) == plain
    ragged = "| n | ms |\n|---|---|\n| 1 | 2 | 3 |"
    assert _nbrun.normalise(ragged) == ragged


def test_compare_reports_chapter_cell_and_the_differing_line():
    a = [_fake_cell(stdout="epoch 1 elbo -103.40 (2.1 s)\nepoch 2 elbo -99.00 (2.0 s)\n")]
    b = [_fake_cell(stdout="epoch 1 elbo -103.40 (2.4 s)\nepoch 2 elbo -99.01 (1.9 s)\n")]
    for cells in (a, b):
        cells[0]["stdout"] = _nbrun.normalise(cells[0]["stdout"])
    report = _nbrun.compare("chX.ipynb", a, b)
    assert report is not None
    assert "chX.ipynb, cell 7, stdout" in report
    assert "-epoch 2 elbo -99.00 (<time>)" in report and "+epoch 2 elbo -99.01 (<time>)" in report
    assert _nbrun.compare("chX.ipynb", a, a) is None


def test_compare_checks_results_and_image_counts():
    table = {"text/markdown": "| a | 1.25 |"}
    a = [_fake_cell(results=[table], images=1)]
    assert _nbrun.compare("c", a, [_fake_cell(results=[{"text/markdown": "| a | 1.26 |"}], images=1)])
    assert _nbrun.compare("c", a, [_fake_cell(results=[table], images=2)])
    assert _nbrun.compare("c", a, [_fake_cell(results=[table], images=1)]) is None


# ---------------------------------------------------------------------------------------------------------------
# The network guard.

def _tiny(*sources):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_network_guard_refuses_a_download():
    from nbclient.exceptions import CellExecutionError

    nb = _tiny('import urllib.request\nurllib.request.urlopen("http://example.com", timeout=5)')
    with pytest.raises(CellExecutionError, match=f"{_nbrun.FORBIDDEN}: example.com"):
        _nbrun.execute(nb)


def test_network_guard_allows_loopback_and_refuses_other_addresses():
    nb = _tiny(
        """\
import socket, threading
server = socket.create_server(("127.0.0.1", 0))
port = server.getsockname()[1]
threading.Thread(target=lambda: server.accept()[0].sendall(b"hi"), daemon=True).start()
with socket.create_connection(("localhost", port), timeout=10) as c:
    print("loopback:", c.recv(2).decode())
server.close()""",
        """\
import socket
for call in (lambda s: s.connect(("192.0.2.1", 80)), lambda s: s.connect_ex(("192.0.2.1", 80)),
             lambda s: socket.getaddrinfo("example.com", 80),
             lambda s: socket.create_connection(("example.com", 80))):
    with socket.socket() as s:
        try:
            call(s)
        except OSError as e:
            print(e)""")
    cells = _nbrun.printed(_nbrun.execute(nb))
    assert cells[0]["stdout"] == "loopback: hi\n" and not cells[0]["stderr"]
    assert cells[1]["stdout"].splitlines() == [f"{_nbrun.FORBIDDEN}: 192.0.2.1"] * 2 + [
        f"{_nbrun.FORBIDDEN}: example.com"] * 2


# ---------------------------------------------------------------------------------------------------------------
# How the chapters are collected (tests/_chapter_runs.py): three items per chapter, no nbval unless asked for.

def _collect(*args):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", *args],
                          cwd=_nbrun.ROOT, capture_output=True, text=True, timeout=120)
    return [ln for ln in proc.stdout.splitlines() if "::" in ln], proc


def test_each_chapter_is_collected_as_two_runs_and_a_reference_grade():
    chapters = sorted(_nbrun.BOOK.glob("*.ipynb"))
    items, proc = _collect("book")
    assert len(chapters) >= 10
    from vaebook import results

    with_rows = {r.chapter for r in results.ROWS}
    expected = [f"book/{c.name}::{name}" for c in chapters
                for name in ("runs", "prints the same twice", "reference earns full marks")
                + (("shows the shipped numbers",) if c.name[:4] in with_rows else ())]
    assert items == expected, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sum("shows the shipped numbers" in i for i in items) == len(with_rows) == 8


def test_nbval_still_collects_the_chapters_when_asked_for():
    items, proc = _collect("--nbval-lax", "book/ch01_vae.ipynb")
    assert items and all(i.startswith("book/ch01_vae.ipynb::Cell ") for i in items), proc.stdout[-3000:]


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (4, 2, 1), (2, 8, 4), (1, None, 1)])
def test_torch_threads_per_worker(workers, cores, threads):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_vaebook_root_conftest", _nbrun.ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)

    assert root_conftest.worker_threads(workers, cores) == threads
