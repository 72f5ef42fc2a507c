"""The arm64 machine code of the compiled helper orders what other processes read.

An x86 host (or qemu on one) cannot show a reordering: the host keeps stores in order. So
the helper is cross-compiled for arm64 with the flags setup.py uses and disassembled, and
each function that publishes or consumes a shared word, found by its symbol (they are kept
out of line for this: UGRAM_NOINLINE in ugram/_speedups.c), must use ``stlr`` (a release
store) where it publishes, ``ldar``/``ldapr`` (an acquire load) where it consumes, and
``dmb ish`` (a full fence) in the sleep/wake handshake. The Python headers are this
host's: every type the helper uses has the same size on x86-64 and arm64 Linux (LP64).

Needs ``aarch64-linux-gnu-gcc`` and ``aarch64-linux-gnu-objdump`` (Debian:
gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu; .ci/run installs them as root).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

GCC, OBJDUMP = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump"
pytestmark = pytest.mark.skipif(
    shutil.which(GCC) is None or shutil.which(OBJDUMP) is None,
    reason=f"no {GCC} / {OBJDUMP}: apt install gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu",
)

Code = dict[str, list[tuple[int, str, str]]]  # symbol -> (address, mnemonic, operands)
_SYMBOL = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_INSN = re.compile(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*?)\s*(?://.*)?$")
ACQUIRE = ("ldar", "ldapr")


@pytest.fixture(scope="module", params=["-O2", "-O3"])
def code(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Code:
    """The helper built for arm64 (setup.py's -O2, and -O3 as distributions may build it),
    disassembled, by symbol (a compiler suffix such as ``.constprop.0`` dropped)."""
    obj = tmp_path_factory.mktemp("arm64") / "speedups.o"
    include = sysconfig.get_paths()["include"]
    build = [GCC, request.param, "-fPIC", "-c", f"-I{include}", "-o", str(obj)]
    subprocess.run([*build, str(REPO / "ugram/_speedups.c")], check=True, timeout=120)
    listing = subprocess.run(
        [OBJDUMP, "-d", "--no-show-raw-insn", str(obj)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return parse(listing)


def parse(listing: str) -> Code:
    functions: Code = {}
    current: list[tuple[int, str, str]] = []
    for line in listing.splitlines():
        if symbol := _SYMBOL.match(line):
            current = functions.setdefault(symbol.group(1).split(".")[0], [])
        elif insn := _INSN.match(line):
            current.append((int(insn.group(1), 16), insn.group(2), insn.group(3)))
    return functions


def mnemonics(code: Code, symbol: str) -> list[str]:
    assert symbol in code, f"{symbol} is not in the arm64 build (inlined or renamed?)"
    return [mnemonic for _, mnemonic, _ in code[symbol]]


def path_to_return(code: Code, symbol: str, start: int) -> list[str]:
    """The mnemonics executed from address ``start`` to the next ``ret``, following
    unconditional branches and falling through conditional ones."""
    at = {address: i for i, (address, _, _) in enumerate(code[symbol])}
    i, seen, out = at[start], set(), []
    while i < len(code[symbol]) and i not in seen:
        seen.add(i)
        _address, mnemonic, operands = code[symbol][i]
        out.append(mnemonic)
        if mnemonic == "ret":
            break
        target = re.match(r"([0-9a-f]+) <", operands)
        if mnemonic == "b" and target and int(target.group(1), 16) in at:
            i = at[int(target.group(1), 16)]
        else:
            i += 1
    return out


def test_a_record_is_published_by_release_stores_after_its_bytes(code: Code) -> None:
    """producer_put: every copy of the record's bytes (memcpy) is followed, on its way
    out, by the two release stores PUBLISHED and HEAD; the tail it checks for room is an
    acquire load (the consumer's reads of the freed bytes are done)."""
    copies = [a for a, m, ops in code["producer_put"] if m == "bl" and "<memcpy>" in ops]
    assert copies
    for address in copies:
        after = path_to_return(code, "producer_put", address)
        assert after[-1] == "ret"
        assert after.count("stlr") == 2, after
    assert set(mnemonics(code, "producer_put")) & set(ACQUIRE)


def test_a_consumer_loads_the_head_with_acquire_before_reading_records(code: Code) -> None:
    assert set(mnemonics(code, "take_records")) & set(ACQUIRE)
    opened = mnemonics(code, "producer_open")  # a receiver's head, count and tail at start
    assert sum(opened.count(m) for m in ACQUIRE) == 3


def test_the_worker_publishes_in_hand_tail_and_counts_with_release_stores(code: Code) -> None:
    loop = mnemonics(code, "run_records")
    assert loop.count("stlr") >= 6  # IN_HAND, progress, busy-since, journal, J_ACKED, TAIL
    assert set(loop) & set(ACQUIRE)  # the supervisor's retire order
    settled = mnemonics(code, "settle")  # ACKED and the three counts, after the tail
    assert settled.count("stlr") == 4
    assert not {"str", "stp", "stur"} & set(settled), "a plain store among the counts"
    observed = mnemonics(code, "observe_latency")
    assert "stlr" in observed
    assert not {"str", "stp", "stur"} & set(observed)


def test_the_receiver_marks_slots_placed_with_release_stores(code: Code) -> None:
    placed = mnemonics(code, "place_slots")
    assert "bl" in placed
    assert placed.count("stlr") >= 3
    reset = mnemonics(code, "reset")  # placed = 0 is its last act, on every way out
    exits = [i for i, m in enumerate(reset) if m == "ret"]
    assert exits
    assert all(reset[i - 1] == "stlr" for i in exits), reset


def test_the_sleep_wake_handshake_is_fenced(code: Code) -> None:
    wake = mnemonics(code, "producer_wake")
    assert "dmb" in wake
    flag = next(i for i, m in enumerate(wake) if m in ACQUIRE)
    assert wake.index("dmb") < flag, "the consumer's flag loaded before the fence"
    assert [ops for _, m, ops in code["producer_wake"] if m == "dmb"] == ["ish"]
    assert [(m, ops) for _, m, ops in code["fence"] if m == "dmb"] == [("dmb", "ish")]


def test_python_reaches_shared_words_only_with_release_and_acquire(code: Code) -> None:
    assert set(mnemonics(code, "words_subscript")) & set(ACQUIRE)
    assert set(mnemonics(code, "words_item")) & set(ACQUIRE)
    assert "stlr" in mnemonics(code, "words_ass_subscript")


def test_the_atomics_are_instructions_not_library_calls(code: Code) -> None:
    """Lock-free: no call into libatomic or the outline-atomics helpers, no lock."""
    calls = {ops for insns in code.values() for _, m, ops in insns if m == "bl"}
    assert not [c for c in calls if "__atomic" in c or "__aarch64_" in c]


def test_the_build_check_refuses_atomics_that_are_not_lock_free(tmp_path: Path) -> None:
    """The helper's _Static_assert, as any compiler sees it: a 16-byte atomic is not
    always lock-free on arm64 (without LSE2), and the same assertion on it fails."""
    source = (REPO / "ugram/_ordering.h").read_text()
    assert "_Static_assert(__atomic_always_lock_free(8, 0)" in source
    probe = tmp_path / "probe.c"
    probe.write_text('_Static_assert(__atomic_always_lock_free(16, 0), "not lock-free");\n')
    built = subprocess.run(
        [GCC, "-fsyntax-only", str(probe)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode != 0
    assert "not lock-free" in built.stderr
