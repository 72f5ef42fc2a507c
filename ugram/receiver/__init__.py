"""The receiver process: the single reader of the socket, feeding the worker rings.

``Receiver`` is imported on first use (PEP 562): the supervisor imports
``ugram.receiver.mmsg`` to size the scratch area, and must not load the read loop (uvloop,
asyncio) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import Receiver as Receiver

__all__ = ["Receiver"]

if not TYPE_CHECKING:  # hidden from mypy: it would make every unknown attribute an Any

    def __getattr__(name: str) -> Any:
        """Import ``Receiver`` on first use.

        Raises:
            AttributeError: any other name.
        """
        if name != "Receiver":
            raise AttributeError(f"module 'ugram.receiver' has no attribute {name!r}")
        from .loop import Receiver

        globals()[name] = Receiver
        return Receiver
