"""Logging set-up shared by every process, and a rate limit for per-datagram warnings.

Each process (supervisor, receiver, workers) configures stdlib ``logging`` from the same
:class:`~ugram.config.Config`: a stderr handler at ``log_level`` in ``log_format`` (text or
one JSON object a line), then the optional ``log_config`` file (``logging.config.dictConfig``
in JSON or TOML), which is applied last and so wins. The process name in every record
(``supervisor``, ``receiver``, ``worker-3``) tells the lines apart.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import ConfigError
from .escaping import json_text, printable

if TYPE_CHECKING:
    from .config import Config

FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"
LOG_CONFIG_ALLOWED = "a readable .json or .toml file holding a logging.dictConfig dictionary"

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
)


class TextFormatter(logging.Formatter):
    """:data:`FORMAT`, with each record on lines of its own: the message is written
    :func:`~ugram.escaping.printable` (one line, no control characters), and so is every
    exception's message in a traceback. A sender name or a payload excerpt in a message, or
    a handler's exception quoting a payload, thus never starts a forged line.
    """

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The record's lines (the message's, then the traceback's)."""
        # Another handler's formatter may have cached its unescaped traceback on the record.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line's text, its message escaped."""
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo) -> str:
        """The traceback, each exception's message escaped (see :func:`format_exception`)."""
        return format_exception(ei[1]) if ei[1] is not None else "NoneType: None"


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` and the exceptions it was raised from or during, like
    :func:`traceback.format_exception`, but with each exception's message (and notes) on
    one line of its own, :func:`~ugram.escaping.printable`: stack lines come from the code,
    messages may quote what a sender sent. Exception groups show their own message only.
    """
    chain: list[tuple[str | None, traceback.TracebackException]] = []
    current: traceback.TracebackException | None = traceback.TracebackException.from_exception(exc)
    while current is not None:
        link: str | None = None
        following = None
        if current.__cause__ is not None:
            link, following = _CAUSE, current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            link, following = _CONTEXT, current.__context__
        chain.append((link, current))
        current = following
    out: list[str] = []
    for link, item in reversed(chain):
        if link is not None:
            out.append(link)
        if item.stack:
            out.append("Traceback (most recent call last):\n")
            out.extend(item.stack.format())
        out.extend(printable(line.rstrip("\n")) + "\n" for line in item.format_exception_only())
    return "".join(out).rstrip("\n")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, process, pid, logger, message (and exception).

    Characters JSON leaves raw (C1 controls, line separators, bidirectional controls) are
    written as ``\\uNNNN`` escapes, so no reader splits or reorders a line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": record.processName,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json_text(json.dumps(entry, ensure_ascii=False, default=str))


_PROCESS_NAME = ["MainProcess"]


def _name_records(process_name: str) -> None:
    """Make every record name this process (``%(processName)s``: ``worker-3``).

    Through the record factory rather than ``multiprocessing.current_process().name``, which
    would import multiprocessing (0.4 MiB in every child) and rename an embedding
    application's own process.
    """
    if _PROCESS_NAME[0] == "MainProcess" and logging.getLogRecordFactory() is _BASE_FACTORY:
        logging.setLogRecordFactory(_named_record)
    _PROCESS_NAME[0] = process_name


_BASE_FACTORY = logging.getLogRecordFactory()


def _named_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _BASE_FACTORY(*args, **kwargs)
    record.processName = _PROCESS_NAME[0]
    return record


def configure(
    level: str, process_name: str, *, log_format: str = "text", log_config: str = ""
) -> None:
    """Send logs to stderr at ``level`` in ``log_format``, then apply ``log_config``.

    Called once in every process. A handler the application installed on the root logger
    is left alone; ugram's own stderr handler is (re)configured.

    Raises:
        ConfigError: ``log_config`` cannot be read or is not a valid dictConfig.
    """
    _name_records(process_name)
    root = logging.getLogger()
    handler = _own_handler(root)
    if handler is not None:
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.setLevel(level.upper())
    if log_config:
        _apply_dict_config(load_log_config(log_config), log_config)


def configure_from(config: Config, process_name: str, *, strict: bool = True) -> None:
    """:func:`configure` with the logging options of ``config``.

    Args:
        config: the server's configuration.
        process_name: ``supervisor``, ``receiver`` or ``worker-N``.
        strict: raise on a bad ``log_config``; else (child processes, whose supervisor
            already checked the file) report it on stderr and keep the basic set-up.

    Raises:
        ConfigError: with ``strict``, ``log_config`` is unusable.
    """
    try:
        configure(
            config.log_level,
            process_name,
            log_format=config.log_format,
            log_config=config.log_config,
        )
    except ConfigError as exc:
        if strict:
            raise
        logging.getLogger("ugram").error("%s; keeping the basic logging set-up", exc)


def _own_handler(root: logging.Logger) -> logging.Handler | None:
    for handler in root.handlers:
        if getattr(handler, "_ugram", False):
            return handler
    if root.handlers:
        return None  # the application configured logging itself
    handler = logging.StreamHandler(sys.stderr)
    handler._ugram = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    return handler


def load_log_config(path: str) -> dict[str, Any]:
    """Read a dictConfig dictionary from a JSON or TOML file (a ``[logging]`` table or the
    whole document); ``version`` defaults to 1 and ``disable_existing_loggers`` to false
    (ugram's loggers exist before the file is read).

    Raises:
        ConfigError: the file is unreadable, not JSON/TOML, or holds no dictionary.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        import tomllib  # only with log_config: every process imports this module

        data: Any = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError, JSONDecodeError
        raise _bad(
            path, f"not valid {'TOML' if file.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("logging"), dict):
        data = data["logging"]
    if not isinstance(data, dict):
        raise _bad(path, "the file must hold a dictionary")
    data.setdefault("version", 1)
    data.setdefault("disable_existing_loggers", False)
    return data


def _apply_dict_config(data: dict[str, Any], path: str) -> None:
    # Imported here: logging.config (with the socketserver and queue it pulls in) costs every
    # process ~0.7 MiB, and only a log_config file needs it.
    import logging.config

    try:
        logging.config.dictConfig(data)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise _bad(path, str(exc)) from None


def _bad(path: str, why: str) -> ConfigError:
    return ConfigError(
        f"invalid value for log_config: {path!r} (allowed: {LOG_CONFIG_ALLOWED}): {why}"
    )


class RateLimited:
    """Log at most ``burst`` messages per ``interval`` seconds, then say how many were held.

    The count of what was held back is logged when the interval is over: by the next
    warning, or by :func:`flush_held`, which every process calls while idle and at exit, so
    a burst that is never followed by another warning is still accounted for.
    """

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 10.0) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._window = 0.0
        self._count = 0
        self._suppressed = 0
        _LIMITERS.add(self)

    def warning(
        self,
        msg: str,
        *args: object,
        exc_info: bool | BaseException = False,
        times: int = 1,
    ) -> None:
        """Log a warning unless the budget for this interval is spent (``exc_info``: True
        for the exception being handled, or an exception instance). ``times``: how many
        occurrences this call stands for (a compiled loop counts them in one pass)."""
        self.flush()
        logged = min(times, self._burst - self._count)
        for _ in range(max(0, logged)):
            self._logger.warning(msg, *args, exc_info=exc_info)
        self._count += max(0, logged)
        self._suppressed += times - max(0, logged)

    def flush(self, final: bool = False) -> None:
        """Log the count of what was held back once the interval is over (or now: ``final``)."""
        now = time.monotonic()
        if not final and now - self._window < self._interval:
            return
        if self._suppressed:
            self._logger.warning(
                "held back %d similar message(s) (at most %d every %.0fs are logged)",
                self._suppressed,
                self._burst,
                self._interval,
            )
        self._window, self._count, self._suppressed = now, 0, 0


_LIMITERS: weakref.WeakSet[RateLimited] = weakref.WeakSet()


def flush_held(final: bool = False) -> None:
    """Report what every rate limit of this process held back (see :class:`RateLimited`)."""
    for limiter in list(_LIMITERS):
        limiter.flush(final)
