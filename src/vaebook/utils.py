"""Small helpers shared by every chapter: seeds, devices, argument checks."""

from __future__ import annotations

import math
import numbers
import os
import random

import numpy as np
import torch

__all__ = [
    "set_seed",
    "get_device",
    "check_finite",
    "check_positive",
    "check_int",
    "check_number",
    "show_source",
]


def set_seed(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a ``torch.Generator`` seeded the same way.

    Chapters call this once in their setup cell, so a chapter run twice prints the same numbers.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.manual_seed_all(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def get_device(prefer: str | None = None) -> torch.device:
    """The device a chapter runs on: ``prefer`` if given, else CUDA when available, else the CPU.

    On a CPU the number of intra-op threads is capped by ``$VAEBOOK_THREADS`` (default: leave torch's choice),
    because on small shared machines one thread is often faster (measure it).
    """
    threads = os.environ.get("VAEBOOK_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    if prefer is not None:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds NaN or infinite values."""
    if not torch.isfinite(t).all():
        raise ValueError(
            f"{name} must be finite (no NaN or inf); got a tensor with "
            "non-finite entries"
        )


def check_positive(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` (a number or tensor) is finite and > 0 everywhere."""
    # numbers in float64: a finite float beyond the float32 range (e.g.
    # 1e300) is not "inf"
    t = (
        value
        if torch.is_tensor(value)
        else torch.as_tensor(value, dtype=torch.float64)
    )
    if not (torch.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int; raise ``ValueError`` naming ``name`` unless it is an int (not a bool) >= ``minimum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_number(
    name: str, value, minimum: float | None = None, strict: bool = False
) -> float:
    """Return ``value`` as a float; raise ``ValueError`` naming ``name`` unless it is a finite real number (not a bool)
    that is ``>= minimum`` (``> minimum`` when ``strict``; no bound when ``minimum`` is None)."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
    )
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        rng = (
            ""
            if minimum is None
            else f" and {'>' if strict else '>='} {minimum}"
        )
        raise ValueError(f"{name} must be a finite number{rng}, got {value!r}")
    return float(value)


def show_source(obj, docstring: bool = False) -> None:
    """Print the source of a library function or class as a chapter shows it (without its docstring by default)."""
    import ast
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(obj))
    if not docstring:
        tree = ast.parse(src)
        node = tree.body[0]
        doc = ast.get_docstring(node, clean=False)
        if (
            doc is not None
            and node.body
            and isinstance(node.body[0], ast.Expr)
        ):
            lines = src.splitlines()
            first, last = node.body[0].lineno - 1, node.body[0].end_lineno
            src = "\n".join(lines[:first] + lines[last:])
    print(src.rstrip())
