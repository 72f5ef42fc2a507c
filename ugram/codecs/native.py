"""The codecs' compiled parsers (``ugram._parsers``), when built.

Each is a twin of a pure-Python parser, which stays the reference: the compiled one gives the
same answer or hands the payload to the reference where it is not sure to (see
ugram/_parsers.c). The ``speedups`` setting chooses, as for the receiver's and workers' loops.
"""

from __future__ import annotations

import importlib
from types import ModuleType

API_VERSION = 1  # what this code calls; ugram/_parsers.c says what it provides


def _load() -> ModuleType | None:
    try:
        # By name: a compiled module the import graph (import-linter) cannot read.
        parsers = importlib.import_module("ugram._parsers")
    except ImportError:  # not compiled here: the pure-Python parsers serve
        return None
    if getattr(parsers, "API_VERSION", None) != API_VERSION:
        return None  # a stale build left in place: calling it would go wrong
    return parsers


PARSERS = _load()


def parsers(wanted: bool) -> ModuleType | None:
    """The compiled parsers when ``wanted`` (the ``speedups`` setting) and built, else None."""
    return PARSERS if wanted else None
