"""Each process imports only what its role needs (issue #14, lean processes).

A receiver or worker process starts as ``python -m ugram.receiver`` / ``-m ugram.workers``:
what its entry module imports is what every such process holds in memory before the
handler is imported. Each check runs in a fresh interpreter, as the process does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import child_env

# Loaded by no child process: the sender side, the supervisor and what only it runs.
NO_CHILD_NEEDS = {
    "ugram.cli",
    "ugram.client",
    "ugram.control",
    "ugram.doctor",
    "ugram.metrics",
    "ugram.observe",
    "ugram.supervisor",
    "ugram.testing",
    "prometheus_client",
}
ROLES = {
    # A worker: its loop, the ring, the handler loader; no event loop, no recvmmsg.
    "ugram.workers.__main__": NO_CHILD_NEEDS
    | {"asyncio", "uvloop", "ctypes", "psutil", "ugram.receiver", "ugram.sockets"},
    # The receiver: its loop and the rings; no handler loading, no codecs.
    "ugram.receiver.__main__": NO_CHILD_NEEDS
    | {"psutil", "ugram.workers", "ugram.codecs", "ugram.datagram", "ugram.sockets"},
    # The package alone: the public names are imported when first used.
    "ugram": NO_CHILD_NEEDS | {"asyncio", "msgspec", "ugram.config", "ugram.workers"},
}


def modules_after_import(module: str, then: str = "") -> set[str]:
    """The modules a fresh interpreter holds after ``import module`` (and ``then``)."""
    code = f"import sys, json, {module}\n{then}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("module", sorted(ROLES))
def test_role_imports_only_what_it_needs(module: str) -> None:
    loaded = modules_after_import(module)
    assert module in loaded
    assert sorted(ROLES[module] & loaded) == []


def test_public_names_resolve_on_first_use() -> None:
    """``ugram.X`` and ``from ugram import *`` still give every public name."""
    code = (
        "import ugram\n"
        "assert ugram.Client is __import__('ugram.client').client.Client\n"
        "assert ugram.Supervisor.__module__.startswith('ugram.supervisor')\n"
        "ns = {}\n"
        "exec('from ugram import *', ns)\n"
        "assert sorted(set(ns) - {'__builtins__'}) == sorted(ugram.__all__), ns\n"
        "assert set(ugram.__all__) <= set(dir(ugram))\n"
        "assert ugram.config.make_config is ugram.make_config\n"  # a submodule, unimported
        "assert ugram.testing.__name__ == 'ugram.testing'\n"
    )
    loaded = modules_after_import("ugram", code)
    assert {"ugram.client", "ugram.supervisor", "ugram.testing"} <= loaded


def test_unknown_name_is_an_attribute_error() -> None:
    import ugram

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        ugram.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
