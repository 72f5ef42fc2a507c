"""docs/reference.md cannot drift: its tables are generated from the code and checked here.

Regenerate them with ``python tests/unit/test_docs.py --write`` after changing a config
field, a counter slot, a metric or a callback state.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ugram.config import ENV_PREFIX, Config, field_kind, field_meta
from ugram.events import CONN_STATE_DOCS, ConnState
from ugram.metrics import METRICS, TOTALS
from ugram.stats import (
    LATENCY_BOUNDS,
    LATENCY_FIRST,
    LATENCY_OVERFLOW,
    LATENCY_SUM_NS,
    REJECT_REASONS,
    SLOT_DOCS,
    Slot,
    Snapshot,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
REFERENCE = DOCS / "reference.md"
DEFAULT_NOTES = {"workers": "number of CPUs"}  # computed at start-up: not a fixed value


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.name in DEFAULT_NOTES:
        return DEFAULT_NOTES[field.name]
    value = field.default
    if value is msgspec.NODEFAULT:
        value = field.default_factory()  # type: ignore[misc]
    if value is None:
        return "none"
    return f"`{msgspec.json.encode(value).decode()}`"


def render_options() -> str:
    rows = [
        "| option | CLI flag | environment | default | meaning (allowed values) |",
        "|---|---|---|---|---|",
    ]
    for field in msgspec.structs.fields(Config):
        name = field.name
        meta = field_meta(name)
        assert meta is not None, f"config field {name} has no description"
        assert meta.extra, f"config field {name} says nothing about allowed values"
        flag = "--" + name.replace("_", "-")
        if field_kind(name) == "bool":
            flag = f"{flag}[=BOOL]"
        text = f"{meta.description} ({meta.extra['allowed']})"
        env = ENV_PREFIX + name.upper()
        rows.append(f"| `{name}` | `{flag}` | `{env}` | {_default(field)} | {_cell(text)} |")
    return "\n".join(rows)


def render_slots() -> str:
    rows = ["| slot | index | written by | meaning |", "|---|---|---|---|"]
    for slot in Slot:
        writer, meaning = SLOT_DOCS[slot]
        rows.append(f"| `{slot.name}` | {int(slot)} | {writer} | {_cell(meaning)} |")
    last = LATENCY_FIRST + len(LATENCY_BOUNDS) - 1
    rows += [
        f"| latency buckets | {LATENCY_FIRST}-{last} | worker | records that took at most "
        f"2^i us (i = index - {LATENCY_FIRST}) and more than half that |",
        f"| latency overflow | {LATENCY_OVERFLOW} | worker | records above the last bucket |",
        f"| latency sum | {LATENCY_SUM_NS} | worker | total latency in nanoseconds |",
    ]
    return "\n".join(rows)


def render_metrics() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in METRICS:
        labels = spec.labels or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {_cell(spec.help)} |")
    return "\n".join(rows)


def render_totals() -> str:
    rows = ["| `ugram stats --json` totals | metric |", "|---|---|"]
    rows += [f"| `{field}` | `{name}_total` |" for name, field, _ in TOTALS]
    rows += [f'| `{r}` | `ugram_rejected_total{{reason="{r}"}}` |' for r in REJECT_REASONS]
    return "\n".join(rows)


def render_states() -> str:
    rows = ["| `ConnState` | value | meaning |", "|---|---|---|"]
    for state in ConnState:
        rows.append(f'| `{state.name}` | `"{state.value}"` | {_cell(CONN_STATE_DOCS[state])} |')
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[], str]] = {
    "options": render_options,
    "slots": render_slots,
    "metrics": render_metrics,
    "totals": render_totals,
    "states": render_states,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {name} -->\n)(.*?)(<!-- END GENERATED: {name} -->)", re.S
    )


def regenerate(text: str) -> str:
    """``text`` with every generated block replaced by what the code says now."""
    for name, render in BLOCKS.items():
        text, found = _pattern(name).subn(lambda m, r=render: m[1] + r() + "\n" + m[3], text)
        assert found == 1, f"docs/reference.md lacks the markers of block {name!r}"
    return text


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_reference_block_is_up_to_date(name: str) -> None:
    match = _pattern(name).search(REFERENCE.read_text())
    assert match, f"docs/reference.md lacks the markers of block {name!r}"
    assert match[2] == BLOCKS[name]() + "\n", (
        f"docs/reference.md block {name!r} is out of date: run "
        "`python tests/unit/test_docs.py --write` and review the diff"
    )


def test_every_config_field_slot_metric_and_state_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    names = [f"`{f.name}`" for f in msgspec.structs.fields(Config)]
    names += [f"`{slot.name}`" for slot in Slot]
    names += [f"`{spec.name}`" for spec in METRICS]
    names += [f"`{state.name}`" for state in ConnState]
    assert [n for n in names if n not in text] == []


def test_every_slot_is_documented_and_below_the_histogram() -> None:
    assert set(SLOT_DOCS) == set(Slot)
    assert max(Slot) < LATENCY_FIRST


def test_every_state_is_documented() -> None:
    assert set(CONN_STATE_DOCS) == set(ConnState)


def test_every_snapshot_counter_is_exported_as_a_metric() -> None:
    exported = {field for _, field, _ in TOTALS} | set(REJECT_REASONS)
    assert {f.name for f in msgspec.structs.fields(Snapshot)} == exported


PAGES = ("operations.md", "handlers.md", "reference.md", "security.md")


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_exist_and_link_each_other(page: str) -> None:
    text = (DOCS / page).read_text()
    others = set(PAGES) - {page}
    assert all(other in text for other in others), f"{page} should link {others}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/unit/test_docs.py --write")
    REFERENCE.write_text(regenerate(REFERENCE.read_text()))
    print(f"rewrote the generated blocks of {REFERENCE}")
