"""statsd_exporter's mapping files: dotted statsd names to Prometheus names and labels.

A file in statsd_exporter's format (``mappings:`` and ``defaults:``) is read by
:meth:`Mapper.from_file` and checked whole at start-up: a key that ugram does not support,
a bad value, an invalid name, label or pattern is a :class:`MappingError` naming it and
where it is, never ignored. :meth:`Mapper.map` then gives each ``(name, type)`` its
:class:`Mapped` result (``None``: dropped by ``action: drop``), with the rules'
semantics as statsd_exporter's (``pkg/mapper``):

* ``glob`` rules (the default ``match_type``) match names of as many dot-separated
  components as the pattern, each ``*`` one whole component (empty included); of the rules
  that match, the first in the file wins, or with ``defaults: glob_disable_ordering: true``
  the most specific (a literal component before a ``*``, from left to right). ``$1`` or
  ``${1}`` in ``name`` and label values is the first ``*``'s component; a reference past
  the captures, or to a name (``$1_total`` reads as the name ``1_total``: write
  ``${1}_total``), is empty.
* ``regex`` rules are tried after every glob rule, in file order, as a search (not
  anchored: write ``^...$``); ``$0`` is the whole match, ``$1``/``${1}``/``$name`` groups
  (Go's ``Regexp.Expand``: unknown ones are empty, ``$$`` is ``$``). Patterns are Python
  regular expressions, which agree with Go's RE2 on the syntax mapping files use.
* ``match_metric_type`` (``counter``, ``gauge``, ``observer``) restricts a rule to one
  kind: statsd ``c`` is a counter, ``g`` a gauge, ``ms``/``h``/``d`` observers, and ugram
  matches sets (``s``, which statsd_exporter does not take) as gauges.
* Names that no rule maps keep their statsd name, sanitised as statsd_exporter does
  (:func:`escape_metric_name`). Mapped names are sanitised the same way.

Precedence of the per-series settings: the rule, then the file's ``defaults:``, then the
handler's own options (``None`` in :class:`Mapped`: not set in the file).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import ConfigError

MetricKind = Literal["counter", "gauge", "observer"]
KIND_OF_TYPE: dict[str, MetricKind] = {
    "c": "counter",
    "g": "gauge",
    "s": "gauge",
    "ms": "observer",
    "h": "observer",
    "d": "observer",
}
CACHE_SIZE = 10_000  # distinct (name, type) results kept; the rules run again past it

# statsd_exporter's own checks (pkg/mapper/mapper.go), label names as Prometheus' rule.
_GLOB_LINE = re.compile(r"(\*|[a-zA-Z_][a-zA-Z0-9_\-]*)(\.\*|\.[a-zA-Z0-9_][a-zA-Z0-9_\-]*)*\Z")
_TEMPLATE = r"(\$\{?\d+\}?)"
_NAME_TEMPLATE = re.compile(rf"([a-zA-Z_]|{_TEMPLATE})([a-zA-Z0-9_]|{_TEMPLATE})*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_GLOB_REFERENCE = re.compile(r"\$\{?([a-zA-Z0-9_$]+)\}?")
_REGEX_REFERENCE = re.compile(r"\$(\$|\{([a-zA-Z0-9_]+)\}|([a-zA-Z0-9_]+))")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_SUMMARY_WINDOWS = (
    "ugram's summaries cover UGSTATSD_SUMMARY_MAX_AGE seconds in UGSTATSD_SUMMARY_AGE_BUCKETS "
    "windows, for every mapping alike"
)
# statsd_exporter keys ugram reads but does not act on would be silently different: refused.
_NOT_SUPPORTED = {
    "max_age": _SUMMARY_WINDOWS,
    "age_buckets": _SUMMARY_WINDOWS,
    "buf_cap": _SUMMARY_WINDOWS,
    "native_histogram_bucket_factor": "ugram exposes classic histograms only",
    "native_histogram_max_buckets": "ugram exposes classic histograms only",
}


class MappingError(ConfigError):
    """A mapping file that cannot be used as it is (the message names the key and rule)."""


class _Objective(msgspec.Struct, forbid_unknown_fields=True):
    quantile: float
    error: float = 0.0  # accepted for compatibility, not used (ugram's sketch: 1 %)


class _SummaryOptions(msgspec.Struct, forbid_unknown_fields=True):
    quantiles: list[_Objective] | None = None


class _HistogramOptions(msgspec.Struct, forbid_unknown_fields=True):
    buckets: list[float] | None = None


class _Observer(msgspec.Struct, forbid_unknown_fields=True):
    """The observer settings a rule and the defaults share (with the deprecated spellings)."""

    observer_type: Literal["", "histogram", "summary"] = ""
    timer_type: Literal["", "histogram", "summary"] = ""  # statsd_exporter's old name
    ttl: str | int | float | None = None
    summary_options: _SummaryOptions | None = None
    histogram_options: _HistogramOptions | None = None
    buckets: list[float] | None = None  # old: histogram_options.buckets
    quantiles: list[_Objective] | None = None  # old: summary_options.quantiles


class _Defaults(_Observer, forbid_unknown_fields=True):
    match_type: Literal["", "glob", "regex"] = ""
    glob_disable_ordering: bool = False


class _Rule(_Observer, forbid_unknown_fields=True):
    match: str = ""
    name: str = ""
    match_type: Literal["", "glob", "regex"] = ""
    match_metric_type: Literal["", "counter", "gauge", "observer"] = ""
    action: Literal["", "map", "drop"] = ""
    labels: dict[str, str | int | float | bool] = {}
    honor_labels: bool = False
    help: str = ""
    scale: float | None = None


class _File(msgspec.Struct, forbid_unknown_fields=True):
    defaults: _Defaults = msgspec.field(default_factory=_Defaults)
    mappings: list[_Rule] = []


@dataclass(frozen=True, slots=True)
class Mapped:
    """Where one statsd metric goes.

    Attributes:
        name: the Prometheus name (sanitised).
        labels: the rule's labels, in the file's order (empty when unmapped).
        honor_labels: a tag of the same name wins over the rule's label.
        mapped: a rule matched (False: the sanitised statsd name).
        ttl: seconds without a sample before the series goes (0: never); None: not set.
        observer: ``histogram`` or ``summary`` for observers; None: not set.
        buckets: the histogram's upper bounds; None: not set.
        quantiles: the summary's quantiles; None: not set.
        scale: a factor for every value; None: 1.
        help: the metric's HELP text; None: not set.
    """

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    honor_labels: bool = False
    mapped: bool = False
    ttl: float | None = None
    observer: str | None = None
    buckets: tuple[float, ...] | None = None
    quantiles: tuple[float, ...] | None = None
    scale: float | None = None
    help: str | None = None


@dataclass(frozen=True, slots=True)
class _Settings:
    ttl: float | None
    observer: str | None
    buckets: tuple[float, ...] | None
    quantiles: tuple[float, ...] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: _Rule
    where: str  # "mappings[3] (match 'a.*')" for messages
    settings: _Settings
    kind: str
    glob: tuple[str | None, ...] | None  # None: regex; a None part is a "*"
    regex: re.Pattern[str] | None


def escape_metric_name(name: str) -> str:
    """``name`` as statsd_exporter sanitises it: every character but ``[a-zA-Z0-9_]`` is
    ``_`` (a second ``-`` of ``--`` is dropped), and a leading digit gets a ``_`` before it."""
    out = ["_"] if name[:1].isascii() and name[:1].isdigit() else []
    previous = ""
    for char in name:
        if char.isascii() and (char.isalnum() or char == "_"):
            out.append(char)
        elif not (char == "-" and previous == "-"):
            out.append("_")
        previous = char
    return "".join(out)


def parse_duration(value: str | int | float, where: str) -> float:
    """A Go duration (``1m30s``, ``500ms``, ``0``) in seconds.

    Raises:
        MappingError: another number than 0 without a unit (statsd_exporter would read
            nanoseconds), or not a duration.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        if value == 0:
            return 0.0
        raise MappingError(f"{where}: ttl {value!r} has no unit: write e.g. '{value}s'")
    text = value.strip()
    if text in ("0", ""):
        return 0.0
    position, total = 0, 0.0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            break
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        position = part.end()
    if position != len(text) or position == 0:
        raise MappingError(f"{where}: ttl {value!r} is not a duration such as '90s' or '1m30s'")
    return total


class Mapper:
    """The rules of one mapping file, and a bounded cache of their results."""

    def __init__(self, document: _File, source: str) -> None:
        """Check and compile ``document``'s rules.

        Raises:
            MappingError: a rule or default that cannot be used (names ``source``).
        """
        self.source = source
        defaults = document.defaults
        self._ordered = not defaults.glob_disable_ordering
        self._defaults = _settings(defaults, None, f"{source}: defaults")
        default_match = defaults.match_type or "glob"
        self._globs: dict[int, list[_Compiled]] = {}
        self._regexes: list[_Compiled] = []
        for index, rule in enumerate(document.mappings):
            compiled = _compile(rule, index, default_match, self._defaults, source)
            if compiled.glob is not None:
                self._globs.setdefault(len(compiled.glob), []).append(compiled)
            else:
                self._regexes.append(compiled)
        if not self._ordered:
            for rules in self._globs.values():  # a literal part before a "*", left to right
                rules.sort(key=lambda c: tuple(p is None for p in c.glob or ()))
        self._cache: OrderedDict[tuple[str, str], Mapped | None] = OrderedDict()
        self.rules = len(document.mappings)

    @classmethod
    def from_text(cls, text: str, source: str = "<mapping>") -> Mapper:
        """Parse a mapping file's YAML text.

        Raises:
            MappingError: not YAML, a key twice, an unsupported key, or a bad rule.
        """
        data = _load_yaml(text, source)
        if data is None:
            data = {}
        _refuse_unsupported(data, source)
        try:
            document = msgspec.convert(data, _File)
        except msgspec.ValidationError as exc:
            raise MappingError(f"{source}: {_readable(str(exc))}") from None
        return cls(document, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Mapper:
        """Read and check the mapping file at ``path``.

        Raises:
            MappingError: the file cannot be read, or :meth:`from_text` refuses it.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MappingError(f"cannot read the mapping file {path}: {exc}") from None
        return cls.from_text(text, str(path))

    @property
    def default_ttl(self) -> float | None:
        """The file's ``defaults: ttl`` in seconds (None: not set)."""
        return self._defaults.ttl

    def map(self, name: str, statsd_type: str) -> Mapped | None:
        """Where the statsd metric ``name`` of ``statsd_type`` (``c``, ``g``, ``ms``, ``h``,
        ``d``, ``s``) goes; ``None`` when a rule drops it."""
        key = (name, statsd_type)
        try:
            found = self._cache[key]
        except KeyError:
            found = self._lookup(name, KIND_OF_TYPE.get(statsd_type, "gauge"))
            if len(self._cache) >= CACHE_SIZE:
                self._cache.popitem(last=False)
            self._cache[key] = found
            return found
        self._cache.move_to_end(key)
        return found

    def _lookup(self, name: str, kind: str) -> Mapped | None:
        parts = name.split(".")
        for compiled in self._globs.get(len(parts), ()):
            if compiled.kind and compiled.kind != kind:
                continue
            captures = _glob_captures(compiled.glob or (), parts)
            if captures is not None:
                return _result(compiled, lambda t, c=captures: _glob_expand(t, c))
        for compiled in self._regexes:
            if compiled.kind and compiled.kind != kind:
                continue
            assert compiled.regex is not None
            found = compiled.regex.search(name)
            if found is not None:
                return _result(compiled, lambda t, m=found: _regex_expand(t, m))
        settings = self._defaults
        return Mapped(
            escape_metric_name(name),
            ttl=settings.ttl,
            observer=settings.observer,
            buckets=settings.buckets,
            quantiles=settings.quantiles,
        )


def _compile(
    rule: _Rule, index: int, default_match: str, defaults: _Settings, source: str
) -> _Compiled:
    where = f"{source}: mappings[{index}] (match {rule.match!r})"
    if not rule.match:
        raise MappingError(f"{source}: mappings[{index}] has no match")
    drop = rule.action == "drop"
    if not rule.name and not drop:
        raise MappingError(f"{where}: no name (every rule that maps needs one)")
    if rule.name and not _NAME_TEMPLATE.match(rule.name):
        raise MappingError(
            f"{where}: name {rule.name!r} is not a Prometheus name (letters, digits, _, "
            "and $1 or ${1} references; not starting with a digit)"
        )
    for label in rule.labels:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise MappingError(f"{where}: {label!r} is not a label name")
    kind = rule.match_type or default_match
    glob: tuple[str | None, ...] | None = None
    regex = None
    if kind == "glob":
        if not _GLOB_LINE.match(rule.match):
            raise MappingError(
                f"{where}: not a glob: dot-separated names and whole-component '*' only"
            )
        glob = tuple(None if part == "*" else part for part in rule.match.split("."))
    else:
        try:
            regex = re.compile(rule.match)
        except re.error as exc:
            raise MappingError(f"{where}: not a regular expression: {exc}") from None
    if rule.scale is not None and not math.isfinite(rule.scale):
        raise MappingError(f"{where}: scale must be a finite number")
    settings = _settings(rule, defaults, where)
    return _Compiled(rule, where, settings, rule.match_metric_type, glob, regex)


def _settings(spec: _Observer, defaults: _Settings | None, where: str) -> _Settings:
    """A rule's (or the defaults') observer and TTL settings, falling back on ``defaults``.

    Raises:
        MappingError: histogram and summary options together, a bad bucket or quantile, a
            bad ttl.
    """
    observer = spec.observer_type or spec.timer_type or None
    histogram = spec.histogram_options is not None or spec.buckets is not None
    summary = spec.summary_options is not None or spec.quantiles is not None
    if observer == "histogram" and summary:
        raise MappingError(f"{where}: summary options on a histogram observer")
    if observer == "summary" and histogram:
        raise MappingError(f"{where}: histogram options on a summary observer")
    buckets = spec.buckets
    if spec.histogram_options is not None and spec.histogram_options.buckets:
        buckets = spec.histogram_options.buckets
    objectives = spec.quantiles
    if spec.summary_options is not None and spec.summary_options.quantiles:
        objectives = spec.summary_options.quantiles
    ttl = None if spec.ttl is None else parse_duration(spec.ttl, where)
    checked = _Settings(
        ttl=ttl,
        observer=observer,
        buckets=_buckets(buckets, where) if buckets else None,
        quantiles=_quantiles(objectives, where) if objectives else None,
    )
    if defaults is None:
        return checked
    return _Settings(
        # statsd_exporter cannot tell a rule's "ttl: 0" from none: the default applies
        ttl=checked.ttl if checked.ttl else defaults.ttl,
        observer=checked.observer or defaults.observer,
        buckets=checked.buckets or defaults.buckets,
        quantiles=checked.quantiles or defaults.quantiles,
    )


def _buckets(values: list[float], where: str) -> tuple[float, ...]:
    bounds = tuple(values)
    if any(not math.isfinite(b) for b in bounds) or any(
        a >= b for a, b in itertools.pairwise(bounds)
    ):
        raise MappingError(f"{where}: buckets must be finite and increasing: {list(bounds)}")
    return bounds


def _quantiles(objectives: list[_Objective], where: str) -> tuple[float, ...]:
    values = tuple(sorted(o.quantile for o in objectives))
    if any(not 0 < q < 1 for q in values) or len(set(values)) != len(values):
        raise MappingError(f"{where}: quantiles must be distinct and in (0, 1): {list(values)}")
    return values


def _glob_captures(pattern: tuple[str | None, ...], parts: list[str]) -> list[str] | None:
    captures = []
    for want, part in zip(pattern, parts, strict=True):
        if want is None:
            captures.append(part)
        elif want != part:
            return None
    return captures


def _glob_expand(template: str, captures: list[str]) -> str:
    def one(found: re.Match[str]) -> str:
        reference = found.group(1)
        if reference.isdigit() and 1 <= int(reference) <= len(captures):
            return captures[int(reference) - 1]
        return ""

    return _GLOB_REFERENCE.sub(one, template)


def _regex_expand(template: str, found: re.Match[str]) -> str:
    def one(reference: re.Match[str]) -> str:
        if reference.group(1) == "$":
            return "$"
        name = reference.group(2) or reference.group(3)
        try:
            value = found.group(int(name) if name.isdigit() else name)
        except IndexError:  # no such group: Go's Expand gives the empty string
            return ""
        return value or ""

    return _REGEX_REFERENCE.sub(one, template)


def _result(compiled: _Compiled, expand: Any) -> Mapped | None:
    rule = compiled.rule
    if rule.action == "drop":
        return None
    labels = tuple((label, expand(_label_text(value))) for label, value in rule.labels.items())
    settings = compiled.settings
    return Mapped(
        escape_metric_name(expand(rule.name)),
        labels=labels,
        honor_labels=rule.honor_labels,
        mapped=True,
        ttl=settings.ttl,
        observer=settings.observer,
        buckets=settings.buckets,
        quantiles=settings.quantiles,
        scale=rule.scale,
        help=rule.help or None,
    )


def _label_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _load_yaml(text: str, source: str) -> Any:
    """YAML to Python values, refusing a key given twice in one mapping (statsd_exporter
    reads its files strictly; PyYAML alone would keep the last).

    Raises:
        MappingError: PyYAML is missing, or the text is not YAML.
    """
    try:
        import yaml
    except ImportError:
        raise MappingError(
            "a mapping file needs PyYAML: pip install 'ugram[mapping]' (or pyyaml)"
        ) from None

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise MappingError(f"{source}, line {line}: the key {key!r} is given twice")
            seen[key] = loader.construct_object(value_node, deep=True)
        return seen

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=Strict)  # Strict is a SafeLoader
    except yaml.YAMLError as exc:
        raise MappingError(f"{source}: not valid YAML: {exc}") from None


def _refuse_unsupported(data: Any, source: str, path: str = "$") -> None:
    """Name statsd_exporter's keys that ugram would otherwise take and ignore.

    Raises:
        MappingError: such a key, with where it is and why ugram does not take it.
    """
    if isinstance(data, dict):
        for key, value in data.items():
            if key in _NOT_SUPPORTED:
                raise MappingError(
                    f"{source}: the key {key!r} at {path[2:] or 'the top'} is not supported: "
                    f"{_NOT_SUPPORTED[key]}"
                )
            _refuse_unsupported(value, source, f"{path}.{key}")
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _refuse_unsupported(item, source, f"{path}[{index}]")


_AT = re.compile(r" - at `\$\.?(.*)`$")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")


def _readable(message: str) -> str:
    """msgspec's message as a user reads it: ``unsupported key 'x' at mappings[0]``."""
    at = _AT.search(message)
    where = at.group(1) if at and at.group(1) else "the top"
    unknown = _UNKNOWN.match(message)
    if unknown:
        return f"unsupported key {unknown.group(1)!r} at {where} (see docs/from-statsd-exporter.md)"
    text = message[: at.start()] if at else message
    return f"{text} at {where}"
