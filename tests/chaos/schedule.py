"""The chaos soak's plan: a server configuration and a timeline of faults, drawn from one seed.

Everything random about a run is drawn here, from ``random.Random(seed)``, before the server
starts: which options it runs with and which fault comes when. Replaying a seed replays the
plan; what the plan hits (which worker is alive at that instant) is then decided by the
``pick`` fraction of each event over the processes alive at that moment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WORKERS, MAX_WORKERS = 2, 4
WORKER_TIMEOUT = 3.0  # seconds: a SIGSTOP shorter than this is survived, a freeze is not
STOP_RANGE = (0.05, 1.0)  # seconds a SIGSTOPped process stays stopped (under WORKER_TIMEOUT)
FREEZE = WORKER_TIMEOUT + 1.5  # a SIGSTOP the supervisor must end by killing the process
EVENTS_PER_SECOND = 2.5
BOOTED_AFTER = 0.5  # seconds: a worker younger than this (or untitled) counts as booting
HEADROOM = 8 << 20  # bytes below max_rss where a leaking worker starts (tests/apps/chaosapp.py)
QUIET_BEFORE_DEPLOY = 2.0  # no stop may overlap the broken deploy (it would delay its SIGHUP)

# name -> weight of the random events (the broken deploy and the final SIGTERM are fixed)
KINDS = {
    "kill_worker": 4,  # a worker past its boot, likely with a record in hand
    "kill_booting": 1,  # a worker importing the handler or in setup() (a boot failure)
    "kill_receiver": 2,
    "stop_worker": 2,
    "stop_receiver": 1,
    "hup": 1,
    "ttin": 1,
    "ttou": 1,
}


@dataclass(frozen=True)
class Event:
    """One fault at ``at`` seconds into the flood.

    ``pick`` in [0, 1) chooses the target among the live candidates (sorted by title, then
    pid) at that moment; ``hold`` is how long a SIGSTOP lasts before SIGCONT.
    """

    at: float
    kind: str
    pick: float = 0.0
    hold: float = 0.0

    def __str__(self) -> str:
        extra = f" hold={self.hold:.2f}s" if self.hold else ""
        return f"{self.at:7.3f}s {self.kind} pick={self.pick:.3f}{extra}"


@dataclass(frozen=True)
class Plan:
    """A server configuration and a fault timeline; ``seconds`` is when SIGTERM comes."""

    seed: int
    seconds: float
    route_by: bool  # --codec json --route-by s (the Python receiver path) or round-robin
    speedups: bool
    receive_batch: int
    ring_size: int
    batch_size: int
    max_records: int
    max_rss: int  # MiB
    leak: int  # bytes of each record that workers of even slots keep forever
    work_us: int  # CPU per record in the handler
    deploy_at: float  # the broken deploy: SIGHUP while the handler cannot import, then fixed
    events: list[Event] = field(default_factory=list)

    def server_args(self) -> list[str]:
        """The ``ugram serve`` options of this plan."""
        args = ["--workers", str(WORKERS), "--max-workers", str(MAX_WORKERS)]
        args += ["--worker-timeout", str(WORKER_TIMEOUT), "--graceful-timeout", "60"]
        args += ["--max-datagram", "1024", "--ring-size", str(self.ring_size)]
        args += ["--receive-batch", str(self.receive_batch), "--batch-size", str(self.batch_size)]
        args += ["--max-records", str(self.max_records), "--max-rss", str(self.max_rss)]
        args += [f"--speedups={'true' if self.speedups else 'false'}"]
        if self.route_by:
            args += ["--codec", "json", "--route-by", "s"]
        return args

    def describe(self) -> str:
        """The plan as text: enough to see what a seed does, and to replay it."""
        head = (
            f"chaos seed {self.seed} ({self.seconds:g}s; replay: pytest tests/chaos "
            f"--chaos-seed {self.seed} --chaos-seconds {self.seconds:g})\n"
            f"  server: {' '.join(self.server_args())}\n"
            f"  leak {self.leak} B/record in even slots, {self.work_us} us/record; "
            f"broken deploy at {self.deploy_at:.3f}s\n"
        )
        return head + "".join(f"  {event}\n" for event in self.events)


def make_plan(seed: int, seconds: float) -> Plan:
    """Draw a plan for ``seconds`` of flood from ``seed`` (the same seed, the same plan)."""
    rng = random.Random(seed)
    route_by = rng.random() < 0.5
    speedups = rng.random() < 0.7
    receive_batch = rng.choice([64, 64, 3, 1])
    ring_size = rng.choice([65_536, 1 << 20, 8 << 20])
    batch_size = rng.choice([1, 16, 256])
    max_records = rng.randint(15_000, 40_000)
    work_us = rng.choice([0, 20, 50])
    deploy_at = rng.uniform(0.3, 0.6) * seconds
    events = _events(rng, seconds, deploy_at)
    return Plan(
        seed=seed,
        seconds=seconds,
        route_by=route_by,
        speedups=speedups,
        receive_batch=receive_batch,
        ring_size=ring_size,
        batch_size=batch_size,
        max_records=max_records,
        max_rss=64,
        # The leaking workers would reach max_rss after half of max_records if all they keep
        # were new memory; some of it reuses freed memory (measured: 5 to 15% of it), so
        # they reach it within 60% of max_records. They are recycled by memory, the others
        # by count.
        leak=HEADROOM // (max_records // 2),
        work_us=work_us,
        deploy_at=deploy_at,
        events=events,
    )


def _events(rng: random.Random, seconds: float, deploy_at: float) -> list[Event]:
    kinds, weights = list(KINDS), list(KINDS.values())
    count = max(1, round(EVENTS_PER_SECOND * seconds))
    events = []
    for _ in range(count):
        at = rng.uniform(0.3, seconds)
        kind = rng.choices(kinds, weights)[0]
        hold = rng.uniform(*STOP_RANGE) if kind.startswith("stop") else 0.0
        events.append(Event(at, kind, rng.random(), hold))
    if rng.random() < 0.5:  # a freeze: stopped past worker_timeout, killed by the supervisor
        kind = rng.choice(["stop_worker", "stop_receiver"])
        events.append(Event(rng.uniform(0.3, seconds), kind, rng.random(), FREEZE))
    # Nothing stopped across the broken deploy: a frozen worker would be killed, and its
    # respawn (which cannot import) would hold the reload back until the code is fixed.
    events = [e for e in events if not (e.at < deploy_at < e.at + e.hold + QUIET_BEFORE_DEPLOY)]
    return sorted(events, key=lambda e: e.at)
