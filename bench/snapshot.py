"""``ugram/`` as committed at a git revision, to measure a commit while the working tree is
being edited, or to compare two (``--ugram-rev``, the ``compare`` scenario)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.procs import ROOT, BenchError

PREFIX = "ugram-built-"  # "ugram-<sha>" snapshots lacked the C helper: never reuse them
# The C helper's build, as setup.py does it, for a snapshot that has ugram/_speedups.c.
BUILD_HELPER = (
    "from setuptools import Extension, setup; setup(name='ugram-snapshot', script_args="
    "['-q', 'build_ext', '--inplace'], ext_modules=[Extension('ugram._speedups', "
    "['ugram/_speedups.c'], optional=True, extra_compile_args=['-O2'])])"
)


def ugram_snapshot(rev: str) -> str:
    """A directory holding ``ugram/`` as committed at ``rev`` (for a server's PYTHONPATH).

    Its C helper is built as an install builds it (without a compiler the snapshot runs its
    pure-Python loops, as such an install would). Cached in ``bench/.build/ugram-built-<sha>``.

    Raises:
        BenchError: ``rev`` is not a commit of this repository, or extracting it failed.
    """
    sha = resolve(rev)
    target = ROOT / "bench" / ".build" / f"{PREFIX}{sha[:12]}"
    if target.exists():
        return str(target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", sha, "ugram"], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise BenchError(f"git archive {sha} failed")
    if (tmp / "ugram" / "_speedups.c").exists():
        cmd = [sys.executable, "-c", BUILD_HELPER]
        subprocess.run(cmd, cwd=tmp, capture_output=True, check=True)
    tmp.replace(target)
    return str(target)


def resolve(rev: str) -> str:
    """The full commit id of ``rev``.

    Raises:
        BenchError: ``rev`` names no commit here.
    """
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"cannot resolve git revision {rev!r}: {exc}") from None
