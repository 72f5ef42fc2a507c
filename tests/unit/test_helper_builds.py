"""The compiled helper builds where ugram runs: gcc and clang, Linux, and macOS as far as a
Linux machine can tell.

No macOS SDK is here, so for macOS two things are checked: the helper compiles with every
Linux-only name (recvmmsg, struct mmsghdr, SCM_CREDENTIALS, struct ucred, ...) poisoned and
``__linux__`` undefined, which is what its ``#ifdef __linux__`` guards must make possible;
and its memory-ordering primitives (ugram/_ordering.h, no system header needed) compile
for both halves of a universal2 wheel, arm64 and x86-64 macOS, to release stores, acquire
loads and a full fence. Each check is skipped without its compiler.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCE = REPO / "ugram/_speedups.c"
PARSERS = REPO / "ugram/_parsers.c"  # portable C and Python's API alone: no guards needed
INCLUDE = sysconfig.get_paths()["include"]
# What _speedups.c includes, then every Linux-only name it must keep inside its guards.
NOT_LINUX = """
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
/* As on macOS: no __linux__ from here on (Python's headers needed it to find pyconfig.h). */
#undef __linux__
#undef __linux
#undef linux
#undef __gnu_linux__
#undef SCM_CREDENTIALS
#undef SO_PASSCRED
#pragma GCC poison recvmmsg sendmmsg mmsghdr SCM_CREDENTIALS SO_PASSCRED ucred
#pragma GCC poison memfd_create eventfd
#include "{source}"
"""
PROBE = """
#include "{header}"
void publish(uint64_t *p, uint64_t v) {{ store_release(p, v); }}
uint64_t consume(const uint64_t *p) {{ return load_acquire(p); }}
void count(uint64_t *p) {{ add_release(p, 1); }}
void fence(void) {{ fence_seq_cst(); }}
"""


def compiler(name: str) -> str:
    if shutil.which(name) is None:
        pytest.skip(f"no {name} (apt install {name})")
    return name


def build(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("source", [SOURCE, PARSERS], ids=["_speedups", "_parsers"])
@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_the_helper_compiles_without_warnings(cc: str, source: Path) -> None:
    flags = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    result = build(compiler(cc), "-fsyntax-only", *flags, f"-I{INCLUDE}", str(source))
    assert result.returncode == 0, result.stderr
    assert "ugram/_" not in result.stderr, result.stderr  # warnings in Python's headers pass


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_the_helper_keeps_linux_only_calls_inside_its_guards(cc: str, tmp_path: Path) -> None:
    wrapper = tmp_path / "not_linux.c"
    wrapper.write_text(NOT_LINUX.format(source=SOURCE))
    result = build(compiler(cc), "-fsyntax-only", f"-I{INCLUDE}", str(wrapper))
    assert result.returncode == 0, result.stderr
    # And the poison bites: with __linux__ left defined, the guarded code names them.
    wrapper.write_text(NOT_LINUX.format(source=SOURCE).replace("#undef __linux__\n", ""))
    linux = build(cc, "-fsyntax-only", f"-I{INCLUDE}", str(wrapper))
    assert linux.returncode != 0
    assert "poisoned" in linux.stderr


ARM64 = {
    "publish": r"\bstlr\b",
    "count": r"\bstlr\b",
    "consume": r"\bldar\b|\bldapr\b",
    "fence": r"\bdmb\s+ish\b",
}
# x86-64: release stores and acquire loads are plain moves (TSO); only the fence costs.
X86_64 = {
    "publish": r"\bmovq\s+%rsi, \(%rdi\)",
    "count": r"\baddq\s+\$1, \(%rdi\)|\bmovq\s+%\w+, \(%rdi\)",
    "consume": r"\bmovq\s+\(%rdi\)",
    "fence": r"\bmfence\b|\block\b",
}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("arm64-apple-macos11", ARM64),
        ("x86_64-apple-macos10.12", X86_64),
        ("aarch64-linux-gnu", ARM64),
    ],
)
def test_the_ordering_primitives_compile_for_every_wheel_target(
    target: str, expected: dict[str, str], tmp_path: Path
) -> None:
    probe = tmp_path / "probe.c"
    probe.write_text(PROBE.format(header=REPO / "ugram/_ordering.h"))
    result = build(
        compiler("clang"), "-target", target, "-ffreestanding", "-O2", "-S", "-o", "-", str(probe)
    )
    assert result.returncode == 0, result.stderr
    functions = dict(
        re.findall(r"^_?(\w+):[^\n]*\n(.*?)(?=^_?\w+:|\Z)", result.stdout, re.M | re.S)
    )
    for name, pattern in expected.items():
        assert re.search(pattern, functions[name]), (name, functions[name])
    if expected is X86_64:  # no fence where TSO orders by itself
        assert not re.search(X86_64["fence"], functions["publish"] + functions["consume"])
