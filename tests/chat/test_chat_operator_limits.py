"""The limits an operator expects, over real sockets: partial-line and idle timeouts, the
per-address cap, and the keepalive options on accepted sockets."""

from __future__ import annotations

import socket
import time

import pytest

from chat import client, config, keepalive
from chat.registry import address_key
from tests.chat.fakes import LineClient


def test_named_client_that_never_finishes_a_line_is_cut(start_server, clients) -> None:
    server = start_server("--line-timeout", "0.6")
    watcher = clients(server.port, "watcher")
    stalled = clients(server.port, "stalled")
    watcher.until("JOIN stalled")
    started = time.monotonic()
    for _ in range(6):  # a byte now and then is not a line: the timer runs from the first byte
        stalled.sock.sendall(b"x")
        time.sleep(0.1)
    rest = stalled.rest()
    assert rest[-1] == "BYE line-timeout"
    assert time.monotonic() - started < 4  # 0.6 s, and housekeeping, on a busy machine
    assert watcher.line() == "LEFT stalled line-timeout"
    server.wait_for_log("nick=stalled reason=line-timeout")


def test_an_over_long_line_being_skipped_is_also_timed(start_server, clients) -> None:
    server = start_server("--line-timeout", "0.6", "--max-line", "64")
    stalled = clients(server.port, "stalled")
    stalled.sock.sendall(b"y" * 100)  # past the limit: skipped up to a newline that never comes
    assert stalled.line().startswith("ERR line-too-long ")
    assert stalled.rest()[-1] == "BYE line-timeout"


def test_whole_lines_and_quiet_clients_are_not_cut(start_server, clients) -> None:
    server = start_server("--line-timeout", "1.5")
    talker = clients(server.port, "talker")
    quiet = clients(server.port, "quiet")
    talker.until("JOIN quiet")
    for n in range(8):  # each line finished at once, over longer than the timeout
        talker.send(f"line {n}")
        assert talker.line() == f"MSG {n + 1} talker line {n}"
        time.sleep(0.25)
    talker.sock.sendall(b"slow ")  # a line split over two writes, finished in time
    time.sleep(0.5)
    talker.send("but whole")
    assert talker.line() == "MSG 9 talker slow but whole"
    quiet.send("/ping")  # idle for 2.5 s, more than the line timeout: still served
    assert quiet.until("PONG")[-1] == "PONG"


def test_idle_timeout_cuts_silent_named_clients_when_set(start_server, clients) -> None:
    server = start_server("--idle-timeout", "1.5")
    watcher = clients(server.port, "watcher")
    idle = clients(server.port, "idle")
    watcher.until("JOIN idle")
    started = time.monotonic()
    seen: list[str] = []
    while "LEFT idle idle-timeout" not in seen:  # the watcher keeps talking, so it stays
        assert time.monotonic() - started < 8, seen
        watcher.send("/ping")
        seen += watcher.until("PONG")
        time.sleep(0.2)
    assert time.monotonic() - started >= 1.4  # not before its time
    assert idle.rest()[-1] == "BYE idle-timeout"
    assert [line for line in seen if line != "PONG"] == ["LEFT idle idle-timeout"]
    watcher.send("/ping")
    assert watcher.line() == "PONG"


def test_one_address_cannot_take_every_slot(start_server, clients) -> None:
    server = start_server("--max-per-address", "3", "--max-clients", "100")
    held = [clients(server.port, f"c{n}") for n in range(3)]
    extra = clients(server.port)
    assert extra.hello.startswith("HELLO pynet ")
    rest = extra.rest()
    assert rest[0] == "ERR server-full too many connections from your address (limit 3)"
    assert rest[-1] == "BYE too-many-connections"
    server.wait_for_log("reason=too-many-connections limit=3")
    held[0].send("/quit")
    assert held[0].rest()[-1] == "BYE quit"
    server.wait_for_log("nick=c0 reason=quit")
    again = LineClient(server.port, "c3")  # the slot is free again
    again.close()


def test_per_address_cap_off_with_zero(start_server, clients) -> None:
    server = start_server("--max-per-address", "0", "--max-clients", "100")
    for n in range(70):  # more than the default cap of 64
        clients(server.port, None if n % 2 else f"n{n}")
    last = clients(server.port, "last")
    last.send("/who")
    assert last.until("WHO ")[-1].count(" ") == 36  # 35 named ones and "last"


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("192.0.2.7", 5050), "192.0.2.7"),
        (("2001:db8:1:2:aaaa::1", 5050, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:ffff::9", 6000, 0, 0), "2001:db8:1:2::/64"),  # same /64, same key
        (("::ffff:192.0.2.7", 5050, 0, 0), "192.0.2.7"),
        (("fe80::1%eth0", 5050, 0, 2), "fe80::/64"),
        ("/run/chat.sock", "/run/chat.sock"),
    ],
)
def test_address_key(peer: object, key: str) -> None:
    assert address_key(peer) == key


def test_accepted_sockets_get_tuned_keepalive() -> None:
    """The server sets the options on each accepted socket; read them back from the kernel."""
    import asyncio

    from chat.config import Settings
    from chat.history import History
    from chat.service import ChatServer

    async def scenario() -> dict[str, int]:
        settings = Settings(host="127.0.0.1", port=0, keepalive_idle=7, keepalive_interval=3)
        server = ChatServer(settings, History(10, None))
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readline()
        [client] = server.clients
        sock = client.transport.get_extra_info("socket")
        got = {
            name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
            for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")
        }
        got["SO_KEEPALIVE"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        writer.close()
        await server.stop()
        return got

    assert asyncio.run(scenario()) == {
        "TCP_KEEPIDLE": 7,
        "TCP_KEEPINTVL": 3,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 16_000,  # 7 + 3 x 3 seconds, in ms
        "SO_KEEPALIVE": 1,
    }


def test_keepalive_defaults_stay_under_a_load_balancers_idle_timeout() -> None:
    defaults = config.Settings()
    nlb_idle_timeout = 350  # AWS Network Load Balancer, TCP
    assert defaults.keepalive_idle < nlb_idle_timeout / 2
    dead = keepalive.dead_after(
        defaults.keepalive_idle, defaults.keepalive_interval, defaults.keepalive_count
    )
    assert dead <= 90  # "within about a minute"
    # The client: TCP keepalive with the same timers, and its own /ping well inside the window.
    assert keepalive.dead_after(keepalive.IDLE, keepalive.INTERVAL, keepalive.COUNT) <= 90
    ping, answer = client.PING_INTERVAL, client.TIMEOUT
    assert ping < nlb_idle_timeout / 2
    assert ping + answer <= 90


def test_keepalive_zero_leaves_the_socket_alone() -> None:
    with socket.socket() as sock:
        keepalive.enable(sock, 0, 10, 3)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--line-timeout", "-1"),
        ("--line-timeout", "soon"),
        ("--idle-timeout", "nan"),
        ("--max-per-address", "-1"),
        ("--max-per-address", "2.5"),
        ("--keepalive-idle", "-1"),
        ("--keepalive-idle", "40000"),
        ("--keepalive-interval", "0"),
        ("--keepalive-count", "0"),
        ("--keepalive-count", "128"),
    ],
)
def test_bad_limit_values_exit_with_one_line(flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        config.load([flag, value], env={})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag}: invalid value {value!r}" in err
    assert "Traceback" not in err


def test_limit_values_from_the_environment() -> None:
    settings = config.load(
        [],
        env={
            "PYNET_LINE_TIMEOUT": "5",
            "PYNET_IDLE_TIMEOUT": "3600",
            "PYNET_MAX_PER_ADDRESS": "8",
            "PYNET_KEEPALIVE_IDLE": "20",
            "PYNET_KEEPALIVE_INTERVAL": "5",
            "PYNET_KEEPALIVE_COUNT": "4",
        },
    )
    assert (settings.line_timeout, settings.idle_timeout, settings.max_per_address) == (
        5.0,
        3600.0,
        8,
    )
    assert (settings.keepalive_idle, settings.keepalive_interval, settings.keepalive_count) == (
        20,
        5,
        4,
    )
