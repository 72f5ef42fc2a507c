"""The optional C helper: whether it was built, and which implementation a process uses.

``ugram._speedups`` is compiled at install time when a C compiler is present (setup.py marks
it optional). Every function in it has a pure-Python twin with the same behaviour (in
:mod:`ugram.ring`, :mod:`ugram.receiver.mmsg`, :mod:`ugram.receiver.intake`,
:mod:`ugram.workers.dispatch` and :mod:`ugram.stats`); the ``speedups`` setting chooses.
"""

from __future__ import annotations

import importlib
from types import ModuleType

API_VERSION = 12  # what this code calls; ugram/_speedups.c says what it provides

_MISSING = "built"  # why NATIVE is None (see missing_reason)


def _load() -> ModuleType | None:
    global _MISSING
    try:
        # By name: a compiled module the import graph (import-linter) cannot read, and an
        # import of the package root would pull in every public name with it.
        _speedups = importlib.import_module("ugram._speedups")
    except ImportError as exc:  # not compiled here: the pure-Python paths serve
        _MISSING = (
            "not built (no C compiler or Python headers at install time)"
            if isinstance(exc, ModuleNotFoundError)
            else f"not loadable ({exc})"
        )
        return None
    version = getattr(_speedups, "API_VERSION", None)
    if version != API_VERSION:
        # A stale build left in place: calling it would go wrong.
        _MISSING = f"stale (built for API {version}, this ugram needs {API_VERSION})"
        return None
    return _speedups


NATIVE = _load()


def native(wanted: bool) -> ModuleType | None:
    """The C helper when ``wanted`` and built, else None (use the Python paths)."""
    return NATIVE if wanted else None


def missing_reason() -> str:
    """Why the C helper is not in use: "not built (...)", "stale (...)", or "built"."""
    return _MISSING


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
