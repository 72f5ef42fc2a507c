"""P5: receive→handler latency with a paced sender at half of ugram's maximum rate.

The shared rounds measure the maximum: the ``Latency`` handler (trivial, but it takes the
``Datagram``, which costs ~1 µs a record more than ``Count``), 1 worker, 64 B, in a flood.
This scenario's own rounds then pace the sender at half of that median rate, 1 worker
(and 2 without ``--quick``), and read back every record's ``Datagram.received_at`` →
handler latency (and send → handler, from the time stamp the paced sender writes).
"""

from __future__ import annotations

from dataclasses import replace

from bench.measure import Config, Context, Results, run_rounds
from bench.plan import Plan, Scenario, Section, throughput_table
from bench.senders import sender_kind
from bench.table import Row, Table, median_of, rate

SECONDS = {False: 4.0, True: 2.0}  # keyed by quick: how long each paced run lasts
HEADERS = ["target/s", "achieved/s", "p50", "p90", "p99.9", "max", "send→handler p50", "p99"]


def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1000:,.0f}"


class Latency(Scenario):
    name = "latency"
    summary = "P5: p99 receive→handler latency, paced at half of the maximum rate"

    def __init__(self) -> None:
        self.paced: list[Config] = []

    def peak(self, plan: Plan) -> Config:
        return plan.ugram("latency", 64, 1)

    def needs(self, plan: Plan) -> list[Config]:
        return [self.peak(plan)]

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        peak = median_of(results.rates(self.peak(plan)))
        if peak is None:
            return  # the report says the maximum is missing
        target = peak / 2
        count = max(1000, int(target * SECONDS[plan.quick]))
        for workers in (1,) if plan.quick else (1, 2):
            self.paced.append(replace(self.peak(plan), workers=workers, count=count, paced=target))
        run_rounds(self.paced, plan.rounds, ctx, results)

    def row(self, cfg: Config, results: Results) -> Row:
        samples = results.get(cfg) or []
        recv = [s.latency.get("recv", {}) for s in samples]
        send = [s.latency.get("send", {}) for s in samples]
        extras = [rate(cfg.paced), rate(median_of([s.achieved for s in samples]))]
        for p in ("p50", "p90", "p99.9", "p100"):
            extras.append(_us(median_of([r.get(p) for r in recv])))
        extras += [_us(median_of([s.get(p) for s in send])) for p in ("p50", "p99")]
        values = [r["p99"] / 1000 for r in recv if "p99" in r]
        case = f"{cfg.case} paced"
        return Row(case, cfg.subject, values, None, extras, results.errors.get(cfg))

    def report(self, plan: Plan, results: Results) -> Section:
        title = (
            f"P5 latency (µs): receive→handler, paced {sender_kind()} sender at half of the "
            "Latency handler's maximum (its flood, first row)"
        )
        flood = throughput_table(results, [(self.peak(plan), None)])
        if not self.paced:
            return Section(title, [flood], ["P5: no maximum rate (the flood failed)"], "P5=n/a")
        table = Table("recv→handler p99", HEADERS, [self.row(c, results) for c in self.paced])
        p99 = table.rows[0].median()
        figure = "n/a" if p99 is None else f"{p99:.0f}µs"
        line = f"P5 p99 receive→handler latency at half of the maximum rate, 1 worker = {figure}"
        return Section(title, [flood, table], [line], f"P5={figure}")
