"""The ``ugram`` command: ``serve``, ``send``.

Every ``serve`` flag is derived from a :class:`~ugram.config.Config` field, so the CLI, the
environment variables and the TOML keys cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Iterable, Sequence

from . import __version__, logs
from .config import ENV_PREFIX, field_help, field_kind, field_names, load_config
from .errors import EXIT_CONFIG, EXIT_ERROR, ConfigError, UgramError
from .supervisor import Supervisor


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ugram",
        description="Multiprocess ingestion server for Unix domain datagram sockets.",
    )
    parser.add_argument("--version", action="version", version=f"ugram {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_send(commands)
    _add_config(commands)
    _add_stats(commands)
    _add_doctor(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Every option can also be set with a UGRAM_<OPTION> "
        "environment variable or in a TOML file given with --config (CLI > env > file).",
    )
    serve.add_argument(
        "handler_arg",
        nargs="?",
        metavar="MODULE:HANDLER",
        help="handler to run in each worker (default: ugram.builtin:print_json, "
        "which prints each datagram as a JSON line)",
    )
    serve.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    for name in field_names():
        _add_field_flag(serve, name)


def _add_field_flag(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the flag of one Config field (default None: unset flags do not override)."""
    flag = "--" + name.replace("_", "-")
    help_text = field_help(name).replace("%", "%%")  # argparse formats help with %
    kind = field_kind(name)
    if kind == "bool":
        parser.add_argument(
            flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
    elif kind == "list":
        parser.add_argument(
            flag, dest=name, metavar=name.upper(), action="append", type=_comma, help=help_text
        )
    else:
        parser.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)


def _comma(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_send(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser(
        "send",
        help="send datagrams to a server",
        description="Send each DATA argument as one datagram (or, with none, each line of "
        "standard input).",
    )
    send.add_argument("path", metavar="PATH", help="the server's socket path (or @name)")
    send.add_argument("data", nargs="*", metavar="DATA", help="payloads, one datagram each")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ugram`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "config":
            return show_config(args)
        if args.command == "stats":
            return stats(args)
        if args.command == "doctor":
            return doctor(args)
        return send(args.path, args.data or _stdin_lines())
    except ConfigError as exc:
        print(f"ugram: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (UgramError, OSError) as exc:
        print(f"ugram: {exc}", file=sys.stderr)
        return EXIT_ERROR


def serve(args: argparse.Namespace) -> int:
    """``ugram serve``: load the config and run the supervisor until it stops.

    Raises:
        ConfigError: an invalid option (from any source).
        SocketError: the socket cannot be bound.
    """
    config = load_config(_cli_values(args), file=args.config).config
    logs.configure_from(config, "supervisor")
    logging.getLogger("ugram").debug("config: %r", config)
    return Supervisor(config).run()


def _cli_values(args: argparse.Namespace) -> dict[str, object]:
    """The config values given on the command line (None: not given).

    Raises:
        ConfigError: the handler given both as an argument and with --handler.
    """
    cli = {name: _flatten(getattr(args, name)) for name in field_names()}
    if args.handler_arg is not None:
        if cli["handler"] is not None:
            raise ConfigError("give the handler either as an argument or with --handler")
        cli["handler"] = args.handler_arg
    return cli


def _flatten(value: object) -> object:
    # An appended list flag given several times holds one list per occurrence.
    if isinstance(value, list):
        return [item for part in value for item in (part if isinstance(part, list) else [part])]
    return value


def send(path: str, payloads: Iterable[bytes | str]) -> int:
    """``ugram send``: send each payload as one datagram (blocking when the queue is full).

    Raises:
        OSError: the server is not there (with a message naming the path).
    """
    address: str | bytes = b"\0" + path[1:].encode() if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            raise UgramError(f"no ugram server is listening on {path}") from None
        for payload in payloads:
            data = os.fsencode(payload) if isinstance(payload, str) else payload
            sock.send(data)
    return 0


def _stdin_lines() -> Iterable[bytes]:
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\n")


__all__ = ["ENV_PREFIX", "build_parser", "main"]
