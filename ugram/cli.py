"""The ``ugram`` command: ``serve``, ``send``.

Every ``serve`` flag is derived from a :class:`~ugram.config.Config` field, so the CLI, the
environment variables and the TOML keys cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Sequence

from . import __version__, logs
from .config import ENV_PREFIX, field_help, field_kind, field_names, load_config
from .errors import EXIT_CONFIG, EXIT_ERROR, ConfigError, ServerFailedError, UgramError
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
        # `--flag` means true; `--flag=false` (or any value) is validated like env and TOML.
        parser.add_argument(
            flag, dest=name, metavar="BOOL", nargs="?", const="true", help=help_text
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
        "standard input), through ugram.Client and its full-queue policies.",
    )
    send.add_argument("path", metavar="PATH", help="the server's socket path (or @name)")
    send.add_argument("data", nargs="*", metavar="DATA", help="payloads, one datagram each")
    send.add_argument(
        "--codec",
        choices=["raw", "json", "msgpack"],
        default="raw",
        help="json/msgpack: parse each DATA as a JSON value (else a string) and send it "
        "encoded (default: raw bytes)",
    )
    send.add_argument(
        "--policy",
        choices=["block", "block_with_timeout", "buffer", "drop"],
        default="block",
        help="when the server's queue is full (default: block)",
    )
    send.add_argument(
        "--timeout", type=float, default=1.0, help="block_with_timeout: seconds (default 1)"
    )
    send.add_argument(
        "--count", type=int, help="send N datagrams, cycling through DATA (none: 0, 1, ...)"
    )
    send.add_argument("--rate", type=float, default=0.0, help="datagrams per second (0: max)")
    send.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for an absent server (0)"
    )
    send.add_argument("--max-datagram", type=int, default=65536, help="largest payload")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ugram`` command; returns the process exit code."""
    args = parse_args(build_parser(), sys.argv[1:] if argv is None else list(argv))
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "config":
            return show_config(args)
        if args.command == "stats":
            return stats(args)
        if args.command == "doctor":
            return doctor(args)
        return send(args)
    except ConfigError as exc:
        print(f"ugram: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        # `ugram stats | head -1`: the reader has gone, which is no error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except (UgramError, OSError) as exc:
        print(f"ugram: {exc}", file=sys.stderr)
        return EXIT_ERROR


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, accepting what argparse alone would refuse but a user means.

    A value that starts with ``-`` is taken as the value of the flag before it
    (``--mode -rw-rw----``), and ``ugram send`` takes DATA after its options too
    (``ugram send PATH --codec json '{"b": 2}'``).
    """
    args, extra = parser.parse_known_args(_join_dash_values(parser, argv))
    if extra and args.command == "send" and not any(item.startswith("-") for item in extra):
        args.data = [*args.data, *extra]
    elif extra:
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``command`` (its usage is the one a mistake should show)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return parser


def _join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    flags = _value_flags(parser)
    joined: list[str] = []
    items = iter(argv)
    for item in items:
        if item in flags:
            value = next(items, None)
            if value is not None and value.startswith("-") and value not in flags:
                joined.append(f"{item}={value}")
                continue
            joined.append(item)
            if value is not None:
                joined.append(value)
            continue
        joined.append(item)
    return joined


def _value_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every long flag (of any subcommand) that takes exactly one value."""
    flags: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _value_flags(sub)
        elif action.nargs is None and action.option_strings:
            flags |= {flag for flag in action.option_strings if flag.startswith("--")}
    return flags


def serve(args: argparse.Namespace) -> int:
    """``ugram serve``: load the config and run the supervisor until it stops.

    Raises:
        ConfigError: an invalid option (from any source).
        SocketError: the socket cannot be bound.
    """
    config = load_config(_cli_values(args), file=args.config).config
    logs.configure_from(config, "supervisor")
    logging.getLogger("ugram").debug("config: %r", config)
    try:
        return Supervisor(config).run()
    except ServerFailedError as exc:  # the reason is logged already
        return exc.exit_code


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


def send(args: argparse.Namespace) -> int:
    """``ugram send``: send datagrams with :class:`ugram.Client`, print a summary with --count.

    Raises:
        ServerUnavailableError: no server listens on the path (within --wait).
        ConfigError: an invalid option.
    """
    from .cli_send import send_command

    return send_command(
        args.path,
        args.data,
        stdin=() if args.data or args.count is not None else _stdin_lines(),
        codec=args.codec,
        policy=args.policy,
        timeout=args.timeout,
        count=args.count,
        rate=args.rate,
        wait=args.wait,
        max_datagram=args.max_datagram,
    )


def _stdin_lines() -> Iterable[bytes]:
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\n")


# -- ugram config / stats / doctor ----------------------------------------------------------------


def _add_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config",
        help="print the effective configuration and where each value came from",
        description="Print the configuration `ugram serve` would run with the same flags, "
        "environment and file, and the source of each value (cli > env > file > default). "
        "The output is valid TOML.",
    )
    config.add_argument("handler_arg", nargs="?", metavar="MODULE:HANDLER", help="as for serve")
    config.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    config.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    for name in field_names():
        _add_field_flag(config, name)


def _add_socket_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the server's socket path or @name (default: from UGRAM_SOCKET, the --config "
        "file, or /tmp/ugram.sock)",
    )
    parser.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")


def _add_stats(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = commands.add_parser(
        "stats",
        help="print a running server's counters and rates",
        description="Read a running server's counters from its control socket "
        "(<socket>.ctl) and print them with per-second rates over --interval.",
    )
    _add_socket_options(stats)
    stats.add_argument("--json", dest="as_json", action="store_true", help="one JSON report")
    stats.add_argument("--watch", action="store_true", help="refresh until interrupted")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    stats.add_argument("--count", type=int, default=0, help="with --watch: stop after N frames")
    stats.add_argument(
        "--expect-user",
        metavar="USER",
        help="the user (name or uid) the server runs as; the report is refused from anyone "
        "else (default: the socket file's owner where only trusted users could have made it, "
        "else root or you)",
    )


def _add_doctor(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check this machine's settings for ugram and print advice",
        description="Check kernel and platform settings that matter to ugram and print "
        "advice. Exits 1 only when something would stop the server from running.",
    )
    _add_socket_options(doctor)


def show_config(args: argparse.Namespace) -> int:
    """``ugram config``: print the effective configuration and the source of each value.

    Raises:
        ConfigError: an invalid option (from any source), or an unusable log_config file.
    """
    import msgspec

    resolved = load_config(_cli_values(args), file=args.config)
    if resolved.config.log_config:
        logs.load_log_config(resolved.config.log_config)
    values = msgspec.to_builtins(resolved.config)
    values["mode"] = f"0o{resolved.config.file_mode:03o}"  # as octal, whichever form was given
    if args.as_json:
        table = {k: {"value": v, "source": resolved.sources[k]} for k, v in values.items()}
        print(msgspec.json.encode(table).decode())
        return 0
    print("# effective ugram configuration (precedence: cli > env > file > default)")
    for name, value in values.items():
        line = f"{name} = {_toml(value)}" if value is not None else f"# {name} = (not set)"
        print(f"{line:<44} # {resolved.sources[name]}")
    return 0


def _toml(value: object) -> str:
    import json

    if isinstance(value, str) and value.startswith("0o"):
        return value  # a mode: an octal integer in TOML
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # JSON strings and lists are TOML too


def _socket_of(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return load_config(file=args.config).config.socket


def stats(args: argparse.Namespace) -> int:
    """``ugram stats``: print a running server's counters.

    Raises:
        UgramError: no server answers on the control socket.
        ConfigError: --interval is not positive, --expect-user names no user, or the
            configuration is invalid.
    """
    from .control import stats_command

    if args.interval <= 0:
        raise ConfigError(f"invalid value for --interval: {args.interval} (allowed: > 0)")
    return stats_command(
        _socket_of(args),
        as_json=args.as_json,
        watch=args.watch,
        interval=args.interval,
        count=args.count,
        expect_uid=None if args.expect_user is None else _uid_of(args.expect_user),
    )


def _uid_of(user: str) -> int:
    """The uid of a user name or number.

    Raises:
        ConfigError: no such user.
    """
    import pwd

    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"invalid value for --expect-user: no user named {user!r}") from None


def doctor(args: argparse.Namespace) -> int:
    """``ugram doctor``: check the machine and print advice; 1 if something is fatal.

    Raises:
        ConfigError: the configuration (env, file) is invalid.
    """
    from .doctor import run_checks

    cli = {"socket": args.socket} if args.socket else {}
    return run_checks(load_config(cli, file=args.config).config)


__all__ = ["ENV_PREFIX", "build_parser", "main"]
