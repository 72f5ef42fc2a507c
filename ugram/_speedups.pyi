# Types of the optional C helper (ugram/_speedups.c); see ugram.speedups.
import mmap
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, overload

API_VERSION: int
LOCK_FREE_WORDS: int

class Words:
    """Shared u64 words: release stores, acquire loads (ugram.ordering)."""

    def __init__(self, mapping: mmap.mmap, offset: int = 0, count: int = -1, /) -> None: ...
    @overload
    def __getitem__(self, index: int, /) -> int: ...
    @overload
    def __getitem__(self, index: slice, /) -> Words: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def release(self) -> None: ...
    def __enter__(self) -> Words: ...
    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

def fence() -> None: ...
def reset_slots(
    scratch: mmap.mmap,
    layout: tuple[int, ...],
    count: int,
    controllen_at: int,
    control_size: int,
    /,
) -> None: ...
def take_records(
    ring: mmap.mmap, rpos: int, head_seen: int, limit: int, record_type: type[tuple[object, ...]], /
) -> tuple[list[tuple[object, int]], int, int]: ...
def run_records(
    batch: Sequence[tuple[tuple[object, ...], int]],
    ctl: memoryview,
    counters: memoryview,
    slots: tuple[int, ...],
    process: Callable[[Any], object],
    call: Callable[[Any], object] | None,
    decode: Callable[[bytes], object] | None,
    decode_errors: tuple[type[BaseException], ...],
    on_invalid: Callable[[BaseException], object],
    on_error: Callable[[BaseException], object],
    allowance: int,
    /,
) -> int: ...
def drain(
    fd: int,
    scratch: mmap.mmap,
    layout: tuple[int, ...],
    batch: int,
    rings: list[mmap.mmap],
    wakes: list[int],
    active: int,
    next_ring: int,
    limit: int,
    calls: int,
    counters: memoryview,
    slots: tuple[int, int, int, int],
    credentials: tuple[int, int, int, int] | None = None,
    /,
) -> tuple[int, int, int, int, int, int]: ...
def decode_batch(
    batch: list[tuple[Any, int]],
    decode: Callable[[bytes], Any] | None,
    decode_errors: tuple[type[BaseException], ...],
    on_invalid: Callable[[BaseException], object],
    make_datagram: Callable[[Any], Any] | None,
    counters: memoryview,
    invalid: int,
    /,
) -> tuple[list[Any], list[Any]]: ...
def observe_batch(
    batch: list[tuple[Any, int]],
    now_ns: int,
    counters: memoryview,
    latency: tuple[int, int, int],
    /,
) -> None: ...
