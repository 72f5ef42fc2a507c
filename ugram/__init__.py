"""ugram: a multiprocess ingestion server for Unix domain datagram sockets.

The public names are imported on first use (PEP 562): a receiver or worker process imports
``ugram`` on its way to its own loop, and must not pay for the client, the supervisor or
asyncio it never uses. ``import ugram; ugram.Client`` and ``from ugram import Client`` work
as if they were imported here; the ``TYPE_CHECKING`` block lets mypy and IDEs see them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import AsyncClient as AsyncClient
    from .client import Client as Client
    from .client import ClientStatistics as ClientStatistics
    from .client import Drops as Drops
    from .config import Config as Config
    from .config import load_config as load_config
    from .config import make_config as make_config
    from .datagram import Datagram as Datagram
    from .errors import ClientClosedError as ClientClosedError
    from .errors import ConfigError as ConfigError
    from .errors import HandlerImportError as HandlerImportError
    from .errors import PayloadTooLargeError as PayloadTooLargeError
    from .errors import ReplyError as ReplyError
    from .errors import RequestTimeoutError as RequestTimeoutError
    from .errors import ServerFailedError as ServerFailedError
    from .errors import ServerUnavailableError as ServerUnavailableError
    from .errors import ShutdownTimeoutError as ShutdownTimeoutError
    from .errors import SocketError as SocketError
    from .errors import SocketInUseError as SocketInUseError
    from .errors import UgramError as UgramError
    from .events import ConnState as ConnState
    from .stats import Snapshot as Snapshot
    from .supervisor import Supervisor as Supervisor
    from .workers.handler import batch as batch

__version__ = "0.1.0"

# public name -> the module that defines it
_ORIGINS = {
    "AsyncClient": ".client",
    "Client": ".client",
    "ClientStatistics": ".client",
    "Drops": ".client",
    "Config": ".config",
    "load_config": ".config",
    "make_config": ".config",
    "Datagram": ".datagram",
    "ClientClosedError": ".errors",
    "ConfigError": ".errors",
    "HandlerImportError": ".errors",
    "PayloadTooLargeError": ".errors",
    "ReplyError": ".errors",
    "RequestTimeoutError": ".errors",
    "ServerFailedError": ".errors",
    "ServerUnavailableError": ".errors",
    "ShutdownTimeoutError": ".errors",
    "SocketError": ".errors",
    "SocketInUseError": ".errors",
    "UgramError": ".errors",
    "ConnState": ".events",
    "Snapshot": ".stats",
    "Supervisor": ".supervisor",
    "batch": ".workers.handler",
}

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosedError",
    "ClientStatistics",
    "Config",
    "ConfigError",
    "ConnState",
    "Datagram",
    "Drops",
    "HandlerImportError",
    "PayloadTooLargeError",
    "ReplyError",
    "RequestTimeoutError",
    "ServerFailedError",
    "ServerUnavailableError",
    "ShutdownTimeoutError",
    "Snapshot",
    "SocketError",
    "SocketInUseError",
    "Supervisor",
    "UgramError",
    "batch",
    "load_config",
    "make_config",
]

if not TYPE_CHECKING:  # hidden from mypy: it would make every unknown attribute an Any

    def __getattr__(name: str) -> Any:
        """Import a public name, or a submodule, on first use.

        A submodule too: ``import ugram`` used to import most of them, so that
        ``ugram.config.make_config`` worked without ``import ugram.config``.

        Raises:
            AttributeError: ``name`` is neither a public name nor a submodule of ugram.
        """
        origin = _ORIGINS.get(name)
        if origin is None:
            return _submodule(name)
        value = getattr(importlib.import_module(origin, __name__), name)
        globals()[name] = value
        return value

    def _submodule(name: str) -> Any:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists, and something it imports is missing
            raise AttributeError(f"module 'ugram' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
