"""A fan-out written over several loop turns (chat/fanout.py, `FANOUT_STEP`), without sockets.

The server runs on a real event loop but its clients' transports are recorders, so a test sees
every `write` each client got and can interleave input between the steps of one fan-out.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import pytest

from chat import fanout as fanout_module
from chat.connection import Peer
from chat.service import ChatServer
from tests.chat.fakes import RecordingTransport, attach, local_server, run

MSG = re.compile(rb"^MSG (\d+) (\S+) (.*)$")


@pytest.fixture(autouse=True)
def small_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients per step, so that a handful of clients make a fan-out of several steps."""
    monkeypatch.setattr(fanout_module, "FANOUT_STEP", 2)


def new_server(**limits: Any) -> ChatServer:
    """A server whose fan-outs are written in the next loop turn however long they took
    (`flush_delay` 0: the flush policy's timing would make turn counts depend on the machine's
    load)."""
    limits.setdefault("flush_delay", 0.0)
    return local_server(1000, **limits)


def count_steps(server: ChatServer) -> list[int | None]:
    """Record the limit of every fan-out step the server takes from now on."""
    steps: list[int | None] = []
    step = server.fanout.step

    def counted(limit: int | None) -> None:
        steps.append(limit)
        step(limit)

    server.fanout.step = counted  # type: ignore[method-assign]
    return steps


def without_listener(server: ChatServer) -> None:
    """`thaw` restarts the listener; these servers never had one."""

    async def start(listener: object = None) -> None:
        await asyncio.sleep(0)

    server.start = start  # type: ignore[method-assign]


async def turn(times: int = 1) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def test_a_line_joins_the_fan_out_under_way() -> None:
    async def body() -> None:
        server = new_server()
        peers = [attach(server, 1000 + i, f"u{i}") for i in range(6)]
        await turn(10)  # greetings, OKs and JOINs written
        for _, transport in peers:
            transport.writes.clear()

        first, last = peers[0][0], peers[-1][0]
        server.received(first, b"one\n")
        await turn()  # the first step: two of six clients
        assert [len(t.writes) for _, t in peers] == [1, 1, 0, 0, 0, 0]
        server.received(last, b"two\n")
        await turn(5)

        # The four not written yet got both lines in one write; the first two got "two" after.
        for _, transport in peers[2:]:
            assert len(transport.writes) == 1
            assert [MSG.match(line)[3] for line in transport.lines()] == [b"one", b"two"]  # type: ignore[index]
        for _, transport in peers[:2]:
            assert len(transport.writes) == 2
            assert [MSG.match(line)[3] for line in transport.lines()] == [b"one", b"two"]  # type: ignore[index]
        assert not server.fanout.log, "the log is emptied once every client has every line"

    run(body)


def test_a_reply_waits_behind_the_lines_its_client_has_not_had() -> None:
    async def body() -> None:
        server = new_server()
        peers = [attach(server, 1000 + i, f"u{i}") for i in range(6)]
        await turn(10)
        for _, transport in peers:
            transport.writes.clear()
        server.received(peers[0][0], b"one\n")
        await turn()  # u0 and u1 written; u5 not yet
        late, late_transport = peers[-1]
        server.received(late, b"/ping x\n")
        server.received(peers[1][0], b"two\n")
        await turn(5)
        lines = late_transport.lines()
        assert [line.split(b" ")[0] for line in lines] == [b"MSG", b"PONG", b"MSG"], lines

    run(body)


def test_a_client_named_during_a_fan_out_gets_only_what_follows() -> None:
    async def body() -> None:
        server = new_server()
        peers = [attach(server, 1000 + i, f"u{i}") for i in range(5)]
        await turn(10)
        server.received(peers[0][0], b"before\n")
        await turn()  # mid fan-out
        _, transport = attach(server, 2000, "new")
        server.received(peers[0][0], b"after\n")
        await turn(6)
        texts = [m[3] for m in map(MSG.match, transport.lines()) if m]
        assert texts == [b"after"]

    run(body)


def test_drained_buffers_are_not_counted_again() -> None:
    """The `max_buffered` bound counts what is buffered now: bytes a fan-out left in buffers
    that have drained since must not add up to a cut (it once cut every client for 50 bytes)."""

    async def body() -> None:
        server = new_server(max_buffered=1000, max_backlog=10**6)
        peers = [attach(server, 1000 + i, f"u{i}") for i in range(6)]
        await turn(10)
        for _, transport in peers:
            transport.size = 160  # 6 x 160 = 960 <= max_buffered: no cut is due
        server.received(peers[0][0], b"one\n")
        await turn(5)  # three steps of two clients
        assert not server.fanout.sweeping
        assert not [c.conn.nick for c, _ in peers if c.close_after_flush]
        for _, transport in peers:
            transport.size = 0  # every buffer drained
        peers[1][1].size = 50  # 50 bytes in the whole server
        server.received(peers[0][0], b"/msg u1 hi\n")
        await turn(3)
        cut = [c.conn.nick for c, _ in peers if c.close_after_flush]
        assert cut == [], f"cut as too slow with 50 bytes buffered in all: {cut}"

    run(body)


def test_a_cut_mid_fan_out_keeps_one_step_per_turn() -> None:
    """Cutting a slow reader mid-fan-out schedules a flush (its BYE, its LEFT): the fan-out
    still takes one step per loop turn, not one more per cut."""

    async def body() -> None:
        server = new_server(max_backlog=100)
        peers = [attach(server, 1000 + i, f"u{i}") for i in range(12)]
        await turn(20)
        for _, transport in peers:
            transport.writes.clear()
        steps = count_steps(server)
        peers[1][1].size = 200  # u1 is slow: cut in the first step
        server.received(peers[0][0], b"one\n")
        await turn()  # first step: u0, u1
        per_turn = []
        for _ in range(4):
            steps.clear()
            await turn()
            per_turn.append(len(steps))
        assert per_turn == [1, 1, 1, 1], f"_step calls per loop turn: {per_turn}"

    run(body)


def test_a_thaw_keeps_one_step_per_turn() -> None:
    """A failed handover's thaw, with a client lost meanwhile (its LEFT schedules a flush),
    goes on with one step per loop turn."""

    async def body() -> None:
        server = new_server()
        peers = [attach(server, 1000 + i, f"u{i}") for i in range(12)]
        await turn(20)
        server.freeze(set())
        server._departed.append((peers[0][0], None))
        without_listener(server)
        steps = count_steps(server)
        await server.thaw(None)  # type: ignore[arg-type]
        await turn()
        steps.clear()
        await turn()
        assert len(steps) == 1, f"_step calls in one loop turn: {len(steps)}"

    run(body)


@pytest.mark.parametrize("seed", range(40))
def test_each_client_gets_exactly_its_lines_in_order(seed: int) -> None:
    """Each client gets exactly the lines queued for it (broadcasts while it receives, its own
    lines), in the order they were queued; a lost connection a prefix of them."""

    async def body() -> None:
        rng = random.Random(seed)
        server = new_server(max_backlog=1000)
        expected: dict[Peer, list[bytes]] = {}
        broadcast, send = server.broadcast, server.send

        def model_broadcast(data: bytes) -> None:
            for c in server.clients:
                if c.receiving:
                    expected.setdefault(c, []).extend(data.splitlines(keepends=True))
            broadcast(data)

        def model_send(receiver: Peer, data: bytes) -> None:
            expected.setdefault(receiver, []).extend(data.splitlines(keepends=True))
            send(receiver, data)

        server.broadcast = model_broadcast
        server.send = model_send
        peers: list[tuple[Peer, RecordingTransport]] = []
        names = iter(f"n{i}" for i in range(10000))
        lost: set[Peer] = set()
        for _ in range(9):
            peers.append(attach(server, 3000 + len(peers), next(names)))
        for _ in range(400):
            live = [
                p for p in peers if p[0] in server.clients and p[0].receiving and not p[1].closing
            ]
            action = rng.random()
            if action < 0.4 and live:
                server.received(rng.choice(live)[0], f"hello {rng.random()}\n".encode())
            elif action < 0.5 and live:
                sender, target = rng.choice(live)[0], rng.choice(live)[0]
                server.received(sender, f"/msg {target.conn.nick} psst\n".encode())
            elif action < 0.55 and live:
                server.received(rng.choice(live)[0], f"/nick {next(names)}\n".encode())
            elif action < 0.58 and live:
                server.received(rng.choice(live)[0], b"/ping x\n")
            elif action < 0.63:
                peers.append(attach(server, 3000 + len(peers), next(names)))
            elif action < 0.65 and len(live) > 3:
                server.received(rng.choice(live)[0], b"/quit bye\n")
            elif action < 0.67 and len(live) > 3:
                c, t = rng.choice(live)
                lost.add(c)
                t.close()  # the peer vanished: connection_lost next turn
            elif action < 0.69 and len(live) > 3:
                rng.choice(live)[1].size = 5000  # too slow: cut at its next write
            elif action < 0.70 and not server.fanout.sweeping:
                for _, t in peers:
                    t.size = 0
                server.freeze(set())
                if live and rng.random() < 0.5:
                    c, t = rng.choice(live)
                    lost.add(c)
                    t.closing = True
                    server.lost(c, None)
                without_listener(server)
                await server.thaw(None)  # type: ignore[arg-type]
            else:
                await turn(rng.randint(1, 3))
        await turn(60)
        assert not server.fanout.log, "the log is emptied once every client has every line"
        assert not server.fanout.forked
        assert not server.fanout.sweeping
        for client, transport in peers:
            got = b"".join(transport.writes).splitlines(keepends=True)
            want = expected.get(client, [])
            if client in lost:
                assert got == want[: len(got)], client.conn.nick
            else:
                assert got == want, (client.conn.nick, got[-5:], want[-5:])

    run(body)
