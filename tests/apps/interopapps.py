"""Test handlers for the codec and interop tests, run by real ugram workers."""

from __future__ import annotations

import os

import ugram

OUT = os.environ.get("UGTEST_OUT", "/tmp")


def _append(text: str) -> None:
    with open(f"{OUT}/{os.getpid()}.log", "a", encoding="utf-8") as out:
        out.write(text + "\n")


def lines_raising(line: bytes) -> None:
    """Records each line (``--codec lines``); raises for the line ``boom``."""
    if line == b"boom":
        raise RuntimeError("boom")
    _append(line.decode())


def lines_text(text: str, dgram: ugram.Datagram) -> None:
    """Records each line as text with its sender (``--codec lines``)."""
    _append(f"{text} {dgram.sender}")


class LinesBatch:
    """Records each batch it gets, as ``<number of lines>:<lines joined with ,>``."""

    def handle_batch(self, texts: list[str], dgrams: list[ugram.Datagram]) -> None:
        assert len(texts) == len(dgrams)
        _append(f"{len(texts)}:{','.join(texts)}")
