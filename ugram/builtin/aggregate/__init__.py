"""DogStatsD aggregation: one flush interval's :class:`Bucket`, how buckets of several
workers merge, and the records written for an interval and for the running totals.

One job a module: :mod:`~.bucket` aggregates an interval and merges buckets, :mod:`~.keys`
builds each series' key once,
:mod:`~.partial` writes a bucket to a worker's partial file and reads it back,
:mod:`~.interval` renders the record of a merged interval, :mod:`~.totals` folds intervals
into the running totals (pruning idle series).
"""

from __future__ import annotations

from .bucket import NO_LIMITS as NO_LIMITS
from .bucket import SUMMARY_KINDS as SUMMARY_KINDS
from .bucket import Bucket as Bucket
from .bucket import Limits as Limits
from .interval import CounterOut as CounterOut
from .interval import IntervalOut as IntervalOut
from .interval import SummaryOut as SummaryOut
from .interval import ValueOut as ValueOut
from .interval import quantile as quantile
from .interval import render_interval as render_interval
from .keys import Key as Key
from .keys import SeriesKeys as SeriesKeys
from .partial import dump_bucket as dump_bucket
from .partial import load_bucket as load_bucket
from .totals import CounterTotal as CounterTotal
from .totals import GaugeTotal as GaugeTotal
from .totals import SetTotal as SetTotal
from .totals import SummaryTotal as SummaryTotal
from .totals import Totals as Totals
from .totals import add_to_totals as add_to_totals

__all__ = [
    "NO_LIMITS",
    "SUMMARY_KINDS",
    "Bucket",
    "CounterOut",
    "CounterTotal",
    "GaugeTotal",
    "IntervalOut",
    "Key",
    "Limits",
    "SeriesKeys",
    "SetTotal",
    "SummaryOut",
    "SummaryTotal",
    "Totals",
    "ValueOut",
    "add_to_totals",
    "dump_bucket",
    "load_bucket",
    "quantile",
    "render_interval",
]
