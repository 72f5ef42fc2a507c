"""The throughput scenarios: the baselines, ugram end to end, the JSON and CPU-heavy
handlers, ugram confined to one CPU, and a git revision against the working tree.

Each prints one throughput table (msg/s, median over the rounds, each row divided by its
baseline round by round) and the goal ratios of issue 6 it measures:

* P1 ugram receiver path (trivial, 64 B, the better of 1 and 2 workers) ÷ C recvmmsg;
* P2 ugram end to end, 1 worker JSON into a Struct, 1 KB ÷ C plain recv;
* P3 the same ÷ the stdlib asyncio server running the same decode;
* P4 CPU-heavy handler, 2 workers ÷ the blocking Python receiver doing the same work.
"""

from __future__ import annotations

from dataclasses import replace

from bench.measure import PURE_PYTHON, Config, Results, cpu_split
from bench.plan import Plan, Scenario, Section, best_of, goal, throughput_table
from bench.table import fmt_ratio, size_label

JSON_MIN_SIZE = 1024  # a JSON record needs more than 64 B
COMPILED_SIZES = (64, 1024)  # where the pure-Python loops are measured too


def p1(plan: Plan, results: Results, *, confined: bool = False) -> tuple[str, float | None]:
    """P1: ugram trivial 64 B (confined: 1 worker; else the better of 1 and 2) ÷ C recvmmsg."""
    workers = (1,) if confined else (1, 2)
    ugram = [results.rates(plan.ugram("trivial", 64, w, confined=confined)) for w in workers]
    label = "1 worker" if confined else "best of 1/2 workers"
    mmsg = results.rates(plan.cfg("c-mmsg", "trivial", 64, confined=confined))
    return goal(
        "P1 ugram receiver path", (f"trivial 64 B, {label}", best_of(*ugram)), ("C recvmmsg", mmsg)
    )


def p2(plan: Plan, results: Results, *, confined: bool = False) -> tuple[str, float | None]:
    """P2: ugram 1 worker JSON→Struct 1 KB ÷ C plain recv 1 KB."""
    json1 = results.rates(plan.ugram("json", 1024, 1, confined=confined))
    plain = results.rates(plan.cfg("c-plain", "trivial", 1024, confined=confined))
    return goal(
        "P2 ugram end to end", ("1 worker JSON→Struct 1 KB", json1), ("C plain recv 1 KB", plain)
    )


def p3(plan: Plan, results: Results) -> tuple[str, float | None]:
    """P3: ugram 1 worker JSON→Struct 1 KB ÷ stdlib asyncio with the same decode."""
    json1 = results.rates(plan.ugram("json", 1024, 1))
    aio = results.rates(plan.cfg("asyncio", "json", 1024))
    return goal(
        "P3 ugram end to end",
        ("1 worker JSON→Struct 1 KB", json1),
        ("stdlib asyncio JSON 1 KB", aio),
    )


class Ceilings(Scenario):
    name = "ceilings"
    summary = "C recvmmsg (the machine's ceiling) and C plain recv(), one per datagram"

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        pairs: list[tuple[Config, Config | None]] = []
        for size in plan.sizes:
            mmsg = plan.cfg("c-mmsg", "trivial", size)
            pairs += [(mmsg, None), (plan.cfg("c-plain", "trivial", size), mmsg)]
        return pairs

    def report(self, plan: Plan, results: Results) -> Section:
        table = throughput_table(results, self.pairs(plan))
        r = table.rows[1].ratio()
        return Section(
            "C ceilings (first to last datagram)", [table], [], f"C-plain÷recvmmsg={fmt_ratio(r)}"
        )


class BaselineVs(Scenario):
    """One baseline receiver at every size, divided by another (``base``)."""

    receiver = ""
    base = ""
    title = ""
    token = ""

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        return [
            (plan.cfg(self.receiver, "trivial", size), plan.cfg(self.base, "trivial", size))
            for size in plan.sizes
        ]

    def report(self, plan: Plan, results: Results) -> Section:
        table = throughput_table(results, self.pairs(plan))
        return Section(self.title, [table], [], f"{self.token}={fmt_ratio(table.rows[0].ratio())}")


class PlainPython(BaselineVs):
    name = "python"
    summary = "the plain Python receiver: one blocking recv_into() a datagram, in one process"
    receiver, base, token = "blocking", "c-plain", "Python÷C-plain"
    title = "Plain Python receiver (a blocking recv_into() loop, counting)"


class Asyncio(BaselineVs):
    name = "asyncio"
    summary = "the stdlib asyncio server (create_datagram_endpoint), counting"
    receiver, base, token = "asyncio", "blocking", "asyncio÷Python"
    title = "stdlib asyncio server (create_datagram_endpoint, counting; sent 1/6 of the load)"


class Throughput(Scenario):
    name = "throughput"
    summary = "ugram end to end (trivial handler, 1 and 2 workers, compiled and pure-Python loops)"

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        pairs: list[tuple[Config, Config | None]] = []
        for size in plan.sizes:
            plain = plan.cfg("blocking", "trivial", size)
            pairs.append((plain, None))
            for workers in (1, 2):
                compiled = plan.ugram("trivial", size, workers)
                pairs.append((compiled, plain))
                if size in (COMPILED_SIZES[:1] if plan.quick else COMPILED_SIZES):
                    pure = plan.ugram("trivial", size, workers, flags=(PURE_PYTHON,))
                    pairs.append((pure, compiled))
        return pairs

    def needs(self, plan: Plan) -> list[Config]:
        return [*super().needs(plan), plan.cfg("c-mmsg", "trivial", 64)]

    def report(self, plan: Plan, results: Results) -> Section:
        table = throughput_table(results, self.pairs(plan))
        line, r1 = p1(plan, results)
        plain = results.rates(plan.cfg("blocking", "trivial", 64))
        best = best_of(*(results.rates(plan.ugram("trivial", 64, w)) for w in (1, 2)))
        e2e, r = goal(
            "ugram end to end",
            ("trivial 64 B, best of 1/2 workers", best),
            ("Python blocking", plain),
        )
        title = (
            "ugram end to end (load start to last record handled, and to the server's exit "
            "after SIGTERM; CPU per datagram: receiver while the load ran, workers setup() to "
            "teardown(), idle spinning included)"
        )
        return Section(
            title, [table], [line, e2e], f"P1={fmt_ratio(r1)} ugram÷Python={fmt_ratio(r)}"
        )


class Json(Scenario):
    name = "json"
    summary = "a JSON handler (msgspec into a Struct): ugram --codec json against the baselines"

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        pairs: list[tuple[Config, Config | None]] = []
        for size in (s for s in plan.sizes if s >= JSON_MIN_SIZE):
            plain = plan.cfg("blocking", "json", size)
            pairs += [(plain, None), (plan.cfg("asyncio", "json", size), plain)]
            pairs += [(plan.ugram("json", size, w), plain) for w in (1, 2)]
        return pairs

    def needs(self, plan: Plan) -> list[Config]:
        return [*super().needs(plan), plan.cfg("c-plain", "trivial", 1024)]

    def report(self, plan: Plan, results: Results) -> Section:
        (line2, r2), (line3, r3) = p2(plan, results), p3(plan, results)
        title = "JSON into a Struct (ugram: the handler declares msg: Record, --codec json)"
        table = throughput_table(results, self.pairs(plan))
        return Section(title, [table], [line2, line3], f"P2={fmt_ratio(r2)} P3={fmt_ratio(r3)}")


class Cpu(Scenario):
    name = "cpu"
    summary = "a CPU-heavy handler (~50 µs of pure Python a record): 2 workers against one process"

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        plain = plan.cfg("blocking", "cpu", 64)
        pairs: list[tuple[Config, Config | None]] = [(plain, None)]
        if not plan.quick:
            pairs.append((plan.cfg("asyncio", "cpu", 64), plain))
        return pairs + [(plan.ugram("cpu", 64, w), plain) for w in (1, 2)]

    def report(self, plan: Plan, results: Results) -> Section:
        ugram2 = results.rates(plan.ugram("cpu", 64, 2))
        plain = results.rates(plan.cfg("blocking", "cpu", 64))
        line, r = goal("P4 CPU-heavy", ("ugram 2 workers", ugram2), ("Python blocking", plain))
        table = throughput_table(results, self.pairs(plan))
        return Section("CPU-heavy handler (~50 µs a record)", [table], [line], f"P4={fmt_ratio(r)}")


CONFINED_PLAN = (("c-mmsg", "trivial", 64), ("c-plain", "trivial", 1024))
CONFINED_UGRAM = (("trivial", 64), ("json", 1024))


class Confined(Scenario):
    name = "confined"
    summary = (
        "P1 and P2 with every receiver on the first CPU (as taskset -c 0), the sender on the others"
    )

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        configs = [plan.cfg(r, h, s) for r, h, s in CONFINED_PLAN]
        configs += [plan.ugram(h, s, 1) for h, s in CONFINED_UGRAM]
        return [(replace(cfg, confined=True), cfg) for cfg in configs]

    def needs(self, plan: Plan) -> list[Config]:
        return super().needs(plan) if cpu_split(True)[0] else []

    def report(self, plan: Plan, results: Results) -> Section:
        title = (
            "Confined: each receiver on one CPU (ugram's receiver and worker share it), the "
            "sender on the others; each row ÷ the same receiver unconfined"
        )
        if not cpu_split(True)[0]:
            return Section(title, lines=["skipped: needs 2 CPUs"], figure="confined:skipped")
        (line1, r1), (line2, r2) = (
            p1(plan, results, confined=True),
            p2(plan, results, confined=True),
        )
        table = throughput_table(results, self.pairs(plan))
        figure = f"confined:P1={fmt_ratio(r1)},P2={fmt_ratio(r2)}"
        return Section(title, [table], [line1, line2], figure)


class Compare(Scenario):
    name = "compare"
    summary = "one handler at git revision --rev against the working tree (--handler, --size, ...)"
    default = False

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        a = plan.args
        after = plan.ugram(a.handler, a.size, a.workers, codec=a.codec, flags=tuple(a.flag))
        before = replace(after, rev=a.rev)
        return [(before, None), (after, before)]

    def report(self, plan: Plan, results: Results) -> Section:
        table = throughput_table(results, self.pairs(plan))
        what = " ".join([plan.args.handler, *plan.args.flag, size_label(plan.args.size)])
        r = table.rows[1].ratio()
        title = f"{what}: git {plan.args.rev} (before) against the working tree (after)"
        return Section(
            title, [table], [f"after ÷ before = {fmt_ratio(r)}"], f"after÷before={fmt_ratio(r)}"
        )
