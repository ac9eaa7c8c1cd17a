"""The Prometheus text format (version 0.0.4), written with the standard library only.

Sans-I/O: metric families in, bytes out. The output is byte for byte what prometheus_client
0.26's `generate_latest` writes for the same families (tests/chat/test_exposition.py holds the
two side by side): the series, names and values a scraper reads are unchanged. What the old
endpoint also offered and this one does not: OpenMetrics on request, gzip, and `name[]`
filters; Prometheus takes the 0.0.4 text format from any target.

Why not prometheus_client in the server: importing it, and wsgiref for its HTTP app, is 65-100
ms of CPU in bytecode. The endpoint's thread did that import a second after every start, so
also right after a handover, and a thread that runs bytecode keeps the GIL from the event loop
for up to the switch interval (5 ms) each time the loop gives it up for a `send`: the loop
wrote its clients at a fraction of its speed while it lasted. At 1,000 clients that import was
the longest silence of a handover run (68-136 ms, against 30-42 ms without a switch);
bench/README.md, "Metrics off the event loop's back", has the figures. The format is small
and stable (https://prometheus.io/docs/instrumenting/exposition_formats/), so it is written
here instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name as written in `# HELP` and `# TYPE`, and its samples."""

    name: str
    kind: str  # "gauge", "counter" or "histogram"
    help: str
    samples: tuple[tuple[str, Labels, float], ...]


def gauge(name: str, help: str, value: float) -> Family:
    """A gauge without labels."""
    return Family(name, "gauge", help, ((name, (), value),))


def labelled_gauge(name: str, help: str, label: str, values: Mapping[str, float]) -> Family:
    """A gauge with one label, a sample per value of it (in the mapping's order)."""
    return Family(name, "gauge", help, tuple((name, ((label, k),), v) for k, v in values.items()))


def counter(name: str, help: str, value: float) -> Family:
    """A counter without labels; its sample is NAME_total, as the format wants."""
    total = _total(name)
    return Family(total, "counter", help, ((total, (), value),))


def labelled_counter(name: str, help: str, label: str, values: Mapping[str, float]) -> Family:
    """A counter with one label, a sample per value of it (in the mapping's order)."""
    total = _total(name)
    return Family(
        total, "counter", help, tuple((total, ((label, k),), v) for k, v in values.items())
    )


def histogram(
    name: str, help: str, bounds: Iterable[float], counts: Iterable[int], total: float
) -> Family:
    """A histogram from its per-bucket COUNTS (not cumulative; one more than BOUNDS, the last
    one +Inf) and the sum of what was observed."""
    samples: list[tuple[str, Labels, float]] = []
    running = 0
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        running += count
        samples.append((f"{name}_bucket", (("le", _bound(bound)),), running))
    samples.append((f"{name}_count", (), running))
    samples.append((f"{name}_sum", (), total))
    return Family(name, "histogram", help, tuple(samples))


def render(families: Iterable[Family]) -> bytes:
    """The families as the text format, each with its `# HELP` and `# TYPE` lines."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.kind}\n")
        for name, labels, value in family.samples:
            if labels:
                pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{name}{{{pairs}}} {number(value)}\n")
            else:
                out.append(f"{name} {number(value)}\n")
    return "".join(out).encode()


def number(value: float) -> str:
    """VALUE as Prometheus (Go) writes a float: `1.0`, `NaN`, `+Inf`, `1.7e+09`."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python does
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _total(name: str) -> str:
    return name if name.endswith("_total") else f"{name}_total"


def _bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
