"""statsd_exporter mapping files (ugram.builtin.mapping): the rules' semantics as
statsd_exporter's, and every file it cannot use refused at start-up, naming why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ugram.builtin import mapping
from ugram.builtin.mapping import Mapped, Mapper, MappingError, escape_metric_name

README = r"""
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
"""


def labels(found: Mapped | None) -> dict[str, str]:
    assert found is not None
    return dict(found.labels)


def test_the_readme_examples_map_as_statsd_exporter_documents() -> None:
    mapper = Mapper.from_text(README)
    one = mapper.map("test.dispatcher.FooProcessor.send.success", "c")
    assert one is not None
    assert one.name == "dispatcher_events_total"
    assert one.mapped
    assert labels(one) == {
        "processor": "FooProcessor",
        "action": "send",
        "outcome": "success",
        "job": "test_dispatcher",
    }
    two = mapper.map("foo_product.signup.facebook.failure", "c")
    assert two is not None
    assert two.name == "signup_events_total"
    assert labels(two) == {
        "provider": "facebook",
        "outcome": "failure",
        "job": "foo_product_server",
    }
    unmapped = mapper.map("test.web-server.foo.bar", "c")
    assert unmapped == Mapped("test_web_server_foo_bar")


@pytest.mark.parametrize(
    ("name", "escaped"),
    [  # statsd_exporter's own cases (pkg/mapper/escape_test.go)
        ("clean", "clean"),
        ("0starts_with_digit", "_0starts_with_digit"),
        ("with_underscore", "with_underscore"),
        ("with--doubledash", "with_doubledash"),
        ("with---multiple-dashes", "with_multiple_dashes"),
        ("with.dot", "with_dot"),
        ("with\N{FACE SCREAMING IN FEAR}emoji", "with_emoji"),
        ("with.*.multiple", "with___multiple"),
        ("test.web-server.foo.bar", "test_web_server_foo_bar"),
        ("", ""),
        ("ünïcode.٣", "_n_code__"),  # non-ASCII letters and digits are not [a-zA-Z0-9]
    ],
)
def test_names_are_sanitised_as_statsd_exporter_does(name: str, escaped: str) -> None:
    assert escape_metric_name(name) == escaped


def test_of_matching_globs_the_first_in_the_file_wins_unless_ordering_is_off() -> None:
    rules = """
mappings:
- match: "a.*.c"
  name: "wild"
- match: "a.b.c"
  name: "exact"
"""
    assert Mapper.from_text(rules).map("a.b.c", "c") == Mapped("wild", mapped=True)
    unordered = Mapper.from_text("defaults:\n  glob_disable_ordering: true\n" + rules)
    assert unordered.map("a.b.c", "c") == Mapped("exact", mapped=True)
    assert unordered.map("a.x.c", "c") == Mapped("wild", mapped=True)


def test_a_star_is_one_whole_component_and_may_be_empty() -> None:
    mapper = Mapper.from_text('mappings:\n- match: "a.*"\n  name: "x_${1}"\n')
    assert mapper.map("a.", "c") == Mapped("x_", mapped=True)
    assert mapper.map("a.b.c", "c") == Mapped("a_b_c")  # three components: no match
    assert mapper.map("a", "c") == Mapped("a")


def test_glob_references_past_the_captures_or_by_name_are_empty() -> None:
    mapper = Mapper.from_text(
        "mappings:\n"
        '- match: "svc.*"\n'
        '  name: "${1}_total"\n'
        '  labels: {late: "$2", named: "$1_x", literal: "v"}\n'
    )
    found = mapper.map("svc.api", "c")
    assert found is not None
    assert found.name == "api_total"
    # $1_x reads as the reference "1_x" (statsd_exporter's template syntax): empty
    assert labels(found) == {"late": "", "named": "", "literal": "v"}


def test_a_rule_whose_name_expands_to_nothing_gives_an_empty_name() -> None:
    mapper = Mapper.from_text('mappings:\n- match: "a.*"\n  name: "$1_total"\n')
    found = mapper.map("a.b", "c")
    assert found is not None
    assert found.mapped
    assert found.name == ""


def test_regex_rules_come_after_every_glob_search_unanchored_and_expand_like_go() -> None:
    mapper = Mapper.from_text(
        r"""
mappings:
- match: "(.*)\\.(.*)--(.*)\\.status\\.(.*)\\.count"
  match_type: regex
  name: "request_total"
  labels: {hostname: "$1", exec: "$2", protocol: "$3", code: "$4", whole: "$0"}
- match: "status\\.(?P<code>\\d+)"
  match_type: regex
  name: "by_code"
  labels: {code: "${code}", missing: "$9", money: "$$1", glued: "$1x"}
- match: "*.*"
  name: "glob_wins"
"""
    )
    found = mapper.map("web1.api--http.status.200.count", "c")
    assert found is not None
    assert found.name == "request_total"
    assert labels(found) == {
        "hostname": "web1",
        "exec": "api",
        "protocol": "http",
        "code": "200",
        "whole": "web1.api--http.status.200.count",
    }
    # A search: "status.404" matches inside the longer name; the two-part glob is first.
    assert mapper.map("status.404", "c") == Mapped("glob_wins", mapped=True)
    inside = mapper.map("x.status.404.y", "c")
    assert labels(inside) == {"code": "404", "missing": "", "money": "$1", "glued": ""}


def test_match_metric_type_restricts_a_rule_and_sets_match_as_gauges() -> None:
    mapper = Mapper.from_text(
        """
mappings:
- match: "m.*"
  match_metric_type: counter
  name: "m_total"
- match: "m.*"
  match_metric_type: gauge
  name: "m_level"
- match: "m.*"
  match_metric_type: observer
  name: "m_seconds"
"""
    )
    kinds = {kind: mapper.map("m.x", kind) for kind in ("c", "g", "s", "ms", "h", "d")}
    names = {kind: found.name for kind, found in kinds.items() if found is not None}
    assert names == {
        "c": "m_total",
        "g": "m_level",
        "s": "m_level",
        "ms": "m_seconds",
        "h": "m_seconds",
        "d": "m_seconds",
    }


def test_drop_rules_drop_and_need_no_name() -> None:
    mapper = Mapper.from_text(
        'mappings:\n- match: "keep.*"\n  name: kept\n- match: "."\n'
        "  match_type: regex\n  action: drop\n"
    )
    assert mapper.map("keep.me", "g") == Mapped("kept", mapped=True)
    assert mapper.map("anything.else", "g") is None


def test_settings_come_from_the_rule_then_the_defaults_including_old_spellings() -> None:
    mapper = Mapper.from_text(
        """
defaults:
  ttl: 1m30s
  timer_type: histogram
  buckets: [0.5, 1, 2]
mappings:
- match: "own.*"
  name: own
  observer_type: summary
  ttl: 250ms
  summary_options:
    quantiles: [{quantile: 0.99, error: 0.001}, {quantile: 0.5, error: 0.05}]
  help: "Own things"
  scale: 0.001
  honor_labels: true
- match: "zero.*"
  name: zero
  ttl: 0
- match: "old.*"
  name: old
  quantiles: [{quantile: 0.9}]
  timer_type: summary
"""
    )
    own = mapper.map("own.x", "ms")
    assert own == Mapped(
        "own",
        honor_labels=True,
        mapped=True,
        ttl=0.25,
        observer="summary",
        buckets=(0.5, 1.0, 2.0),
        quantiles=(0.5, 0.99),
        scale=0.001,
        help="Own things",
    )
    zero = mapper.map("zero.x", "ms")
    assert zero is not None
    assert zero.ttl == 90.0
    old = mapper.map("old.x", "ms")
    assert old is not None
    assert (old.observer, old.quantiles) == ("summary", (0.9,))
    unmapped = mapper.map("other", "ms")
    assert unmapped == Mapped("other", ttl=90.0, observer="histogram", buckets=(0.5, 1.0, 2.0))
    assert mapper.default_ttl == 90.0
    assert Mapper.from_text("").map("x.y", "c") == Mapped("x_y")  # no settings: None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mappings:\n- match: a\n  name: x\n  nme: y\n", "unsupported key 'nme' at mappings[0]"),
        ("defaults:\n  ordering: 1\n", "unsupported key 'ordering' at defaults"),
        ("extra: 1\n", "unsupported key 'extra' at the top"),
        (
            "mappings:\n- match: a\n  name: x\n  summary_options: {max_age: 30s}\n",
            "'max_age' at mappings[0].summary_options is not supported",
        ),
        (
            "defaults:\n  histogram_options: {native_histogram_bucket_factor: 1.1}\n",
            "'native_histogram_bucket_factor' at defaults.histogram_options is not supported",
        ),
        ("mappings:\n- match: a\n  name: x\n  name: y\n", "line 4: the key 'name' is given twice"),
        ("mappings:\n- match: 'a.b*'\n  name: x\n", "not a glob"),
        ("mappings:\n- match: '1a.b'\n  name: x\n", "not a glob"),
        ("mappings:\n- match: 'a('\n  match_type: regex\n  name: x\n", "not a regular expr"),
        ("mappings:\n- match: a\n  name: '1x'\n", "is not a Prometheus name"),
        ("mappings:\n- match: a\n  name: 'a.b'\n", "is not a Prometheus name"),
        ("mappings:\n- match: a\n", "no name"),
        ("mappings:\n- name: x\n", "mappings[0] has no match"),
        ("mappings:\n- match: a\n  name: x\n  labels: {'a-b': v}\n", "'a-b' is not a label"),
        ("mappings:\n- match: a\n  name: x\n  labels: {__x: v}\n", "'__x' is not a label"),
        ("mappings:\n- match: a\n  name: x\n  match_type: fuzzy\n", "mappings[0].match_type"),
        ("mappings:\n- match: a\n  name: x\n  action: keep\n", "mappings[0].action"),
        ("mappings:\n- match: a\n  name: x\n  match_metric_type: set\n", "match_metric_type"),
        ("mappings:\n- match: a\n  name: x\n  observer_type: hist\n", "observer_type"),
        ("mappings:\n- match: a\n  name: x\n  ttl: 30\n", "ttl 30 has no unit"),
        ("mappings:\n- match: a\n  name: x\n  ttl: 5 minutes\n", "is not a duration"),
        (
            "mappings:\n- match: a\n  name: x\n  observer_type: histogram\n"
            "  summary_options: {quantiles: [{quantile: 0.5}]}\n",
            "summary options on a histogram",
        ),
        ("mappings:\n- match: a\n  name: x\n  buckets: [1, 1]\n", "finite and increasing"),
        ("mappings:\n- match: a\n  name: x\n  buckets: [.inf]\n", "finite and increasing"),
        ("mappings:\n- match: a\n  name: x\n  quantiles: [{quantile: 1.5}]\n", "in (0, 1)"),
        ("mappings:\n- match: a\n  name: x\n  scale: .nan\n", "scale must be a finite"),
        ("mappings: {a: 1}\n", "Expected `array`"),
        ("mappings:\n- match: a\n  name: x\n  labels: {a: [1]}\n", "mappings[0].labels"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_a_file_ugram_cannot_use_is_refused_naming_what_and_where(text: str, says: str) -> None:
    with pytest.raises(MappingError) as refused:
        Mapper.from_text(text, "rules.yml")
    assert str(refused.value).startswith("rules.yml")
    assert says in str(refused.value)


def test_the_file_is_read_from_its_path_or_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yml"
    path.write_text(README)
    assert Mapper.from_file(path).rules == 2
    with pytest.raises(MappingError, match=r"cannot read the mapping file .*missing\.yml"):
        Mapper.from_file(tmp_path / "missing.yml")
    path.write_bytes(b"mappings: \xff\n")
    with pytest.raises(MappingError, match="cannot read the mapping file"):
        Mapper.from_file(path)


def test_results_are_cached_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapping, "CACHE_SIZE", 8)
    mapper = Mapper.from_text(README)
    for i in range(50):
        assert mapper.map(f"x.signup.p{i}.ok", "c") is not None
    assert len(mapper._cache) == 8
    first = mapper.map("test.dispatcher.a.b.c", "c")
    assert mapper.map("test.dispatcher.a.b.c", "c") is first  # a hit returns the same result


# -- a property: globs against an independent reading of statsd_exporter's rules ------------

COMPONENT = st.sampled_from(["a", "b", "c", "x1", ""])
PATTERN_PART = st.sampled_from(["a", "b", "c", "*"])


def reference(patterns: list[list[str]], name: str) -> tuple[int, list[str]] | None:
    """The first pattern, in order, whose regex (statsd_exporter's own translation of a
    glob, in TestIfNeedBacktracking) matches ``name``, and its captures."""
    for index, parts in enumerate(patterns):
        regex = "^" + r"\.".join("([^.]*)" if p == "*" else re.escape(p) for p in parts) + "$"
        found = re.match(regex, name)
        if found:
            return index, list(found.groups())
    return None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(PATTERN_PART, min_size=1, max_size=3), min_size=1, max_size=6),
    st.lists(COMPONENT, min_size=1, max_size=3),
)
def test_globs_pick_the_first_match_with_its_captures(
    patterns: list[list[str]], components: list[str]
) -> None:
    lines = ["mappings:"]
    for index, parts in enumerate(patterns):
        captures = ",".join(f"${{{i + 1}}}" for i in range(parts.count("*")))
        lines += [f'- match: "{".".join(parts)}"', f"  name: r{index}"]
        lines += [f'  labels: {{caps: "{captures}"}}']
    name = ".".join(components)
    found = Mapper.from_text("\n".join(lines) + "\n").map(name, "c")
    expected = reference(patterns, name)
    assert found is not None
    if expected is None:
        assert not found.mapped
        assert found.name == escape_metric_name(name)
    else:
        assert found.name == f"r{expected[0]}"
        assert labels(found) == {"caps": ",".join(expected[1])}
