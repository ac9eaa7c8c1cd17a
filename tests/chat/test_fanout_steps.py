"""A fan-out written over several loop turns (chat/server.py, `FANOUT_STEP`), without sockets.

The server runs on a real event loop but its clients' transports are recorders, so a test sees
every `write` each client got and can interleave input between the steps of one fan-out.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator

import pytest

from chat import server as server_module
from chat.config import Settings
from chat.history import History
from chat.server import ChatServer, Client

MSG = re.compile(rb"^MSG (\d+) (\S+) (.*)$")


class Recorder(asyncio.Transport):
    """A transport that keeps what is written, a write at a time."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.port = port
        self.protocol: Client

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing or not data, "written after close"
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", self.port) if name == "peername" else default

    def lines(self) -> list[bytes]:
        return b"".join(self.writes).splitlines()


@pytest.fixture
def small_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(server_module, "FANOUT_STEP", 2)
    yield 2


def new_server() -> ChatServer:
    settings = Settings(host="127.0.0.1", port=0, rate=0.0, max_per_address=0)
    return ChatServer(settings, History(1000, None))


def connect(server: ChatServer, nick: str | None, port: int) -> tuple[Client, Recorder]:
    client = Client(server)
    transport = Recorder(port)
    transport.protocol = client
    client.connection_made(transport)
    if nick is not None:
        server.received(client, f"/nick {nick}\n".encode())
    return client, transport


async def turn(times: int = 1) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def _test_a_line_joins_the_fan_out_under_way(small_step: int) -> None:
    server = new_server()
    peers = [connect(server, f"u{i}", 1000 + i) for i in range(6)]
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
    assert not server._log, "the log is emptied once every client has every line"


async def _test_a_reply_waits_behind_the_lines_its_client_has_not_had(small_step: int) -> None:
    server = new_server()
    peers = [connect(server, f"u{i}", 1000 + i) for i in range(6)]
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


async def _test_a_client_named_during_a_fan_out_gets_only_what_follows(small_step: int) -> None:
    server = new_server()
    peers = [connect(server, f"u{i}", 1000 + i) for i in range(5)]
    await turn(10)
    server.received(peers[0][0], b"before\n")
    await turn()  # mid fan-out
    newcomer, transport = connect(server, "new", 2000)
    server.received(peers[0][0], b"after\n")
    await turn(6)
    texts = [m[3] for m in map(MSG.match, transport.lines()) if m]
    assert texts == [b"after"]


async def _test_every_client_gets_every_line_once_in_order(small_step: int, seed: int) -> None:
    """Random talk, joins, quits, private messages and loop turns: each client's MSG ids are
    consecutive from the first it got to the last (nothing lost, nothing twice, in order)."""
    rng = random.Random(seed)
    server = new_server()
    peers: list[tuple[Client, Recorder]] = []
    names = iter(f"n{i}" for i in range(1000))
    for _ in range(7):
        peers.append(connect(server, next(names), 3000 + len(peers)))
    for _ in range(300):
        live = [p for p in peers if p[0] in server.clients and p[0].receiving]
        action = rng.random()
        if action < 0.5 and live:
            server.received(rng.choice(live)[0], f"hello {rng.random()}\n".encode())
        elif action < 0.6 and live:
            sender, target = rng.choice(live)[0], rng.choice(live)[0]
            server.received(sender, f"/msg {target.conn.nick} psst\n".encode())
        elif action < 0.65:
            peers.append(connect(server, next(names), 3000 + len(peers)))
        elif action < 0.68 and len(live) > 2:
            server.received(rng.choice(live)[0], b"/quit bye\n")
        else:
            await turn(rng.randint(1, 3))
    await turn(30)
    assert not server._log and not server._forked and not server._sweeping
    last = server.history.last_id
    assert last > 50
    for client, transport in peers:
        ids = [int(m[1]) for m in map(MSG.match, transport.lines()) if m]
        assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True, client.conn.nick
        if client in server.clients:
            assert not ids or ids[-1] == last, "a client still connected has every line"


def test_a_line_joins_the_fan_out_under_way(small_step: int) -> None:
    asyncio.run(_test_a_line_joins_the_fan_out_under_way(small_step))


def test_a_reply_waits_behind_the_lines_its_client_has_not_had(small_step: int) -> None:
    asyncio.run(_test_a_reply_waits_behind_the_lines_its_client_has_not_had(small_step))


def test_a_client_named_during_a_fan_out_gets_only_what_follows(small_step: int) -> None:
    asyncio.run(_test_a_client_named_during_a_fan_out_gets_only_what_follows(small_step))


@pytest.mark.parametrize("seed", range(12))
def test_every_client_gets_every_line_once_in_order(small_step: int, seed: int) -> None:
    asyncio.run(_test_every_client_gets_every_line_once_in_order(small_step, seed))
