"""Applying a chaos plan to a running server: signals to its children and to the supervisor,
and the broken deploy. Every action is written to a journal, printed when a check fails."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.chaos.schedule import BOOTED_AFTER, Event, Plan
from tests.conftest import Server
from ugram import control
from ugram.errors import UgramError

WORKER_MARKS = ("ugram: worker", "-m ugram.workers")  # its title, or its command before that
RELOAD_WITHIN = 60.0  # seconds for the fixed deploy's SIGHUP to reload every worker
SUPERVISOR_SIGNALS = {"hup": signal.SIGHUP, "ttin": signal.SIGTTIN, "ttou": signal.SIGTTOU}


@dataclass
class Injector:
    """Runs a :class:`Plan` against ``server``; counts what it did in ``done``."""

    plan: Plan
    server: Server
    broken_flag: Path
    journal: list[str] = field(default_factory=list)
    done: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    reload_seconds: float = -1.0  # how long the fixed deploy's reload took
    _timers: list[threading.Timer] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Add a line to the journal, stamped with the time since the flood began."""
        self.journal.append(f"{time.monotonic() - self.started:7.3f}s {text}")

    def run(self) -> None:
        """Apply every event at its time, and the broken deploy at its own; return when the
        plan's time is up (the caller then sends SIGTERM). Time spent in the deploy is not
        counted against the plan: the later events keep their spacing."""
        self.started = time.monotonic()
        paused = 0.0
        deploy_done = False
        for event in [*self.plan.events, None]:
            at = self.plan.seconds if event is None else event.at
            if not deploy_done and self.plan.deploy_at <= at:
                self._sleep_until(self.plan.deploy_at + paused)
                began = time.monotonic()
                self.broken_deploy()
                paused += time.monotonic() - began
                deploy_done = True
            self._sleep_until(at + paused)
            if event is not None:
                self.apply(event)

    def _sleep_until(self, offset: float) -> None:
        delay = self.started + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if self.server.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.server.proc.returncode}")

    def finish(self) -> None:
        """Wait for the pending SIGCONTs (a stop may outlast the plan)."""
        for timer in self._timers:
            timer.join()

    # -- events -------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Apply one event to what is alive now."""
        if event.kind in SUPERVISOR_SIGNALS:
            self.server.proc.send_signal(SUPERVISOR_SIGNALS[event.kind])
            self.done[event.kind] += 1
            self.note(event.kind)
            return
        action, role = event.kind.split("_")
        # A process stopped already is not stopped again: its pending SIGCONT would cut the
        # second stop (a freeze) short.
        target = self._pick(role, event.pick, running=action == "stop")
        if target is None:
            self.note(f"{event.kind}: no {role} alive")
            return
        title = _title(target)
        try:
            if action == "kill":
                target.kill()
            else:
                target.suspend()
                timer = threading.Timer(event.hold, _resume, (target,))
                timer.start()
                self._timers.append(timer)
        except psutil.NoSuchProcess:
            self.note(f"{event.kind}: {title} (pid {target.pid}) was gone")
            return
        kind = event.kind if event.hold < 2 else f"freeze_{role}"
        self.done[kind] += 1
        held = f" for {event.hold:.2f}s" if event.hold else ""
        self.note(f"{kind}: {title} (pid {target.pid}){held}")

    def _pick(self, role: str, pick: float, running: bool) -> psutil.Process | None:
        """The target: ``pick`` of the way through the live ``role`` processes, in order of
        title and pid (``worker``: booted; ``booting``: untitled or younger than
        BOOTED_AFTER; ``receiver``); only those not stopped if ``running``."""
        unwanted = (
            {psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED} if running else {psutil.STATUS_ZOMBIE}
        )
        found = []
        for proc in psutil.Process(self.server.proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.status() not in unwanted and _role(proc) == role:
                    found.append((_title(proc), proc.pid, proc))
        if not found:
            return None
        found.sort(key=lambda item: item[:2])
        return found[int(pick * len(found))][2]

    # -- the broken deploy ------------------------------------------------------------------

    def broken_deploy(self) -> None:
        """SIGHUP while the handler cannot import: the server must keep serving and say why
        (a reload abandoned, or a respawn that failed to start). Then the code is fixed and
        a SIGHUP must reload every worker."""
        self._await_quiet()
        rejected = self._count_rejections()
        self.broken_flag.touch()
        self.server.proc.send_signal(signal.SIGHUP)
        self.done["bad_hup"] += 1
        self.note("broken deploy: SIGHUP with a handler that cannot import")
        deadline = time.monotonic() + 15
        while self._count_rejections() == rejected and time.monotonic() < deadline:
            self._alive()
            time.sleep(0.05)
        seen = self._count_rejections() > rejected
        self.done["bad_hup_rejected"] += seen
        self.note(f"broken deploy {'rejected' if seen else 'NOT rejected within 15s'}")
        self.broken_flag.unlink()
        reloaded = self.server.stderr.count("last worker restarted")
        self.server.proc.send_signal(signal.SIGHUP)
        self.done["hup"] += 1
        self.note("fixed deploy: SIGHUP")
        # A reload starts each slot's replacement only while no worker boots anywhere, so
        # frequent recycling (max_rss, max_records) can make it take a while.
        began = time.monotonic()
        while self.server.stderr.count("last worker restarted") == reloaded:
            self._alive()
            if time.monotonic() > began + RELOAD_WITHIN:
                self.note(f"fixed deploy: NOT reloaded within {RELOAD_WITHIN:g}s")
                return
            time.sleep(0.05)
        self.done["fixed_hup_reloaded"] += 1
        self.reload_seconds = time.monotonic() - began
        self.note(f"fixed deploy: every worker reloaded in {self.reload_seconds:.2f}s")

    def _count_rejections(self) -> int:
        # In the log line of an abandoned reload and in that of a respawn that failed.
        return self.server.stderr.count("the handler could not be imported")

    def _alive(self) -> None:
        if self.server.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.server.proc.returncode}")

    def _await_quiet(self) -> None:
        """Until every active worker runs (none booting or waiting for a respawn), up to
        10 s: a booting worker holds a SIGHUP back, and the broken deploy is about the
        reload."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._alive()
            with contextlib.suppress(UgramError):
                report = control.fetch(str(self.server.path))
                active = [w for w in report.workers if w.index < report.active_workers]
                if all(w.state == "running" for w in active):
                    return
            time.sleep(0.05)
        self.note("broken deploy: the workers were not all running after 10s")


class Progress:
    """Samples the server's handled total (control socket) every ``every`` seconds in a
    thread, to find the longest time the flood made no progress."""

    def __init__(self, server: Server, every: float = 0.2) -> None:
        self.server, self.every = server, every
        self.samples: list[tuple[float, int]] = []  # (monotonic, handled)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(UgramError):
                handled = control.fetch(str(self.server.path)).totals.handled
                self.samples.append((time.monotonic(), handled))

    def longest_stall(self) -> float:
        """Seconds of the longest stretch between samples without a record handled."""
        longest, since, last = 0.0, None, -1
        for when, handled in self.samples:
            if handled != last:
                since, last = when, handled
            elif since is not None:
                longest = max(longest, when - since)
        return longest


def _role(proc: psutil.Process) -> str:
    """``receiver``, ``worker`` (booted), ``booting`` (a worker), or ``""``."""
    cmdline = " ".join(proc.cmdline())
    if "ugram: receiver" in cmdline:
        return "receiver"
    if not any(mark in cmdline for mark in WORKER_MARKS):
        return ""
    young = time.time() - proc.create_time() < BOOTED_AFTER
    return "booting" if young or "ugram: worker" not in cmdline else "worker"


def _title(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.NoSuchProcess):
        cmdline = proc.cmdline()
        return cmdline[0] if cmdline and cmdline[0].startswith("ugram:") else "booting"
    return "gone"


def _resume(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.resume()
