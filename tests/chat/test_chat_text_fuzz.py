"""Fuzz the chat text path: no control character a client sends ever reaches another client.

Two levels: the sans-I/O protocol (every event that carries text to others, and the lines built
from it), and a real server running in this process, where whatever one socket sends is read
back from another socket. Allowed in server output: printable text, TAB, and the newline that
ends each line.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.config import Settings
from chat.history import History
from chat.protocol import (
    Left,
    Message,
    Private,
    PrivateMessage,
    Quit,
    Refused,
    Say,
    ServerConnection,
)
from chat.service import ChatServer

FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
NASTY = "\x00\x07\x08\x0b\x0c\r\x1b\x7f\x80\x85\x9b\x9f\t\u202e\u2066\ufeff"
TEXT = st.text(
    st.one_of(
        st.sampled_from(NASTY),
        st.characters(max_codepoint=0xA0),
        st.characters(codec="utf-8"),
    ),
    max_size=30,
)
PREFIXES = st.sampled_from(["", "//", "/msg receiver ", "/msg sender ", "/quit ", "/nick ", "/"])
LINE = st.builds(lambda prefix, text: (prefix + text).encode(), PREFIXES, TEXT)
RAW = st.binary(max_size=30)  # anything at all, invalid UTF-8 included
CHUNKS = st.lists(st.one_of(LINE, LINE, RAW, st.just(b"\n"), st.just(b"\r\n")), max_size=12)


def assert_clean(line: str) -> None:
    assert FORBIDDEN.search(line) is None, f"control character relayed: {line!r}"


@settings(max_examples=400, deadline=None)
@given(chunks=CHUNKS)
def test_protocol_never_passes_control_characters_on(chunks: list[bytes]) -> None:
    conn = ServerConnection(max_line=256)
    conn.accept_nick("sender")
    conn.data_to_send()
    for chunk in chunks:
        conn.receive_data(chunk + b"\n")
        for event in conn.events_received():
            # What the server relays: the text in the lines it builds for other clients.
            match event:
                case Say(text):
                    assert_clean(text)
                    assert_clean(Message(1, "sender", text).line().decode()[:-1])
                case Private(_, text):
                    assert_clean(text)
                    assert_clean(PrivateMessage("sender", text).line().decode()[:-1])
                case Quit(reason):
                    assert_clean(reason)
                    assert_clean(Left("sender", reason).line().decode()[:-1])
                case Refused(code, _):
                    assert code in {
                        "bad-text",
                        "bad-encoding",
                        "line-too-long",
                        "unknown-command",
                        "bad-argument",
                        "nick-invalid",
                        "no-such-nick",
                    }
        conn.data_to_send()


# ---- a real server in this process ---------------------------------------------------------


@pytest.fixture(scope="module")
def live_port() -> Iterator[int]:
    """A ChatServer on 127.0.0.1 in a thread of its own, for the whole module."""
    started = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        server = ChatServer(
            Settings(host="127.0.0.1", port=0, rate=0.0, max_line=512), History(10, None)
        )
        await server.start()
        stop = asyncio.Event()
        box.update(port=server.port, loop=asyncio.get_running_loop(), stop=stop)
        started.set()
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10), "the in-process server did not start"
    yield box["port"]  # type: ignore[misc]
    loop, stop = box["loop"], box["stop"]
    loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
    thread.join(10)


class Peer:
    """A blocking line socket."""

    def __init__(self, port: int, nick: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.sock.sendall(f"/nick {nick}\n".encode())
        self.read_until(f"OK nick {nick}")

    def read_until(self, last: str) -> list[str]:
        """Lines up to and including LAST; stops early, without error, if the server closes."""
        lines: list[str] = []
        while True:
            while b"\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    return lines
                self.buf += data
            raw, _, self.buf = self.buf.partition(b"\n")
            line = raw.decode()  # strict: the server only relays valid UTF-8
            lines.append(line)
            if line == last:
                return lines


SENDERS = itertools.count()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(chunks=CHUNKS)
def test_server_never_relays_control_characters(live_port: int, chunks: list[bytes]) -> None:
    receiver = Peer(live_port, f"r{next(SENDERS)}")
    sender = Peer(live_port, f"s{next(SENDERS)}")
    try:
        # The receiver takes the fixed nick the fuzz addresses with /msg, if it is free now.
        receiver.sock.sendall(b"/nick receiver\n/ping\n")
        receiver.read_until("PONG")
        sender.sock.sendall(b"".join(chunks) + b"\n/ping\n")
        for line in sender.read_until("PONG"):  # every line it sent has been handled
            assert_clean(line)
        receiver.sock.sendall(b"/ping\n")  # what was relayed to it arrives before this PONG
        seen = receiver.read_until("PONG")
        assert seen[-1] == "PONG"
        for line in seen:
            assert_clean(line)
    finally:
        sender.sock.close()
        receiver.sock.close()
