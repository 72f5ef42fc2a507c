"""The parsers' bench (issue 16, L4): parse cost per line against msgspec's JSON decode.

    python bench/parse.py [--rounds N] [--lines N]

On the lines ``bench/c/sender`` sends (``bench/workerpath.py``: 200-byte RFC 3164 lines, and
DogStatsD lines of five kinds over 33 series), plus RFC 5424 lines with structured data, it
times per line, interleaved over rounds in this one process:

* the compiled parser (``ugram._parsers``, what a worker runs with ``speedups = true``);
* the pure-Python reference (``speedups = false``);
* msgspec decoding the same message from JSON into the same type (``SyslogMessage``,
  ``Metric``): the baseline the goal names, a decode "of a same-size object" — the same
  fields, values and result type, read from the JSON text of the parsed line;
* msgspec decoding a JSON object of the same byte size as the line into a 3-field struct of
  strings (a second, cheaper baseline: shown, not the headline).

Each ratio is the median over rounds of that round's ratio. The ``L4`` lines are what
``bench/peers.py`` prints; the last line is the headline (the worse of syslog and statsd,
compiled ÷ same-object JSON; goal ≤ 1.5).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402

from bench.workerpath import statsd_line, syslog_line  # noqa: E402
from ugram.codecs import native  # noqa: E402
from ugram.codecs.statsd import Line, parse_packet  # noqa: E402
from ugram.codecs.statsd import make_decoder as statsd_decoder  # noqa: E402
from ugram.codecs.syslog import SyslogMessage, parse_syslog  # noqa: E402
from ugram.codecs.syslog import make_decoder as syslog_decoder  # noqa: E402

Parse = Callable[[bytes], Any]


class Filler(msgspec.Struct):
    """The same-byte-size baseline: three strings."""

    a: str
    b: str
    c: str


def rfc5424_line(seq: int) -> bytes:
    """An RFC 5424 line with structured data, about 200 bytes."""
    head = (
        f"<165>1 2026-12-04T18:24:31.{seq % 1000:03d}Z host.example.com bench {4242 + seq % 7} "
        f'ID47 [meta@32473 seq="{seq}" shard="{seq % 4}"] '
    ).encode()
    return (head + b"an event from the bench, padded to about two hundred bytes " * 3)[:200]


def per_line(parse: Parse, lines: Sequence[bytes], repeat: int) -> float:
    """Seconds per line of ``parse`` over ``lines``, ``repeat`` times."""
    start = time.perf_counter()
    for _ in range(repeat):
        for line in lines:
            parse(line)
    return (time.perf_counter() - start) / (repeat * len(lines))


def json_same_object(lines: Sequence[bytes], parse: Parse, kind: Any) -> tuple[Parse, list[bytes]]:
    """msgspec's decoder of ``kind``, and each line's parsed message as JSON."""
    documents = []
    for line in lines:
        message = parse(line)
        documents.append(msgspec.json.encode(message[0] if isinstance(message, list) else message))
    decoder = msgspec.json.Decoder(kind)
    assert decoder.decode(documents[0]) is not None
    return decoder.decode, documents


def json_same_size(lines: Sequence[bytes]) -> tuple[Parse, list[bytes]]:
    """A decoder of :class:`Filler`, and for each line a JSON document of its byte size."""
    documents = []
    for line in lines:
        pad = max(0, len(line) - len(b'{"a":"","b":"","c":""}'))
        third = pad // 3
        text = Filler("x" * third, "y" * third, "z" * (pad - 2 * third))
        documents.append(msgspec.json.encode(text))
    return msgspec.json.Decoder(Filler).decode, documents


def measure(
    name: str,
    lines: list[bytes],
    compiled: Parse,
    reference: Parse,
    kind: Any,
    rounds: int,
    repeat: int,
) -> float:
    """Print the figures of one line kind; return compiled ÷ same-object JSON (median)."""
    same_decode, same_docs = json_same_object(lines, reference, kind)
    size_decode, size_docs = json_same_size(lines)
    for line in lines:  # what is timed is what the workers deliver: the same answer
        assert compiled(line) == reference(line), line
    samples: dict[str, list[float]] = {"compiled": [], "reference": [], "same": [], "size": []}
    for _ in range(rounds):
        samples["compiled"].append(per_line(compiled, lines, repeat))
        samples["same"].append(per_line(same_decode, same_docs, repeat))
        samples["reference"].append(per_line(reference, lines, repeat))
        samples["size"].append(per_line(size_decode, size_docs, repeat))

    def ratio(top: str, bottom: str) -> float:
        pairs = zip(samples[top], samples[bottom], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def us(key: str) -> str:
        return f"{statistics.median(samples[key]) * 1e6:.3f} µs"

    size = sum(map(len, lines)) / len(lines)
    print(f"{name}: {len(lines)} lines, {size:.0f} bytes on average")
    print(f"  compiled            {us('compiled')}")
    faster = ratio("reference", "compiled")
    print(f"  pure Python         {us('reference')}   (compiled is {faster:.1f}x faster)")
    print(f"  JSON, same object   {us('same')}")
    print(f"  JSON, same size     {us('size')}")
    headline = ratio("compiled", "same")
    print(f"L4 {name}: compiled ÷ JSON same object = {headline:.2f}")
    print(
        f"   {name}: compiled ÷ JSON same size = {ratio('compiled', 'size'):.2f}; "
        f"pure Python ÷ JSON same object = {ratio('reference', 'same'):.2f}"
    )
    return headline


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 1 when the compiled parsers are not built."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lines", type=int, default=200, help="distinct lines of each kind")
    parser.add_argument("--repeat", type=int, default=50, help="passes over them per round")
    args = parser.parse_args(argv)
    if native.PARSERS is None:
        print("L4: ugram._parsers is not built (pip install -e . with a C compiler)")
        return 1
    n, rounds, repeat = args.lines, args.rounds, args.repeat
    syslog_fast = syslog_decoder(SyslogMessage, speedups=True)
    statsd_fast = statsd_decoder(Line, speedups=True)
    assert syslog_fast is not None
    assert statsd_fast is not None
    figures = {
        "syslog RFC 3164": measure(
            "syslog RFC 3164", [syslog_line(i) for i in range(n)], syslog_fast, parse_syslog,
            SyslogMessage, rounds, repeat,
        ),
        "syslog RFC 5424": measure(
            "syslog RFC 5424", [rfc5424_line(i) for i in range(n)], syslog_fast, parse_syslog,
            SyslogMessage, rounds, repeat,
        ),
        "statsd": measure(
            "statsd", [statsd_line(i) for i in range(n)], statsd_fast, parse_packet,
            Line, rounds, repeat,
        ),
    }  # fmt: skip
    worst = max(figures, key=figures.__getitem__)
    print(f"L4 = {figures[worst]:.2f} (the worse, {worst}; goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
