"""The service's figures: Prometheus text on `/metrics`, and CloudWatch embedded-metric lines.

Why plain ints: the server counts on its hot path (every broadcast, every line read, every
fan-out step), and a `prometheus_client.Counter` takes a lock and a label lookup per call. Here
the server adds to plain attributes of one `Metrics` object (`metrics.deliveries += n`, once per
broadcast with the number of receivers, never once per client written), and `families()`
turns them into metric families only when `/metrics` is scraped (about once a second at most).
The event loop is the only writer; the HTTP thread only reads, and reading an int or copying a
list is atomic under the GIL, so no lock is taken anywhere.

Written in Prometheus' text format by chat/exposition.py (the standard library only: why is
there) and served by a daemon thread on its own port (`--metrics-port`, default 9050, 0 = off),
bound to 127.0.0.1 unless told otherwise: the figures are for the operator (`fab top` reads them
through SSH), never for the internet, and the security group never opens the port. With host
networking two releases share the port during a handover: the new one keeps retrying the bind
every second until the old one has exited.

With `--metrics-cloudwatch DEPLOYMENT`, every 60 s one JSON line in CloudWatch's embedded metric
format goes to stdout; Docker's awslogs driver already ships stdout to CloudWatch Logs, which
turns the line into CloudWatch metrics (namespace `PyNet`, dimension `Deployment`): no agent.

This module imports nothing from the server: the server imports it.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import resource
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from chat.exposition import (
    CONTENT_TYPE,
    Family,
    counter,
    gauge,
    histogram,
    labelled_counter,
    labelled_gauge,
    render,
)

log = logging.getLogger("chat.metrics")

PREFIX = "pynet"
#: Why a session ended (`pynet_disconnects_total{reason}`), always present (0 until it happens).
REASONS = ("quit", "too_slow", "timeout", "vanished", "refused", "handover", "shutdown")
#: The server's own words for a close (its BYE reason or its log's `reason=`) -> REASONS.
#: Another word is counted under itself, `-` made `_`.
REASON_OF = {
    "quit": "quit",
    "eof": "quit",  # the client closed its side: a quit without /quit
    "connection closed": "quit",
    "too-slow": "too_slow",
    "nick-timeout": "timeout",
    "line-timeout": "timeout",
    "idle-timeout": "timeout",
    "timed out": "vanished",  # keepalive or TCP_USER_TIMEOUT gave the peer up
    "connection reset": "vanished",
    "server-full": "refused",
    "too-many-connections": "refused",
    "restarting": "shutdown",
    "handover": "handover",
}
#: Fan-out and commit times: 100 us .. 2.5 s (a 10,000-client fan-out step is about 10 ms).
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
EMF_NAMESPACE = "PyNet"
EMF_INTERVAL = 60.0
BIND_RETRY = 1.0


class Histogram:
    """Counts per bucket, without a lock: `observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = DURATION_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> Family:
        counts = list(self.counts)  # one atomic copy: the buckets agree with each other
        return histogram(name, documentation, self.bounds, counts, self.sum)


class Metrics:
    """Everything the server counts. Add to the attributes directly; call the few methods for
    the figures that need more than an addition. Read by `families()` at scrape time."""

    __slots__ = (
        "accepted",
        "backplane_lag",
        "backplane_unavailable",
        "broadcasts",
        "bytes_sent",
        "commit",
        "connected",
        "deliveries",
        "disconnects",
        "errors",
        "fanout",
        "gauges",
        "gc_pauses",
        "handover_last_pause",
        "handover_last_time",
        "handovers",
        "lines_received",
        "named",
        "rate_limited",
        "release",
        "started",
    )

    def __init__(self, release: str = "") -> None:
        self.release = release
        self.started = time.time()
        # Gauges: set by the server as sessions come and go (or before each scrape).
        self.connected = 0  # TCP sessions now
        self.named = 0  # of those, the ones that sent /nick
        # Or a function that says both, called at scrape time, e.g.
        # `lambda: (len(server.clients), len(server.named))` (len() is safe from any thread).
        self.gauges: Callable[[], tuple[int, int]] | None = None
        # Counters: only ever added to.
        self.accepted = 0  # connections accepted (refused ones included: they are counted
        # again under disconnects{reason="refused"})
        self.lines_received = 0
        self.broadcasts = 0  # lines fanned out to everyone (MSG, JOIN, ...)
        self.deliveries = 0  # lines queued to one client each: a broadcast to N clients is N
        self.bytes_sent = 0  # bytes of those (count both per broadcast: line x receivers)
        self.rate_limited = 0
        self.backplane_unavailable = 0  # `ERR unavailable` answers: Redis could not take it
        self.handovers = 0
        self.disconnects: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.errors: dict[str, int] = {}  # ERR replies by code
        # Distributions and last values.
        self.fanout = Histogram()  # one observation per fan-out step
        self.commit = Histogram()  # one per history commit
        self.handover_last_pause = float("nan")  # seconds the last handover paused clients
        self.handover_last_time = 0.0  # when it ended (Unix time); 0 = none since start
        self.backplane_lag = float("nan")  # seconds from publish to delivery, last measured
        # Full collections of Python's garbage collector, timed (chat/collector.py), if watched.
        self.gc_pauses: Histogram | None = None

    def read_gauges(self) -> None:
        """Refresh `connected` and `named` from `gauges`, if the server gave one (then it need
        not keep them up to date itself: they are read when someone asks)."""
        if self.gauges is not None:
            self.connected, self.named = self.gauges()

    def disconnect(self, reason: str, count: int = 1) -> None:
        """COUNT sessions ended for REASON: one of REASONS, or the server's own word for it
        (`too-slow`, `nick-timeout`, `connection reset`...: REASON_OF)."""
        key = REASON_OF.get(reason) or reason.replace("-", "_").replace(" ", "_")
        self.disconnects[key] = self.disconnects.get(key, 0) + count

    def error(self, code: str, count: int = 1) -> None:
        """COUNT `ERR CODE` replies (rate-limited ones also go to `rate_limited`)."""
        self.errors[code] = self.errors.get(code, 0) + count

    def handover(self, pause: float) -> None:
        """A handover finished here (on the release that took over) after PAUSE seconds."""
        self.handovers += 1
        self.handover_last_pause = pause
        self.handover_last_time = time.time()

    def families(self) -> list[Family]:
        """The figures as Prometheus metric families (conventional names and base units)."""
        self.read_gauges()
        p = PREFIX
        return [
            labelled_gauge(
                f"{p}_info", "The release serving (always 1)", "release", {self.release: 1}
            ),
            gauge(f"{p}_start_time_seconds", "When this server started (Unix time)", self.started),
            gauge(f"{p}_connections", "Connected sessions now", self.connected),
            gauge(f"{p}_named_connections", "Sessions now that have a nickname", self.named),
            counter(f"{p}_connections_accepted", "Connections accepted", self.accepted),
            labelled_counter(
                f"{p}_disconnects",
                "Sessions ended, by reason",
                "reason",
                dict(sorted(dict(self.disconnects).items())),
            ),
            counter(f"{p}_lines_received", "Lines read", self.lines_received),
            counter(f"{p}_broadcasts", "Lines fanned out", self.broadcasts),
            counter(f"{p}_deliveries", "Lines queued to one client each", self.deliveries),
            counter(
                f"{p}_sent_bytes", "Bytes of broadcast lines queued to clients", self.bytes_sent
            ),
            counter(f"{p}_rate_limited", "Lines refused by the rate limit", self.rate_limited),
            labelled_counter(
                f"{p}_errors",
                "ERR replies, by code",
                "code",
                dict(sorted(dict(self.errors).items())),
            ),
            self.fanout.family(f"{p}_fanout_duration_seconds", "Time to write one fan-out step"),
            self.commit.family(
                f"{p}_history_commit_duration_seconds", "Time to commit history to SQLite"
            ),
            counter(f"{p}_handovers", "Handovers this release took over", self.handovers),
            gauge(
                f"{p}_handover_last_pause_seconds",
                "Pause clients saw in the last handover",
                self.handover_last_pause,
            ),
            gauge(
                f"{p}_handover_last_timestamp_seconds",
                "When the last handover ended (Unix time; 0 = none)",
                self.handover_last_time,
            ),
            gauge(
                f"{p}_backplane_lag_seconds",
                "Publish-to-delivery time through the cluster's Redis, last measured",
                self.backplane_lag,
            ),
            counter(
                f"{p}_backplane_unavailable",
                "ERR unavailable answers (the backplane could not take a line)",
                self.backplane_unavailable,
            ),
            *self._collector_families(),
        ]

    def _collector_families(self) -> list[Family]:
        """Python's garbage collector: its full collections, the loop stalled while each ran
        (chat/collector.py), when they are watched."""
        if self.gc_pauses is None:
            return []
        return [
            self.gc_pauses.family(
                f"{PREFIX}_gc_pause_seconds", "Time of each full garbage collection"
            )
        ]


class ProcessFigures:
    """The process's own figures from /proc (CPU, memory, open files), named and worded as
    prometheus_client's `ProcessCollector` writes them, so dashboards built on those keep
    working. Nothing where /proc is missing (not Linux)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.pagesize = resource.getpagesize()
        self.boot_time = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self.boot_time = float(line.split()[1])
        except OSError:
            pass

    def families(self) -> list[Family]:
        if not self.boot_time:
            return []
        own = os.path.join(self.proc, "self")
        found: list[Family] = []
        try:
            with open(os.path.join(own, "stat"), "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            found += [
                gauge(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    float(parts[20]),
                ),
                gauge(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    float(parts[21]) * self.pagesize,
                ),
                gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    float(parts[19]) / self.ticks + self.boot_time,
                ),
                counter(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    (float(parts[11]) + float(parts[12])) / self.ticks,
                ),
            ]
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            found += [
                gauge(
                    "process_open_fds",
                    "Number of open file descriptors.",
                    len(os.listdir(os.path.join(own, "fd"))),
                ),
                gauge("process_max_fds", "Maximum number of open file descriptors.", soft),
            ]
        except (OSError, IndexError, ValueError):
            pass
        return found


# --- serving /metrics ----------------------------------------------------------------------

#: Seconds a scraper gets to send its whole request head: the endpoint answers one scrape at a
#: time, so a connection that sends nothing, or a byte now and then, holds the next scrape back
#: this long at most.
REQUEST_TIMEOUT = 2.0
#: The request head (request line and headers), at most (Prometheus sends a few short headers).
MAX_HEAD = 16384
#: Seconds, at most, to read what a client still sends after its answer, before closing.
LINGER = 0.2


def respond(request_line: bytes, body: Callable[[], bytes]) -> bytes:
    """The whole HTTP response to a request whose first line is REQUEST_LINE: the exposition
    (BODY, made only for a GET or HEAD of `/metrics` or `/`), else a short error."""
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1]
    if target.split(b"?", 1)[0] not in (b"/", b"/metrics"):
        return _response("404 Not Found", b"not found: try /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"only GET\n", ("Allow", "GET, HEAD"))
    try:
        figures = body()
    except Exception:  # a figure that cannot be written: say so, and log why
        log.exception("metrics: the exposition failed")
        return _response("500 Internal Server Error", b"the figures could not be written\n")
    return _response("200 OK", figures, ("Content-Type", CONTENT_TYPE), head=method == b"HEAD")


def _response(status: str, body: bytes, *headers: tuple[str, str], head: bool = False) -> bytes:
    if not headers:
        headers = (("Content-Type", "text/plain; charset=utf-8"),)
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + (b"" if head else body)


def read_head(conn: socket.socket, timeout: float = REQUEST_TIMEOUT) -> bytes | None:
    """The request's first line, once its whole head is in; b"" for a head over MAX_HEAD bytes
    (answered 400); None when it is not in within TIMEOUT seconds in all, or the client closes
    first (not answered)."""
    deadline = time.monotonic() + timeout
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            return None
        if not chunk:
            return None
        head += chunk
        if len(head) > MAX_HEAD:
            return b""
    return head.split(b"\n", 1)[0].rstrip(b"\r")


class _Scrape(socketserver.BaseRequestHandler):
    """One scrape: read the request's head (bounded in size and in time, as a whole), answer,
    close."""

    request: socket.socket
    server: _Server

    def handle(self) -> None:
        conn = self.request
        try:
            request_line = read_head(conn)
            if request_line is None:
                return
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(respond(request_line, self.server.exposition))
            # Closing with unread input would reset the connection, and the client could lose
            # the answer (a head too long is answered before it is all read): read on a little.
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(LINGER)
            for _ in range(16):
                if not conn.recv(65536):
                    break
        except OSError as exc:  # a reset, a reader too slow: that scrape is lost, not the endpoint
            log.debug("metrics: a scrape ended early: %s", exc)


class _Server(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], exposition: Callable[[], bytes]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.exposition = exposition
        super().__init__(address, _Scrape)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line in the log, not socketserver's traceback on stderr."""
        log.warning("metrics: a scrape from %s failed: %s", client_address, sys.exc_info()[1])


class Endpoint:
    """`/metrics` on HOST:PORT in a daemon thread; `close()` stops it. While the port is taken
    (the release handing over still holds it) the thread retries every second.

    A thread, not the event loop: a scrape (the process's open files are listed from /proc)
    never delays a client's line by more than the GIL's switch interval. It runs the standard
    library only (chat/exposition.py says why)."""

    def __init__(
        self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9050, delay: float = 0.0
    ) -> None:
        self.host, self.port = host, port
        self.delay = delay  # seconds to wait before binding (see `start`)
        self.metrics = metrics
        self.process = ProcessFigures()
        self._server: _Server | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    def wait_bound(self, timeout: float) -> bool:
        """True once the port is bound (`self.port` is then the real one, if 0 was asked)."""
        return self._bound.wait(timeout)

    def exposition(self) -> bytes:
        """What a scrape gets: our figures, then the process's."""
        return render([*self.metrics.families(), *self.process.families()])

    def _run(self) -> None:
        if self.delay and self._stop.wait(self.delay):
            return
        warned = False
        while not self._stop.is_set():
            try:
                server = _Server((self.host, self.port), self.exposition)
            except OSError as exc:
                if not warned:
                    log.warning(
                        "metrics: cannot listen on %s:%s yet (%s); retrying every %.0f s",
                        self.host,
                        self.port,
                        exc.strerror or exc,
                        BIND_RETRY,
                    )
                    warned = True
                self._stop.wait(BIND_RETRY)
                continue
            with self._lock:  # `close` sees the server, or this sees that it was closed
                if self._stop.is_set():
                    server.server_close()
                    return
                self._server = server
            self.port = server.server_address[1]
            self._bound.set()
            log.info("metrics on http://%s:%s/metrics", self.host, self.port)
            server.serve_forever(poll_interval=0.1)
            server.server_close()
            return

    def close(self, wait: bool = True) -> None:
        """Stop serving. WAIT=False returns at once (the event loop must not block: the port is
        free within 0.1 s, and a successor retries every second anyway)."""
        self._stop.set()
        with self._lock:
            server = self._server
        if server is None:
            return
        if wait:
            server.shutdown()
            self._thread.join(timeout=2)
        else:
            threading.Thread(target=server.shutdown, name="metrics-stop", daemon=True).start()


# --- CloudWatch embedded metric format ------------------------------------------------------

#: (EMF metric name, Metrics attribute, unit, counter?) for the figures sent to CloudWatch.
EMF_FIGURES = (
    ("Connections", "connected", "Count", False),
    ("ConnectionsAccepted", "accepted", "Count", True),
    ("LinesReceived", "lines_received", "Count", True),
    ("Broadcasts", "broadcasts", "Count", True),
    ("Deliveries", "deliveries", "Count", True),
    ("BytesSent", "bytes_sent", "Bytes", True),
    ("RateLimited", "rate_limited", "Count", True),
    ("BackplaneUnavailable", "backplane_unavailable", "Count", True),
    ("Handovers", "handovers", "Count", True),
)


class EmfReporter:
    """One embedded-metric-format JSON line per interval: counters as the change since the
    last line (CloudWatch sums them per period), gauges as they are now."""

    def __init__(
        self,
        metrics: Metrics,
        deployment: str,
        out: TextIO | None = None,
        interval: float = EMF_INTERVAL,
    ) -> None:
        self.metrics, self.deployment, self.interval = metrics, deployment, interval
        self.out = out
        # From zero: the first line carries everything since the server started.
        self._last = {attr: 0 for _, attr, _, _ in EMF_FIGURES}
        self._last_cuts = 0
        self._last_fanout = [0] * len(metrics.fanout.counts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-emf", daemon=True)

    def line(self, now: float | None = None) -> str:
        """The next line (and remember what it reported, so the next one has only changes)."""
        m = self.metrics
        m.read_gauges()
        values: dict[str, float] = {}
        units: list[dict[str, str]] = []
        for name, attr, unit, cumulative in EMF_FIGURES:
            value = getattr(m, attr)
            values[name] = value - self._last[attr] if cumulative else value
            self._last[attr] = value
            units.append({"Name": name, "Unit": unit})
        cuts = m.disconnects.get("too_slow", 0)
        values["SlowReadersCut"], self._last_cuts = cuts - self._last_cuts, cuts
        units.append({"Name": "SlowReadersCut", "Unit": "Count"})
        counts = list(m.fanout.counts)
        delta = [a - b for a, b in zip(counts, self._last_fanout, strict=True)]
        self._last_fanout = counts
        p99 = quantile(m.fanout.bounds, delta, 0.99)
        if p99 == p99:  # no fan-out this interval: no figure (NaN is not valid JSON)
            values["FanoutP99"] = p99 * 1000
            units.append({"Name": "FanoutP99", "Unit": "Milliseconds"})
        record: dict[str, Any] = {
            "_aws": {
                "Timestamp": int((time.time() if now is None else now) * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": EMF_NAMESPACE,
                        "Dimensions": [["Deployment"]],
                        "Metrics": units,
                    }
                ],
            },
            "Deployment": self.deployment,
            "Release": m.release,
            **values,
        }
        return json.dumps(record, separators=(",", ":"))

    def start(self) -> EmfReporter:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def emit(self) -> None:
        out = self.out or sys.stdout
        out.write(self.line() + "\n")
        out.flush()

    def close(self, wait: bool = True) -> None:
        self._stop.set()
        if wait:
            self._thread.join(timeout=2)


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float:
    """The Q-quantile of a histogram's per-bucket COUNTS (not cumulative), interpolated in the
    bucket like Prometheus' histogram_quantile; NaN when empty. The +Inf bucket answers with
    the highest finite bound."""
    total = sum(counts)
    if total <= 0:
        return float("nan")
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if running + count >= rank and count > 0:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - running) / count
        running += count
    return bounds[-1]


class Running:
    """What `start` started; `close()` stops all of it (on shutdown or after a handover)."""

    def __init__(self, endpoint: Endpoint | None, reporter: EmfReporter | None) -> None:
        self.endpoint, self.reporter = endpoint, reporter

    def close(self, wait: bool = True) -> None:
        """Stop both; WAIT=False from the event loop (nothing blocks it then)."""
        if self.endpoint is not None:
            self.endpoint.close(wait)
        if self.reporter is not None:
            self.reporter.close(wait)


#: How long after `start` the endpoint binds: after a handover the release that handed over
#: holds the port until it exits, a moment later, so the first try usually finds it free.
START_DELAY = 1.0


def start(
    metrics: Metrics,
    host: str = "127.0.0.1",
    port: int = 9050,
    cloudwatch: str | None = None,
    delay: float = START_DELAY,
) -> Running:
    """Serve `/metrics` on HOST:PORT (PORT 0 = not at all) from DELAY seconds on and, with
    CLOUDWATCH (a deployment name), print embedded-metric lines every minute. Returns at once:
    both run in threads."""
    endpoint = Endpoint(metrics, host, port, delay).start() if port else None
    reporter = EmfReporter(metrics, cloudwatch).start() if cloudwatch else None
    return Running(endpoint, reporter)
