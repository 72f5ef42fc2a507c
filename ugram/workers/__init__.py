"""Worker processes: handler loading, the handler protocol and the per-ring main loop."""

from .handler import Handler as Handler
from .handler import load_handler as load_handler

__all__ = ["Handler", "load_handler"]
