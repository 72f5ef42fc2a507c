"""Where ugram keeps its own files: the state directory and the default data paths."""

from __future__ import annotations

import os

from ..errors import UnsafePathError
from .walk import open_dir


def state_dir() -> str:
    """ugram's own data directory: ``/var/lib/ugram`` for root, else the XDG state home."""
    if os.geteuid() == 0:
        return "/var/lib/ugram"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "ugram")


def default_data_path(socket_path: str, suffix: str) -> str:
    """Where a file that belongs to the server on ``socket_path`` goes by default.

    Beside the socket file when its directory is private; otherwise (``/tmp``, an abstract
    name) in :func:`state_dir`, named after the socket, so another user can neither plant
    nor read it.
    """
    if not socket_path.startswith("@"):
        full = os.path.abspath(socket_path)
        try:
            with open_dir(os.path.dirname(full)) as directory:
                if directory.kind == "private":
                    return full + suffix
        except UnsafePathError:
            pass
        name = full.strip("/").replace("/", "_")
    else:
        name = "ugram-" + socket_path[1:].replace("/", "_")
    return os.path.join(state_dir(), name + suffix)
