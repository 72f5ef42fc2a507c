"""Command & control (use case 5): send a command, get its result as a reply.

    ugram serve examples.control:Control --codec json --credentials --allow-uid "$(id -u)" \\
        --socket /tmp/ctl.sock --mode 0600

A command is ``{"cmd": NAME, "args": {...}}``; the reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. Commands: ``ping``, ``echo`` (returns ``args``), ``sum``
(of ``args.values``), ``uptime`` (seconds since the worker started), ``whoami`` (the
caller's kernel-verified pid/uid/gid, with ``--credentials``), ``help``.

Who may command is the server's job, not the handler's: ``--mode 0600`` and ``--allow-uid``
admit only the chosen users, checked by the kernel (SO_PASSCRED), and everyone else's
datagrams are rejected and counted as ``unauthorized``.

    python examples/control.py /tmp/ctl.sock ping
    python examples/control.py /tmp/ctl.sock sum '{"values": [1, 2, 3]}'
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

import ugram


class Command(msgspec.Struct):
    cmd: str
    args: dict[str, Any] = {}


def _sum(args: dict[str, Any], dgram: ugram.Datagram) -> float:
    values = msgspec.convert(args.get("values", []), list[float])
    return sum(values)


def _whoami(args: dict[str, Any], dgram: ugram.Datagram) -> dict[str, int | None]:
    return {"pid": dgram.pid, "uid": dgram.uid, "gid": dgram.gid}


class Control:
    """Runs each command and replies with its result."""

    def setup(self) -> None:
        self.started = time.monotonic()
        self.commands: dict[str, Callable[[dict[str, Any], ugram.Datagram], Any]] = {
            "ping": lambda args, dgram: "pong",
            "echo": lambda args, dgram: args,
            "sum": _sum,
            "uptime": lambda args, dgram: time.monotonic() - self.started,
            "whoami": _whoami,
            "help": lambda args, dgram: sorted(self.commands),
        }

    def handle(self, command: Command, dgram: ugram.Datagram) -> None:
        run = self.commands.get(command.cmd)
        if run is None:
            answer: dict[str, Any] = {"ok": False, "error": f"unknown command {command.cmd!r}"}
        else:
            try:
                answer = {"ok": True, "result": run(command.args, dgram)}
            except (ValueError, TypeError) as exc:  # msgspec.ValidationError is a ValueError
                answer = {"ok": False, "error": str(exc)}
        if dgram.sender is not None:  # an unbound sender cannot get an answer
            dgram.reply(msgspec.json.encode(answer))


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    args = msgspec.json.decode(argv[2]) if len(argv) == 3 else {}
    with ugram.Client(argv[0], codec="json") as client:
        print(client.request({"cmd": argv[1], "args": args}).decode())


if __name__ == "__main__":
    main(sys.argv[1:])
