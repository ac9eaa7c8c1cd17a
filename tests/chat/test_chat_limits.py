"""Limits over real sockets: rate, max clients, nickname timeout, slow readers, memory bound."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.chat.fakes import LineClient


def test_rate_limit_refuses_lines_past_the_burst(start_server, clients) -> None:
    server = start_server("--rate", "2", "--rate-burst", "3")
    alice = clients(server.port, "alice")  # the /nick line used one token
    alice.send(*(f"line {n}" for n in range(6)))
    replies = alice.lines(6)
    assert replies[:2] == ["MSG 1 alice line 0", "MSG 2 alice line 1"]
    assert all(r.startswith("ERR rate-limited ") for r in replies[2:])
    time.sleep(0.6)  # one token back
    alice.send("again")
    assert alice.line() == "MSG 3 alice again"


def test_server_full_refuses_extra_connections(start_server, clients) -> None:
    server = start_server("--max-clients", "2")
    clients(server.port, "alice")
    clients(server.port, "bob")
    extra = clients(server.port)
    assert extra.hello.startswith("HELLO pynet ")
    rest = extra.rest()
    assert rest[0].startswith("ERR server-full ")
    assert rest[-1] == "BYE server-full"
    server.wait_for_log("reason=server-full")


def test_connection_without_nick_is_closed(start_server, clients) -> None:
    server = start_server("--nick-timeout", "0.4")
    named = clients(server.port, "alice")
    silent = clients(server.port)
    started = time.monotonic()
    assert silent.rest()[-1] == "BYE nick-timeout"
    assert time.monotonic() - started < 2
    named.send("/ping")
    assert named.line() == "PONG"  # named clients are not affected
    server.wait_for_log("reason=nick-timeout")


def _drain(client: LineClient) -> None:
    """Read and drop everything (the sender also receives its own broadcasts)."""
    with contextlib.suppress(AssertionError, OSError):
        while client.line() != "BYE restarting":
            pass


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(("--max-backlog", "65536"), id="per-client-backlog"),
        pytest.param(("--max-backlog", "100000000", "--max-buffered", "65536"), id="total-bound"),
    ],
)
def test_slow_reader_is_cut_without_stalling_others(start_server, limits) -> None:
    server = start_server("--rate", "0", *limits)
    slow = LineClient(server.port, "slow", rcvbuf=4096)  # never reads until the end
    fast = LineClient(server.port, "fast")
    sender = LineClient(server.port, "sender")
    fast.until("JOIN sender")
    received: list[float] = []
    text = "x" * 3000

    others: list[str] = []

    def read_fast() -> None:
        while len(received) < 3000:
            line = fast.line()
            if line.startswith("MSG"):
                received.append(time.monotonic())
            else:
                others.append(line)

    readers = [threading.Thread(target=read_fast), threading.Thread(target=_drain, args=(sender,))]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    for _ in range(30):  # 3,000 messages of 3 KB: far more than the slow socket holds
        sender.send(*[text] * 100)
    readers[0].join(timeout=20)
    assert len(received) == 3000, "the fast reader was stalled"
    assert received[-1] - started < 10
    server.wait_for_log("too-slow peer=")
    assert others == ["LEFT slow too-slow"]
    lines = slow.rest()  # now read everything the slow client was sent
    assert lines[-1] == "BYE too-slow"
    assert len(lines) < 3000
    for client in (slow, fast, sender):
        client.close()


def test_slow_reader_socket_is_cut_after_grace(start_server) -> None:
    """A too-slow client that never reads does not hold its buffer forever."""
    server = start_server("--rate", "0", "--max-backlog", "65536")
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(b"/nick slow\n")
    sender = LineClient(server.port, "sender")
    threading.Thread(target=_drain, args=(sender,), daemon=True).start()
    for _ in range(30):
        sender.send(*["y" * 3000] * 100)
    server.wait_for_log("too-slow peer=", timeout=10)
    server.wait_for_log("nick=slow reason=too-slow", timeout=10)
    slow.close()
    sender.close()
