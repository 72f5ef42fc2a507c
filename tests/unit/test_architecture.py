"""The package keeps the shape docs/architecture.md describes (measured by tools/archcheck.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("archcheck", ROOT / "tools" / "archcheck.py")
assert _spec is not None
assert _spec.loader is not None
archcheck = importlib.util.module_from_spec(_spec)
sys.modules["archcheck"] = archcheck  # dataclasses look their module up by name
_spec.loader.exec_module(archcheck)


def test_modules_classes_and_functions_stay_small() -> None:
    assert archcheck.problems(archcheck.measure_package()) == []


def test_the_measure_counts_code_not_comments_or_docstrings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Doc."""\n\n# a comment\nx = 1\n\n\ndef f():\n    """Doc."""\n    return x\n'
    )
    module = archcheck.measure(sample)
    assert module.code_lines == 3  # x = 1, def f():, return x
    assert module.functions == [2]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_no_import_goes_up_a_layer_or_round_a_cycle() -> None:
    done = subprocess.run(
        ["lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
