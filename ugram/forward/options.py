"""The forwarding sink's options, checked once at start-up with messages that name them."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from ..errors import ConfigError
from .subjects import Template

Seconds = Annotated[float, msgspec.Meta(gt=0)]
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


class ForwardOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach JetStream and what to do while it does not answer (``UGFORWARD_<NAME>``).

    Attributes:
        servers: comma-separated ``nats://host:port`` URLs (``tls://`` for TLS; user and
            password or a token may sit in the URL).
        subject: where each message goes: fixed (``logs.app``), or a template whose
            ``{field}`` parts come from a top-level field of a json or msgpack payload
            (``logs.{service}``).
        fallback_subject: where a message goes whose template field is missing or not a
            valid subject token (counted as unrouted); "": the template with each field
            replaced by ``_unrouted``.
        stream: the JetStream stream that must store the messages (publishes carry
            ``Nats-Expected-Stream``, so a subject caught by another stream is refused).
        create_stream: create the stream if it is missing, capturing ``stream_subjects``.
        stream_subjects: comma-separated subjects of a created stream; "": the subject with
            each template field replaced by ``*``.
        replicas: replicas of a created stream (1-5; 3 on a three-node cluster).
        duplicate_window: seconds a created stream remembers message ids: replays and
            retries within it are stored once.
        max_msgs, max_bytes: limits of a created stream (0: none); it then refuses new
            messages (``discard new``) rather than dropping old ones.
        creds: a ``.creds`` file (NATS decentralized auth: JWT and nkey seed).
        nkey: an nkey seed file.
        tls_ca, tls_cert, tls_key: CA bundle to verify the servers, and a client certificate
            and key to present.
        batch: records per batch (per acknowledgement round trip); 0: the server's
            ``batch_size``.
        max_in_flight: publishes awaiting their acknowledgement at once, per worker.
        ack_timeout: seconds to wait for one acknowledgement before publishing it again.
        retry_max: the longest pause, in seconds, between two rounds of retries (the pause
            doubles from 0.05 s after each round that delivered nothing).
        policy: ``block`` (retry until delivered: backpressure), ``drop_oldest`` (give up
            messages per ``drop_after`` / ``drop_after_bytes``, counted) or ``drop_newest``
            (keep what the ring holds; the receiver drops new datagrams for this worker,
            counted as ``shed``, while deliveries fail and the backlog is over
            ``drop_after`` / ``drop_after_bytes``).
        drop_after: with ``drop_oldest``: give up a message not acknowledged this many
            seconds after ugram received it; with ``drop_newest``: shed once the oldest
            message held has waited this long (0: no age limit).
        drop_after_bytes: while deliveries fail and this worker's ring holds more than this
            many unacknowledged bytes: with ``drop_oldest``, give up the batch in hand; with
            ``drop_newest``, shed (0: no limit).
        unhealthy_after: ``/healthz`` is unhealthy once deliveries have failed (or the
            connection has been down) for this many seconds.
    """

    servers: str = "nats://127.0.0.1:4222"
    subject: str = "ugram"
    fallback_subject: str = ""
    stream: str = "UGRAM"
    create_stream: bool = True
    stream_subjects: str = ""
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    duplicate_window: Seconds = 120.0
    max_msgs: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    creds: str = ""
    nkey: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    batch: Annotated[int, msgspec.Meta(ge=0, le=65536)] = 0
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 256
    ack_timeout: Seconds = 2.0
    retry_max: Seconds = 2.0
    policy: Literal["block", "drop_oldest", "drop_newest"] = "block"
    drop_after: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    drop_after_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    unhealthy_after: Seconds = 10.0

    def __post_init__(self) -> None:
        # ValueError here becomes a ValidationError (msgspec.convert): each names its option.
        _check("servers", server_list, self.servers)
        _check("subject", Template, self.subject)
        if self.fallback_subject:
            _check("fallback_subject", _fixed_subject, self.fallback_subject)
        if not _STREAM_NAME.fullmatch(self.stream):
            _fail("stream", f"{self.stream!r}: letters, digits, '-' and '_' only")
        for subject in subject_list(self.stream_subjects):
            _check("stream_subjects", _stream_subject, subject)
        if self.policy != "block" and not (self.drop_after or self.drop_after_bytes):
            _fail("policy", f"{self.policy} needs drop_after or drop_after_bytes (> 0)")
        for name in ("creds", "nkey", "tls_ca", "tls_cert", "tls_key"):
            _check(name, _readable, getattr(self, name))
        if bool(self.tls_cert) != bool(self.tls_key):
            _fail("tls_cert", "tls_cert and tls_key go together")

    @property
    def template(self) -> Template:
        """The subject template."""
        return Template(self.subject)

    @property
    def fallback(self) -> str:
        """Where an unroutable message goes."""
        return self.fallback_subject or self.template.fill_all("_unrouted")

    @property
    def subjects_of_stream(self) -> list[str]:
        """The subjects a created stream captures."""
        return subject_list(self.stream_subjects) or [self.template.fill_all("*")]

    def connect_options(self) -> dict[str, Any]:
        """The credential and TLS keyword arguments of ``nats.connect``.

        Raises:
            ConfigError: a TLS file does not load.
        """
        kwargs: dict[str, Any] = {}
        if self.creds:
            kwargs["user_credentials"] = self.creds
        if self.nkey:
            kwargs["nkeys_seed"] = self.nkey
        if self.tls_ca or self.tls_cert or _uses_tls(self.servers):
            kwargs["tls"] = self.tls_context()
        return kwargs

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context: the system's CAs, or ``tls_ca``; ``tls_cert`` presented.

        Raises:
            ConfigError: a file is not a certificate or key.
        """
        try:
            context = ssl.create_default_context(cafile=self.tls_ca or None)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"UGFORWARD_TLS_*: cannot load the TLS files: {exc}") from None
        return context


def server_list(servers: str) -> list[str]:
    """The ``servers`` option as a list of URLs.

    Raises:
        ValueError: none given, or one that is not ``nats|tls|ws|wss://host[:port]``.
    """
    urls = [url.strip() for url in servers.split(",") if url.strip()]
    if not urls:
        raise ValueError("no server URL given (nats://host:4222, comma-separated)")
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in _SCHEMES or not parts.hostname or port == -1:
            raise ValueError(f"{url!r} is not a server URL (nats://host:4222)")
    return urls


def subject_list(subjects: str) -> list[str]:
    """A comma-separated list of subjects, blanks left out."""
    return [subject.strip() for subject in subjects.split(",") if subject.strip()]


def _uses_tls(servers: str) -> bool:
    return any(url.startswith(("tls://", "wss://")) for url in server_list(servers))


def _readable(path: str) -> None:
    if path and not os.access(path, os.R_OK):
        why = "does not exist" if not os.path.exists(path) else "is not readable"
        raise ValueError(f"{path} {why}")


def _fixed_subject(subject: str) -> None:
    Template(subject, fields_allowed=False)


def _stream_subject(subject: str) -> None:
    Template(subject, wildcards=True, fields_allowed=False)


def _check(name: str, check: Callable[[str], object], value: str) -> None:
    try:
        check(value)
    except ValueError as exc:
        _fail(name, str(exc))


def _fail(name: str, why: str) -> None:
    raise ValueError(f"invalid value for {name} (UGFORWARD_{name.upper()}): {why}")
