"""Peers that vanish without closing, on both ends, in a network namespace the test creates.

A clean close (FIN, RST) is easy; the hard case is a peer whose packets simply stop: a laptop
that sleeps, a host that loses power, a NAT that forgets the flow. Here the peer sits in its own
network namespace behind a veth pair, and `iptables -j DROP` inside that namespace makes it
vanish: nothing it sends leaves, nothing sent to it is answered. Addresses come from
198.18.0.0/15, the range set aside for network tests (RFC 2544), one /30 per test.

Needs root (`ip netns`, `iptables`); CI runs as root. Timers are set to a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.chat.fakes import ClientProcess, LineClient, ServerProcess

pytestmark = pytest.mark.netns

# Keepalive after 1 s of silence, a probe a second, dead after 2 misses: 3 s in all, and the
# same bound for data never acknowledged (TCP_USER_TIMEOUT).
FAST_KEEPALIVE = ("--keepalive-idle", "1", "--keepalive-interval", "1", "--keepalive-count", "2")


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Namespace:
    """A network namespace joined to this one by a veth pair: `host_ip` here, `ns_ip` there."""

    name: str
    host_ip: str
    ns_ip: str

    @property
    def exec(self) -> tuple[str, ...]:
        """The prefix that runs a command inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def vanish(self) -> None:
        """Drop every packet in and out of the namespace: its peers see silence, not a close."""
        for chain in ("INPUT", "OUTPUT"):
            run(*self.exec, "iptables", "-I", chain, "-j", "DROP")

    def reappear(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            run(*self.exec, "iptables", "-D", chain, "-j", "DROP")


@pytest.fixture
def netns() -> Iterator[Namespace]:
    assert os.geteuid() == 0, "needs root for ip netns (CI runs as root); or -m 'not netns'"
    for tool in ("ip", "iptables"):
        assert shutil.which(tool), f"{tool} not found: run scripts/system-deps.sh as root"
    tag = f"{os.getpid() % 10000}{random.randrange(100, 1000)}"
    name, here, there = f"pynet-t{tag}", f"pnh{tag}", f"pnn{tag}"
    subnet = f"198.18.{random.randrange(256)}.{random.randrange(0, 256, 4)}"
    base = subnet.rsplit(".", 1)
    host_ip, ns_ip = f"{base[0]}.{int(base[1]) + 1}", f"{base[0]}.{int(base[1]) + 2}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        run("ip", "link", "set", there, "netns", name)
        run("ip", "addr", "add", f"{host_ip}/30", "dev", here)
        run("ip", "link", "set", here, "up")
        run("ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", there)
        run("ip", "-n", name, "link", "set", there, "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield Namespace(name, host_ip, ns_ip)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", here], check=False, capture_output=True)


GHOST = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.sendall(b"/nick ghost\\n")
while sock.recv(65536):
    pass
"""


@pytest.mark.parametrize("traffic", ["idle", "busy"])
def test_server_ends_a_vanished_session_and_frees_its_nick(
    netns: Namespace, start_server, traffic: str
) -> None:
    """Idle: keepalive probes go unanswered. Busy: messages to the ghost are never acknowledged
    (keepalive does not probe while data is in flight; TCP_USER_TIMEOUT ends it)."""
    server = start_server("--host", netns.host_ip, *FAST_KEEPALIVE)
    watcher = LineClient(server.port, "watcher", host=netns.host_ip)
    ghost = subprocess.Popen(
        [*netns.exec, sys.executable, "-c", GHOST, netns.host_ip, str(server.port)]
    )
    try:
        watcher.until("JOIN ghost")
        netns.vanish()
        vanished = time.monotonic()
        seen: list[str] = []
        watcher.sock.settimeout(0.2)
        next_send = vanished
        while not any(line.startswith("LEFT ghost") for line in seen):
            now = time.monotonic()
            assert now - vanished < 15, f"ghost still there: {seen[-3:]}\n{server.log}"
            if traffic == "busy" and now >= next_send:  # 5 lines/s the ghost never acks
                watcher.send("anyone there?")
                next_send = now + 0.2
            with contextlib.suppress(AssertionError):  # nothing within 0.2 s
                seen.append(watcher.line())
        took = time.monotonic() - vanished
        assert "LEFT ghost timed out" in seen
        assert 2 <= took < 10, took  # 3 s of keepalive / user timeout, plus housekeeping
        server.wait_for_log("nick=ghost reason=timed out")
        back = LineClient(server.port, "ghost", host=netns.host_ip)  # not nick-taken
        back.close()
    finally:
        ghost.kill()
        ghost.wait()
        watcher.close()


def test_client_notices_a_vanished_server_and_comes_back(netns: Namespace) -> None:
    server = ServerProcess("--host", netns.ns_ip, *FAST_KEEPALIVE, prefix=netns.exec)
    client = ClientProcess(
        server.port,
        "--nick",
        "zoe",
        "--raw",
        "--stay",
        "--ping-interval",
        "1",
        "--timeout",
        "1",
        "--max-backoff",
        "0.5",
        host=netns.ns_ip,
    )
    try:
        client.wait_for("OK nick zoe")
        sockets = subprocess.run(
            ["ss", "-Htno", "state", "established", "dst", netns.ns_ip],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "timer:(keepalive" in sockets, sockets  # the client's socket has keepalive on
        netns.vanish()
        vanished = time.monotonic()
        note = client.wait_for_error("no answer from", timeout=10)
        assert note == f"-- no answer from {netns.ns_ip}:{server.port} within 1s"
        assert time.monotonic() - vanished < 4  # ping after 1 s of silence, 1 s to answer
        client.wait_for_error("cannot connect (no answer within 1s)", timeout=10)
        time.sleep(3.5)  # meanwhile the server's keepalive ends zoe's old session
        netns.reappear()
        client.wait_for("OK nick zoe", count=2, timeout=20)  # back, under the same nick
        server.wait_for_log("nick=zoe reason=timed out")
        assert client.proc.poll() is None
    finally:
        client.kill()
        server.kill()
