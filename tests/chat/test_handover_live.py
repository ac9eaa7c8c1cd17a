"""Handover between two real server processes, with live clients on real sockets.

What a client must not notice: a disconnect, a BYE, a second HELLO, a lost, repeated or
reordered line, even one it was half-way through sending. What must not happen to the serving
release when the successor fails, is not ours, or a second one knocks: anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chat import fdpass, handover
from chat.takeover import BUSY, Taking, take
from pynet.local.load import LiveLoad
from tests.chat.fakes import LineClient, ServerProcess, Start, named_session, start_release
from tests.kit import wait_until


def test_handover_keeps_every_session_line_and_partial_line(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    old = start_release(start_server, sock, "v1")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    lurker = clients(old.port)  # connected, never named
    ann.send("before")
    assert bob.until("MSG")[-1] == "MSG 1 ann before"
    ann.sock.sendall(b"split acr")  # half a line in the old process ...
    new = start_release(start_server, sock, "v2", port=old.port)
    assert "how=handover" in new.wait_for_log("switch ")
    assert old.proc.wait(10) == 99  # handed over: the unit must not restart it
    ann.sock.sendall(b"oss the handover\n")  # ... the rest to the new one
    bob.send("after")
    ann_saw = ann.until("MSG 3")
    bob_saw = bob.until("MSG 3")
    expected = ["MSG 1 ann before", "MSG 2 ann split across the handover", "MSG 3 bob after"]
    assert [line for line in ann_saw if line.startswith("MSG")] == expected
    assert [line for line in bob_saw if line.startswith("MSG")] == expected[1:]
    bob.send("/who", "/since 0")
    assert bob.line() == "WHO ann bob"
    assert bob.lines(3) == [
        "MSG 1 ann before",
        "MSG 2 ann split across the handover",
        "MSG 3 bob after",
    ]
    lurker.send("/nick cat")
    assert lurker.until("OK nick")[-1] == "OK nick cat"
    assert lurker.line() == "JOIN cat"
    late = clients(old.port, "dan")  # the listener moved too
    assert late.hello.startswith("HELLO pynet")
    record = json.loads((Path(sock).parent / "last-switch.json").read_text())
    assert record["how"] == "handover"
    assert record["from"] == "v1"
    assert record["sessions"] == 3
    bob.send("/ping")
    bob_saw += bob.until("PONG")
    # Nobody saw a BYE, an INFO or a second HELLO.
    assert not [line for line in ann_saw + bob_saw if line.split()[0] in ("BYE", "INFO", "HELLO")]


def test_unsent_output_of_a_slow_reader_crosses_in_order(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    """Output the old process queued but the kernel had not taken arrives first, intact."""
    old = start_release(start_server, sock, "v1", "--rate", "0", "--max-backlog", "8000000")
    slow = clients(old.port, "slow", rcvbuf=4096)
    ann = clients(old.port, "ann")
    text = "x" * 3000
    for i in range(300):  # ~1 MB: far more than the socket buffers hold
        ann.send(f"{i} {text}")
    ann.until("MSG 300")
    new = start_release(start_server, sock, "v2", port=old.port)
    new.wait_for_log("how=handover")
    ann.send("last")
    slow.until("JOIN ann")
    got = [slow.line() for _ in range(301)]
    assert got == [f"MSG {i + 1} ann {i} {text}" for i in range(300)] + ["MSG 301 ann last"]


@pytest.mark.usefixtures("many_files")
def test_a_thousand_clients_move_in_several_fd_batches(start_server: Start, sock: str) -> None:
    old = start_release(start_server, sock, "v1", "--max-per-address", "0")
    socks = []
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", old.port))
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HELLO pynet")
    new = start_release(start_server, sock, "v2", "--max-per-address", "0", port=old.port)
    assert "sessions=1000" in new.wait_for_log("how=handover")
    assert old.proc.wait(10) == 99
    for s in socks:  # every one answers in the new process
        s.sendall(b"/ping\n")
    for s in socks:
        assert s.recv(4096) == b"PONG\n"
        s.close()


class FakeSuccessor:
    """A successor that stops wherever the test says: what a crash mid-handover looks like."""

    def __init__(self, path: str, hello: dict[str, object] | bytes | None = None) -> None:
        channel = fdpass.connect(path, 5)
        assert channel is not None
        self.channel = channel
        if isinstance(hello, bytes):
            channel.sock.sendall(hello)
        else:
            channel.send(hello or handover.hello("fake"))

    def receive_all(self) -> list[dict[str, object]]:
        """Everything up to `end` (saying `prepared` after the pre-copy), or a refusal."""
        messages = [self.channel.recv()]
        while messages[-1]["t"] not in ("end", "refuse"):
            if messages[-1]["t"] == "precopied":
                self.channel.send(handover.prepared(0))
            messages.append(self.channel.recv())
        return messages

    def close(self) -> None:
        self.channel.close()


def test_a_session_the_successor_cannot_take_fails_the_handover_before_ready(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    """The new release has a shorter line limit than a half-received line: it must refuse
    before `ready` (the old one serves on), not after the old one let go of everyone."""
    old = start_release(start_server, sock, "v1", "--max-line", "4096")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    ann.sock.sendall(b"x" * 2000)  # half a line, longer than the next release's limit
    new = subprocess.run(
        [
            *(sys.executable, "-m", "chat.server", "--host", "127.0.0.1", "--port", str(old.port)),
            *("--handover-socket", sock, "--release", "v2", "--max-line", "1024"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert new.returncode == 1
    assert "cannot take the session" in new.stdout
    assert "Traceback" not in new.stdout + new.stderr
    old.wait_for_log("handover aborted")
    ann.sock.sendall(b" end\n")
    assert bob.until("MSG")[-1] == "MSG 1 ann " + "x" * 2000 + " end"
    assert_still_serving(old, ann, bob, 1)


def test_successor_dying_after_the_sockets_leaves_the_old_one_serving(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    """It dies while the clients are still served (only their sockets crossed): nothing at all
    may change for them, not even the line one of them was half-way through."""
    old = start_release(start_server, sock, "v1")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    ann.sock.sendall(b"half")
    fake = FakeSuccessor(sock)
    assert fake.channel.recv()["t"] == "sockets"
    fake.close()
    old.wait_for_log("handover aborted")
    ann.sock.sendall(b" done\n")
    assert bob.until("MSG")[-1] == "MSG 1 ann half done"
    assert_still_serving(old, ann, bob, 1)


class FakePredecessor:
    """A handover socket that answers with whatever frames the test scripted."""

    def __init__(self, path: str, script: Callable[[fdpass.Channel], None]) -> None:
        Path(path).parent.mkdir(mode=0o700, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script: Callable[[fdpass.Channel], None]) -> None:
        conn, _ = self.sock.accept()
        channel = fdpass.Channel(conn, 5)
        channel.recv()  # hello
        script(channel)
        with contextlib.suppress(EOFError, OSError):
            channel.recv()  # ready or abort
        channel.close()


def finish(taking: Taking[socket.socket] | None) -> None:
    assert taking is not None
    taking.finish()


class Keeping:
    """A `chat.takeover.Holder` that notes what it is given and asked."""

    def __init__(self) -> None:
        self.held: list[socket.socket] = []
        self.prepares: list[tuple[socket.socket, str | None]] = []
        self.unprepared: list[socket.socket] = []
        self.dropped: list[socket.socket] = []

    def hold(self, sock: socket.socket) -> socket.socket:
        self.held.append(sock)
        return sock

    def prepare(
        self, held: socket.socket, session: handover.Session, *, early: bool = False
    ) -> None:
        self.prepares.append((held, session.nick))

    def prepared(self, held: socket.socket) -> bool:
        return held not in self.unprepared

    def unprepare(self, held: socket.socket) -> None:
        self.unprepared.append(held)

    def unhold(self, held: socket.socket) -> None:
        self.dropped.append(held)


def test_take_pairs_each_session_with_its_socket_and_drops_the_departed(sock: str) -> None:
    """Sockets and most sessions cross before the pause; in it, the sockets of clients that
    connected meanwhile, the sessions that changed, and the keys of those that did not. A socket
    no session names belongs to a client that left meanwhile and is dropped, never adopted."""
    pairs = [socket.socketpair() for _ in range(4)]
    listener = socket.socket()
    prepared: list[dict[str, object]] = []

    def script(channel: fdpass.Channel) -> None:
        channel.send(handover.sockets([10, 11, 12]), [p[0].fileno() for p in pairs[:3]])
        channel.send(
            handover.sessions(
                [(10, named_session("ann")), (11, named_session("bob")), (12, named_session("c"))],
                "presessions",
            )
        )
        channel.send(handover.precopied())
        prepared.append(channel.recv())
        channel.send(handover.sockets([13]), [pairs[3][0].fileno()])  # connected meanwhile
        channel.send(handover.begin("old", 3, 0, []))
        channel.send(handover.listener(), [listener.fileno()])
        channel.send(handover.sessions([(13, named_session("dee")), (12, named_session("cal"))]))
        channel.send(handover.same([10]))  # bob (11) left since; c (12) is cal now
        channel.send(handover.end())

    FakePredecessor(sock, script)
    holder = Keeping()
    taking = take(sock, "new", 5, holder)
    assert taking is not None
    assert [nick for _, nick in holder.prepares] == ["ann", "bob", "c"]
    inheritance = taking.finish()
    assert prepared == [handover.prepared(3)]
    assert len(holder.held) == 4
    by_nick = {str(session.nick): sock for session, sock in inheritance.sessions}
    assert sorted(by_nick) == ["ann", "cal", "dee"]
    for nick, index in (("ann", 0), ("cal", 2), ("dee", 3)):
        by_nick[nick].sendall(nick.encode())  # the very socket the predecessor sent for it
        assert pairs[index][1].recv(16) == nick.encode()
    assert sorted(map(id, holder.unprepared)) == sorted(map(id, holder.held[1:3]))  # bob, c
    assert [nick for _, nick in holder.prepares[3:]] == ["dee", "cal"]
    assert len(holder.dropped) == 1
    holder.dropped[0].sendall(b"bob")
    assert pairs[1][1].recv(16) == b"bob"
    assert inheritance.confirm()


@pytest.mark.parametrize(
    ("keys", "pre", "named", "same", "reason"),
    [
        ([1, 2], [], [3], [], "socket key 3, never sent"),
        ([1, 1], [], [1], [], "socket key 1 sent twice"),
        ([1], [], [1, 1], [], r"socket key 1, never sent \(or twice\)"),
        ([1], [2], [], [], r"socket key 2, never sent"),
        ([1, 2], [1], [], [2], "socket key 2 is the same as what was never sent"),
        ([1, 2], [1, 2], [2], [1, 2], r"socket key 2, never sent \(or twice\)"),
        ([1, 2], [1, 2], [], [1], "announced 2 sessions, sent 1"),
    ],
)
def test_take_refuses_sessions_that_do_not_match_the_sockets_and_drops_all(
    sock: str, keys: list[int], pre: list[int], named: list[int], same: list[int], reason: str
) -> None:
    pairs = [socket.socketpair() for _ in keys]
    listener = socket.socket()
    aborted: list[dict[str, object]] = []

    def script(channel: fdpass.Channel) -> None:
        # The successor may give up (and close) before the rest is sent: its abort is still
        # there to read.
        with contextlib.suppress(OSError):
            channel.send(handover.sockets(keys), [p[0].fileno() for p in pairs])
            presessions = [(k, named_session(f"p{i}")) for i, k in enumerate(pre)]
            channel.send(handover.sessions(presessions, "presessions"))
            channel.send(handover.precopied())
            if channel.recv()["t"] != "prepared":
                aborted.append({"t": "abort"})
                return
            channel.send(handover.begin("old", len(named) + len(same) + 1, 0, []))
            channel.send(handover.listener(), [listener.fileno()])
            channel.send(
                handover.sessions([(k, named_session(f"u{i}")) for i, k in enumerate(named)])
            )
            channel.send(handover.same(same))
            channel.send(handover.end())
        aborted.append(channel.recv())

    FakePredecessor(sock, script)
    holder = Keeping()
    with pytest.raises(handover.HandoverError, match=reason):
        finish(take(sock, "new", 5, holder))
    assert sorted(map(id, holder.dropped)) == sorted(map(id, holder.held))  # all let go
    wait_until(lambda: aborted, 5, "the predecessor's abort")
    assert aborted[0]["t"] == "abort"


class Moved(Keeping):
    """A holder whose first socket's prepared session no longer stands (its nickname moved)."""

    def prepared(self, held: socket.socket) -> bool:
        return held is not self.held[0]


def test_a_session_said_the_same_that_no_longer_stands_fails_and_lets_every_socket_go(
    sock: str,
) -> None:
    """The predecessor breaks the protocol: a key it says stands as copied is one the successor
    could not keep. The takeover fails, and that socket is let go with the others (it had left
    the successor's books before the check, and its descriptor stayed open for good)."""
    pairs = [socket.socketpair() for _ in range(2)]
    listener = socket.socket()

    def script(channel: fdpass.Channel) -> None:
        with contextlib.suppress(OSError):
            channel.send(handover.sockets([1, 2]), [p[0].fileno() for p in pairs])
            presessions = [(1, named_session("ann")), (2, named_session("bob"))]
            channel.send(handover.sessions(presessions, "presessions"))
            channel.send(handover.precopied())
            channel.recv()  # prepared
            channel.send(handover.begin("old", 2, 0, []))
            channel.send(handover.listener(), [listener.fileno()])
            channel.send(handover.same([1, 2]))
            channel.send(handover.end())

    FakePredecessor(sock, script)
    holder = Moved()
    with pytest.raises(handover.HandoverError, match="socket key 1 stands as copied"):
        finish(take(sock, "new", 5, holder))
    assert len(holder.held) == 2
    assert sorted(map(id, holder.dropped)) == sorted(map(id, holder.held))


def assert_still_serving(old: ServerProcess, ann: LineClient, bob: LineClient, n: int) -> None:
    ann.send(f"still here {n}")
    assert bob.until("MSG")[-1].endswith(f"ann still here {n}")
    fresh = LineClient(old.port, f"new{n}")
    fresh.close()
    assert old.proc.poll() is None


def test_successor_dying_mid_handover_leaves_the_old_one_serving(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    old = start_release(start_server, sock, "v1")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    ann.sock.sendall(b"half")
    fake = FakeSuccessor(sock)
    messages = fake.receive_all()  # everything arrived, fds included ...
    kinds = [m["t"] for m in messages]
    assert kinds[0] == "sockets"  # sent while the clients were still served
    before = kinds[: kinds.index("precopied")]
    assert set(before) == {"sockets", "presessions"}  # sent while the clients were served
    assert [k for k in kinds[len(before) + 1 :] if k != "sockets"][:2] == ["begin", "listener"]
    fake.close()  # ... and it died before `ready`
    old.wait_for_log("handover aborted")
    ann.sock.sendall(b" done\n")
    assert bob.until("MSG")[-1] == "MSG 1 ann half done"
    assert_still_serving(old, ann, bob, 1)


def test_a_failed_handover_sends_a_slow_readers_backlog_once_and_whole(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    """The old process takes the unsent bytes back from its transports while the successor
    confirms, and writes them itself again when it does not: nothing twice, nothing lost."""
    old = start_release(start_server, sock, "v1", "--rate", "0", "--max-backlog", "16000000")
    slow = clients(old.port, "slow", rcvbuf=4096)
    ann = clients(old.port, "ann")
    text = "y" * 3000
    for i in range(2500):
        ann.send(f"{i} {text}")
    ann.until("MSG 2500")
    fake = FakeSuccessor(sock)
    fake.receive_all()
    slow.until("JOIN ann")
    got = [slow.line() for _ in range(20)]  # the old loop runs while it waits for `ready`
    fake.close()
    old.wait_for_log("handover aborted")
    got += [slow.line() for _ in range(2480)]
    assert got == [f"MSG {i + 1} ann {i} {text}" for i in range(2500)]
    slow.send("/ping")
    assert slow.line() == "PONG"  # and not a second copy of the backlog before it


def test_successor_that_never_says_ready_times_out_and_nothing_changes(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    old = start_release(start_server, sock, "v1", "--handover-timeout", "1")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    fake = FakeSuccessor(sock)
    fake.receive_all()
    old.wait_for_log("handover aborted", timeout=5)
    fake.close()
    assert_still_serving(old, ann, bob, 1)


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "exceeds"),
        (b"\x00\x00\x00\x40{}", "no complete hello"),
        (b"\x00\x00\x00\x05hello", "not JSON"),
        ({"t": "hello", "proto": "pynet-handover", "version": 99, "release": "x"}, "version 99"),
        ({"t": "hello", "proto": "other", "version": 1, "release": "x"}, "not a PyNet release"),
    ],
)
def test_a_peer_that_is_not_a_compatible_release_is_refused_and_changes_nothing(
    start_server: Start,
    clients: Callable[..., LineClient],
    sock: str,
    hello: dict[str, object] | bytes,
    reason: str,
) -> None:
    old = start_release(start_server, sock, "v1")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    fake = FakeSuccessor(sock, hello)
    answer = fake.receive_all()
    assert answer[-1]["t"] == "refuse"
    assert reason in str(answer[-1]["reason"])
    assert reason in old.wait_for_log("handover refused")
    fake.close()
    assert_still_serving(old, ann, bob, 1)


def test_a_second_takeover_while_one_runs_is_refused(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    old = start_release(start_server, sock, "v1", "--handover-timeout", "5")
    ann, bob = clients(old.port, "ann"), clients(old.port, "bob")
    first = FakeSuccessor(sock)
    first.receive_all()  # the old one now waits for the first one's `ready`
    second = FakeSuccessor(sock).receive_all()
    assert second == [handover.refuse(BUSY)]
    assert BUSY in old.wait_for_log("handover refused")
    first.close()
    old.wait_for_log("handover aborted")
    assert_still_serving(old, ann, bob, 1)


def test_handover_socket_is_private_to_the_service_user(start_server: Start, sock: str) -> None:
    start_release(start_server, sock, "v1")
    mode = os.stat(sock).st_mode & 0o777
    assert mode == 0o600
    assert os.stat(Path(sock).parent).st_mode & 0o777 == 0o700


def test_no_predecessor_starts_fresh_and_a_stale_socket_file_is_replaced(
    start_server: Start, sock: str
) -> None:
    Path(sock).parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)  # bound, never listening: what a killed release leaves
    stale.close()
    server = start_release(start_server, sock, "v1")
    assert "how=fresh" in server.wait_for_log("switch ")
    client = LineClient(server.port, "ann")
    client.close()


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@pytest.fixture
def migrate_req() -> Iterator[None]:
    """`net.ipv4.tcp_migrate_req=1`, as the chat role sets it on a host, for one test.

    Without it the kernel resets the connections still queued on a listener that closes; with
    it they move to the sibling that shares the port. Needs root, like the netns tests.
    """
    try:
        before = MIGRATE_REQ.read_text()
        MIGRATE_REQ.write_text("1")
    except OSError as exc:
        pytest.fail(f"cannot set net.ipv4.tcp_migrate_req (run as root, as CI does): {exc}")
    yield
    MIGRATE_REQ.write_text(before)


@pytest.mark.usefixtures("migrate_req")
def test_refused_handover_falls_back_to_an_overlap_without_refused_connects(
    start_server: Start, clients: Callable[..., LineClient], tmp_path: Path
) -> None:
    """Another handover version: the new release binds next to the old (SO_REUSEPORT), the old
    one is then stopped and says BYE restarting; no connect is refused at any moment."""
    # Its own handover socket stands for "speaks another handover version": the new release
    # knocks on one that refuses.
    old = start_release(start_server, str(tmp_path / "old" / "handover.sock"), "v1")
    ann = clients(old.port, "ann")
    path = str(tmp_path / "other" / "handover.sock")
    Path(path).parent.mkdir(mode=0o700)
    refuser = socket.socket(socket.AF_UNIX)
    refuser.bind(path)
    refuser.listen()

    def refuse_once() -> None:
        conn, _ = refuser.accept()
        conn.recv(4096)
        conn.sendall(handover.frame(handover.refuse("handover version 1 is not 2")))
        conn.close()

    threading.Thread(target=refuse_once, daemon=True).start()
    refused = reset = attempts = 0
    stop = threading.Event()

    def connect_loop() -> None:
        nonlocal refused, reset, attempts
        while not stop.is_set() and attempts < 5000:
            attempts += 1
            try:
                s = socket.create_connection(("127.0.0.1", old.port), timeout=5)
                try:
                    if not s.recv(64).startswith(b"HELLO"):
                        reset += 1
                finally:
                    s.close()
            except ConnectionRefusedError:
                refused += 1
            except ConnectionResetError:
                reset += 1
            time.sleep(0.002)

    loop = threading.Thread(target=connect_loop)
    loop.start()
    new = start_release(start_server, path, "v2", port=old.port)
    assert "how=fallback" in new.wait_for_log("switch ")
    assert "version 1 is not 2" in new.wait_for_log("switch ")
    assert old.terminate() == 0
    assert ann.until("BYE")[-2:] == [
        "INFO server restarting, reconnect in a few seconds",
        "BYE restarting",
    ]
    after_stop = attempts
    wait_until(lambda: attempts >= after_stop + 20, 30, "connects served by the new release alone")
    stop.set()
    loop.join()
    refuser.close()
    assert attempts > 50
    assert (refused, reset) == (0, 0)
    LineClient(old.port, "back").close()  # served by the new release


def seen_ids(port: int, stop: threading.Event, seen: dict[int, str]) -> None:
    """Collect every MSG this client receives, reconnecting across crashes."""
    while not stop.is_set():
        try:
            c = LineClient(port, None, timeout=0.5)
        except OSError:
            time.sleep(0.02)
            continue
        try:
            c.send("/nick w" + str(random.randrange(10**6)), f"/since {max(seen, default=0)}")
            while not stop.is_set():
                line = c.line()
                if line.startswith("MSG "):
                    _, ident, _, text = line.split(" ", 3)
                    previous = seen.setdefault(int(ident), text)
                    assert previous == text, f"id {ident} reused: {previous!r} then {text!r}"
        except (AssertionError, OSError) as exc:
            if "reused" in str(exc):
                raise
        finally:
            c.close()


def test_sigkill_at_random_moments_never_loses_a_seen_message_or_reuses_an_id(
    start_server: Start, tmp_path: Path
) -> None:
    history = str(tmp_path / "history.sqlite3")
    keep = ("--history", history, "--history-size", "100000", "--rate", "0")
    server = start_server(*keep)
    port = server.port
    seen: dict[int, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            seen_ids(port, stop, seen)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = random.Random(8)
    sent = 0
    for round_ in range(6):
        sender = LineClient(port, f"s{round_}")
        for _ in range(rng.randrange(50, 250)):
            sent += 1
            sender.send(f"m{sent}")
            if sent % 10 == 0:
                time.sleep(0.002)
        server.proc.send_signal(signal.SIGKILL)  # mid-stream, whatever it was doing
        server.proc.wait()
        sender.close()
        server = start_server(*keep, port=port)
    # Not a synchronisation: the watcher may still reconnect and catch up; what it saw by the
    # time it stops is what the checks below hold against /since.
    time.sleep(0.5)
    stop.set()
    watcher.join(10)
    assert not errors, errors
    assert len(seen) > 100
    check = LineClient(port, "check")
    check.send("/since 0")
    last = max(seen)
    replay: dict[int, str] = {}
    while max(replay, default=0) < last:
        _, ident, _, text = check.line().split(" ", 3)
        replay[int(ident)] = text
    assert list(replay) == list(range(1, len(replay) + 1))  # no gap, no repeat
    for number, text in seen.items():
        assert replay.get(number) == text, (number, text, replay.get(number))


def test_consecutive_handovers_under_live_load_cut_refuse_and_lose_nothing(
    start_server: Start, sock: str, tmp_path: Path
) -> None:
    flags = ("--history", str(tmp_path / "h.sqlite3"), "--rate", "0", "--max-per-address", "0")
    first = start_release(start_server, sock, "r0", *flags)
    load = LiveLoad("127.0.0.1", first.port, clients=50, sampled=10, rate=100.0).start()
    serving = first

    def flowing(at_least: int) -> Callable[[], bool]:
        return lambda: load.acknowledged >= at_least

    for n in range(1, 4):
        wait_until(flowing(20 * n), 30, "lines flowing before the switch")
        new = start_release(start_server, sock, f"r{n}", *flags, port=first.port)
        assert "how=handover" in new.wait_for_log("switch ")
        assert serving.proc.wait(10) == 99
        serving = new
    report = load.stop()
    assert report.ok(), f"{report.summary()} cut={report.cut[:3]} lost={report.lost[:5]}"
    assert report.acknowledged >= 60
    assert report.connects > 10
    assert sorted(report.ids) == list(range(min(report.ids), max(report.ids) + 1))


def test_a_handover_socket_in_a_missing_directory_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "handover.sock"
    proc = subprocess.run(
        [sys.executable, "-m", "chat.server", "--port", "0", "--handover-socket", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert "error starting:" in errors[0]
    assert str(missing.parent) in errors[0]
    assert not (tmp_path / "no").exists()


@pytest.mark.usefixtures("many_files")
def test_a_successor_slow_to_take_the_precopy_does_not_stall_the_serving_release(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    """The pre-copy is larger than the handover socket holds (150 half lines of 3,000 bytes)
    and the successor reads none of it: the serving release must serve on meanwhile, not wait
    in a blocking send."""
    old = start_release(start_server, sock, "v1", "--max-per-address", "0")
    halves = [clients(old.port, f"h{i}") for i in range(150)]
    for client in halves:
        client.sock.sendall(b"y" * 3000)
    ann = clients(old.port, "ann")
    fake = FakeSuccessor(sock)  # says hello, then reads nothing
    time.sleep(0.5)
    started = time.monotonic()
    ann.send("/ping")
    assert ann.until("PONG")[-1] == "PONG"
    assert time.monotonic() - started < 1.0
    fake.close()
    old.wait_for_log("handover aborted")
    halves[0].sock.sendall(b" end\n")
    assert ann.until("MSG")[-1] == "MSG 1 h0 " + "y" * 3000 + " end"


def test_releases_hand_over_one_after_the_other(
    start_server: Start, clients: Callable[..., LineClient], sock: str
) -> None:
    """Each successor listens where its predecessor did: the old one, exiting, must not take
    the socket file with it (the inode it would compare may be the one freed for the new)."""
    serving = start_release(start_server, sock, "v1")
    ann = clients(serving.port, "ann")
    for n in range(2, 6):
        new = start_release(start_server, sock, f"v{n}", port=serving.port)
        assert "how=handover" in new.wait_for_log("switch "), f"v{n}"
        assert serving.proc.wait(10) == 99
        assert os.path.exists(sock)
        ann.send(f"through v{n}")
        assert ann.until("MSG")[-1].endswith(f"ann through v{n}")
        serving = new
