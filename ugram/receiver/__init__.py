"""The receiver process: the single reader of the socket, feeding the worker rings."""

from .loop import Receiver as Receiver

__all__ = ["Receiver"]
