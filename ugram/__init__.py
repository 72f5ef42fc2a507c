"""ugram: a multiprocess ingestion server for Unix domain datagram sockets."""

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
