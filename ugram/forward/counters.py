"""What the forwarding sink counts, declared in the worker's handler counters
(:mod:`ugram.handler_stats`): ``/metrics`` shows them as ``ugram_forward_*``.

Every value here is written by the sink's event-loop thread only (one writer per value).
"""

from __future__ import annotations

from ..handler_stats import Alarm, Counter, Gauge, Histogram

# Why a publish attempt failed (``ugram_forward_failures_total{reason}``), and why a message
# was given up (``ugram_forward_dropped_total{reason}``: the last failure's reason, or one of
# the reasons that are only drops).
TIMEOUT = "timeout"  # no acknowledgement within ack_timeout
UNREACHABLE = "unreachable"  # no connection to any server
NO_STREAM = "no_stream"  # no stream answered: missing, or no leader (no quorum)
REFUSED = "refused"  # the stream refused it (limits: full; wrong stream; ...)
FAILURES = (TIMEOUT, UNREACHABLE, NO_STREAM, REFUSED)
TOO_LARGE = "too_large"  # larger than the server or the stream accepts: never retried
DROP_REASONS = (*FAILURES, TOO_LARGE)

# Round trips, publish to acknowledgement: 50 us to 10 s.
RTT_BOUNDS: tuple[float, ...] = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025)
RTT_BOUNDS += (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ForwardCounters:
    """The sink's counters, gauges, round-trip histogram and its health alarm."""

    def __init__(self, unhealthy_after: float) -> None:
        """Declare them (in ``setup()``: a worker binds them to its slot afterwards).

        Raises:
            ValueError: declared twice in one process (two sinks in one worker).
        """
        p = "ugram_forward_"
        self.published = Counter(p + "published_total", "Publish attempts sent, retries included.")
        self.acknowledged = Counter(
            p + "acknowledged_total", "Messages the stream acknowledged (stored once)."
        )
        self.duplicates = Counter(
            p + "duplicates_total",
            "Acknowledgements of a message id the stream already had (a replay or a retry).",
        )
        self.retried = Counter(p + "retried_total", "Publish attempts after a failed one.")
        self.unrouted = Counter(
            p + "unrouted_total", "Messages sent to the fallback subject: no valid subject field."
        )
        self.failures = {
            reason: Counter(p + "failures_total", "Failed publish attempts.", {"reason": reason})
            for reason in FAILURES
        }
        self.dropped = {
            reason: Counter(p + "dropped_total", "Messages given up.", {"reason": reason})
            for reason in DROP_REASONS
        }
        self.in_flight = Gauge(p + "in_flight", "Publishes awaiting their acknowledgement.")
        self.pending = Gauge(p + "pending", "Messages handed to the sink, not acknowledged yet.")
        self.connected = Gauge(p + "connected", "Workers connected to a NATS server.")
        self.rtt = Histogram(
            p + "rtt_seconds", "Publish to acknowledgement, per message.", RTT_BOUNDS, 1e-9
        )
        self.shedding = Gauge(
            p + "shedding",
            "Workers whose new datagrams are dropped (drop_newest: deliveries fail and the "
            "backlog is over the limit).",
        )
        self.failing = Alarm(
            p + "failing_seconds",
            "forwarding to JetStream has failed (or had no connection)",
            unhealthy_after,
        )
