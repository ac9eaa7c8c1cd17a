"""The server's own figures on `/metrics`, scraped from a real server process and parsed with
prometheus_client's parser: they move as traffic, refusals, cuts and a handover happen."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from pynet.local.host import free_port
from tests.chat.fakes import LineClient, ServerProcess, Start, start_release

Clients = Callable[..., LineClient]
Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def figures(port: int, timeout: float = 10) -> Figures:
    """Every sample, {(name, sorted labels): value}; waits for the endpoint to answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as got:
                text = got.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Figures, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def ended(found: Figures) -> float:
    return sum(v for (name, _), v in found.items() if name == "pynet_disconnects_total")


def until(port: int, check: Callable[[Figures], bool], timeout: float = 10) -> Figures:
    deadline = time.monotonic() + timeout
    while True:
        found = figures(port)
        if check(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_the_figures_move_with_traffic_refusals_and_cuts(
    start_server: Start, clients: Clients
) -> None:
    metrics_port = free_port()
    server = start_server("--metrics-port", str(metrics_port), "--rate", "0")
    ann, bob = clients(server.port, "ann"), clients(server.port, "bob")
    ann.send("hello", "world", "/msg nobody hi", "/bogus")
    bob.until("MSG 2 ann world")
    bob.send("/quit done")
    assert bob.closed()
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.close()
    found = until(metrics_port, lambda f: ended(f) >= 2)
    assert value(found, "pynet_connections") == 1  # ann
    assert value(found, "pynet_named_connections") == 1
    assert value(found, "pynet_connections_accepted_total") == 3
    assert value(found, "pynet_broadcasts_total") == 5  # JOIN ann, JOIN bob, 2 MSG, LEFT bob
    # Each broadcast went to every named client at the time: 1 + 2 + 2 + 2 + 1.
    assert value(found, "pynet_deliveries_total") == 8
    assert value(found, "pynet_errors_total", code="no-such-nick") == 1
    assert value(found, "pynet_errors_total", code="unknown-command") == 1
    assert value(found, "pynet_disconnects_total", reason="quit") >= 1  # bob's /quit
    assert ended(found) == 2  # and a close (a reset: it left the greeting unread)
    assert value(found, "pynet_lines_received_total") >= 7
    assert value(found, "pynet_fanout_duration_seconds_count") >= 1
    assert (
        'pynet_info{release="'
        in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
        .read()
        .decode()
    )
    ann.close()


def test_a_rate_limited_client_is_counted(start_server: Start, clients: Clients) -> None:
    metrics_port = free_port()
    server = start_server("--metrics-port", str(metrics_port), "--rate", "1", "--rate-burst", "2")
    ann = clients(server.port, "ann")
    ann.send("one", "two", "three", "four")
    ann.until("ERR rate-limited")
    found = until(metrics_port, lambda f: value(f, "pynet_rate_limited_total") >= 1)
    assert value(found, "pynet_rate_limited_total") >= 1
    assert value(found, "pynet_errors_total", code="rate-limited") >= 1


def test_a_handover_is_counted_with_its_pause_by_the_release_that_took_over(
    start_server: Start, clients: Clients, sock: str
) -> None:
    metrics_port = free_port()
    flags = ("--metrics-port", str(metrics_port))
    old: ServerProcess = start_release(start_server, sock, "v1", *flags)
    ann = clients(old.port, "ann")
    figures(metrics_port)
    new = start_release(start_server, sock, "v2", *flags, port=old.port)
    assert old.proc.wait(10) == 99
    found = until(metrics_port, lambda f: value(f, "pynet_handovers_total") == 1)
    assert value(found, "pynet_info", release="v2") == 1
    assert value(found, "pynet_handovers_total") == 1
    assert 0 < value(found, "pynet_handover_last_pause_seconds") < 5
    # A server watches its full garbage collections (chat/collector.py): the family is there.
    assert ("pynet_gc_pause_seconds_count", ()) in found
    assert value(found, "pynet_connections") == 1  # ann, handed over
    ann.send("/ping")
    assert ann.until("PONG")[-1] == "PONG"
    new.terminate()
