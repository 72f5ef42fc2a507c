"""Worker processes: handler loading, the handler protocol and the per-ring main loop.

``Handler`` and ``load_handler`` are imported on first use (PEP 562), so that importing a
submodule (``ugram.workers.handler`` for :func:`ugram.batch`) loads no more than it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handler import Handler as Handler
    from .handler import load_handler as load_handler

__all__ = ["Handler", "load_handler"]

if not TYPE_CHECKING:  # hidden from mypy: it would make every unknown attribute an Any

    def __getattr__(name: str) -> Any:
        """Import ``Handler`` or ``load_handler`` on first use.

        Raises:
            AttributeError: any other name.
        """
        if name not in __all__:
            raise AttributeError(f"module 'ugram.workers' has no attribute {name!r}")
        from . import handler

        value = getattr(handler, name)
        globals()[name] = value
        return value
