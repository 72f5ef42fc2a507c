"""Measure the package's shape: code lines per module and class, function lengths, imports.

    python tools/archcheck.py            # prints the table and the verdict; exit 1 on a miss

Code lines are non-blank lines that are neither comments nor docstrings. The targets are the
ones docs/architecture.md states; tests/unit/test_architecture.py asserts the same.
"""

from __future__ import annotations

import ast
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ugram"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300
MAX_MEDIAN_FUNCTION_LINES = 10


@dataclass
class Module:
    """One module's measures."""

    path: Path
    code_lines: int
    classes: dict[str, int] = field(default_factory=dict)
    functions: list[int] = field(default_factory=list)


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def measure(path: Path) -> Module:
    """Count ``path``'s code lines, and those of each class and function in it."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    docs = _docstring_lines(tree)
    code = {
        number
        for number, line in enumerate(source.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and number not in docs
    }
    module = Module(path, len(code))
    for node in ast.walk(tree):
        span = range(getattr(node, "lineno", 0), (getattr(node, "end_lineno", 0) or 0) + 1)
        if isinstance(node, ast.ClassDef):
            module.classes[node.name] = sum(1 for n in span if n in code)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            module.functions.append(sum(1 for n in span if n in code))
    return module


def measure_package(root: Path = PACKAGE) -> list[Module]:
    """Every module of the package, measured."""
    return [measure(path) for path in sorted(root.rglob("*.py"))]


def problems(modules: list[Module]) -> list[str]:
    """What misses a target, one line each (empty: every target met)."""
    found = [
        f"{m.path.relative_to(PACKAGE.parent)}: {m.code_lines} code lines (> {MAX_MODULE_LINES})"
        for m in modules
        if m.code_lines > MAX_MODULE_LINES
    ]
    found += [
        f"{m.path.relative_to(PACKAGE.parent)}: class {name} has {n} code lines "
        f"(> {MAX_CLASS_LINES})"
        for m in modules
        for name, n in m.classes.items()
        if n > MAX_CLASS_LINES
    ]
    median = statistics.median(n for m in modules for n in m.functions)
    if median > MAX_MEDIAN_FUNCTION_LINES:
        found.append(f"median function length {median} (> {MAX_MEDIAN_FUNCTION_LINES})")
    return found


def main() -> int:
    """Print the largest modules, the function-length median and the verdict."""
    modules = measure_package()
    for m in sorted(modules, key=lambda m: -m.code_lines)[:12]:
        print(f"{m.code_lines:5d}  {m.path.relative_to(PACKAGE.parent)}")
    lengths = [n for m in modules for n in m.functions]
    total = sum(m.code_lines for m in modules)
    print(f"{len(modules)} modules, {total} code lines, {len(lengths)} functions")
    print(f"median function length: {statistics.median(lengths)} code lines")
    missed = problems(modules)
    for line in missed:
        print("MISS", line)
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
