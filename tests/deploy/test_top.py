"""`fab top`'s pure part: /metrics text (made by the server's own module) to rows and rates;
the scrape command; `fab status` and `fab logs` going on past a host that fails."""

from __future__ import annotations

import io
import math
import re
import subprocess
import threading
from pathlib import Path

import pytest
from rich.console import Console

from chat import config
from chat.metrics import Endpoint, Metrics
from pynet.deploy import commands as cmd
from pynet.deploy import top
from pynet.deploy.commands import render
from pynet.tasks.release import Prefixed
from tests.deploy.fakes import closed_port, fab


def exposition(metrics: Metrics) -> str:
    """What the server's /metrics answers, without a socket."""
    return Endpoint(metrics).exposition().decode()


def test_parse_reads_what_the_server_writes() -> None:
    metrics = Metrics(release="v9")
    metrics.connected, metrics.named = 12, 10
    metrics.accepted = 15
    metrics.deliveries = 1000
    metrics.disconnect("too_slow", 2)
    metrics.disconnect("refused")
    metrics.error("bad-text")
    metrics.fanout.observe(0.003)
    metrics.handover(0.042)
    metrics.backplane_lag = 0.002
    scrape = top.parse(exposition(metrics), at=5.0)
    assert scrape.release == "v9"
    assert (scrape.connections, scrape.named) == (12, 10)
    assert scrape.counters["pynet_connections_accepted"] == 15
    assert scrape.counters["pynet_deliveries"] == 1000
    assert scrape.cuts == 2
    assert scrape.disconnects["refused"] == 1
    assert scrape.errors == {"bad-text": 1}
    assert scrape.fanout[-1] == (math.inf, 1)
    assert scrape.handover_pause == pytest.approx(0.042)
    assert scrape.backplane_lag == pytest.approx(0.002)


def test_rates_between_two_scrapes() -> None:
    metrics = Metrics(release="v9")
    before = top.parse(exposition(metrics), at=10.0)
    metrics.lines_received += 50
    metrics.broadcasts += 40
    metrics.deliveries += 4000
    for _ in range(99):
        metrics.fanout.observe(0.0002)  # in the 0.0001..0.00025 bucket
    metrics.fanout.observe(0.2)  # the 1 % tail: p99 lands at the top of the fast bucket
    now = top.parse(exposition(metrics), at=12.0)
    assert top.rate("pynet_lines_received", before, now) == 25
    assert top.rate("pynet_deliveries", before, now) == 2000
    assert math.isnan(top.rate("pynet_deliveries", None, now))
    assert top.fanout_p99(before, now) == pytest.approx(0.00025)
    row = top.row("admin@h:22", before, now, wall=now.at)
    assert row == [
        "admin@h:22",
        "v9",
        "0",
        "0",
        "25.0",
        "20.0",
        "2,000.0",
        "0.2 ms",
        "0",
        "never",
    ]
    assert len(row) == len(top.HEADERS)


def test_a_restarted_server_shows_no_rate_rather_than_a_negative_one() -> None:
    old = Metrics()
    old.deliveries = 5000
    before = top.parse(exposition(old), at=1.0)
    now = top.parse(exposition(Metrics()), at=2.0)
    assert math.isnan(top.rate("pynet_deliveries", before, now))
    assert math.isnan(top.fanout_p99(before, now))


def test_p99_without_fanouts_is_a_dash_and_a_handover_says_when() -> None:
    metrics = Metrics()
    metrics.handover(0.05)
    metrics.handover_last_time = 1000.0
    now = top.parse(exposition(metrics), at=1.0)
    row = top.row("h", None, now, wall=1000.0 + 185)
    assert row[7] == "-"
    assert row[9] == "50.0 ms pause, 3m ago"
    assert "last handover 50.0 ms pause" in top.summary(now, wall=1200.0)


def test_the_frame_renders_every_host_row() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    rows = [
        top.row("admin@a:22", None, top.parse(exposition(Metrics("v1")), at=1.0)),
        top.failed_row("admin@b:22", "no metrics on 127.0.0.1:9050 (refused)"),
    ]
    console.print(top.table(rows, title="t"))
    text = out.getvalue()
    for header in top.HEADERS:
        assert header in text
    assert "admin@a:22" in text
    assert "v1" in text
    assert "admin@b:22" in text
    assert "no metrics on 127.0.0.1:9050" in text


def test_the_scrape_command_fetches_loopback_only() -> None:
    argv = cmd.scrape_metrics(9100)
    assert argv[:2] == ["python3", "-c"]
    assert argv[-1] == "http://127.0.0.1:9100/metrics"
    assert render(argv).startswith("python3 -c 'import sys, urllib.request; ")


def test_the_scrape_command_really_reads_a_metrics_endpoint() -> None:
    """The exact command, run here by a shell against a real endpoint."""
    from chat.metrics import Endpoint

    metrics = Metrics("v3")
    metrics.connected = 4
    endpoint = Endpoint(metrics, "127.0.0.1", 0).start()
    try:
        assert endpoint.wait_bound(5)
        line = render(cmd.scrape_metrics(endpoint.port))
        out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True)
    finally:
        endpoint.close()
    assert top.parse(out.stdout).connections == 4


def test_the_default_metrics_port_is_the_servers() -> None:
    assert config.Settings().metrics_port == cmd.METRICS_PORT


def test_prefixed_writes_whole_lines_with_the_host() -> None:
    out = io.StringIO()
    stream = Prefixed("admin@a:22", out)
    stream.write("one\r\ntw")
    assert out.getvalue() == "admin@a:22 one\n"
    stream.write("o\nthree")
    stream.flush()
    assert out.getvalue() == "admin@a:22 one\nadmin@a:22 two\nadmin@a:22 three\n"


def two_host_inventory(path: Path) -> tuple[Path, int, int]:
    """An inventory of two hosts nobody answers for."""
    first, second = closed_port(), closed_port()
    hosts = "".join(
        f"        web{i}:\n          ansible_host: 127.0.0.1\n          ansible_port: {port}\n"
        "          ansible_user: admin\n"
        for i, port in ((1, first), (2, second))
    )
    path.write_text(f"all:\n  children:\n    chat:\n      hosts:\n{hosts}")
    return path, first, second


@pytest.mark.parametrize("task", ["status", "logs"])
def test_every_host_is_reported_even_after_one_fails(task: str, tmp_path: Path) -> None:
    """Two unreachable hosts: a line for each (status and logs used to stop at the first)."""
    inventory, first, second = two_host_inventory(tmp_path / "hosts.yml")
    proc = fab(task, env={"PYNET_INVENTORY": str(inventory)})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert [line.split(":", 2)[:2] for line in lines] == [
        ["admin@127.0.0.1", str(first)],
        ["admin@127.0.0.1", str(second)],
    ]
    assert all("cannot reach the host over SSH" in line for line in lines)


def test_top_with_an_unreachable_host_is_one_line() -> None:
    port = closed_port()
    proc = fab("-H", f"admin@127.0.0.1:{port}", "top", "--once")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"admin@127.0.0.1:{port}: cannot reach the host over SSH "
        f"([Errno None] Unable to connect to port {port} on 127.0.0.1); `fab doctor` says why"
    ]


class ShellRemote:
    """Runs the command here instead of over SSH: the same command line, pointed at PORT (each
    "host" here has its own port on one loopback)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        assert argv == cmd.scrape_metrics(cmd.METRICS_PORT)
        line = render(cmd.scrape_metrics(self.port))
        done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=False)
        done.failed = done.returncode != 0  # type: ignore[attr-defined] # Fabric's Result's name
        return done


def test_watch_once_prints_one_frame_with_rates() -> None:
    from chat.metrics import Endpoint

    metrics = Metrics("v5")
    metrics.connected = metrics.named = 3
    endpoint = Endpoint(metrics, "127.0.0.1", 0).start()
    gone = closed_port()
    out = io.StringIO()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            metrics.lines_received += 1
            metrics.broadcasts += 1
            metrics.deliveries += 3
            stop.wait(0.01)

    thread = threading.Thread(target=traffic, daemon=True)
    try:
        assert endpoint.wait_bound(5)
        hosts = [
            top.Watched("live", ShellRemote(endpoint.port)),  # type: ignore[arg-type]
            top.Watched("gone", ShellRemote(gone)),  # type: ignore[arg-type]
        ]
        thread.start()
        top.watch(
            hosts, cmd.METRICS_PORT, once=True, interval=0.5, console=Console(file=out, width=200)
        )
    finally:
        stop.set()
        endpoint.close()
    text = out.getvalue()
    [live] = [line for line in text.splitlines() if " live " in line]
    cells = [cell.strip() for cell in re.split(r"[│┃|]", live)[1:-1]]
    assert cells[:4] == ["live", "v5", "3", "3"]
    assert float(cells[4]) > 10  # lines/s in, about 100 a second
    assert float(cells[6].replace(",", "")) > 30  # deliveries/s, 3 per line
    [gone_row] = [line for line in text.splitlines() if " gone " in line]
    assert "no metrics on 127.0.0.1:9050" in gone_row  # the port asked, as the operator gave it
    assert "Connection refused" in gone_row
