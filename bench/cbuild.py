"""Compile the C helpers in ``bench/c`` on demand with the system compiler (``cc -O2``).

Binaries are cached in ``bench/.build`` under a name that includes a hash of the sources and
flags, so an edited source is rebuilt and concurrent builds never see a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent / "c"
BUILD_DIR = Path(__file__).resolve().parent / ".build"
PROGRAMS = ("sender", "recv_mmsg", "recv_plain", "paced")
CFLAGS = ("-O2", "-Wall", "-Wextra")


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` from PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def build(name: str) -> Path | None:
    """Path to the compiled ``bench/c/<name>.c``, building it if needed.

    Returns None (after printing a note to stderr) when no C compiler is installed.
    Raises:
        RuntimeError: the compiler rejected the source.
    """
    cc = compiler()
    if cc is None:
        print(f"bench: no C compiler found; skipping {name}", file=sys.stderr)
        return None
    source = SRC_DIR / f"{name}.c"
    digest = hashlib.sha256(" ".join((cc, *CFLAGS)).encode())
    for dep in (source, SRC_DIR / "common.h"):
        digest.update(dep.read_bytes())
    target = BUILD_DIR / f"{name}-{digest.hexdigest()[:12]}"
    if target.exists():
        return target
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    proc = subprocess.run(
        [cc, *CFLAGS, "-o", str(tmp), str(source)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {source} failed:\n{proc.stderr}")
    tmp.replace(target)  # atomic: a concurrent build of the same hash is harmless
    return target


def build_all() -> dict[str, Path] | None:
    """Build every program; None (with a note printed) when no C compiler exists."""
    paths: dict[str, Path] = {}
    for name in PROGRAMS:
        path = build(name)
        if path is None:
            return None
        paths[name] = path
    return paths


if __name__ == "__main__":
    built = build_all()
    for prog, where in (built or {}).items():
        print(f"{prog}: {where}")
    sys.exit(0 if built else 1)
