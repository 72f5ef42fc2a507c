"""The chaos soak's command-line options: ``--chaos-seconds N`` (flood length per seed) and
``--chaos-seed S`` (replay one seed instead of the fixed CI seeds).

A plugin that tests/conftest.py loads, not tests/chaos/conftest.py: pytest reads a
directory's conftest only once it collects there, after the command line was parsed, so
``pytest --chaos-seed 5`` (no path) would be refused as an unknown option.
"""

from __future__ import annotations

import pytest

CI_SEEDS = (9, 26)
CI_SECONDS = 6.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "ugram chaos soak (tests/chaos)")
    group.addoption(
        "--chaos-seconds",
        type=float,
        default=CI_SECONDS,
        help=f"seconds of flood and faults per seed before SIGTERM (default {CI_SECONDS:g})",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help=f"run this one seed instead of the CI seeds {', '.join(map(str, CI_SEEDS))}",
    )
