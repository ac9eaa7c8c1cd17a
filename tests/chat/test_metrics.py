"""chat/metrics.py: the figures scraped over real HTTP and parsed by prometheus_client's parser,
the embedded-metric lines CloudWatch reads, and the metrics options."""

from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from chat import config
from chat import metrics as metrics_module
from chat.metrics import (
    DURATION_BUCKETS,
    MAX_HEAD,
    REQUEST_TIMEOUT,
    EmfReporter,
    Endpoint,
    Histogram,
    Metrics,
    quantile,
    respond,
    start,
)
from pynet.local.host import free_port


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the exposition, parsed by the library."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert isinstance(sample, Sample)
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics(release="v7")
    port = free_port()
    running = start(metrics, "127.0.0.1", port, delay=0.0)
    assert running.endpoint is not None
    assert running.endpoint.wait_bound(5)
    yield metrics, port
    running.close()


def test_the_figures_move_as_the_server_counts(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    before = samples(scrape(port))
    assert before[("pynet_connections", ())] == 0
    assert before[("pynet_deliveries_total", ())] == 0
    assert before[("pynet_info", (("release", "v7"),))] == 1
    assert before[("pynet_disconnects_total", (("reason", "too_slow"),))] == 0

    # What the server does for 3 connects, a line fanned out to 3 clients in one step, a cut.
    metrics.accepted += 3
    metrics.connected = 3
    metrics.named = 2
    metrics.lines_received += 1
    metrics.broadcasts += 1
    metrics.deliveries += 3
    metrics.bytes_sent += 3 * 20
    metrics.fanout.observe(0.0003)
    metrics.commit.observe(0.002)
    metrics.disconnect("too_slow")
    metrics.connected = 2
    metrics.rate_limited += 1
    metrics.error("rate-limited")
    metrics.error("bad-text", 2)
    metrics.backplane_unavailable += 1
    metrics.backplane_lag = 0.004
    metrics.handover(0.035)

    after = samples(scrape(port))
    assert after[("pynet_connections", ())] == 2
    assert after[("pynet_named_connections", ())] == 2
    assert after[("pynet_connections_accepted_total", ())] == 3
    assert after[("pynet_lines_received_total", ())] == 1
    assert after[("pynet_broadcasts_total", ())] == 1
    assert after[("pynet_deliveries_total", ())] == 3
    assert after[("pynet_sent_bytes_total", ())] == 60
    assert after[("pynet_disconnects_total", (("reason", "too_slow"),))] == 1
    assert after[("pynet_disconnects_total", (("reason", "quit"),))] == 0
    assert after[("pynet_rate_limited_total", ())] == 1
    assert after[("pynet_errors_total", (("code", "bad-text"),))] == 2
    assert after[("pynet_errors_total", (("code", "rate-limited"),))] == 1
    assert after[("pynet_backplane_unavailable_total", ())] == 1
    assert after[("pynet_backplane_lag_seconds", ())] == pytest.approx(0.004)
    assert after[("pynet_handovers_total", ())] == 1
    assert after[("pynet_handover_last_pause_seconds", ())] == pytest.approx(0.035)
    assert after[("pynet_handover_last_timestamp_seconds", ())] > 0
    # The histogram: cumulative buckets, count and sum, as Prometheus expects them.
    assert after[("pynet_fanout_duration_seconds_bucket", (("le", "0.00025"),))] == 0
    assert after[("pynet_fanout_duration_seconds_bucket", (("le", "0.0005"),))] == 1
    assert after[("pynet_fanout_duration_seconds_bucket", (("le", "+Inf"),))] == 1
    assert after[("pynet_fanout_duration_seconds_count", ())] == 1
    assert after[("pynet_fanout_duration_seconds_sum", ())] == pytest.approx(0.0003)
    assert after[("pynet_history_commit_duration_seconds_count", ())] == 1
    # The process's own figures come along (memory, CPU, open files).
    assert after[("process_resident_memory_bytes", ())] > 0


def test_before_any_handover_or_lag_the_gauges_say_nan(served: tuple[Metrics, int]) -> None:
    _, port = served
    found = samples(scrape(port))
    assert math.isnan(found[("pynet_handover_last_pause_seconds", ())])
    assert math.isnan(found[("pynet_backplane_lag_seconds", ())])
    assert found[("pynet_handover_last_timestamp_seconds", ())] == 0


def test_only_metrics_is_served(served: tuple[Metrics, int]) -> None:
    _, port = served
    with pytest.raises(urllib.error.HTTPError, match="404"):
        scrape(port, "/secret")


def test_the_endpoint_listens_on_loopback_only() -> None:
    """Bound to 127.0.0.1: another address of this machine is refused (if it has one)."""
    endpoint = Endpoint(Metrics(), "127.0.0.1", 0).start()
    try:
        assert endpoint.wait_bound(5)
        assert samples(scrape(endpoint.port))[("pynet_connections", ())] == 0
        bound = endpoint._server
        assert bound is not None
        assert bound.server_address[0] == "127.0.0.1"
    finally:
        endpoint.close()


def test_a_taken_port_is_retried_until_it_is_free() -> None:
    """During a handover the old release still holds the port: the new one waits for it."""
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    endpoint = Endpoint(Metrics(), "127.0.0.1", port).start()
    try:
        assert not endpoint.wait_bound(0.5)
        holder.close()
        assert endpoint.wait_bound(5)
        assert ("pynet_connections", ()) in samples(scrape(port))
    finally:
        holder.close()
        endpoint.close()


def test_port_zero_is_off() -> None:
    running = start(Metrics(), "127.0.0.1", 0)
    assert running.endpoint is None
    assert running.reporter is None
    running.close()


def test_the_emf_line_is_what_cloudwatch_extracts() -> None:
    metrics = Metrics(release="v7")
    out = io.StringIO()
    reporter = EmfReporter(metrics, "prod", out=out, interval=3600)
    metrics.accepted += 5
    metrics.connected = 4
    metrics.deliveries += 100
    metrics.disconnect("too_slow", 2)
    for _ in range(100):
        metrics.fanout.observe(0.002)
    reporter.emit()
    metrics.accepted += 1
    reporter.emit()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    directive = first["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "PyNet"
    assert directive["Dimensions"] == [["Deployment"]]
    names = {m["Name"] for m in directive["Metrics"]}
    # Every metric the directive names is a number at the top level (or CloudWatch drops it).
    assert all(isinstance(first[name], (int, float)) for name in names)
    assert first["Deployment"] == "prod"
    assert isinstance(first["_aws"]["Timestamp"], int)
    assert first["ConnectionsAccepted"] == 5
    assert first["Connections"] == 4
    assert first["Deliveries"] == 100
    assert first["SlowReadersCut"] == 2
    assert 1.0 < first["FanoutP99"] <= 2.5  # milliseconds, inside the 1..2.5 ms bucket
    # Counters are sent as the change since the last line; gauges as they are.
    assert second["ConnectionsAccepted"] == 1
    assert second["Connections"] == 4
    assert second["Deliveries"] == 0
    assert "FanoutP99" not in second  # no fan-out in that minute: no figure, not a zero


def test_the_reporter_thread_prints_lines() -> None:
    out = io.StringIO()
    reporter = EmfReporter(Metrics(), "prod", out=out, interval=0.05).start()
    try:
        deadline = 100
        while out.getvalue().count("\n") < 2 and deadline:
            deadline -= 1
            reporter._stop.wait(0.05)
    finally:
        reporter.close()
    assert out.getvalue().count("\n") >= 2


def test_quantile_interpolates_like_prometheus() -> None:
    bounds = (0.001, 0.01, 0.1)
    assert math.isnan(quantile(bounds, [0, 0, 0, 0], 0.99))
    assert quantile(bounds, [100, 0, 0, 0], 0.5) == pytest.approx(0.0005)
    assert quantile(bounds, [0, 100, 0, 0], 0.99) == pytest.approx(0.001 + 0.009 * 0.99)
    assert quantile(bounds, [0, 0, 0, 10], 0.99) == 0.1  # beyond the last bound: that bound


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    histogram = Histogram()
    histogram.observe(DURATION_BUCKETS[0])  # le="0.0001" counts 0.0001 itself
    histogram.observe(10.0)
    assert histogram.counts[0] == 1
    assert histogram.counts[-1] == 1


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, ("127.0.0.1", 9050, None)),
        ([], {"PYNET_METRICS_PORT": "0"}, ("127.0.0.1", 0, None)),
        (["--metrics-port", "9100"], {"PYNET_METRICS_PORT": "1"}, ("127.0.0.1", 9100, None)),
        (["--metrics-host", "::1"], {"PYNET_METRICS_CLOUDWATCH": "prod"}, ("::1", 9050, "prod")),
    ],
)
def test_metrics_options(argv: list[str], env: dict[str, str], expected: tuple) -> None:
    settings = config.load(argv, env)
    assert (settings.metrics_host, settings.metrics_port, settings.metrics_cloudwatch) == expected


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (
            ["--metrics-port", "70000"],
            {},
            "--metrics-port: invalid value '70000': must be 0..65535",
        ),
        ([], {"PYNET_METRICS_PORT": "x"}, "PYNET_METRICS_PORT: invalid value 'x'"),
        (["--metrics-cloudwatch", "a b"], {}, "must be a deployment name"),
    ],
)
def test_bad_metrics_options_say_which(
    argv: list[str], env: dict[str, str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        config.load(argv, env)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("said", "counted"),
    [
        ("too-slow", "too_slow"),
        ("too_slow", "too_slow"),
        ("nick-timeout", "timeout"),
        ("idle-timeout", "timeout"),
        ("connection reset", "vanished"),
        ("timed out", "vanished"),
        ("eof", "quit"),
        ("server-full", "refused"),
        ("too-many-connections", "refused"),
        ("nick-lost", "nick_lost"),
    ],
)
def test_the_servers_words_for_a_close_are_counted_by_reason(said: str, counted: str) -> None:
    metrics = Metrics()
    metrics.disconnect(said)
    assert metrics.disconnects[counted] == 1
    assert sum(metrics.disconnects.values()) == 1


def test_gauges_can_be_read_from_the_server_at_scrape_time(served: tuple[Metrics, int]) -> None:
    """The server may hand over a function instead of keeping the two gauges up to date."""
    metrics, port = served
    clients, named = {"a", "b", "c"}, {"a": 1}
    metrics.gauges = lambda: (len(clients), len(named))
    found = samples(scrape(port))
    assert found[("pynet_connections", ())] == 3
    assert found[("pynet_named_connections", ())] == 1
    clients.add("d")
    assert samples(scrape(port))[("pynet_connections", ())] == 4
    out = io.StringIO()
    EmfReporter(metrics, "prod", out=out).emit()
    assert json.loads(out.getvalue())["Connections"] == 4


def test_the_serving_process_never_imports_prometheus_client_nor_an_http_framework() -> None:
    """Imported in the endpoint's thread after a handover, they held the GIL from the event loop
    for ~0.1 s (chat/exposition.py): a scraped server runs on the standard library's sockets."""
    code = (
        "import sys, chat.metrics as m; "
        "e = m.Endpoint(m.Metrics(), '127.0.0.1', 0).start(); e.wait_bound(5); "
        "print(e.port, flush=True); sys.stdin.readline(); "
        "print(sorted({n.split('.')[0] for n in sys.modules} & "
        "{'prometheus_client', 'wsgiref', 'http', 'email'}))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        assert samples(scrape(port))[("pynet_connections", ())] == 0
        out, _ = child.communicate("scraped\n", timeout=10)
    finally:
        child.kill()
    assert out.strip() == "[]"


def raw(port: int, request: bytes) -> bytes:
    """What the endpoint answers to REQUEST, sent as is."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /metrics HTTP/1.1", b"200"),
        (b"GET /?name[]=pynet_connections HTTP/1.1", b"200"),
        (b"GET /metrics/../secret HTTP/1.1", b"404"),
        (b"POST /metrics HTTP/1.1", b"405"),
        (b"GET /metrics", b"400"),
        (b"\x16\x03\x01 TLS hello", b"400"),
        (b"", b"400"),
    ],
)
def test_each_request_gets_one_plain_answer(request_line: bytes, status: bytes) -> None:
    answer = respond(request_line, lambda: b"figures\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == status
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert (body == b"figures\n") == (status == b"200")


def test_a_head_request_gets_the_headers_only() -> None:
    answer = respond(b"HEAD /metrics HTTP/1.1", lambda: b"figures\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 8\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")


def test_an_oversized_head_is_refused_and_the_next_scrape_served(
    served: tuple[Metrics, int],
) -> None:
    _, port = served
    long_line = b"GET /" + b"a" * (MAX_HEAD + 10) + b" HTTP/1.1\r\n\r\n"
    assert raw(port, long_line).startswith(b"HTTP/1.1 400")
    many = b"GET /metrics HTTP/1.1\r\n" + b"X-Header: y\r\n" * (MAX_HEAD // 10) + b"\r\n"
    assert raw(port, many).startswith(b"HTTP/1.1 400")
    usual = b"GET /metrics HTTP/1.1\r\n" + b"X-Header: y\r\n" * 100 + b"\r\n"
    assert raw(port, usual).startswith(b"HTTP/1.1 200")
    assert ("pynet_connections", ()) in samples(scrape(port))


def drip(port: int, stop: threading.Event) -> None:
    """A request head, a byte every 0.5 s: each read is quick, the whole is not."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n":
            if stop.wait(0.5):
                return
            try:
                conn.send(bytes([byte]))
            except OSError:
                return


@pytest.mark.parametrize("sender", ["silent", "drip"])
def test_a_slow_scraper_holds_the_next_one_back_only_for_the_timeout(
    served: tuple[Metrics, int], sender: str
) -> None:
    _, port = served
    stop = threading.Event()
    if sender == "silent":
        slow = socket.create_connection(("127.0.0.1", port))
    else:
        threading.Thread(target=drip, args=(port, stop), daemon=True).start()
    time.sleep(0.2)  # the endpoint is reading the slow one
    began = time.monotonic()
    try:
        assert ("pynet_connections", ()) in samples(scrape(port))
    finally:
        stop.set()
    waited = time.monotonic() - began
    assert waited < REQUEST_TIMEOUT + 1
    if sender == "silent":
        assert slow.recv(1) == b""  # dropped at the timeout, unanswered
        slow.close()


def test_figures_that_cannot_be_written_get_a_500_and_the_endpoint_serves_on(
    served: tuple[Metrics, int],
) -> None:
    metrics, port = served

    def broken() -> tuple[int, int]:
        raise RuntimeError("a gauge that fails")

    metrics.gauges = broken
    with pytest.raises(urllib.error.HTTPError, match="500"):
        scrape(port)
    metrics.gauges = None
    assert ("pynet_connections", ()) in samples(scrape(port))


def test_closed_while_it_binds_it_never_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """`close` can come between the bind and the moment the thread keeps the server: the
    thread sees it, and the port is let go."""
    endpoint = Endpoint(Metrics(), "127.0.0.1", 0)
    bound: list[int] = []
    real = metrics_module._Server

    def binding(*args: Any) -> Any:
        server = real(*args)
        bound.append(server.server_address[1])
        endpoint.close(wait=False)
        return server

    monkeypatch.setattr(metrics_module, "_Server", binding)
    endpoint.start()
    endpoint._thread.join(5)
    assert not endpoint._thread.is_alive()
    assert not endpoint.wait_bound(0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", bound[0]), timeout=2)


def test_close_without_waiting_frees_the_port_soon() -> None:
    """From the event loop the server closes without blocking; the port is free right after."""
    running = start(Metrics(), "127.0.0.1", free_port(), delay=0.0)
    endpoint = running.endpoint
    assert endpoint is not None
    assert endpoint.wait_bound(5)
    running.close(wait=False)
    for _ in range(50):
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", endpoint.port))
            break
        except OSError:
            time.sleep(0.05)
    else:
        pytest.fail("the port stayed bound")


def test_the_endpoint_waits_before_it_binds() -> None:
    running = start(Metrics(), "127.0.0.1", free_port(), delay=0.3)
    endpoint = running.endpoint
    assert endpoint is not None
    try:
        assert not endpoint.wait_bound(0.1)
        assert endpoint.wait_bound(5)
    finally:
        running.close()
