"""Delivering one batch to JetStream: pipelined publishes, acknowledgements, retries, policy.

:meth:`Pipeline.deliver` returns once every message of the batch was acknowledged by the
stream (a PubAck: stored, or already stored under its ``Nats-Msg-Id``) or given up by the
policy, and only then does the worker acknowledge the batch in its ring. It publishes in
rounds: a round sends every message not yet acknowledged, ``max_in_flight`` at a time, and
waits for each one's reply or ``ack_timeout``; what failed is published again in the next
round, after a pause that doubles (from 0.05 s to ``retry_max``) while rounds deliver
nothing. After a round that delivered nothing the next one starts with a single probe, and
opens the window once that is acknowledged: an outage costs one publish per pause, not a
batch. While there is no connection nothing is sent; the pipeline waits for nats-py to
reconnect.

``drop_newest`` gives nothing up here: while deliveries fail and the backlog is over its
limit, the pipeline asks the receiver to drop new datagrams for this worker
(:func:`ugram.context.shed_new`, judged every ``JUDGE_EVERY`` while they fail),
and stops asking at the first acknowledgement, or when the batch is done.

Runs on the loop of :class:`~ugram.forward.link.LoopThread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field

import msgspec

from .. import context
from ..logs import RateLimited
from . import counters as why
from .counters import ForwardCounters
from .link import NO_RESPONDERS, Link, Reply
from .options import ForwardOptions

log = logging.getLogger("ugram.forward")
_warn = RateLimited(log)

MSG_ID, EXPECTED_STREAM = "Nats-Msg-Id", "Nats-Expected-Stream"
FIRST_PAUSE = 0.05
# Seconds between two looks while waiting (a connection, a reply, a pause): the liveness
# note flush() reads; under drop_newest, how soon a backlog over the limit starts shedding
# (a ring fills in a fraction of a second under a flood, and then the senders wait).
LOOK_EVERY, JUDGE_EVERY = 0.5, 0.1
_TOO_LARGE_CODES = frozenset({10054})  # JetStream: message size exceeds the stream's maximum


@dataclass(slots=True)
class Outgoing:
    """One message to deliver.

    Attributes:
        number: its place in the order the handler published (retries keep the order).
        received_ns: when ugram received its record (``time.time_ns()`` clock).
        failure: the reason its last attempt failed ("" before any).
    """

    subject: str
    data: bytes
    msg_id: str
    number: int
    received_ns: int
    attempts: int = 0
    failure: str = ""


@dataclass
class Delivery:
    """What :meth:`Pipeline.deliver` did with one batch."""

    acknowledged: int = 0
    duplicates: int = 0
    dropped: int = 0
    retried: int = 0


@dataclass(slots=True)
class _Flight:
    out: Outgoing
    sent_ns: int
    deadline_ns: int
    outcome: str | None = None  # None: no reply yet; "": acknowledged; else the failure
    duplicate: bool = False


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


@dataclass
class _Round:
    flights: dict[str, _Flight] = field(default_factory=dict)  # token -> publish in flight
    done: list[_Flight] = field(default_factory=list)
    failed: list[Outgoing] = field(default_factory=list)
    delivered: int = 0


class Pipeline:
    """Delivers batches over one :class:`Link` (one delivery at a time)."""

    def __init__(self, options: ForwardOptions, counters: ForwardCounters, name: str) -> None:
        """Prepare (the connection starts with :meth:`start`).

        Raises:
            ConfigError: a TLS file does not load.
        """
        self.options = options
        self.c = counters
        self.link = Link(options, name, self._on_reply, self._on_state)
        self._round: _Round | None = None
        self._changed = asyncio.Event()
        self._trusted = True  # the last round delivered: open the whole window at once
        self._busy = False
        self._shedding = False  # asked the receiver to drop new datagrams (drop_newest)
        self._look = JUDGE_EVERY if options.policy == "drop_newest" else LOOK_EVERY
        self._task: asyncio.Task[None] | None = None  # the connection's
        self.activity_ns = time.monotonic_ns()  # the loop's last sign of life (flush watches)

    async def start(self) -> None:
        """Connect in the background (retried until it succeeds); until then the sink
        counts as failing (``/healthz`` says so past ``unhealthy_after``)."""
        self._failing()
        self._task = asyncio.get_running_loop().create_task(self.link.run())

    # -- one batch ---------------------------------------------------------------------------

    async def deliver(self, batch: list[Outgoing]) -> Delivery:
        """Publish ``batch`` until every message is acknowledged or given up; never raises."""
        result, pending, pause = Delivery(), batch, FIRST_PAUSE
        self._busy = True
        self.c.pending.set(len(pending))
        try:
            while pending:
                self.activity_ns = time.monotonic_ns()
                if not self.link.connected.is_set():
                    pending = await self._wait_for_connection(pending, result)
                    continue
                try:
                    pending, delivered = await self._publish_round(pending, result)
                except Exception:  # a bug must not cost the batch: log, pause, go on
                    log.exception("forward: a publish round failed")
                    delivered = 0
                self.c.pending.set(len(pending))
                if pending:
                    pause = FIRST_PAUSE if delivered else min(pause * 2, self.options.retry_max)
                    await self._pause(pause, pending)
        finally:
            self._busy = False
            self.c.pending.set(0)
            self._shed(False)
        return result

    async def _wait_for_connection(
        self, pending: list[Outgoing], result: Delivery
    ) -> list[Outgoing]:
        self._failing()
        for out in pending:
            out.failure = out.failure or why.UNREACHABLE
        pending = self._apply_policy(pending, result)
        self._judge_shedding(pending)
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.connected.wait(), self._look)
        return pending

    async def _pause(self, pause: float, pending: list[Outgoing]) -> None:
        if any(out.failure == why.NO_STREAM for out in pending):
            await self.link.ensure_stream()
        end = time.monotonic() + pause * random.uniform(0.75, 1.25)
        while (left := end - time.monotonic()) > 0:  # keep the activity fresh for flush
            self.activity_ns = time.monotonic_ns()
            if not self._trusted:  # the last round delivered nothing
                self._judge_shedding(pending)
            await asyncio.sleep(min(left, self._look))

    async def _publish_round(
        self, pending: list[Outgoing], result: Delivery
    ) -> tuple[list[Outgoing], int]:
        """One round over ``pending``; returns what is left to retry, and how many were
        acknowledged."""
        state = self._round = _Round()
        window = self.options.max_in_flight if self._trusted else 1
        queue = deque(pending)
        try:
            while queue or state.flights or state.done:
                if queue and not self.link.connected.is_set():
                    self._hold_back(queue, state, why.UNREACHABLE)  # not into nats-py's buffer
                while queue and len(state.flights) < window:
                    await self._send(queue.popleft(), state, result)
                await self._wait(state)
                if not self._trusted and not state.delivered:  # a probe, unanswered so far
                    self._judge_shedding(pending)
                if self._collect(state, result) and window == 1:
                    window = self.options.max_in_flight  # the probe went through
                if window == 1 and state.failed and not state.delivered:
                    self._hold_back(queue, state, state.failed[-1].failure)
        finally:
            self._round = None
            self.c.in_flight.set(0)
        self._trusted = state.delivered > 0
        if state.failed:
            self._failing()
        left = sorted(self._apply_policy(state.failed, result), key=lambda out: out.number)
        return left, state.delivered

    def _hold_back(self, queue: deque[Outgoing], state: _Round, reason: str) -> None:
        """The rest of the round waits for the next one, unsent (the probe failed, or the
        connection is down), as failed for ``reason`` (what the policy judges them by)."""
        for out in queue:
            out.failure = out.failure or reason
        state.failed.extend(queue)
        queue.clear()

    async def _send(self, out: Outgoing, state: _Round, result: Delivery) -> None:
        link, now = self.link, time.monotonic_ns()
        if out.attempts:
            self.c.retried.inc()
            result.retried += 1
        out.attempts += 1
        token = link.new_token()
        headers = {MSG_ID: out.msg_id, EXPECTED_STREAM: self.options.stream}
        flight = _Flight(out, now, now + int(self.options.ack_timeout * 1e9))
        state.flights[token] = flight
        try:
            await link.nc.publish(out.subject, out.data, reply=link.prefix + token, headers=headers)
        except Exception as exc:
            del state.flights[token]
            self._finish(flight, _send_failure(exc), state)
            return
        self.c.published.inc()
        self.c.in_flight.set(len(state.flights))

    async def _wait(self, state: _Round) -> None:
        """Until a reply came, or the oldest publish in flight is overdue."""
        if state.done or not state.flights:
            return
        first = next(iter(state.flights.values()))
        timeout = max(0.0, (first.deadline_ns - time.monotonic_ns()) / 1e9)
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), min(timeout, self._look))
        self.activity_ns = now = time.monotonic_ns()
        while state.flights:  # in send order: every one has the same timeout
            token, flight = next(iter(state.flights.items()))
            if flight.deadline_ns > now:
                break
            del state.flights[token]
            self._finish(flight, why.TIMEOUT, state)

    def _collect(self, state: _Round, result: Delivery) -> int:
        """Count what came back since the last look; returns how many were acknowledged."""
        acknowledged = 0
        for flight in state.done:
            if flight.outcome:
                flight.out.failure = flight.outcome
                state.failed.append(flight.out)
                continue
            acknowledged += 1
            result.acknowledged += 1
            self.c.acknowledged.inc()
            if flight.duplicate:
                result.duplicates += 1
                self.c.duplicates.inc()
        state.done.clear()
        state.delivered += acknowledged
        self.c.in_flight.set(len(state.flights))
        if acknowledged:
            self._recovered()
            self._shed(False)
        return acknowledged

    def _finish(self, flight: _Flight, outcome: str, state: _Round) -> None:
        flight.outcome = outcome
        if outcome:
            self.c.failures[outcome if outcome in why.FAILURES else why.REFUSED].inc()
        state.done.append(flight)
        self._changed.set()

    # -- replies and connection changes (callbacks from the link) ---------------------------

    def _on_reply(self, token: str, reply: Reply) -> None:
        state = self._round
        flight = state.flights.pop(token, None) if state is not None else None
        if flight is None or state is None:
            return  # a reply after its timeout: the retry finds the message stored
        self.c.rtt.observe(time.monotonic_ns() - flight.sent_ns)
        outcome, flight.duplicate = _outcome(reply, flight.out, self.options.stream)
        self._finish(flight, outcome, state)

    def _on_state(self, connected: bool) -> None:
        self.c.connected.set(1 if connected else 0)
        if not connected:
            self._failing()
            state = self._round
            if state is not None:  # their replies, if any, are lost with the connection
                for token in list(state.flights):
                    self._finish(state.flights.pop(token), why.UNREACHABLE, state)
        elif not self._busy:
            self.c.failing.clear()

    # -- policy and health -------------------------------------------------------------------

    def _apply_policy(self, failed: list[Outgoing], result: Delivery) -> list[Outgoing]:
        """What is retried: everything but what is too large, unless ``drop_oldest`` gives up
        more (see ``ForwardOptions``)."""
        o, kept = self.options, []
        drop_all = bool(o.drop_after_bytes) and context.backlog_bytes() > o.drop_after_bytes
        oldest_allowed = time.time_ns() - int(o.drop_after * 1e9)
        for out in failed:
            give_up = out.failure == why.TOO_LARGE
            if o.policy == "drop_oldest" and not give_up:
                give_up = drop_all or bool(o.drop_after and out.received_ns <= oldest_allowed)
            if give_up:
                self.c.dropped[out.failure or why.UNREACHABLE].inc()
                result.dropped += 1
            else:
                kept.append(out)
        return kept

    def _judge_shedding(self, pending: list[Outgoing]) -> None:
        """``drop_newest``, while deliveries fail: shed once this worker's ring holds more
        than ``drop_after_bytes``, or the oldest message held has waited ``drop_after``."""
        o = self.options
        if o.policy != "drop_newest" or self._shedding or not pending:
            return
        over = bool(o.drop_after_bytes) and context.backlog_bytes() > o.drop_after_bytes
        if not over and o.drop_after:
            oldest = min(out.received_ns for out in pending)
            over = oldest <= time.time_ns() - int(o.drop_after * 1e9)
        if over:
            self._shed(True)

    def _shed(self, shedding: bool) -> None:
        """Ask the receiver to drop new datagrams for this worker, or to stop."""
        if shedding == self._shedding:
            return
        self._shedding = shedding
        self.c.shedding.set(1 if shedding else 0)
        context.shed_new(self, shedding)
        if shedding:
            log.warning(
                "forward: deliveries fail and the backlog is over the drop_newest limit: new "
                "datagrams for this worker are dropped (counted as shed) until one is stored"
            )
        else:
            log.info("forward: taking new datagrams again (policy drop_newest)")

    def _failing(self) -> None:
        self.c.failing.raise_at(time.monotonic_ns())

    def _recovered(self) -> None:
        self.c.failing.clear()


def _outcome(reply: Reply, out: Outgoing, stream: str) -> tuple[str, bool]:
    """("" and whether it was a duplicate) for an acknowledgement, else the failure."""
    if reply.status == NO_RESPONDERS:
        _warn.warning(
            "forward: no stream answers on %s (stream %s missing, or no leader)",
            out.subject,
            stream,
        )
        return why.NO_STREAM, False
    try:
        ack = _decode_ack(reply.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        _warn.warning(
            "forward: an unreadable reply to a publish on %s (status %r)", out.subject, reply.status
        )
        return why.REFUSED, False
    if ack.error is None:
        return "", ack.duplicate
    error = ack.error
    if error.err_code in _TOO_LARGE_CODES:
        log.error(
            "forward: stream %s refuses a %d-byte message: %s",
            stream,
            len(out.data),
            error.description,
        )
        return why.TOO_LARGE, False
    _warn.warning(
        "forward: stream %s refused a message on %s: %s (%d)",
        stream,
        out.subject,
        error.description,
        error.err_code,
    )
    return why.REFUSED, False


def _send_failure(exc: Exception) -> str:
    """Why a publish could not even be sent."""
    from nats import errors

    if isinstance(exc, errors.MaxPayloadError):
        log.error("forward: a message is larger than the server's max_payload: %s", exc)
        return why.TOO_LARGE
    _warn.warning("forward: cannot publish: %r", exc)
    return why.UNREACHABLE
