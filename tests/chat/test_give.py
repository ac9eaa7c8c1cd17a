"""`chat.takeover.give` against a fake `Giver`, in one process: the successor's end of the
channel is a socket pair read by the test.

Whatever step fails, the clients must be served again: the successor is told to abort, the
giver thaws exactly when it had stopped accepting (and never lets go), and it lets go only once
the successor said `ready`. What was pre-copied and did not change crosses the pause as a key.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from typing import Any

import pytest

from chat import fdpass, handover
from chat.handover import HandoverError, Session
from chat.takeover import give
from tests.chat.fakes import named_session, run

STEPS = [
    "precopy",
    "pause_accepting",
    "accepted_all",
    "stop_accepting",
    "answers_settled",
    "freeze",
    "handover_state",
]


class FakeGiver:
    """Serves three clients (real socket pairs, so their descriptors can be sent), records
    every call, and fails at FAIL_AT."""

    release = "old"
    stopping = False
    last_id = 7

    def __init__(self, fail_at: str = "", changed: tuple[int, ...] = ()) -> None:
        self.fail_at = fail_at
        self.changed = changed  # pre-copied, and changed since
        self.calls: list[str] = []
        self.pairs = [socket.socketpair() for _ in range(3)]
        self.clients = {i: pair[0] for i, pair in enumerate(self.pairs)}
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise HandoverError(f"{name} failed")

    def socket_of(self, client: int) -> socket.socket | None:
        return self.clients.get(client)

    def precopy(self, clients: list[int]) -> list[tuple[int, Session]]:
        self._step("precopy")
        return [(key, named_session(f"u{key}")) for key in clients if key in self.clients]

    def pause_accepting(self) -> None:
        self._step("pause_accepting")

    async def accepted_all(self, limit: float) -> None:
        self._step("accepted_all")

    def stop_accepting(self) -> socket.socket:
        self._step("stop_accepting")
        return self.listener

    async def answers_settled(self, limit: float) -> bool:
        self.calls.append("answers_settled")
        return self.fail_at != "answers_settled"

    def freeze(self, precopied: Collection[int]) -> tuple[list[tuple[int, Session]], list[int]]:
        self._step("freeze")
        fresh = [k for k in self.clients if k not in precopied or k in self.changed]
        return [(k, named_session(f"v{k}")) for k in fresh], [
            k for k in self.clients if k not in fresh
        ]

    def handover_state(
        self,
    ) -> tuple[int, list[bytes], dict[str, Any] | None, list[bytes] | None]:
        self._step("handover_state")
        return self.last_id, [b"MSG 7 u0 hi\r\n"], None, None

    async def thaw(self, listener: socket.socket) -> None:
        assert listener is self.listener
        self.calls.append("thaw")

    def let_go(self) -> None:
        self.calls.append("let_go")

    def close(self) -> None:
        for a, b in self.pairs:
            a.close()
            b.close()
        self.listener.close()


def successor_heard(end: socket.socket) -> list[dict[str, Any]]:
    """Every message the successor's end received, until the giver closed."""
    channel = fdpass.Channel(end, 2.0)
    messages = []
    try:
        while True:
            messages.append(channel.recv())
    except (EOFError, ConnectionResetError):  # reset: it closed with our answer unread
        pass
    channel.close()
    return messages


def hand(giver: FakeGiver, *answers: dict[str, Any]) -> tuple[bool, list[str]]:
    """Run `give`; the successor's ANSWERS wait in the channel, then it closes its side."""
    given, heard = hand_all(giver, *answers)
    return given, [str(m["t"]) for m in heard]


def hand_all(giver: FakeGiver, *answers: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    ours, theirs = socket.socketpair()
    for answer in answers:
        fdpass.Channel(theirs, 2.0).send(answer)
    theirs.shutdown(socket.SHUT_WR)
    result: list[bool] = []

    async def body() -> None:
        result.append(await give(giver, fdpass.Channel(ours, 2.0), "new"))

    run(body)
    return result[0], successor_heard(theirs)


PREPARED, READY = handover.prepared(3), handover.ready(3)


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_serves_on_and_tells_the_successor(step: str) -> None:
    giver = FakeGiver(fail_at=step)
    try:
        given, heard = hand(giver, PREPARED, READY)
    finally:
        giver.close()
    assert not given
    assert heard[-1] == "abort"
    assert "let_go" not in giver.calls
    stopped = STEPS.index(step) > STEPS.index("stop_accepting")
    assert ("thaw" in giver.calls) == stopped, giver.calls
    assert giver.calls[-1] == ("thaw" if stopped else step)


def test_a_successor_that_never_says_prepared_leaves_the_giver_serving_untouched() -> None:
    giver = FakeGiver()
    try:
        given, heard = hand(giver)
    finally:
        giver.close()
    assert not given
    assert heard == ["sockets", "presessions", "precopied", "abort"]
    assert giver.calls == ["precopy"]  # it never stopped accepting: nothing to thaw


def test_a_successor_that_never_says_ready_leaves_the_giver_serving() -> None:
    giver = FakeGiver()
    try:
        given, heard = hand(giver, PREPARED)
    finally:
        giver.close()
    assert not given
    assert heard[:5] == ["sockets", "presessions", "precopied", "begin", "listener"]
    assert heard[-2:] == ["end", "abort"]
    assert giver.calls[-1] == "thaw"


def test_a_successor_that_says_ready_gets_everything_and_the_giver_lets_go() -> None:
    giver = FakeGiver()
    try:
        given, heard = hand(giver, PREPARED, READY)
    finally:
        giver.close()
    assert given
    assert heard == [
        *("sockets", "presessions", "precopied"),
        *("begin", "listener", "same", "end", "commit"),
    ]
    assert giver.calls == [*STEPS, "let_go"]


def test_only_what_changed_since_the_precopy_crosses_in_the_pause() -> None:
    giver = FakeGiver(changed=(1,))
    try:
        given, heard = hand_all(giver, PREPARED, READY)
    finally:
        giver.close()
    assert given
    kinds = [m["t"] for m in heard]
    pre = heard[kinds.index("presessions")]["items"]
    assert [row[2] for row in pre] == ["u0", "u1", "u2"]
    after = kinds[kinds.index("begin") :]
    assert after == ["begin", "listener", "sessions", "same", "end", "commit"]
    assert heard[kinds.index("begin")]["sessions"] == 3
    (changed,) = [m["items"] for m in heard if m["t"] == "sessions"]
    assert [(row[0], row[2]) for row in changed] == [(1, "v1")]
    assert [m["keys"] for m in heard if m["t"] == "same"] == [[0, 2]]


def test_a_client_gone_before_its_socket_is_sent_is_not_handed_over() -> None:
    giver = FakeGiver()
    del giver.clients[1]  # left between the list and the send
    try:
        given, _ = hand(giver, handover.prepared(2), handover.ready(2))
    finally:
        giver.close()
    assert given


def high(sock: socket.socket, fd: int) -> socket.socket:
    """SOCK moved to descriptor FD (a busy server's are past 1024)."""
    moved = socket.socket(fileno=os.dup2(sock.fileno(), fd))
    sock.close()
    return moved


@pytest.mark.usefixtures("many_files")
def test_waiting_for_ready_works_with_descriptors_past_1024() -> None:
    """While the giver waits for `ready` (its loop blocked), a second successor is refused at
    once; with ten thousand clients both sockets are far past what select() can watch."""
    ours, theirs = socket.socketpair()
    channel = fdpass.Channel(high(ours, 3000), 2.0)
    point = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    point.bind("\0pynet-test-ready-" + str(os.getpid()))
    point.listen()
    point = high(point, 3001)
    knocking = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    knocking.connect(point.getsockname())
    refused: list[str] = []

    def knocked() -> None:
        conn, _ = point.accept()
        refused.append("yes")
        conn.close()
        fdpass.Channel(theirs, 2.0).send(handover.ready(0))

    assert channel.recv_while(point, knocked) == handover.ready(0)
    assert refused == ["yes"]
    for s in (channel.sock, theirs, point, knocking):
        s.close()
