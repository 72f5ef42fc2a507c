"""A reset ring starts its positions at 0 again, and counts the reset: (resets, position)
stays unique for the ring's life, as Datagram.id needs."""

from __future__ import annotations

from ugram.ring import HEAD, RESETS, Ring


def test_a_reset_is_counted_and_positions_restart() -> None:
    ring = Ring.create(1 << 16)
    try:
        assert ring.try_put(b"x" * 100, b"", 1)
        before = int(ring.ctl[HEAD])
        ring.mark_corrupt()
        ring.reset()
        assert int(ring.ctl[HEAD]) == 0 < before
        assert ring.ctl[RESETS] == 1
        ring.mark_corrupt()
        ring.reset()
        assert ring.ctl[RESETS] == 2
    finally:
        ring.close()
