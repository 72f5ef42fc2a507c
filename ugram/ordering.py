"""Memory ordering between ugram's processes: how a store one process makes is seen by another.

The receiver, the workers and the supervisor share u64 words in memory: each ring's control
block (:mod:`ugram.ring`), the counter table (:mod:`ugram.stats`) and the receiver's scratch
index (:mod:`ugram.receiver.mmsg`). CPython gives no fences, so which store is seen first is
up to the CPU. ugram needs, of every word another process reads:

* a release store: every load and store the writer made before it is seen before it;
* an acquire load: nothing the reader does after it happens before it;
* a full (sequentially consistent) fence on each side of the sleep/wake handshake, which
  is Dekker's pattern (store my flag, then load yours) and which release/acquire alone
  does not order.

Two ways to get that, one per process, chosen here (:func:`ordering`):

``x86-64 TSO, pure Python``
    On x86-64 the CPU keeps stores in program order and loads in program order (total
    store order), and an aligned 8-byte store is one store: a plain store through a
    ``memoryview.cast("Q")`` element is a release store, a plain load an acquire load. The
    fence is a LOCK-prefixed instruction (an uncontended lock taken and released). The
    shared words are plain memoryviews, with or without the compiled helper.
``C11 acquire/release (compiled helper)``
    Anywhere else with 64-bit Python and lock-free 8-byte atomics (arm64 and the other
    weakly ordered CPUs): the words are ``ugram._speedups.Words``, whose every store is
    ``__atomic_store_n(..., __ATOMIC_RELEASE)`` (``stlr`` on arm64) and every load
    ``__atomic_load_n(..., __ATOMIC_ACQUIRE)`` (``ldar``), and the fence is
    ``__atomic_thread_fence(__ATOMIC_SEQ_CST)`` (``dmb ish``); the helper's own loops use
    the same builtins. Without the helper ugram refuses to start there: a plain store could
    publish a head before the record it covers. ``UGRAM_MEMORY_ORDERING=compiled`` takes
    this path on x86-64 too (the tests use it to run it on every CI machine).

32-bit builds are refused everywhere: there an 8-byte store may be two 4-byte ones.

The ordering argument, record by record (R = release store, A = acquire load, F = fence;
"after death" means the reader starts after the writer was reaped: the kernel's process
exit and ``waitpid`` order everything the dead process stored before the reader's loads):

1. **Publishing a record.** The receiver stores the record's bytes (plain), then
   ``PUBLISHED`` (R) and ``HEAD`` (R). The worker loads ``HEAD`` (A) before it reads any
   record byte (``Ring._read``, ``take_records``). Pair: HEAD R -> HEAD A.
2. **Freeing space.** The worker reads the records, stores its journal, then ``TAIL`` (R):
   its reads of the freed bytes are done before the tail moves. The receiver loads ``TAIL``
   (A) before it writes into the freed space (``try_put``, ``producer_put``). Pair: TAIL R
   -> TAIL A. (On x86 a later store never passes an earlier load: TSO again.)
3. **In hand and the journal.** ``IN_HAND`` (R) before the handler runs, the journal
   ``J_*`` before ``TAIL``, the counts from the journal after it (R each). Read after
   death by the replacement (``settle_journal``, ``rewind``, ``note_failed_attempt``), and
   by the supervisor's reports (A): a count is never seen ahead of the tail it follows.
4. **Sleeping and waking.** The worker stores ``CONSUMER_WAITING = 1`` (R), F, loads
   ``HEAD`` (A); the receiver stores ``HEAD`` (R), F, loads ``CONSUMER_WAITING`` (A): with
   a fence on both sides at least one of them sees the other's store, so a record is never
   left behind a sleeping worker (the sleep is bounded as well). The eventfd write and read
   are system calls, which order by themselves.
5. **Waiting for space.** The receiver stores ``PRODUCER_WAITING`` (R), F, and tries again
   (loads ``TAIL``, A); the worker stores ``TAIL`` (R) and loads ``PRODUCER_WAITING`` (A)
   without a fence: a miss costs the receiver's 5 ms poll, never a record
   (``Receiver._hold`` says why that is left so).
6. **Closing.** The supervisor stores ``CLOSED`` (R) after the receiver is gone; the worker
   loads ``CLOSED`` (A) and then ``HEAD`` (A): once closed is seen, the head seen after it
   is the last one.
7. **Corruption.** ``CORRUPT = MARKED`` (R) by whoever finds it; the receiver stores
   ``QUIESCED`` (R) after its last store into the ring; the supervisor loads it (A) before
   ``reset``, which stores every slot and then ``CORRUPT = 0`` (R) last; the receiver loads
   ``CORRUPT`` (A) before it reloads head and tail.
8. **Header.** ``MAGIC``, ``CAPACITY`` and ``DATA_AT`` are stored by the supervisor before
   any child exists; a child gets the ring's fd afterwards (fork/exec orders them).
9. **Counters and orders** (:mod:`ugram.stats`). Each slot has one writer (R); readers load
   (A). The supervisor's orders (``COMMAND``, ``ACTIVE``, ``DRAIN``) are R by the
   supervisor and A by the child, and the child's ring loads come after its order load:
   a SIGHUP replacement told ``COMMAND_TAKE_OVER`` sees every store the old worker made
   before the supervisor reaped it (release is cumulative).
10. **The receiver's scratch area** (:mod:`ugram.receiver.mmsg`). The ``placed`` index is
    stored (R) after the record reached its ring; a successor reads it after death.
11. **Shedding** (a forwarding sink's ``drop_newest``). The worker's sink stores
    ``SHEDDING`` (R) in its ring's consumer line; the receiver loads it (A) once per read
    pass; the supervisor stores 0 (R) after the worker was reaped, and ``reset`` does. It
    orders nothing else: a stale value costs at most one pass of new datagrams dropped
    (counted) or held, never a record already in the ring.
"""

from __future__ import annotations

import functools
import mmap
import os
import platform
import sys
import threading
from types import ModuleType
from typing import NamedTuple, cast

from . import speedups
from .errors import UnsupportedPlatformError

ENV = "UGRAM_MEMORY_ORDERING"  # "compiled": the C11 path on x86-64 too (tests, debugging)
TSO = "x86-64 TSO, pure Python"
COMPILED = "C11 acquire/release (compiled helper)"

_TSO_MACHINES = frozenset({"x86_64", "amd64"})
# TSO too, but 32-bit: their u64 stores are two 4-byte stores (a reader may see half).
_X86_32 = frozenset({"i386", "i486", "i586", "i686", "x86"})
BUILD_ADVICE = (
    "build it: install a C compiler and the Python headers (Debian/Ubuntu: apt install gcc "
    "python3-dev; macOS: xcode-select --install), then reinstall ugram from source "
    "(pip install --force-reinstall --no-deps --no-binary ugram ugram; in a checkout: "
    "pip install -e .), and check with 'ugram doctor'"
)


class Ordering(NamedTuple):
    """How this process orders its shared stores and loads."""

    name: str  # TSO or COMPILED
    native: ModuleType | None  # the compiled helper, for COMPILED


def check_memory_ordering(machine: str | None = None) -> str:
    """Say how shared stores are ordered on ``machine`` (default: this one), or refuse.

    Returns:
        :data:`TSO` or :data:`COMPILED`.

    Raises:
        UnsupportedPlatformError: a 32-bit CPU or Python; or a CPU without total store
            order and no compiled helper (the message says how to build it); or
            ``UGRAM_MEMORY_ORDERING`` names an ordering that cannot be had here.
    """
    name = (machine or platform.machine()).lower()
    helper = speedups.NATIVE
    if name in _X86_32:
        raise UnsupportedPlatformError(
            f"the shared-memory ring needs a 64-bit CPU; this one is {name!r}, where "
            "8-byte stores can tear (a reader may see half of a new head or counter)"
        )
    if sys.maxsize <= 2**32:
        raise UnsupportedPlatformError(
            f"the shared-memory ring needs a 64-bit Python; this one ({sys.executable}) is "
            "a 32-bit build, whose 8-byte stores can tear. Use a 64-bit Python."
        )
    wanted = os.environ.get(ENV, "")
    if wanted not in ("", "auto", "compiled"):
        raise UnsupportedPlatformError(f"{ENV}={wanted!r}: use 'compiled' or leave it unset")
    if name in _TSO_MACHINES and wanted != "compiled":
        return TSO
    if helper is None or not getattr(helper, "LOCK_FREE_WORDS", 0):
        why = (
            f"{ENV}=compiled asks for the compiled memory ordering"
            if name in _TSO_MACHINES
            else f"this CPU ({name!r}) does not keep stores in order (no total store order): "
            "the rings need the compiled helper ugram._speedups for release/acquire "
            "ordering (without it a worker could read a record before its bytes arrive)"
        )
        raise UnsupportedPlatformError(
            f"{why}, and ugram._speedups is {speedups.missing_reason()}. To {BUILD_ADVICE}."
        )
    return COMPILED


@functools.cache
def ordering() -> Ordering:
    """This process's ordering (decided once).

    Raises:
        UnsupportedPlatformError: see :func:`check_memory_ordering`.
    """
    name = check_memory_ordering()
    return Ordering(name, speedups.NATIVE if name == COMPILED else None)


def describe() -> str:
    """One line for ``ugram doctor`` and the start-up log: the ordering in force."""
    return ordering().name


def words(mapping: mmap.mmap, offset: int = 0, count: int = -1) -> memoryview:
    """The u64 words of ``mapping`` from byte ``offset`` (``count`` of them; -1: all), as
    every shared word must be reached: a plain ``memoryview.cast("Q")`` under TSO, else a
    ``Words`` of the compiled helper (release stores, acquire loads).

    Typed as a memoryview: a ``Words`` behaves as one in every use ugram makes of it
    (indexing, slicing, ``len``, ``release()``, a context manager, the buffer protocol).

    Raises:
        UnsupportedPlatformError: see :func:`check_memory_ordering`.
    """
    native = ordering().native
    if native is None:
        end = len(mapping) if count < 0 else offset + 8 * count
        with memoryview(mapping) as raw:
            return raw[offset:end].cast("Q")
    return cast("memoryview", native.Words(mapping, offset, count))


_FENCE_LOCK = threading.Lock()


def full_fence() -> None:
    """A full memory barrier (store-load included), from Python.

    The sleep/wake hand-off is Dekker's pattern: the consumer stores "sleeping" then loads
    the head; the producer stores the head then loads "sleeping". A CPU may let each load
    pass the other side's store (store buffers), and then both miss: the consumer sleeps
    until its timeout with records waiting. Under TSO, taking and releasing an uncontended
    lock runs a LOCK-prefixed instruction (glibc's mutex fast path), which x86 orders as a
    full fence (~0.1 us, once per batch or sleep, not per record). Elsewhere a lock is no
    fence (acquire and release only), so the compiled helper's seq_cst fence runs.
    """
    native = ordering().native
    if native is None:
        _FENCE_LOCK.acquire()
        _FENCE_LOCK.release()
    else:
        native.fence()
