"""Run notebook cells the way a Colab kernel runs them; a helper of tests/test_colab.py, not a test module.

Usage: ``python _colab_runner.py OUT.json [--flags=F,...] CELL.py [CELL.py ...] [--flags=... CELL.py ...]`` with the
interpreter of the simulated runtime. ``--flags`` applies to the cells after it; the flags are

* ``stub``: a stub ``google.colab`` module is in ``sys.modules`` during the cell, as in a Colab kernel (and absent
  otherwise);
* ``block``: refuse to start pip (the audit hook records the call, then raises), so that nothing gets installed;
* ``reset``: after the cell, put the runtime's site-packages back as it was before the first cell (delete what the
  cell installed there) and forget the modules imported from there, so that the next cell installs from a clean
  state.

The cells run, unmodified, one after the other in one IPython ``InteractiveShell`` (magics would work as in a
notebook), cwd being the caller's. An audit hook records every process the cells start. OUT.json holds, per cell:
its flags, success, error and output, the processes it started, the files of the runtime's site-packages and where
the watched packages would be imported from, before and after the cell, and the watched modules it left imported.
"""
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import sysconfig
import types

WATCHED = ("vaebook", "torch", "numpy", "matplotlib", "tqdm", "scipy", "IPython", "ipywidgets", "pip")
_PROCESS_EVENTS = {  # audit event -> index of its argv (or command string) in the event's arguments
    "subprocess.Popen": 1, "os.system": 0, "os.exec": 1, "os.posix_spawn": 1, "os.spawn": 2,
}
_PIP = re.compile(r"\b(ensure)?pip3?\b")  # "python -m pip ...", ".../bin/pip3 install ...", "python -m ensurepip"


class Blocked(RuntimeError):
    """Raised by the audit hook in place of starting a process (flag ``block``)."""


def _strs(x):
    if isinstance(x, (str, bytes, os.PathLike)):
        return [os.fsdecode(x)]
    return [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in x]


def _where():
    out = {}
    for name in WATCHED:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        dists = [{"version": d.version, "location": str(d.locate_file(""))}
                 for d in importlib.metadata.distributions(name=name)]
        out[name] = {"origin": spec.origin if spec else None, "dists": dists}
    return out


class _Tee(io.TextIOBase):
    def __init__(self, stream):
        self.stream, self.buf = stream, io.StringIO()

    def write(self, text):
        self.buf.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def _files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            st = os.stat(p)
            out[os.path.relpath(p, folder).replace(os.sep, "/")] = [st.st_size, st.st_mtime_ns]
    return out


def _reset(site, initial):
    """Delete what is in ``site`` but not in ``initial``; forget the modules imported from ``site``."""
    keep = {k.split("/")[0] for k in initial}
    for name in os.listdir(site):
        if name not in keep:
            p = os.path.join(site, name)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    root = os.path.realpath(site) + os.sep
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and os.path.realpath(f).startswith(root):
            del sys.modules[name]
    importlib.invalidate_caches()


def _set_stub(on):
    """Put a stub ``google.colab`` in ``sys.modules`` (``on``), or take it out."""
    google = sys.modules.get("google")
    if not on:
        sys.modules.pop("google.colab", None)
        if google is not None and hasattr(google, "colab"):
            del google.colab
        return
    if "google.colab" in sys.modules:
        return
    if google is None:
        try:
            import google  # a real namespace package (e.g. protobuf's) stays usable
        except ImportError:
            google = types.ModuleType("google")
            google.__path__ = []
            sys.modules["google"] = google
    colab = types.ModuleType("google.colab")
    colab.__doc__ = "stub of Colab's google.colab, installed by tests/_colab_runner.py"
    sys.modules["google.colab"] = google.colab = colab


def main():
    out_path, *args = sys.argv[1:]
    sys.path[0] = ""  # as in a kernel: the working directory, not this file's folder
    events, flags, cells = [], set(), []
    for a in args:
        if a.startswith("--flags="):
            flags = set(filter(None, a.removeprefix("--flags=").split(",")))
        else:
            cells.append((a, flags))
    current = {"flags": set()}

    def hook(event, args):
        if event in _PROCESS_EVENTS:
            argv = _strs(args[_PROCESS_EVENTS[event]])
            pip = bool(_PIP.search(" ".join(argv)))
            events.append({"event": event, "argv": argv, "pip": pip})
            if pip and "block" in current["flags"]:
                raise Blocked(f"the test harness blocked {' '.join(argv)}")

    site = sysconfig.get_paths()["purelib"]
    initial = _files(site)
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    sys.addaudithook(hook)  # from here on: only the cells' processes are recorded
    results = []
    for path, flags in cells:
        with open(path) as f:
            src = f.read()
        current["flags"] = flags
        _set_stub("stub" in flags)
        n0 = len(events)
        record = {"cell": path, "flags": sorted(flags), "site_before": _files(site), "before": _where()}
        tee, stdout = _Tee(sys.stdout), sys.stdout
        sys.stdout = tee
        try:
            r = shell.run_cell(src, store_history=False)
        finally:
            sys.stdout = stdout
        err = r.error_before_exec or r.error_in_exec
        record.update(success=bool(r.success), error=repr(err) if err else None, output=tee.buf.getvalue(),
                      events=events[n0:], site_after=_files(site), after=_where(),
                      modules={name: {"file": getattr(sys.modules[name], "__file__", None),
                                      "version": str(getattr(sys.modules[name], "__version__", None))}
                               for name in WATCHED if name in sys.modules})
        if "reset" in flags:
            _reset(site, initial)
            now = _files(site)
            record["reset_left"] = sorted(k for k in set(now) | set(initial) if now.get(k) != initial.get(k))
        results.append(record)
        sys.stdout.flush()
    report = {"executable": sys.executable, "prefix": sys.prefix, "site": site, "cells": results}
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
