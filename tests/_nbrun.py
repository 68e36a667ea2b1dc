"""Execute a chapter in a fresh kernel with the network forbidden, and reduce its outputs to what a reader sees.

Used by ``test_reproducibility.py``. Three pieces:

* :data:`NETWORK_GUARD`, the source of a cell that is inserted (in memory only, never on disk) before the chapter's
  first cell. It replaces ``socket.socket.connect``/``connect_ex``, ``socket.getaddrinfo`` and
  ``socket.create_connection`` in the kernel by versions that raise ``OSError("network access is forbidden in this
  test: <host>")`` for any address that is not loopback (``127.0.0.0/8``, ``::1``, ``localhost``) and not a Unix
  socket. The kernel's own channels to the client are ZMQ sockets (libzmq, not Python's ``socket``), opened before
  the cell runs, so they are unaffected; loopback stays allowed for anything a chapter legitimately does locally.
* :func:`execute`, which runs the guarded copy with nbclient and returns the executed cells *of the chapter* (the
  guard cell removed, so indices are the chapter's own cell indices).
* :func:`printed` and :func:`normalise`, which keep the printed text of every code cell (stdout, stderr, and the
  ``text/plain``, ``text/markdown`` and ``text/html`` of results and displays) plus the *number* of images per
  cell (not their bytes: matplotlib embeds metadata that need not be byte-stable), and mask only what legitimately
  differs between two runs: wall-clock timings, progress-bar rates, memory addresses and temporary paths.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CELL_TIMEOUT = 300  # seconds per cell, as the book build runs the chapters (_config.yml: execute.timeout)

FORBIDDEN = "network access is forbidden in this test"

NETWORK_GUARD = r'''
# Injected by tests/_nbrun.py (never saved): the chapter must run without the network.
def _vaebook_install_network_guard():
    import ipaddress
    import socket

    msg = "network access is forbidden in this test: {}"

    def loopback_host(host):
        if host is None:                       # getaddrinfo(None, ...): the local (passive) address
            return True
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        host = str(host).strip("[]").split("%")[0]
        if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:                     # a host name other than localhost
            return False

    def check(family, address):
        if family == getattr(socket, "AF_UNIX", object()) or isinstance(address, (str, bytes)):
            return                             # a Unix socket (a path), not the network
        host = address[0] if isinstance(address, tuple) and address else address
        if not loopback_host(host):
            raise OSError(msg.format(host))

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection

    def connect(self, address):
        check(self.family, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not loopback_host(host):
            raise OSError(msg.format(host))
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        check(socket.AF_INET, address)
        return real_create_connection(address, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection


_vaebook_install_network_guard()
del _vaebook_install_network_guard
'''.strip()


def guarded(nb):
    """A copy of ``nb`` with the network guard as its first cell (tagged, so it can be recognised)."""
    nb = copy.deepcopy(nb)
    cell = nbformat.v4.new_code_cell(NETWORK_GUARD, metadata={"tags": ["vaebook-network-guard"]})
    cell.pop("id", None)
    nb.cells.insert(0, cell)
    return nb


def execute(path_or_nb, cwd: Path = BOOK, timeout: int = CELL_TIMEOUT):
    """Execute a notebook (a path, or an nbformat node) in a fresh ``python3`` kernel in ``cwd``, network guarded.

    Returns the executed notebook *without* the guard cell, so cell indices are those of the file. Raises
    ``nbclient.exceptions.CellExecutionError`` if a cell fails (including the guard refusing a connection).
    """
    from vaebook.tooling.nbexec import HardenedNotebookClient as NotebookClient  # no lost wake-ups

    nb = nbformat.read(path_or_nb, as_version=4) if isinstance(path_or_nb, (str, Path)) else path_or_nb
    run = guarded(nb)
    client = NotebookClient(run, kernel_name="python3", timeout=timeout, allow_errors=False,
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    guard = run.cells.pop(0)
    assert "vaebook-network-guard" in guard.metadata.get("tags", [])
    assert not guard.get("outputs"), f"the network guard printed something: {guard.outputs}"
    return run


# --------------------------------------------------------------------------------------------------------------
# What a reader sees, and what may legitimately differ between two runs.

_TIME_UNIT = r"(?:ns|µs|μs|us|ms|s|sec|secs|seconds?|min|mins|minutes?|hours?)"
_NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_CLOCK = r"\d+:\d{2}(?::\d{2})?"
_MASKS = [
    # tqdm's bracket: [00:03<00:12, 14.21it/s], [00:03<?, ?it/s], [01:02, 1.5s/it], [00:03<00:00, 9.1it/s, loss=1.2]
    # (the elapsed time, the remaining time and the rate are masked; a postfix such as loss=1.2 is kept)
    (re.compile(r"\[" + _CLOCK + r"(?:<(?:" + _CLOCK + r"|\?))?,\s*(?:" + _NUMBER + r"|\?)\s*[A-Za-z]*/(?:s|it)"),
     "[<elapsed>"),
    # any rate per second: 14.2it/s, 3,400 samples/s, 1.5 s/it
    (re.compile(_NUMBER + r"\s*(?:it|[A-Za-z]+)/s\b"), "<rate>"),
    (re.compile(_NUMBER + r"\s*s/it\b"), "<rate>"),
    # a number with a time unit: 12.3 s, 84 ms, 950 µs, 3.1s, 2 min
    (re.compile(r"(?<![\w.])" + _NUMBER + r"\s?" + _TIME_UNIT + r"(?![\w/]|\.\w)"), "<time>"),
    # memory addresses and object ids in reprs
    (re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "0x<addr>"),
    # temporary files and folders
    (re.compile(r"(?:/private)?(?:/tmp|/var/folders/[\w/]+?/T)/[\w.\-/]+"), "<tmp>"),
]


def drop_overwritten(text: str) -> str:
    """Terminal semantics of carriage returns: each ``\\r`` returns to the start of the line, and what follows
    overwrites what was there; trailing blanks of such lines are dropped.

    Progress bars (tqdm) redraw themselves with ``\\r`` (and blank themselves out when closed with ``leave=False``):
    only the final state of a line is what a reader sees, and it is still compared.
    """
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            shown = ""
            for segment in line.split("\r"):
                shown = segment + shown[len(segment):]
            line = shown.rstrip()
        lines.append(line)
    return "\n".join(lines)


# A Markdown table column whose header names a time unit ("dense: ms", "blocked: time", "time per pair") holds
# wall-clock timings; its numbers are masked. Other columns ("peak MiB", "ELBO") are compared.
_TIME_HEADER = re.compile(r"(?<![\w.])(?:ns|µs|μs|us|ms|s|sec|seconds?|time|times|timings?)(?![\w.])", re.IGNORECASE)
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _cells(row: str) -> tuple[str, list[str], str]:
    row = row.strip()
    lead = "|" if row.startswith("|") else ""
    trail = "|" if row.endswith("|") and len(row) > 1 else ""
    return lead, row[len(lead):len(row) - len(trail)].split("|"), trail


def mask_timing_columns(text: str) -> str:
    """In Markdown tables, mask the numbers of the columns whose header names a time unit or "time".

    Rows whose number of cells differs from the header's are left as they are (never guess a column).
    """
    lines = text.split("\n")
    i = 0
    while i + 1 < len(lines):
        if "|" in lines[i] and _TABLE_SEPARATOR.match(lines[i + 1]):
            header = _cells(lines[i])[1]
            timed = [j for j, h in enumerate(header) if _TIME_HEADER.search(h)]
            i += 2
            while i < len(lines) and "|" in lines[i]:
                lead, row, trail = _cells(lines[i])
                if timed and len(row) == len(header):
                    for j in timed:
                        row[j] = re.sub(_NUMBER, "<time>", row[j])
                    lines[i] = lead + "|".join(row) + trail
                i += 1
        else:
            i += 1
    return "\n".join(lines)


def normalise(text: str) -> str:
    """Mask wall-clock timings, rates, addresses and temporary paths; keep every other character.

    A timing printed right-aligned (``f"{t:8.1f} µs"``) is padded by as many blanks as its number is short, so the
    blanks in front of a masked timing or rate are collapsed to one.
    """
    text = mask_timing_columns(drop_overwritten(text))
    for pattern, repl in _MASKS:
        text = pattern.sub(repl, text)
    return _PADDED_MASK.sub(r" \1", text)


_PADDED_MASK = re.compile(r"[ \t]{2,}(<time>|<rate>)")


def printed(nb) -> list[dict]:
    """Per code cell: its index in the notebook and what it printed, normalised.

    ``stdout`` and ``stderr`` are each the concatenation of that stream's outputs (how the kernel chunks a stream
    depends on flush timing), ``results`` the text representations of ``execute_result`` and ``display_data``
    outputs in order, ``images`` the number of image outputs. Widget views are represented by their text/plain.
    """
    cells = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        out = {"index": index, "stdout": "", "stderr": "", "results": [], "images": 0}
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out[o.name] += o.text
            elif o.output_type in ("execute_result", "display_data"):
                data = o.get("data", {})
                out["images"] += sum(1 for k in data if k.startswith("image/"))
                texts = {k: normalise(data[k]) for k in ("text/plain", "text/markdown", "text/html") if k in data}
                if texts:
                    out["results"].append(texts)
            elif o.output_type == "error":  # only with allow_errors (execute() raises on an error)
                out["stderr"] += "\n".join(o.get("traceback", []))
        out["stdout"], out["stderr"] = normalise(out["stdout"]), normalise(out["stderr"])
        cells.append(out)
    return cells


def _lines(value) -> list[str]:
    """The lines a diff shows: a stream's lines, each result's representations under a heading, an image count."""
    if isinstance(value, str):
        return value.splitlines()
    if isinstance(value, list):
        lines = []
        for i, texts in enumerate(value):
            for mime, text in texts.items():
                lines += [f"--- result {i}, {mime}:", *text.splitlines()]
        return lines
    return [repr(value)]


def compare(name: str, first: list[dict], second: list[dict], context: int = 3, max_lines: int = 40) -> str | None:
    """``None`` if the two runs printed the same, else a readable report of every differing cell (first lines)."""
    if [c["index"] for c in first] != [c["index"] for c in second]:
        return f"{name}: the two runs have different code cells"
    reports = []
    for a, b in zip(first, second):
        for key in ("stdout", "stderr", "results", "images"):
            if a[key] == b[key]:
                continue
            diff = list(difflib.unified_diff(_lines(a[key]), _lines(b[key]), "run 1", "run 2", n=context,
                                             lineterm=""))
            shown = "\n".join(diff[:max_lines]) + ("\n..." if len(diff) > max_lines else "")
            reports.append(f"{name}, cell {a['index']}, {key}:\n{shown}")
    return "\n\n".join(reports) or None
