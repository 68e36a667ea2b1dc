"""The ``@covers`` registry shared by the property and gradcheck tests (read statically by test_public_api.py)."""
from __future__ import annotations


def registry():
    """A fresh ``(COVERS, covers)`` pair: ``@covers("module.name", ...)`` records, under the test's name, the public
    functions / classes it exercises (names relative to ``vaebook``) in the dict ``COVERS``."""
    covered: dict[str, tuple[str, ...]] = {}

    def covers(*names: str):
        def deco(fn):
            covered[fn.__name__] = names
            return fn
        return deco

    return covered, covers
