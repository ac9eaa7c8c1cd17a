"""What one client can cost the server (README, "What one client can cost the server"), tried
as an attacker would against a real server process: replays asked a hundred times and never
read, `/who` floods, many connections from one address. Each time the server's memory stays
within its budget and a bystander is still answered at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import psutil

from tests.chat.fakes import LineClient, ServerProcess, Start

Clients = Callable[..., LineClient]

LINE = "x" * 3000  # a big retained line: 200 of them make a 600 kB replay


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def fill(server: ServerProcess, clients: Clients, count: int) -> None:
    writer = clients(server.port, "filler")
    for start in range(0, count, 50):
        writer.send(*[f"{LINE} {i}" for i in range(start, min(count, start + 50))])
        writer.until(f"MSG {min(count, start + 50)} ")


def pong_ms(client: LineClient) -> float:
    began = time.perf_counter()
    client.send("/ping")
    assert client.until("PONG")[-1] == "PONG"
    return (time.perf_counter() - began) * 1000


def test_a_hundred_replays_never_read_cost_a_page_not_the_history(
    start_server: Start, clients
) -> None:
    server = start_server("--rate", "0", "--history-size", "200")
    fill(server, clients, 200)  # 200 x 3 kB retained: 600 kB per replay, 60 MB for a hundred
    bystander = clients(server.port, "bystander")
    before = rss(server)
    attacker = socket.create_connection(("127.0.0.1", server.port))
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    attacker.sendall(b"/nick attacker\n" + b"/since 0\n" * 100)
    time.sleep(1.0)
    assert pong_ms(bystander) < 500
    grown = rss(server) - before
    assert grown < 8 << 20, f"the server grew by {grown >> 20} MiB for one client"
    attacker.close()


def test_replays_arrive_whole_in_order_and_the_next_line_after_them(
    start_server: Start, clients
) -> None:
    server = start_server("--rate", "0", "--history-size", "200")
    fill(server, clients, 200)
    reader = clients(server.port, "reader", timeout=10)
    reader.send("/since 0", "/since 150", "/ping")
    lines = reader.until("PONG")
    ids = [int(line.split()[1]) for line in lines if line.startswith("MSG ")]
    assert ids == list(range(1, 201)) + list(range(151, 201))
    assert lines[-1] == "PONG"


def test_lines_broadcast_during_a_replay_follow_it_in_id_order(
    start_server: Start, clients: Clients
) -> None:
    """The protocol's rule holds through a paged replay: every receiver sees broadcasts in
    increasing id order (what comes meanwhile waits behind the replay)."""
    server = start_server("--rate", "0", "--history-size", "200")
    fill(server, clients, 200)
    reader = clients(server.port, "reader", timeout=10, rcvbuf=4096)
    reader.send("/since 0")
    time.sleep(0.3)  # a few pages out, the rest waiting for the reader
    writer = clients(server.port, "writer")
    writer.send(*[f"live {i}" for i in range(20)])
    writer.until("MSG 220 ")
    lines = reader.until("MSG 220 ")
    ids = [int(line.split()[1]) for line in lines if line.startswith("MSG ")]
    assert ids == list(range(1, 221))


def test_who_floods_wait_for_their_reader_and_cost_no_more_memory(
    start_server: Start, clients
) -> None:
    server = start_server("--rate", "0", "--max-per-address", "0")
    named = [clients(server.port, f"user{i:03}") for i in range(300)]  # WHO of ~2.4 kB
    bystander = named[0]
    before = rss(server)
    attacker = socket.create_connection(("127.0.0.1", server.port))
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.sendall(b"/who\n" * 20000)  # 48 MB of answers if all were made at once
    time.sleep(1.0)
    assert pong_ms(bystander) < 500
    grown = rss(server) - before
    assert grown < 8 << 20, f"the server grew by {grown >> 20} MiB for one client"
    attacker.close()


def test_who_answers_follow_every_change_of_names(server: ServerProcess, clients: Clients) -> None:
    ann = clients(server.port, "ann")
    ann.send("/who")
    assert ann.until("WHO")[-1] == "WHO ann"
    bob = clients(server.port, "bob")
    ann.send("/who")
    assert ann.until("WHO")[-1] == "WHO ann bob"
    bob.send("/nick Bobby")
    ann.until("NICK bob Bobby")
    ann.send("/who")
    assert ann.until("WHO")[-1] == "WHO ann Bobby"
    bob.send("/quit")
    ann.until("LEFT Bobby")
    ann.send("/who")
    assert ann.until("WHO")[-1] == "WHO ann"


def test_more_connections_from_one_address_buy_no_more_lines(
    start_server: Start, clients: Clients
) -> None:
    server = start_server("--address-rate", "10", "--address-burst", "40")
    senders = [clients(server.port, f"s{i}") for i in range(8)]
    for sender in senders:  # 20 each: within every connection's own limit (100 at once)
        sender.send(*[f"line {i}" for i in range(20)])
    time.sleep(0.5)
    refused = sum(
        line == "ERR rate-limited too many lines from your address, slow down"
        for sender in senders
        for line in drain(sender)
    )
    # 160 lines against a shared burst of 40, less the 8 /nick lines (and 10/s meanwhile);
    # each connection's own limit would have taken all 160.
    accepted = 160 - refused
    assert 40 - 8 <= accepted <= 40 - 8 + 15


def drain(client: LineClient) -> list[str]:
    """Every line the client has been sent by now."""
    client.sock.settimeout(0.3)
    lines = []
    try:
        while True:
            lines.append(client.line())
    except AssertionError:
        return lines


def test_the_address_limit_is_off_behind_a_proxy(start_server: Start, clients: Clients) -> None:
    server = start_server("--address-rate", "10", "--address-burst", "10", "--max-per-address", "0")
    senders = [clients(server.port, f"s{i}") for i in range(4)]
    for sender in senders:
        sender.send(*[f"line {i}" for i in range(20)], "/ping")
    for sender in senders:
        assert not [line for line in sender.until("PONG") if line.startswith("ERR")]
