"""Two chat server processes sharing one conversation through a real redis-server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from chat import config, fdpass, handover
from chat.backplane import LEASE_MS
from chat.client import split_servers
from chat.history import History
from chat.server import _begin
from chat.service import ChatServer
from chat.takeover import BUSY
from tests.chat.fakes import (
    ROOT,
    ClientProcess,
    LineClient,
    RedisServer,
    ServerProcess,
    start_release,
)
from tests.kit import free_port, wait_until

PASSWORD = "cluster-test-pw"
LEASE_S = LEASE_MS / 1000


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(password=PASSWORD)
    yield server
    server.close()


@pytest.fixture
def pair(
    redis_server: RedisServer, start_server: Callable[..., ServerProcess]
) -> tuple[ServerProcess, ServerProcess]:
    return (
        start_server("--backplane", redis_server.url),
        start_server(env={"PYNET_BACKPLANE": redis_server.url}),
    )


def test_clients_on_two_hosts_share_one_conversation(
    pair: tuple[ServerProcess, ServerProcess], clients: Callable[..., LineClient]
) -> None:
    one, two = pair
    ann = clients(one.port, "ann")
    bob = clients(two.port, "bob")
    assert ann.until("JOIN bob")[-1] == "JOIN bob"
    ann.send("hello from one")
    bob.send("hello from two")
    seen_by_ann = [ln for ln in ann.until("MSG 2 ") if ln.startswith("MSG")]
    seen_by_bob = [ln for ln in bob.until("MSG 2 ") if ln.startswith("MSG")]
    assert seen_by_ann == seen_by_bob
    assert [ln.split(" ", 2)[1] for ln in seen_by_ann] == ["1", "2"]
    assert sorted(ln.split(" ", 2)[2] for ln in seen_by_ann) == [
        "ann hello from one",
        "bob hello from two",
    ]
    # /who spans hosts; nicks are unique across them, case-insensitively
    bob.send("/who")
    assert bob.until("WHO")[-1] == "WHO ann bob"
    carl = clients(one.port)
    carl.send("/nick BOB")
    assert carl.until("ERR")[-1].startswith("ERR nick-taken")
    # /msg reaches a user on the other host; an unknown name is refused
    ann.send("/msg Bob psst", "/msg nobody hi", "/ping")
    assert bob.until("PRIV")[-1] == "PRIV ann psst"
    assert ann.until("ERR")[-1].startswith("ERR no-such-nick")
    assert ann.line() == "PONG"  # the answer from Redis came back in order
    # /since on either host replays what was posted anywhere
    late = clients(two.port, "late")
    late.send("/since 0")
    replay = late.until("MSG 2 ")
    assert [ln for ln in replay if ln.startswith("MSG")] == seen_by_ann
    # leaving frees the nickname for every host
    bob.send("/quit")
    assert ann.until("LEFT bob")[-1] == "LEFT bob quit"
    carl.send("/nick Bob")
    assert carl.until("OK nick")[-1] == "OK nick Bob"


def test_lines_sent_together_with_nick_wait_for_it(
    pair: tuple[ServerProcess, ServerProcess], clients: Callable[..., LineClient]
) -> None:
    one, _ = pair
    fast = clients(one.port)
    fast.send("/nick fast", "at once", "/who")
    lines = fast.until("WHO")
    assert "ERR" not in " ".join(lines)
    assert lines[0] == "INFO choose a nickname with /nick NAME"
    assert lines[1] == "OK nick fast"
    assert lines[-1] == "WHO fast"


def unreachable_redis(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m chat.server ARGS` with a backplane nothing listens on: it must exit 1 with one
    line, naming Redis without its password."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    proc = subprocess.run(
        [sys.executable, "-m", "chat.server", "--backplane", url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stdout.splitlines() if " ERROR " in ln]
    assert len(errors) == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1" in errors[0]
    return proc


def test_redis_unreachable_at_start_is_one_line_and_exit_1() -> None:
    proc = unreachable_redis("--port", "0")
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_bad_backplane_url_is_refused_before_anything_starts() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chat.server", "--backplane", "http://127.0.0.1:6379"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "must start with redis:// or rediss://" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_start_log_never_shows_the_password(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    one, _ = pair
    assert "backplane=redis://:***@127.0.0.1" in one.wait_for_log("listen=")
    assert PASSWORD not in one.log


def test_redis_lost_and_back_while_serving(
    redis_server: RedisServer,
    pair: tuple[ServerProcess, ServerProcess],
    clients: Callable[..., LineClient],
) -> None:
    one, two = pair
    ann = clients(one.port, "ann")
    bob = clients(two.port, "bob")
    ann.send("before")
    assert bob.until("MSG 1 ")[-1] == "MSG 1 ann before"
    redis_server.stop()
    assert ann.until("INFO")[-1].startswith("INFO the cluster's message store is unreachable")
    assert bob.until("INFO")[-1].startswith("INFO the cluster's message store is unreachable")
    ann.send("during", "/who")
    assert ann.until("ERR")[-1].startswith("ERR unavailable")  # /who needs Redis
    redis_server.start()  # an empty Redis: ids must still go on from 1
    assert bob.until("INFO")[-1] == "INFO the cluster's message store is back"
    assert bob.until("MSG")[-1] == "MSG 2 ann during"  # held, then placed: nothing lost
    ann.send("after")
    assert bob.until("MSG")[-1] == "MSG 3 ann after"
    # The leases are taken again as soon as each host is back (its first write renews them):
    # wait for bob's, which host two holds, then the name is taken for everyone. Between Redis
    # coming back empty and that renewal (milliseconds) a name is briefly free: docs/cluster.md.
    store = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: store.exists("pynet:nick:bob"), 10, "host two taking bob's lease again")
    store.close()
    other = clients(one.port)
    other.send("/nick bob")
    assert other.until("ERR")[-1].startswith("ERR nick-taken")


def test_a_client_moves_to_the_other_host_when_its_host_dies(
    pair: tuple[ServerProcess, ServerProcess], clients: Callable[..., LineClient]
) -> None:
    """Host one is killed: the client reconnects to host two, gets its nickname back once the
    dead host's lease lapses, and catches up with /since: nothing is lost."""
    one, two = pair
    servers = f"127.0.0.1:{one.port},127.0.0.1:{two.port}"
    zoe = ClientProcess(one.port, "--nick", "zoe", "--raw", "--max-backoff", "1", host=servers)
    try:
        zoe.wait_for("OK nick zoe")
        bob = clients(two.port, "bob")
        bob.send("one")
        zoe.wait_for("MSG 1 bob one")
        one.kill()  # SIGKILL: no goodbye, the lease is left to expire
        for text in ("two", "three"):
            bob.send(text)
        zoe.wait_for("OK nick zoe", count=2, timeout=LEASE_S + 15)
        zoe.wait_for("MSG 3 bob three")
        msgs = [ln for ln in zoe.lines if ln.startswith("MSG")]
        assert msgs == ["MSG 1 bob one", "MSG 2 bob two", "MSG 3 bob three"]
        assert any(f"trying 127.0.0.1:{two.port}" in ln for ln in zoe.errors), zoe.errors
    finally:
        zoe.kill()


def test_the_client_takes_several_servers() -> None:
    assert split_servers("a,b:5051, [::1]:5052,[::1]", 5050) == [
        ("a", 5050),
        ("b", 5051),
        ("::1", 5052),
        ("::1", 5050),
    ]
    for bad, why in (("a,,b", "expected HOST"), ("a:0", "expected 1-65535"), ("a:x", "'x'")):
        with pytest.raises(ValueError, match=why):
            split_servers(bad, 5050)
    proc = subprocess.run(
        [sys.executable, "-m", "chat.client", "a,b:99999", "--nick", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "'b:99999' has port '99999'; expected 1-65535" in proc.stderr


def test_a_handover_on_one_host_keeps_its_clients_in_the_cluster(
    redis_server: RedisServer,
    start_server: Callable[..., ServerProcess],
    clients: Callable[..., LineClient],
    sock: str,
) -> None:
    """Host one hands its connections to a new release: its client keeps its nickname, gets
    what host two posted during the switch, once, and can still talk."""
    url = redis_server.url
    old = start_release(start_server, sock, "v1", "--backplane", url)
    two = start_server("--backplane", url)
    ann = clients(old.port, "ann")
    bob = clients(two.port, "bob")
    bob.send("before")
    assert ann.until("MSG")[-1] == "MSG 1 bob before"
    new = start_release(start_server, sock, "v2", "--backplane", url, port=old.port)
    bob.send("during")  # may reach Redis while the switch is under way
    assert "how=handover" in new.wait_for_log("switch ")
    assert old.proc.wait(10) == 99
    bob.send("after")
    seen = ann.until("MSG 3 ")
    assert [ln for ln in seen if ln.startswith("MSG")] == ["MSG 2 bob during", "MSG 3 bob after"]
    ann.send("still here")
    assert bob.until("MSG 4 ")[-1] == "MSG 4 ann still here"
    thief = clients(two.port)
    thief.send("/nick ann")
    assert thief.until("ERR")[-1].startswith("ERR nick-taken")  # the lease moved with her
    assert not [ln for ln in seen if ln.split()[0] in ("BYE", "HELLO")]


def test_handovers_under_traffic_from_another_host_lose_and_repeat_nothing(
    redis_server: RedisServer,
    start_server: Callable[..., ServerProcess],
    clients: Callable[..., LineClient],
    sock: str,
) -> None:
    """Host two keeps posting and sending ann private messages while host one switches
    releases twice. Ann must get every broadcast once and in order, and every private message:
    the old release delivers nothing from Redis once it froze her session (the successor reads
    on from exactly where it stopped), and private messages Redis routed to the old release's
    inbox before her lease moved are read from that inbox by the successor."""
    url = redis_server.url
    release = start_release(start_server, sock, "v0", "--backplane", url)
    two = start_server("--backplane", url, "--rate", "0")
    ann = clients(release.port, "ann")
    bob = clients(two.port, "bob")
    assert ann.until("JOIN bob")[-1] == "JOIN bob"
    stop = threading.Event()
    sent: list[int] = []

    def post() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            n += 1
            bob.sock.sendall(f"m{n}\n/msg ann p{n}\n".encode())
            sent.append(n)
            time.sleep(0.002)

    poster = threading.Thread(target=post)
    poster.start()
    try:
        for n in (1, 2):
            time.sleep(0.3)
            new = start_release(start_server, sock, f"v{n}", "--backplane", url, port=release.port)
            assert "how=handover" in new.wait_for_log("switch ")
            assert release.proc.wait(10) == 99
            release = new
        time.sleep(0.3)
    finally:
        stop.set()
        poster.join(10)
    last = sent[-1]
    bob.send("/ping")
    bob.until("PONG")
    seen = ann.until(f"PRIV bob p{last}")
    msgs = [ln.split(" ", 3)[3] for ln in seen if ln.startswith("MSG ")]
    privs = [ln.split(" ", 2)[2] for ln in seen if ln.startswith("PRIV ")]
    assert msgs == [f"m{n}" for n in range(1, last + 1)]
    assert privs == [f"p{n}" for n in range(1, last + 1)]
    assert not [ln for ln in seen if ln.split()[0] in ("BYE", "HELLO", "ERR")]


def test_a_handover_waits_for_the_answers_redis_owes_its_clients(
    redis_server: RedisServer,
    start_server: Callable[..., ServerProcess],
    clients: Callable[..., LineClient],
    sock: str,
) -> None:
    """A `/nick` is on its way to Redis (stopped for a moment) when the handover begins, with
    a line queued behind it. The old release must not freeze that session half-way: it waits
    for the answer, lets the queued line through, and only then hands over, so the successor
    serves `bob`, named, and his line reaches everyone once."""
    url = redis_server.url
    old = start_release(start_server, sock, "v1", "--backplane", url)
    two = start_server("--backplane", url)
    ann = clients(two.port, "ann")
    bob = clients(old.port)  # connected, not named yet
    assert redis_server.proc is not None
    redis_pid = redis_server.proc.pid
    os.kill(redis_pid, signal.SIGSTOP)
    resumed = threading.Timer(0.5, os.kill, (redis_pid, signal.SIGCONT))
    try:
        bob.sock.sendall(b"/nick bob\nhello from bob\n")
        time.sleep(0.1)  # both lines are in the old release, the claim in flight
        resumed.start()
        new = start_release(start_server, sock, "v2", "--backplane", url, port=old.port)
    finally:
        resumed.join()
        os.kill(redis_pid, signal.SIGCONT)
    assert "how=handover" in new.wait_for_log("switch ")
    assert old.proc.wait(10) == 99
    seen = bob.until("MSG ")
    assert "OK nick bob" in seen
    assert seen[-1].endswith(" bob hello from bob")
    assert ann.until("MSG ")[-1].endswith(" bob hello from bob")
    bob.send("/who")
    assert bob.until("WHO")[-1] == "WHO ann bob"
    bob.send("again")
    assert [ln for ln in ann.until("MSG ") if "hello" in ln] == []  # not twice


def test_since_still_answers_after_a_handover_on_a_quiet_host(
    redis_server: RedisServer,
    start_server: Callable[..., ServerProcess],
    clients: Callable[..., LineClient],
    sock: str,
) -> None:
    """The retained conversation comes from Redis: a release that delivered nothing new since it
    started must still hand on the id its clients could ask `/since` from (it handed on 0, and
    the successor answered `/since 0` with nothing)."""
    url = redis_server.url
    two = start_server("--backplane", url)
    ann = clients(two.port, "ann")
    for text in ("one", "two", "three"):
        ann.send(text)
    ann.until("MSG 3 ")
    old = start_release(start_server, sock, "v1", "--backplane", url)
    bob = clients(old.port, "bob")
    new = start_release(start_server, sock, "v2", "--backplane", url, port=old.port)
    assert "how=handover" in new.wait_for_log("switch ")
    bob.send("/since 0")
    assert [bob.line() for _ in range(3)] == ["MSG 1 ann one", "MSG 2 ann two", "MSG 3 ann three"]


def test_a_successor_without_redis_stops_before_the_serving_release_notices(
    redis_server: RedisServer,
    start_server: Callable[..., ServerProcess],
    clients: Callable[..., LineClient],
    sock: str,
) -> None:
    """The successor connects to Redis before it asks the serving release for anything: one
    that cannot reach it exits with one line, and the serving release never hands over, never
    freezes, never thaws (it used to pre-copy and freeze first, then serve on)."""
    old = start_release(start_server, sock, "v1", "--backplane", redis_server.url)
    ann = clients(old.port, "ann")
    unreachable_redis("--port", str(old.port), "--handover-socket", sock, "--release", "v2")
    ann.send("still here")
    assert ann.until("MSG")[-1] == "MSG 1 ann still here"
    assert [ln for ln in old.lines if re.search(r" handover (gave|aborted|refused)", ln)] == []


def test_a_single_host_release_hands_over_to_one_that_joins_a_cluster(
    redis_server: RedisServer,
    start_server: Callable[..., ServerProcess],
    clients: Callable[..., LineClient],
    sock: str,
) -> None:
    """Adding `--backplane` to a running host: the successor loads the room from Redis in the
    pause (the predecessor has no cluster position to hand over), so it must not watch the
    connections before the commit; what a client types meanwhile is read once, by it."""
    old = start_release(start_server, sock, "v1")
    ann = clients(old.port, "ann")
    bob = clients(old.port, "bob")
    new = start_release(start_server, sock, "v2", "--backplane", redis_server.url, port=old.port)
    ann.sock.sendall(b"during the switch\n")
    assert "how=handover" in new.wait_for_log("switch ")
    assert old.proc.wait(10) == 99
    ann.send("after")
    seen = [ln for ln in bob.until("MSG 2 ") if ln.startswith("MSG ")]
    assert seen == ["MSG 1 ann during the switch", "MSG 2 ann after"]
    assert "cluster redis:" in new.wait_for_log("cluster redis:")


def test_a_successor_the_serving_release_refuses_closes_its_redis_connection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Connected to Redis first, then refused (a takeover is already under way): `_begin` gives
    up, and its connections to Redis are closed before it returns, not left to the exit."""
    path = str(tmp_path / "run" / "handover.sock")
    (tmp_path / "run").mkdir(mode=0o700)
    point = socket.socket(socket.AF_UNIX)
    point.bind(path)
    point.listen()

    def refuse() -> None:
        conn, _ = point.accept()
        channel = fdpass.Channel(conn, 5)
        channel.recv()  # hello
        channel.send(handover.refuse(BUSY))
        channel.close()

    threading.Thread(target=refuse, daemon=True).start()
    history = str(tmp_path / "history.sqlite3")
    settings = config.load(
        [
            *("--port", "0", "--backplane", redis_server.url, "--handover-socket", path),
            *("--history", history, "--release", "v2"),
        ]
    )
    watcher = redis.Redis.from_url(redis_server.url)

    def connected() -> int:
        return len(watcher.client_list()) - 1  # not this one

    async def begin() -> None:
        server = ChatServer(settings, History(settings.history_size, settings.history))
        assert await _begin(server, settings) is None
        # Still in the loop, so before any exit: Redis has seen the connection close.
        wait_until(lambda: connected() == 0, 3, "the successor's Redis connection closed")

    try:
        assert connected() == 0
        asyncio.run(begin())
    finally:
        point.close()
        watcher.close()
