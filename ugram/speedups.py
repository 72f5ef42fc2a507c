"""The optional C helper: whether it was built, and which implementation a process uses.

``ugram._speedups`` is compiled at install time when a C compiler is present (setup.py marks
it optional). Every function in it has a pure-Python twin in :mod:`ugram.ring` and
:mod:`ugram.receiver.mmsg` with the same behaviour; the ``speedups`` setting chooses.
"""

from __future__ import annotations

from types import ModuleType


def _load() -> ModuleType | None:
    try:
        from ugram import _speedups
    except ImportError:  # not compiled here: the pure-Python paths serve
        return None
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
        return "pure Python (ugram._speedups was not built: no C compiler at install time?)"
    return "compiled (ugram._speedups)"
