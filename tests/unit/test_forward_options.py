"""The forwarding sink's options and subjects: checked at start-up, with the option named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ugram.builtin.options import load_options
from ugram.errors import ConfigError
from ugram.forward import ForwardOptions, JetStreamSink, Template


def _options(**env: str) -> ForwardOptions:
    return load_options(
        "UGFORWARD_", ForwardOptions, {}, {f"UGFORWARD_{k.upper()}": v for k, v in env.items()}
    )


def test_defaults_derive_the_stream_subjects_and_the_fallback() -> None:
    options = _options(subject="logs.{service}.{level}", servers="nats://a:4222, tls://b:4443")
    assert options.subjects_of_stream == ["logs.*.*"]
    assert options.fallback == "logs._unrouted._unrouted"
    assert _options().subjects_of_stream == ["ugram"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"servers": "http://a:4222"}, "UGFORWARD_SERVERS"),
        ({"servers": "nats://a:x"}, "UGFORWARD_SERVERS"),
        ({"servers": " , "}, "UGFORWARD_SERVERS"),
        ({"subject": "logs..app"}, "UGFORWARD_SUBJECT"),
        ({"subject": "logs.*"}, "UGFORWARD_SUBJECT"),
        ({"subject": "logs.{a b}"}, "UGFORWARD_SUBJECT"),
        ({"stream": "A.B"}, "UGFORWARD_STREAM"),
        ({"replicas": "7"}, "UGFORWARD_REPLICAS"),
        ({"max_in_flight": "0"}, "UGFORWARD_MAX_IN_FLIGHT"),
        ({"policy": "drop_newest"}, "UGFORWARD_POLICY.*drop_newest needs drop_after"),
        ({"policy": "drop_oldest"}, "drop_after"),
        ({"policy": "drop-newest"}, "UGFORWARD_POLICY.*use block, drop_newest or drop_oldest"),
        ({"policy": "DROP_NEWEST"}, "UGFORWARD_POLICY.*use block, drop_newest or drop_oldest"),
        ({"policy": ""}, "UGFORWARD_POLICY.*use block"),
        ({"policy": "drop_newest", "drop_after_bytes": "-1"}, "UGFORWARD_DROP_AFTER_BYTES"),
        ({"creds": "/nonexistent/u.creds"}, "does not exist"),
        ({"bogus": "1"}, "unknown option UGFORWARD_BOGUS"),
    ],
)
def test_a_bad_option_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _options(**env)


def test_drop_newest_takes_an_age_or_a_backlog_limit() -> None:
    assert _options(policy="drop_newest", drop_after_bytes="65536").drop_after_bytes == 65536
    assert _options(policy="drop_newest", drop_after="2.5").drop_after == 2.5
    assert _options().policy == "block"


def test_a_sink_in_code_names_the_policies() -> None:
    with pytest.raises(ConfigError, match=r"invalid forwarding option.*use block, drop_newest"):
        JetStreamSink(policy="newest")


def test_tls_cert_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        _options(tls_cert=str(cert))


@pytest.mark.parametrize(
    ("message", "subject"),
    [
        ({"service": "api", "level": 3}, "logs.api.3"),
        ({"service": "api"}, None),  # missing
        ({"service": "a.b", "level": 1}, None),  # two tokens
        ({"service": "*", "level": 1}, None),  # a wildcard
        ({"service": "a b", "level": 1}, None),
        ({"service": True, "level": 1}, None),
        ({"service": ["x"], "level": 1}, None),
        ([1, 2], None),
        (b"raw", None),
    ],
)
def test_a_template_takes_one_valid_token_per_field(message: object, subject: str | None) -> None:
    assert Template("logs.{service}.{level}").render(message) == subject
