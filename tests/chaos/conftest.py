"""The chaos soak's seeds and length, from ``--chaos-seed`` and ``--chaos-seconds``
(declared in tests/chaos/options.py)."""

from __future__ import annotations

import pytest

from tests.chaos.options import CI_SEEDS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chaos_seed" in metafunc.fixturenames:
        seed = metafunc.config.getoption("--chaos-seed")
        metafunc.parametrize("chaos_seed", CI_SEEDS if seed is None else (seed,))


@pytest.fixture
def chaos_seconds(request: pytest.FixtureRequest) -> float:
    """How long each seed floods before SIGTERM (``--chaos-seconds``)."""
    return float(request.config.getoption("--chaos-seconds"))
