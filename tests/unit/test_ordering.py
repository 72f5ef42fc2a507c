"""Memory ordering: which CPUs the rings run on and how, and the compiled helper's ``Words``.

The x86-64 machines CI runs on order stores themselves (TSO); the compiled ordering that
every other CPU gets is forced here with ``UGRAM_MEMORY_ORDERING=compiled``, in a fresh
interpreter, so the ring's and the helper's own tests run through it too. What the arm64
machine code does is checked in test_arm64_ordering.py.
"""

from __future__ import annotations

import mmap
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env
from ugram import ordering, speedups
from ugram.doctor import check_memory_order
from ugram.errors import UnsupportedPlatformError
from ugram.ordering import COMPILED, ENV, TSO, check_memory_ordering
from ugram.ring import Ring

needs_helper = pytest.mark.skipif(speedups.NATIVE is None, reason="ugram._speedups not built")


@pytest.fixture(autouse=True)
def _default_ordering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_x86_64_runs_on_its_own_total_store_order(machine: str) -> None:
    assert check_memory_ordering(machine) == TSO


@needs_helper
@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le", "riscv64", "s390x"])
def test_weakly_ordered_cpus_run_with_the_compiled_helper(machine: str) -> None:
    assert check_memory_ordering(machine) == COMPILED


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le"])
def test_without_the_helper_a_weakly_ordered_cpu_is_refused_with_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, machine: str
) -> None:
    monkeypatch.setattr(speedups, "NATIVE", None)
    monkeypatch.setattr(speedups, "_MISSING", "not built (no C compiler at install time)")
    with pytest.raises(UnsupportedPlatformError) as caught:
        check_memory_ordering(machine)
    message = str(caught.value)
    assert machine in message
    assert "not built" in message
    assert "apt install gcc python3-dev" in message
    assert "ugram doctor" in message


def test_a_stale_helper_counts_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "NATIVE", None)
    monkeypatch.setattr(speedups, "_MISSING", "stale (built for API 10, this ugram needs 11)")
    with pytest.raises(UnsupportedPlatformError, match=r"stale \(built for API 10"):
        check_memory_ordering("aarch64")


@pytest.mark.parametrize("machine", ["i386", "i686", "x86"])
def test_32_bit_x86_is_refused_where_8_byte_stores_tear(
    monkeypatch: pytest.MonkeyPatch, machine: str
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with pytest.raises(UnsupportedPlatformError, match=f"{machine}.*8-byte stores can tear"):
        check_memory_ordering()
    with pytest.raises(UnsupportedPlatformError, match=machine):
        Ring.create(65536)  # the rings themselves refuse, not only the doctor


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_a_32_bit_python_is_refused_on_any_cpu(
    monkeypatch: pytest.MonkeyPatch, machine: str
) -> None:
    monkeypatch.setattr(sys, "maxsize", 2**31 - 1)
    with pytest.raises(UnsupportedPlatformError, match="64-bit Python"):
        check_memory_ordering(machine)


@needs_helper
def test_the_compiled_ordering_can_be_forced_on_x86_64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "compiled")
    assert check_memory_ordering("x86_64") == COMPILED


def test_forcing_the_compiled_ordering_without_the_helper_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "compiled")
    monkeypatch.setattr(speedups, "NATIVE", None)
    with pytest.raises(UnsupportedPlatformError, match=f"{ENV}=compiled.*apt install gcc"):
        check_memory_ordering("x86_64")


def test_an_unknown_ordering_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "plain")
    with pytest.raises(UnsupportedPlatformError, match="'plain': use 'compiled'"):
        check_memory_ordering("aarch64")


def test_doctor_names_the_ordering_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    finding = check_memory_order()
    assert (finding.level, finding.title) == ("ok", f"memory ordering: {ordering.describe()}")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(speedups, "NATIVE", None)
    finding = check_memory_order()
    assert (finding.level, finding.title) == ("fail", "memory ordering: none safe on aarch64")
    assert "apt install gcc python3-dev" in finding.detail


# -- Words ---------------------------------------------------------------------------------


@pytest.fixture
def mapping() -> mmap.mmap:
    return mmap.mmap(-1, 4096)


@needs_helper
def test_words_read_and_write_the_mapping_as_a_memoryview_does(mapping: mmap.mmap) -> None:
    assert speedups.NATIVE is not None
    words = speedups.NATIVE.Words(mapping, 64, 8)
    with memoryview(mapping) as raw, raw.cast("Q") as plain:
        words[0] = 7
        words[-1] = 2**64 - 1
        assert (plain[8], plain[15]) == (7, 2**64 - 1)
        plain[9] = 42
        assert words[1] == 42
        middle = words[1:3]
        middle[1] = 9
        assert (len(words), len(middle), plain[10]) == (8, 2, 9)
        assert list(middle) == [42, 9]
        assert bytes(middle) == (42).to_bytes(8, "little") + (9).to_bytes(8, "little")
        assert list(words[6:100]) == [0, 2**64 - 1]  # a slice stops at the end, as a list's
    middle.release()
    words.release()
    mapping.close()  # nothing holds the mapping any more


@needs_helper
def test_words_refuse_what_a_u64_word_cannot_be(mapping: mmap.mmap) -> None:
    assert speedups.NATIVE is not None
    words = speedups.NATIVE.Words(mapping)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="0 to 2\\*\\*64-1"):
            words[0] = bad
    with pytest.raises(IndexError):
        words[512]
    with pytest.raises(TypeError):
        words[0:2] = b"x"
    for offset, count in ((4, 1), (0, 513), (8192, 1)):
        with pytest.raises(ValueError, match="outside the mapping, or not 8-aligned"):
            speedups.NATIVE.Words(mapping, offset, count)
    exported = memoryview(words)
    with pytest.raises(BufferError, match="exported"):
        words.release()
    exported.release()
    words.release()
    with pytest.raises(ValueError, match="released"):
        words[0]


@needs_helper
def test_the_compiled_ordering_reaches_every_shared_word() -> None:
    """Forced on, rings, counters and the receiver's scratch index are all ``Words``."""
    code = (
        "from ugram.ring import Ring\n"
        "from ugram.stats import Stats\n"
        "from ugram.receiver.mmsg import BatchReceiver\n"
        "from ugram import ordering\n"
        "ring, stats = Ring.create(65536), Stats.create(3)\n"
        "rx = BatchReceiver(-1, 100, batch=2)\n"
        "print(ordering.describe())\n"
        "print(*(type(x).__name__ for x in (ring.ctl, stats.block(1), rx.desc)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(**{ENV: "compiled"}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out == [COMPILED, "Words Words Words"]


@needs_helper
def test_the_ring_and_helper_suites_pass_under_the_compiled_ordering() -> None:
    """What arm64 runs: every shared word through ``Words`` and the helper's fence."""
    if check_memory_ordering() == COMPILED:
        pytest.skip("the compiled ordering is this CPU's own: those suites just ran with it")
    suites = [str(Path(__file__).with_name(name)) for name in ("test_ring.py", "test_speedups.py")]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *suites],
        cwd=REPO,
        env=child_env(**{ENV: "compiled"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
