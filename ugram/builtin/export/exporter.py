"""The statsd aggregator's exposition, in a worker: lines in, one delta a batch out.

:class:`Exporter` resolves and folds each batch's lines (:mod:`.collect`) and publishes the
delta through the slot's export ring (:mod:`.publish`) before ``handle_batch`` returns, so
before the worker acknowledges the batch. After a predecessor died, the records it had
already published (up to :attr:`Publisher.committed`) are replayed by the worker and
skipped here, counted in ``skipped_records``: each record counts once.
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import context
from ...codecs.statsd import Line
from ...ring import Record
from .collect import Collector
from .publish import Position, Publisher, open_publisher
from .resolve import Resolver
from .wire import Hello


class Exporter:
    """Publishes the batches' deltas of one worker (see the module)."""

    def __init__(self, resolver: Resolver, hello: Hello) -> None:
        self.resolver = resolver
        self.collector = Collector(resolver)
        self._hello = hello
        self._publisher: Publisher | None = None
        self._skip: Position | None = None

    def _open(self) -> Publisher:
        """The publisher, opened on the first batch (the slot is this worker's by then).

        Raises:
            ExportError: no export ring (not in a worker serving /metrics), or a corrupt one.
        """
        publisher = open_publisher(self._hello)
        if publisher is None:
            from .publish import ExportError

            raise ExportError("no export ring: the server serves no /metrics")
        self._publisher = publisher
        self._skip = publisher.committed
        return publisher

    def handle_batch(
        self, packets: Sequence[Sequence[Line]], records: Sequence[Record], invalid: int = 0
    ) -> None:
        """Fold a batch and publish its delta (``invalid``: lines that did not parse).

        Raises:
            ExportError: the export ring cannot take it (corrupt, or the supervisor gone).
        """
        publisher = self._publisher or self._open()
        if self._skip is not None:
            packets, records = self._unreplayed(packets, records)
        if self.resolver.full():
            self.resolver.reset()
            publisher.say_hello()
        collector = self.collector
        if invalid:
            collector.count("invalid_lines", invalid)
        if packets:
            collector.add_packets(packets, [record[2] for record in records])
        if collector:
            last_ns = records[-1][2] if records else 0
            position = (context.ring_resets(), context.batch_end())
            publisher.publish(collector.take(), position, last_ns)

    def _unreplayed(
        self, packets: Sequence[Sequence[Line]], records: Sequence[Record]
    ) -> tuple[Sequence[Sequence[Line]], Sequence[Record]]:
        """The datagrams of a replayed batch that the dead predecessor had not published."""
        assert self._skip is not None
        resets, until = self._skip
        if context.ring_resets() != resets:  # the ring was emptied since: nothing to skip
            self._skip = None
            return packets, records
        ends = [context.record_end(record) for record in records]
        keep = [i for i, end in enumerate(ends) if end < 0 or end > until]
        if ends and (ends[-1] < 0 or ends[-1] > until):
            self._skip = None  # positions only grow: the rest of the ring is new
        skipped = len(records) - len(keep)
        if not skipped:
            return packets, records
        self.collector.count("skipped_records", skipped)
        return [packets[i] for i in keep], [records[i] for i in keep]
