"""The optional C helper: whether it was built, and which implementation a process uses.

``ugram._speedups`` is compiled at install time when a C compiler is present (setup.py marks
it optional). Every function in it has a pure-Python twin with the same behaviour (in
:mod:`ugram.ring`, :mod:`ugram.receiver.mmsg`, :mod:`ugram.receiver.intake`,
:mod:`ugram.workers.dispatch` and :mod:`ugram.stats`); the ``speedups`` setting chooses.
"""

from __future__ import annotations

import importlib
from types import ModuleType

API_VERSION = 10  # what this code calls; ugram/_speedups.c says what it provides


def _load() -> ModuleType | None:
    try:
        # By name: a compiled module the import graph (import-linter) cannot read, and an
        # import of the package root would pull in every public name with it.
        _speedups = importlib.import_module("ugram._speedups")
    except ImportError:  # not compiled here: the pure-Python paths serve
        return None
    if getattr(_speedups, "API_VERSION", None) != API_VERSION:
        return None  # a stale build left in place: calling it would go wrong
    return _speedups


NATIVE = _load()


def native(wanted: bool) -> ModuleType | None:
    """The C helper when ``wanted`` and built, else None (use the Python paths)."""
    return NATIVE if wanted else None


def describe(wanted: bool) -> str:
    """One line for logs and ``ugram doctor``: which per-datagram loops run."""
    if not wanted:
        return "pure Python (speedups = false)"
    if NATIVE is None:
        return (
            "pure Python (ugram._speedups is missing or stale: no C compiler at install time, "
            "or ugram was updated without reinstalling)"
        )
    return "compiled (ugram._speedups)"
