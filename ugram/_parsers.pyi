# Types of the optional compiled parsers (ugram/_parsers.c); see ugram.codecs.native.
from collections.abc import Callable
from typing import Any

API_VERSION: int

class SyslogParser:
    """parse_syslog, compiled: the same answer, or ``fallback(payload)``'s."""

    def __init__(
        self,
        fallback: Callable[[bytes], Any],
        message_type: type[Any],
        bsd_time: Callable[..., Any],
        rfc3339: Callable[[str], Any],
        /,
    ) -> None: ...
    def __call__(self, payload: bytes, /) -> Any: ...

class StatsdParser:
    """parse_packet, compiled: the same lines, or ``fallback(payload)``'s."""

    def __init__(self, fallback: Callable[[bytes], Any], metric_type: type[Any], /) -> None: ...
    def __call__(self, payload: bytes, /) -> Any: ...

class LinesParser:
    """The lines codec's decode, compiled: ``parse`` is bytes, str (strict UTF-8) or a
    function of the line's bytes; the same lines, or ``fallback(payload)``'s."""

    def __init__(
        self, fallback: Callable[[bytes], Any], parse: Callable[[bytes], Any], /
    ) -> None: ...
    def __call__(self, payload: bytes, /) -> Any: ...
