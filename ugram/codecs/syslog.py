"""``--codec syslog``: RFC 5424 and RFC 3164 (BSD) messages into a :class:`SyslogMessage`.

Tolerant of what real local clients send, one message per datagram:

* RFC 5424: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD-ID k="v"...] MSG`` (``logger
  --rfc5424``, rsyslog, syslog-ng); a header that does not parse is read as RFC 3164.
* RFC 3164 as local senders write it, without a hostname: ``<PRI>Mmm dd hh:mm:ss
  TAG[PID]: MSG`` (glibc ``syslog(3)``, util-linux ``logger``, Go's ``log/syslog``), or with
  one (``logger --rfc3164``, network forwarders); an RFC 3339 timestamp is accepted there too.
  The year and zone of ``Mmm dd`` timestamps are the receiving host's.
* ``<PRI>MSG`` with no header at all, as Python's ``logging.handlers.SysLogHandler`` sends:
  the whole text (without the trailing NUL) is the message; no tag is guessed from it.
* No ``<PRI>`` (or one above 191): ``user.notice`` (13), as RFC 3164 section 4.3.3 says.

An RFC 6587 octet count before ``<PRI>`` and trailing NUL, CR and LF are dropped, invalid
UTF-8 is replaced (U+FFFD). An empty datagram is ``invalid``, and so is one whose RFC 3339
timestamp without a zone is out of range in the receiving host's (year 1, or the last hours
of 9999).

Limits, in characters: a message may be as long as a datagram (``max_datagram``), but a header
field longer than RFC 5424 allows makes the datagram ``invalid``: HOSTNAME 255
(:data:`MAX_HOSTNAME`; in RFC 3164, where the host is a guess, a longer first word is kept as
message text instead) and PROCID 128 (:data:`MAX_PROCID`), in both formats; APP-NAME 48
(:data:`MAX_APP_NAME`), MSGID 32 (:data:`MAX_MSGID`), an SD-ID or PARAM-NAME 32
(:data:`MAX_SD_NAME`) and a PARAM-VALUE, unescaped, 8192 (:data:`MAX_SD_VALUE`; RFC 5424 sets
none). A header that does not parse is still read as RFC 3164, whatever its lengths, and an
RFC 3164 TAG is still read up to 64 characters (a longer word is not a tag).

Parsing takes time linear in the datagram: each regular expression below either reads a
bounded number of characters or gives back each character it took at most once (see the
comment above them).
"""

from __future__ import annotations

import inspect
import re
import time
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ..errors import HandlerImportError
from . import native
from .base import CodecError, Decode

NAME = "syslog"

FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
DEFAULT_PRI = 13  # user.notice: RFC 3164 4.3.3, for a message without a valid PRI
MAX_HOSTNAME = 255
"""The longest HOSTNAME (RFC 5424 section 6.2.4), also for RFC 3164's."""
MAX_APP_NAME = 48
"""The longest RFC 5424 APP-NAME (section 6.2.5)."""
MAX_PROCID = 128
"""The longest PROCID (RFC 5424 section 6.2.6), also for RFC 3164's ``TAG[PID]``."""
MAX_MSGID = 32
"""The longest RFC 5424 MSGID (section 6.2.7)."""
MAX_SD_NAME = 32
"""The longest SD-ID or PARAM-NAME (RFC 5424 section 6.3: SD-NAME)."""
MAX_SD_VALUE = 8192
"""The longest structured data PARAM-VALUE, unescaped (RFC 5424 sets no limit)."""
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class SyslogMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One syslog message. Fields a sender did not give (or gave as ``-``) are None.

    Attributes:
        facility: 0-23 (``FACILITIES[facility]`` names it: 1 = user, 16 = local0, ...).
        severity: 0 (emerg) to 7 (debug); ``SEVERITIES[severity]`` names it.
        timestamp: when the sender says it happened (timezone-aware), or None.
        hostname, app_name, procid, msgid: header fields (``app_name`` is the RFC 3164 TAG,
            ``procid`` its ``[PID]``).
        structured_data: RFC 5424 SD elements: SD-ID -> {param: value} (a repeated
            param keeps its last value).
        message: the free-form text.
        version: 1 for RFC 5424, 0 for RFC 3164 and header-less messages.
    """

    facility: int
    severity: int
    timestamp: datetime | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: dict[str, dict[str, str]] = {}
    message: str = ""
    version: int = 0

    @property
    def priority(self) -> int:
        """The PRI value: ``facility * 8 + severity``."""
        return self.facility * 8 + self.severity

    @property
    def facility_name(self) -> str:
        """``kern``, ``user``, ..., ``local7``."""
        return FACILITIES[self.facility]

    @property
    def severity_name(self) -> str:
        """``emerg``, ``alert``, ``crit``, ``err``, ``warning``, ``notice``, ``info``, ``debug``."""
        return SEVERITIES[self.severity]


def make_decoder(message_type: Any, speedups: bool = True) -> Decode | None:
    """Return the decoder for a handler taking ``message_type`` (None: raw bytes): the
    compiled twin of :func:`parse_syslog` when ``speedups`` and built, else that function.

    Raises:
        HandlerImportError: the handler takes something other than a SyslogMessage or bytes.
    """
    if message_type is bytes:
        return None
    if message_type in (inspect.Parameter.empty, Any, object, SyslogMessage):
        compiled = native.parsers(speedups)
        if compiled is None:
            return parse_syslog
        parser: Decode = compiled.SyslogParser(parse_syslog, SyslogMessage, _bsd_time, _rfc3339)
        return parser
    raise HandlerImportError(
        f"with --codec syslog the handler takes ugram.codecs.SyslogMessage (or bytes), "
        f"not {message_type!r}"
    )


# -- parsing ----------------------------------------------------------------------------------

# None of these can take more than linear time (an attacker writes the text): the bounded ones
# (_OCTET_COUNT, _PRI, _RFC3339, _TS_3164, _TS_ISO, _SD_UNESCAPE) read a few dozen characters
# at most; in the others each unbounded repetition is of one class, or of alternatives that
# start with different characters ([^"\\] or \\), and what follows it (a space, "=", '"',
# "]") is not in that class, so a failing match gives back each character once, testing one
# character each time, and no repetition is nested in another.
_OCTET_COUNT = re.compile(r"\d{1,6} (?=<)")
_PRI = re.compile(r"<(\d{1,3})>")
_HEAD_5424 = re.compile(r"([1-9]\d{0,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ")
_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-]\d\d:\d\d)", re.ASCII
)
_SD_ID = re.compile(r'[^\s=\]"]+')
_SD_PARAM = re.compile(r' ([^\s=\]"]+)="((?:[^"\\]|\\.)*)"', re.DOTALL)
_SD_UNESCAPE = re.compile(r'\\(["\\\]])')
_TS_3164 = re.compile(
    rf"({'|'.join(MONTHS)}) ([ \d]?\d) (\d\d):(\d\d):(\d\d)(?: |$)", re.ASCII
)  # fmt: skip
_TS_ISO = re.compile(
    r"(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-]\d\d:\d\d)?)(?: |$)", re.ASCII
)
_TAG = re.compile(r"([^\s:\[\]]{1,64})(?:\[([^\]\s]*)\])?:(?: |$)")


def parse_syslog(payload: bytes) -> SyslogMessage:
    """Parse one syslog datagram (RFC 5424, RFC 3164, or ``<PRI>`` and text).

    Raises:
        CodecError: the datagram is empty (or only NULs and line ends), a header field is
            longer than its limit (:data:`MAX_HOSTNAME`, ...), or an RFC 3339 timestamp
            without a zone cannot be put in the receiving host's.
    """
    text = payload.decode("utf-8", "replace").rstrip("\x00\r\n")
    octets = _OCTET_COUNT.match(text)
    if octets:
        text = text[octets.end() :]
    if not text:
        raise CodecError("syslog: empty message")
    pri, rest = _split_pri(text)
    facility, severity = divmod(pri, 8)
    parsed = _parse_5424(rest) if rest[:1].isdigit() else None
    fields = parsed if parsed is not None else _parse_3164(rest)
    return SyslogMessage(facility=facility, severity=severity, **fields)


def _split_pri(text: str) -> tuple[int, str]:
    match = _PRI.match(text)
    if match is None or int(match.group(1)) > 191:
        return DEFAULT_PRI, text
    return int(match.group(1)), text[match.end() :]


def _parse_5424(text: str) -> dict[str, Any] | None:
    head = _HEAD_5424.match(text)
    if head is None:
        return None
    version, stamp, hostname, app_name, procid, msgid = head.groups()
    timestamp = None if stamp == "-" else _rfc3339(stamp)
    sd = _structured_data(text, head.end())
    if (stamp != "-" and timestamp is None) or sd is None:
        return None
    elements, end, sd_too_long = sd
    if end < len(text) and text[end] != " ":
        return None
    if (
        len(hostname) > MAX_HOSTNAME
        or len(app_name) > MAX_APP_NAME
        or len(procid) > MAX_PROCID
        or len(msgid) > MAX_MSGID
        or sd_too_long
    ):
        raise _too_long_5424((hostname, app_name, procid, msgid), sd_too_long)
    return {
        "version": int(version),
        "timestamp": timestamp,
        # "-" is NILVALUE (inline: this runs for every message)
        "hostname": None if hostname == "-" else hostname,
        "app_name": None if app_name == "-" else app_name,
        "procid": None if procid == "-" else procid,
        "msgid": None if msgid == "-" else msgid,
        "structured_data": elements,
        "message": text[end + 1 :].removeprefix("\ufeff"),
    }


def _too_long(field: str, most: int) -> CodecError:
    return CodecError(f"syslog: {field} longer than {most} characters")


def _too_long_5424(header: tuple[str, str, str, str], sd_too_long: str | None) -> CodecError:
    names = ("HOSTNAME", "APP-NAME", "PROCID", "MSGID")
    limits = (MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID)
    for field, most, value in zip(names, limits, header, strict=True):
        if len(value) > most:
            return _too_long(field, most)
    return CodecError(f"syslog: {sd_too_long}")


def _rfc3339(text: str) -> datetime | None:
    if not _RFC3339.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.upper())
    except ValueError:  # e.g. month 13
        return None


def _structured_data(
    text: str, pos: int
) -> tuple[dict[str, dict[str, str]], int, str | None] | None:
    """Parse ``-`` or ``[id k="v" ...]...`` at ``pos``: (elements, end, which name or value
    is over its limit, or None), or None when it does not parse.

    A field over its limit is only reported, so that structured data that does not parse
    still makes the text RFC 3164, as it would if the field were short.
    """
    if text.startswith("-", pos):
        return {}, pos + 1, None
    elements: dict[str, dict[str, str]] = {}
    too_long: str | None = None
    if not text.startswith("[", pos):
        return None
    while text.startswith("[", pos):
        sd_id = _SD_ID.match(text, pos + 1)
        if sd_id is None:
            return None
        if sd_id.end() - pos - 1 > MAX_SD_NAME:
            too_long = too_long or f"SD-ID longer than {MAX_SD_NAME} characters"
        params = elements.setdefault(sd_id.group(), {})
        pos = sd_id.end()
        while not text.startswith("]", pos):
            param = _SD_PARAM.match(text, pos)
            if param is None:
                return None
            name, value = param.group(1, 2)
            if "\\" in value:
                value = _SD_UNESCAPE.sub(r"\1", value)
            if len(name) > MAX_SD_NAME:
                too_long = too_long or f"PARAM-NAME longer than {MAX_SD_NAME} characters"
            if len(value) > MAX_SD_VALUE:
                too_long = too_long or f"PARAM-VALUE longer than {MAX_SD_VALUE} characters"
            params[name] = value
            pos = param.end()
        pos += 1
    return elements, pos, too_long


def _parse_3164(text: str) -> dict[str, Any]:
    timestamp, rest = _timestamp_3164(text)
    if timestamp is None and rest is text:
        return {"message": text}  # no header at all (Python's SysLogHandler): all message
    fields: dict[str, Any] = {"timestamp": timestamp}
    tag = _TAG.match(rest)
    if tag is None:
        hostname, space, after = rest.partition(" ")
        tag = _TAG.match(after) if space else None
        if tag is None and not space:
            return {**fields, "message": rest}
        if len(hostname) > MAX_HOSTNAME:
            # RFC 3164's HOSTNAME is a guess (the first word): one too long for a host name
            # is message text (a URL, a JSON blob), never a reason to drop the line.
            return {**fields, "message": rest}
        fields["hostname"] = hostname
        rest = after
    if tag is not None:
        app_name, procid = tag.groups()
        if procid is not None and len(procid) > MAX_PROCID:
            raise _too_long("PROCID", MAX_PROCID)
        fields.update(app_name=app_name, procid=procid or None)
        rest = rest[tag.end() :]
    return {**fields, "message": rest}


def _timestamp_3164(text: str) -> tuple[datetime | None, str]:
    """The leading ``Mmm dd hh:mm:ss`` (or RFC 3339) timestamp and the text after it.

    When there is none, ``text`` itself is returned as the rest.
    """
    iso = _TS_ISO.match(text)
    if iso:
        stamp = iso.group(1).upper()
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            return None, text[iso.end() :]
        return (when if when.tzinfo else _local(when)), text[iso.end() :]
    bsd = _TS_3164.match(text)
    if bsd is None:
        return None, text
    return _bsd_time(*bsd.groups()), text[bsd.end() :]


def _local(when: datetime) -> datetime:
    """A naive ``when`` in the receiving host's zone.

    Raises:
        CodecError: ``when`` is out of range there (the C library's ValueError or
            OverflowError, for a time in year 1 or at the very end of year 9999).
    """
    try:
        return when.astimezone()
    except (ValueError, OverflowError) as exc:
        raise CodecError(f"syslog: timestamp out of range in this zone: {exc}") from None


_BSD_CACHE_MAX = 4096
_bsd_cache: dict[tuple[str, ...], datetime | None] = {}
_bsd_cache_second = -1  # the clock's second the cached answers were given in


def _bsd_time(*fields: str) -> datetime | None:
    """:func:`_resolve_bsd_time` of ``fields``, remembered for the rest of the clock's second.

    A flood's lines share a handful of timestamps, and resolving one (the clock, the zone,
    two datetimes) costs more than the rest of the line's parse. Within one second of the
    clock the answer is the same, but for a timestamp exactly a day ahead, decided at the
    second's start instead of a fraction later.
    """
    global _bsd_cache_second
    second = int(time.time())
    if second != _bsd_cache_second or len(_bsd_cache) >= _BSD_CACHE_MAX:
        _bsd_cache.clear()
        _bsd_cache_second = second
    try:
        return _bsd_cache[fields]
    except KeyError:
        when = _bsd_cache[fields] = _resolve_bsd_time(*fields)
        return when


def _resolve_bsd_time(month: str, day: str, hour: str, minute: str, second: str) -> datetime | None:
    """A year-less local ``Mmm dd hh:mm:ss`` as an aware datetime: this year, or the last one
    when that would put it more than a day in the future (a December message read in January).
    """
    now = datetime.now().astimezone()
    try:
        numbers = (MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second))
        when = datetime(now.year, *numbers).astimezone()
        if when - now > timedelta(days=1):
            when = datetime(now.year - 1, *numbers).astimezone()
    except ValueError:  # 25:61:00, or Feb 29 in a common year
        return None
    return when


# -- formatting (the inverse, for senders and tests) -------------------------------------------


def format_rfc5424(msg: SyslogMessage) -> bytes:
    """Render ``msg`` as an RFC 5424 datagram (``version`` is written as 1)."""
    stamp = "-" if msg.timestamp is None else msg.timestamp.isoformat()
    fields = (msg.hostname, msg.app_name, msg.procid, msg.msgid)
    header = " ".join([f"<{msg.priority}>1", stamp, *(value or "-" for value in fields)])
    text = f"{header} {_format_sd(msg.structured_data)}"
    return (f"{text} {msg.message}" if msg.message else text).encode()


def _format_sd(elements: dict[str, dict[str, str]]) -> str:
    if not elements:
        return "-"
    parts = []
    for sd_id, params in elements.items():
        pairs = "".join(f' {name}="{_sd_escape(value)}"' for name, value in params.items())
        parts.append(f"[{sd_id}{pairs}]")
    return "".join(parts)


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc3164(msg: SyslogMessage) -> bytes:
    """Render ``msg`` as an RFC 3164 datagram: ``<PRI>Mmm dd hh:mm:ss [HOST ]TAG[PID]: MSG``.

    The timestamp is written in its own zone, without year; no timestamp means none written.
    """
    parts = [f"<{msg.priority}>"]
    if msg.timestamp is not None:
        t = msg.timestamp
        parts.append(
            f"{MONTHS[t.month - 1]} {t.day:2d} {t.hour:02d}:{t.minute:02d}:{t.second:02d} "
        )
    if msg.hostname:
        parts.append(msg.hostname + " ")
    if msg.app_name:
        parts.append(msg.app_name + (f"[{msg.procid}]" if msg.procid else "") + ": ")
    parts.append(msg.message)
    return "".join(parts).encode()
