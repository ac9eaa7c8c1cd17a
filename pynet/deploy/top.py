"""`fab top` and the figures of `fab status`: a host's /metrics, read over SSH, made into a row.

The chat server serves Prometheus text on 127.0.0.1:9050 of its host (chat/metrics.py); the
host's own python3 fetches it (`commands.scrape_metrics`), so nothing but SSH is opened. The
pure part, text to `Scrape`, two scrapes to a `Row` of rates, is tested without a host.
"""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pynet.deploy import commands as cmd
from pynet.deploy.remote import Remote

#: The figures read from the counters (sample name without _total).
COUNTERS = (
    "pynet_connections_accepted",
    "pynet_lines_received",
    "pynet_broadcasts",
    "pynet_deliveries",
    "pynet_sent_bytes",
    "pynet_rate_limited",
    "pynet_backplane_unavailable",
    "pynet_handovers",
)
FANOUT = "pynet_fanout_duration_seconds"
HEADERS = (
    "host",
    "release",
    "users",
    "named",
    "in/s",
    "out/s",
    "deliveries/s",
    "p99 fan-out",
    "cuts",
    "last handover",
)


@dataclass
class Scrape:
    """One reading of a host's /metrics."""

    at: float  # when it was read (this machine's clock, for rates)
    release: str = "?"
    connections: float = 0.0
    named: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    disconnects: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    fanout: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative count)
    handover_pause: float = math.nan
    handover_time: float = 0.0
    backplane_lag: float = math.nan
    started: float = 0.0

    @property
    def cuts(self) -> float:
        """Slow readers cut since the server started."""
        return self.disconnects.get("too_slow", 0.0)


def parse(text: str, at: float | None = None) -> Scrape:
    """A Scrape from Prometheus text (ValueError from the parser if it is not that)."""
    scrape = Scrape(at=time.monotonic() if at is None else at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            base = name.removesuffix("_total")
            if base in COUNTERS:
                scrape.counters[base] = value
            elif name == "pynet_info":
                scrape.release = labels.get("release", "?")
            elif name == "pynet_connections":
                scrape.connections = value
            elif name == "pynet_named_connections":
                scrape.named = value
            elif base == "pynet_disconnects":
                scrape.disconnects[labels.get("reason", "?")] = value
            elif base == "pynet_errors":
                scrape.errors[labels.get("code", "?")] = value
            elif name == f"{FANOUT}_bucket":
                scrape.fanout.append((float(labels["le"]), value))
            elif name == "pynet_handover_last_pause_seconds":
                scrape.handover_pause = value
            elif name == "pynet_handover_last_timestamp_seconds":
                scrape.handover_time = value
            elif name == "pynet_backplane_lag_seconds":
                scrape.backplane_lag = value
            elif name == "pynet_start_time_seconds":
                scrape.started = value
    scrape.fanout.sort()
    return scrape


def rate(name: str, before: Scrape | None, now: Scrape) -> float:
    """Per second between two scrapes; NaN without an earlier one (or after a restart, when a
    counter went down: the new server counts from zero)."""
    if before is None or now.at <= before.at:
        return math.nan
    delta = now.counters.get(name, 0.0) - before.counters.get(name, 0.0)
    if delta < 0:
        return math.nan
    return delta / (now.at - before.at)


def fanout_p99(before: Scrape | None, now: Scrape, q: float = 0.99) -> float:
    """The Q-quantile of fan-out time between two scrapes (since start without an earlier
    one), interpolated in its bucket as Prometheus' histogram_quantile does; NaN if none."""
    now_counts = dict(now.fanout)
    old = dict(before.fanout) if before is not None else {}
    cumulative = [(le, now_counts[le] - old.get(le, 0.0)) for le, _ in now.fanout]
    if not cumulative or cumulative[-1][1] <= 0 or any(c < 0 for _, c in cumulative):
        return math.nan
    rank = q * cumulative[-1][1]
    low, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return low  # past the last bound: that bound is all we know
            inside = count - below
            return low + (le - low) * ((rank - below) / inside if inside else 1.0)
        low, below = le, count
    return low


def _number(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ago(stamp: float, now: float | None = None) -> str:
    """`3m ago` from a Unix time; `never` for 0."""
    if not stamp:
        return "never"
    seconds = max(0, int((time.time() if now is None else now) - stamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def row(host: str, before: Scrape | None, now: Scrape, wall: float | None = None) -> list[str]:
    """The columns of HEADERS for one host."""
    handover = "never"
    if now.handover_time:
        handover = f"{_ms(now.handover_pause)} pause, {ago(now.handover_time, wall)}"
    return [
        host,
        now.release,
        _number(now.connections),
        _number(now.named),
        _number(rate("pynet_lines_received", before, now), 1),
        _number(rate("pynet_broadcasts", before, now), 1),
        _number(rate("pynet_deliveries", before, now), 1),
        _ms(fanout_p99(before, now)),
        _number(now.cuts),
        handover,
    ]


def failed_row(host: str, why: str) -> list[str]:
    return [host, why, *["" for _ in HEADERS[2:]]]


def summary(now: Scrape, wall: float | None = None) -> str:
    """The key figures in one line, for `fab status` (no rates: one scrape)."""
    refused = now.disconnects.get("refused", 0.0)
    parts = [
        f"{_number(now.connections)} connected ({_number(now.named)} named)",
        f"{_number(now.counters.get('pynet_connections_accepted', 0.0))} accepted",
        f"{_number(now.counters.get('pynet_deliveries', 0.0))} deliveries",
        f"p99 fan-out {_ms(fanout_p99(None, now))}",
        f"{_number(now.cuts)} slow readers cut",
        f"{_number(refused)} refused",
    ]
    if now.handover_time:
        parts.append(
            f"last handover {_ms(now.handover_pause)} pause, {ago(now.handover_time, wall)}"
        )
    if not math.isnan(now.backplane_lag):
        unavailable = now.counters.get("pynet_backplane_unavailable", 0.0)
        parts.append(f"backplane lag {_ms(now.backplane_lag)}, {_number(unavailable)} unavailable")
    return ", ".join(parts)


class MetricsError(RuntimeError):
    """The host's /metrics could not be read; the message says why in a few words."""


def read(remote: Remote, port: int = cmd.METRICS_PORT) -> Scrape:
    """Scrape the host's /metrics through SSH."""
    result = remote.run(cmd.scrape_metrics(port), check=False)
    if result.failed:
        detail = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        raise MetricsError(f"no metrics on 127.0.0.1:{port} ({detail[:120]})")
    try:
        return parse(result.stdout)
    except (ValueError, KeyError) as exc:
        raise MetricsError(f"127.0.0.1:{port} did not answer Prometheus text ({exc})") from None


def stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


# --- the live view ------------------------------------------------------------------------


def table(rows: list[list[str]], title: str = "") -> Table:
    """One frame: a row per host (rich renders it for a terminal, or plain for a pipe)."""
    frame = Table(title=title or f"pynet top  {stamp()} UTC", title_justify="left")
    for header in HEADERS:
        frame.add_column(header, justify="left" if header in ("host", "release") else "right")
    for cells in rows:
        frame.add_row(*cells)
    return frame


@dataclass
class Watched:
    """One host being watched: its label, how to reach it, its last scrape."""

    label: str
    remote: Remote
    last: Scrape | None = None

    def poll(self, port: int) -> list[str]:
        """Scrape now and give the row (rates since the last scrape); a failure is a row too."""
        try:
            now = read(self.remote, port)
        except MetricsError as exc:
            self.last = None
            return failed_row(self.label, str(exc))
        except Exception as exc:
            self.last = None
            return failed_row(self.label, f"unreachable ({type(exc).__name__}: {exc})"[:100])
        before, self.last = self.last, now
        return row(self.label, before, now)


def poll_all(hosts: list[Watched], port: int) -> list[list[str]]:
    """Every host at once (each over its own SSH connection): a frame takes as long as the
    slowest host, not their sum."""
    with ThreadPoolExecutor(max_workers=min(16, len(hosts)) or 1) as pool:
        return list(pool.map(lambda h: h.poll(port), hosts))


def watch(
    hosts: list[Watched],
    port: int,
    once: bool = False,
    interval: float = 1.0,
    console: Console | None = None,
) -> None:
    """Refresh the table every INTERVAL seconds until Ctrl-C; ONCE: two scrapes INTERVAL apart
    (rates need two), one frame printed, done."""
    if console is None:  # not a terminal (a script, a pipe): wide enough for one line per host
        console = Console() if sys.stdout.isatty() else Console(width=200)
    poll_all(hosts, port)  # the first scrape: the next one has rates
    if once:
        time.sleep(interval)
        console.print(table(poll_all(hosts, port)))
        return
    with Live(table(poll_all(hosts, port)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(table(poll_all(hosts, port)), refresh=True)
        except KeyboardInterrupt:
            pass
