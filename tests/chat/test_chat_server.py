"""The server over real sockets on 127.0.0.1: the contract in docs/protocol.md, end to end."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat import __version__
from tests.chat.fakes import ServerProcess, Start


def test_greets_with_hello_then_accepts_a_nickname(server: ServerProcess, clients) -> None:
    alice = clients(server.port)
    assert alice.hello == f"HELLO pynet {__version__}"
    assert alice.line().startswith("INFO ")
    alice.send("/nick alice")
    assert alice.lines(2) == ["OK nick alice", "JOIN alice"]


def test_broadcast_reaches_everyone_with_increasing_ids(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    bob = clients(server.port, "bob")
    assert alice.line() == "JOIN bob"
    alice.send("hello bob", "  spaced  text ")
    bob.send("//slash is literal")
    expected_alice = ["MSG 1 alice hello bob", "MSG 2 alice   spaced  text "]
    assert bob.lines(3) == [*expected_alice, "MSG 3 bob /slash is literal"]
    assert alice.lines(3) == [*expected_alice, "MSG 3 bob /slash is literal"]


def test_commands_before_nick(server: ServerProcess, clients) -> None:
    guest = clients(server.port)
    guest.line()  # INFO
    clients(server.port, "carol")
    guest.send("hello?", "/msg carol hi", "/since 0", "/ping", "/who", "/nosuch")
    assert [line.split(" ", 2)[:2] for line in guest.lines(6)] == [
        ["ERR", "need-nick"],
        ["ERR", "need-nick"],
        ["ERR", "need-nick"],
        ["PONG"],
        ["WHO", "carol"],
        ["ERR", "unknown-command"],
    ]


def test_private_message_and_errors(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    bob = clients(server.port, "bob")
    alice.line()  # JOIN bob
    alice.send("/msg BOB psst, over here", "/msg nobody hi", "/msg bob", "/msg bad!name hi")
    assert bob.line() == "PRIV alice psst, over here"
    errors = alice.lines(3)
    assert [e.split(" ")[1] for e in errors] == ["no-such-nick", "bad-argument", "no-such-nick"]
    bob.send("/ping")
    assert bob.line() == "PONG"  # bob got nothing else


def test_who_and_nick_rules(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    bob = clients(server.port, "Bob")
    alice.line()
    bob.send("/nick ALICE", "/nick", "/nick way-too-long-nickname-over-thirty-two", "/nick a b")
    codes = [line.split(" ")[1] for line in bob.lines(4)]
    assert codes == ["nick-taken", "nick-invalid", "nick-invalid", "nick-invalid"]
    bob.send("/nick bobby")
    assert bob.lines(2) == ["OK nick bobby", "NICK Bob bobby"]
    assert alice.line() == "NICK Bob bobby"
    alice.send("/who")
    assert alice.line() == "WHO alice bobby"
    bob.send("/nick Bob")  # the old name is free again
    assert bob.lines(2) == ["OK nick Bob", "NICK bobby Bob"]


def test_quit_and_disconnect_announce_left(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    bob = clients(server.port, "bob")
    carol = clients(server.port, "carol")
    alice.lines(2)
    bob.send("/quit off to lunch")
    assert bob.rest() == ["JOIN carol", "BYE quit"]
    assert alice.line() == "LEFT bob off to lunch"
    carol.close()
    assert alice.line().startswith("LEFT carol connection ")
    server.wait_for_log("reason=quit")


def test_since_replays_retained_broadcasts(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    alice.send("one", "two", "three")
    alice.lines(3)
    late = clients(server.port, "late")
    late.send("/since 1", "/since 3", "/since 0", "/since x", "/since -1")
    assert late.lines(2) == ["MSG 2 alice two", "MSG 3 alice three"]
    assert late.lines(3) == ["MSG 1 alice one", "MSG 2 alice two", "MSG 3 alice three"]
    assert [line.split(" ")[1] for line in late.lines(2)] == ["bad-argument", "bad-argument"]


def test_framing_errors_keep_the_connection(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    alice.send(b"x" * 5000, b"\xff\xfe bad", b"", b"\r", b"ok\r")
    assert alice.line().startswith("ERR line-too-long")
    assert alice.line().startswith("ERR bad-encoding")
    assert alice.line() == "MSG 1 alice ok"
    alice.send(b"x" * 4094 + b"\r")  # exactly 4096 bytes with \r\n: allowed
    assert alice.line() == "MSG 2 alice " + "x" * 4094


def test_messages_are_not_logged_by_default(server: ServerProcess, clients) -> None:
    alice = clients(server.port, "alice")
    alice.send("a very secret text")
    alice.line()
    alice.send("/quit")
    alice.rest()
    server.wait_for_log("disconnect")
    assert "connect peer=127.0.0.1:" in server.log
    assert "nick peer=127.0.0.1:" in server.log
    assert "secret" not in server.log
    assert f"version={__version__}" in server.log


async def _named(port: int, nick: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"/nick {nick}\n".encode())
    while not (await reader.readline()).startswith(b"OK nick"):
        pass
    return reader, writer


async def _read_msgs(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        line = await reader.readline()
        assert line, "connection closed early"
        if line.startswith(b"MSG "):
            got.append(line)
    return got


def test_many_senders_keep_order(start_server: Start) -> None:
    """Every receiver sees increasing ids and each sender's lines in the order sent."""
    server = start_server("--address-rate", "0")  # 20 users behind one address, all at once
    senders, per_sender = 20, 25

    async def scenario() -> list[list[bytes]]:
        conns = [await _named(server.port, f"user{i}") for i in range(senders)]
        for i, (_, writer) in enumerate(conns):
            writer.write(b"".join(f"{i} {n}\n".encode() for n in range(per_sender)))
        return await asyncio.gather(
            *(_read_msgs(reader, senders * per_sender) for reader, _ in conns)
        )

    received = asyncio.run(asyncio.wait_for(scenario(), 20))
    for lines in received:
        ids = [int(line.split()[1]) for line in lines]
        assert ids == list(range(1, senders * per_sender + 1))
        by_sender: dict[str, list[int]] = {}
        for line in lines:
            _, _, _, who, n = line.decode().split()
            by_sender.setdefault(who, []).append(int(n))
        assert all(ns == list(range(per_sender)) for ns in by_sender.values())


@pytest.mark.usefixtures("many_files")
def test_a_thousand_concurrent_clients(start_server) -> None:
    server = start_server("--rate", "0", "--max-per-address", "0")
    count = 1000

    async def scenario() -> float:
        conns = []
        for batch in range(0, count, 100):
            conns += await asyncio.gather(
                *(_named(server.port, f"c{i}") for i in range(batch, batch + 100))
            )
        for reader, _ in conns:  # drain the JOIN lines so far
            reader._buffer.clear()  # type: ignore[attr-defined]  # test shortcut
        started = time.monotonic()
        for i in range(0, count, 100):
            conns[i][1].write(f"hello from c{i}\n".encode())
        got = await asyncio.gather(*(_read_msgs(reader, 10) for reader, _ in conns))
        elapsed = time.monotonic() - started
        assert all(len(lines) == 10 for lines in got)
        assert len({tuple(lines) for lines in got}) == 1  # all saw the same order
        for _, writer in conns:
            writer.close()
        return elapsed

    elapsed = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert elapsed < 5
    server.wait_for_log("clients=1000")


def test_help_lists_every_option() -> None:
    import subprocess
    import sys

    from chat.config import OPTIONS
    from tests.chat.fakes import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "chat.server", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in OPTIONS:
        assert option.flag in out
        assert option.env in out


def test_settings_from_environment(start_server) -> None:
    server = start_server(env={"PYNET_MAX_CLIENTS": "7", "PYNET_LOG_LEVEL": "debug"})
    start = server.wait_for_log("start ")
    assert "max_clients=7" in start
    assert "log_level=DEBUG" in start


def test_port_in_use_exits_with_error(server: ServerProcess) -> None:
    import subprocess
    import sys

    from tests.chat.fakes import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "chat.server", "--host", "127.0.0.1", "--port", str(server.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 1
    assert "error starting" in proc.stdout
