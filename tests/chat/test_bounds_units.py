"""The pieces behind the request bounds, without a server: replay pages, the shared address
limit, what a handover carries of a client served as it reads, and a successor at its
open-file limit."""

from __future__ import annotations

import json
import os
import resource
import socket

import pytest

from chat import fdpass, handover
from chat.connection import Peer
from chat.handover import HandoverError, Session
from chat.protocol import Refused, ServerConnection, TokenBucket, Who
from chat.registry import Registry
from chat.takeover import _frames
from chat.window import Window
from tests.chat.fakes import RecordingTransport


def window(size: int, count: int) -> Window:
    w = Window(size)
    for i in range(1, count + 1):
        w.add(i, b"L%d\n" % i)
    return w


def test_a_replay_is_paged_oldest_first_and_stops_at_its_end() -> None:
    w = window(5, 8)  # ids 4..8 retained
    assert w.page(0, 8, 100) == ([b"L4\n", b"L5\n", b"L6\n", b"L7\n", b"L8\n"], 8)
    assert w.page(0, 8, 6) == ([b"L4\n", b"L5\n"], 5)
    assert w.page(5, 8, 6) == ([b"L6\n", b"L7\n"], 7)
    assert w.page(5, 6, 100) == ([b"L6\n"], 6), "never past the id the replay ended at"
    assert w.page(8, 8, 100) == ([], 8)
    assert w.page(0, 8, 1) == ([b"L4\n"], 4), "at least one line, however small the page"


def test_pages_put_together_are_the_whole_replay() -> None:
    w = window(100, 250)
    after, got = 0, []
    while True:
        lines, after = w.page(after, 250, 40)
        if not lines:
            break
        got += lines
    assert got == w.since(0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_connections_of_one_address_share_its_limit() -> None:
    clock = Clock()
    shared = TokenBucket(2.0, 3, clock)
    conns = [ServerConnection(rate=100.0, burst=100, clock=clock) for _ in range(3)]
    for conn in conns:
        conn.shared = shared
        conn.receive_data(b"/who\n")
    events = [event for conn in conns for event in conn.events_received()]
    assert [type(e) for e in events] == [Who, Who, Who]  # the burst of 3, shared
    conns[0].receive_data(b"/who\n")
    (refused,) = conns[0].events_received()
    assert isinstance(refused, Refused)
    assert refused.code == "rate-limited"
    clock.now = 0.5  # 2 per second: one more
    conns[1].receive_data(b"/who\n")
    assert [type(e) for e in conns[1].events_received()] == [Who]


def test_an_address_keeps_its_limit_while_it_holds_a_connection() -> None:
    registry: Registry[Peer, TokenBucket] = Registry(lambda: TokenBucket(1.0, 1))
    peers = [Peer.__new__(Peer) for _ in range(2)]
    for peer in peers:
        registry.add(peer, "10.0.0.1")
    bucket = registry.shared_of("10.0.0.1")
    assert bucket is registry.shared_of("10.0.0.1")
    registry.remove(peers[0])
    assert registry.shared_of("10.0.0.1") is bucket, "one connection left: the same limit"
    registry.remove(peers[1])
    assert "10.0.0.1" not in registry.shared


class Owner:
    """Enough of a server for a `Peer` that is only snapshot and restored."""

    def new_connection(self) -> ServerConnection:
        return ServerConnection()

    def connected(self, peer: Peer) -> None: ...

    def received(self, peer: Peer, data: bytes) -> None: ...

    def drop(self, peer: Peer, reason: str, left: str, *, announce: bool = True) -> None: ...

    def lost(self, peer: Peer, exc: Exception | None) -> None: ...

    def drained(self, peer: Peer) -> None: ...


def test_a_handover_carries_the_rest_of_a_replay_and_the_lines_held_meanwhile() -> None:
    owner = Owner()
    old = Peer(owner)
    old.transport = RecordingTransport(1)
    old.replay = [120, 900]
    old.conn.receive_data(b"/ping\n" + b"x" * 5000 + b"\nhalf")  # two whole lines, held
    _, session = Session.from_row(json.loads(json.dumps(old.snapshot(now=10.0).row(0))))
    new = Peer(owner)
    new.restore(session, now=20.0)
    assert new.replay == [120, 900]
    assert new.throttled, "its held lines are served once its output drains"
    assert new.conn.held_lines() == [b"/ping", None]  # the over-long one stays refused
    assert [type(e).__name__ for e in new.conn.events_received()] == ["Refused"]
    assert new.conn.data_to_send().startswith(b"PONG\nERR line-too-long")


def test_a_successor_at_its_open_file_limit_says_why() -> None:
    ours, theirs = socket.socketpair()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
    channel = fdpass.Channel(theirs, 2.0)
    fdpass.Channel(ours, 2.0).send({"t": "sockets", "keys": list(range(8))}, fds)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 2, hard))
    try:
        with pytest.raises(HandoverError, match="open-file limit"):
            channel.recv()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fds:
            os.close(fd)
        channel.close()
        ours.close()


def test_a_sessions_frame_stays_under_the_frame_limit_with_held_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held lines travel as latin-1 JSON strings: a byte past 0x7f is `\\u00ff`, six bytes.
    A client paused mid-replay holds up to a whole read (256 KiB), so 43 of them in one frame
    would pass 64 MiB (MAX_FRAME): `_frames` must weigh them, or the handover fails for all."""
    monkeypatch.setattr(handover, "MAX_FRAME", 1 << 20)  # the same arithmetic, smaller
    owner = Owner()
    peer = Peer(owner)
    peer.transport = RecordingTransport(1)
    peer.replay = [0, 900]
    peer.conn.receive_data((b"\xff" * 4000 + b"\n") * 16)  # 64,016 bytes held, unparsed
    session = peer.snapshot(now=1.0)
    items = [(i, session) for i in range(handover.SESSIONS_PER_MESSAGE)]
    for chunk in _frames(items):
        handover.frame(handover.sessions(chunk))  # raises HandoverError past MAX_FRAME
