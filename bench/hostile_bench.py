"""Hostile load: what one stranger's requests cost a server with default settings.

Each attack runs against a fresh `python -m chat.server` with its default settings (pinned to
one core, the attackers and the bystander on the other), for a bounded time, all on 127.0.0.1
(several loopback source addresses stand for several users' addresses). Measured: the
server's memory growth (peak RSS over the attack against before it) and a bystander's `/ping`
round trips (every 20 ms), compared with the same server, quiet, in the same run.

- replays: the history full (1,000 lines of ~4 KB); attackers send `/since 0` 100 times in one
  packet and never read;
- who: 1,000 users online; 64 unnamed connections from one address send `/who` as fast as
  they may, never reading;
- flood: 64 named connections from one address send lines as fast as they may (the address's
  shared rate limit, not 64 times a client's).

    .venv/bin/python -m bench.hostile_bench                 # every attack, 10 s each
    .venv/bin/python -m bench.hostile_bench --attacks replays --seconds 5
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil

from bench._common import _child_setup, cpu_plan, raise_nofile, verdict
from pynet.local import chat_server
from pynet.local.host import free_port

GROWTH_MB = 64.0
P99_MS = 100.0
LINE = "y" * 3900  # a broadcast of ~4 KB with its MSG prefix


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Figures:
    attack: str
    growth_mb: float
    p50_ms: float
    p99_ms: float
    worst_ms: float
    pings: int
    server_cpu: float

    def ok(self) -> bool:
        return self.growth_mb <= GROWTH_MB and self.p99_ms <= P99_MS


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError(f"closed before {marker!r}: {data[-200:]!r}")
        data += chunk
    return data


def named(port: int, nick: str, source: str = "127.0.0.1") -> socket.socket:
    sock = connect(port, source)
    read_until(sock, b"/nick NAME\n")
    sock.sendall(f"/nick {nick}\n".encode())
    read_until(sock, f"OK nick {nick}\n".encode())
    return sock


@contextlib.contextmanager
def server() -> Iterator[tuple[int, psutil.Process]]:
    port = free_port()
    srv_cpus, _ = cpu_plan()
    proc = chat_server.start(
        port=port,
        stdout=sys.stderr if "-v" in sys.argv else open("/dev/null", "wb"),  # noqa: SIM115
        stderr=sys.stderr if "-v" in sys.argv else None,
        preexec_fn=lambda: _child_setup(srv_cpus, 0, 0),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                connect(port).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.05)
        yield port, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


class Bystander:
    """Pings every 20 ms from its own address; keeps the round trips."""

    def __init__(self, port: int) -> None:
        self.sock = named(port, "bystander", "127.0.0.250")
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            began = time.perf_counter()
            self.sock.sendall(b"/ping\n")
            while b"PONG\n" not in buf:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return
                buf += chunk
            buf = buf[buf.index(b"PONG\n") + 5 :]
            self.times.append((time.perf_counter() - began) * 1000)
            self._stop.wait(0.02)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def measure(
    name: str, seconds: float, setup: Callable[[int], object], attack: Callable[[int, float], None]
) -> Figures:
    with server() as (port, proc):
        setup(port)
        time.sleep(0.5)
        rss0 = proc.memory_info().rss
        cpu0 = sum(proc.cpu_times()[:2])
        peak = rss0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                done.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with Bystander(port) as bystander:
            attack(port, seconds)
        done.set()
        sampler.join()
        cpu = (sum(proc.cpu_times()[:2]) - cpu0) / seconds
        times = sorted(bystander.times) or [float("inf")]
        return Figures(
            name,
            (peak - rss0) / 1e6,
            statistics.median(times),
            times[min(len(times) - 1, int(len(times) * 0.99))],
            times[-1],
            len(times),
            cpu,
        )


# ---- the attacks ------------------------------------------------------------------------------


def quiet(port: int, seconds: float) -> None:
    time.sleep(seconds)


def fill_history(port: int) -> None:
    """1,000 lines of ~4 KB, from 20 addresses (each address and client under its limits)."""
    writers = [named(port, f"filler{i}", f"127.0.1.{i + 1}") for i in range(20)]
    for round_ in range(50):
        for i, sock in enumerate(writers):
            sock.sendall(f"{LINE} {round_} {i}\n".encode())
        time.sleep(0.02)
    reader = named(port, "counter", "127.0.1.200")
    reader.sendall(b"/since 999\n/ping\n")
    read_until(reader, b"PONG\n")


def replays(port: int, seconds: float) -> None:
    attackers = [connect(port, f"127.0.2.{i + 1}", rcvbuf=4096) for i in range(4)]
    for i, sock in enumerate(attackers):
        sock.sendall(f"/nick replayer{i}\n".encode() + b"/since 0\n" * 100)
    time.sleep(seconds)
    for sock in attackers:
        sock.close()


def users_online(port: int) -> list[socket.socket]:
    """1,000 named users from 16 addresses (under the per-address cap)."""
    return [named(port, f"user{n}", f"127.0.3.{n // 63 + 1}") for n in range(1000)]


def flood(attackers: list[socket.socket], payload: bytes, seconds: float) -> None:
    """Send PAYLOAD on every connection every 20 ms for SECONDS, never reading."""
    for sock in attackers:
        sock.setblocking(False)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in attackers:
            with contextlib.suppress(OSError):  # BlockingIOError included: it stopped reading
                sock.send(payload)
        time.sleep(0.02)
    for sock in attackers:
        sock.close()


def who_flood(port: int, seconds: float) -> None:
    flood([connect(port, "127.0.4.1", rcvbuf=4096) for _ in range(63)], b"/who\n" * 10, seconds)


def line_flood(port: int, seconds: float) -> None:
    attackers = [named(port, f"flooder{i}", "127.0.5.1") for i in range(63)]
    flood(attackers, b"spam spam spam\n" * 5, seconds)


ATTACKS: dict[str, tuple[Callable[[int], object], Callable[[int, float], None]]] = {
    "replays": (fill_history, replays),
    "who": (users_online, who_flood),
    "flood": (lambda port: None, line_flood),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostile_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each attack")
    parser.add_argument("-v", action="store_true", help="show the servers' logs")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    names = [a for a in args.attacks.split(",") if a]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not 0 < args.seconds <= 60:
        parser.error(
            f"unknown attacks {unknown} (from {', '.join(ATTACKS)}), or --seconds not in (0, 60]"
        )
    raise_nofile()
    rows = [measure("quiet (baseline)", min(args.seconds, 5.0), lambda port: None, quiet)]
    for name in names:
        setup, attack = ATTACKS[name]
        log(f"-- {name}: {args.seconds:.0f} s")
        rows.append(measure(name, args.seconds, setup, attack))
    head = ("growth MB", "p50 ms", "p99 ms", "worst", "pings", "srv CPU")
    print(f"{'attack':18} " + " ".join(f"{h:>9}" for h in head))
    for r in rows:
        print(
            f"{r.attack:18} {r.growth_mb:9.1f} {r.p50_ms:9.2f} {r.p99_ms:9.2f} {r.worst_ms:9.1f} "
            f"{r.pings:9d} {r.server_cpu:9.0%}"
        )
    base = rows[0]
    print(f"\ntargets: memory growth <= {GROWTH_MB:.0f} MB and bystander p99 <= {P99_MS:.0f} ms")
    ok = True
    for r in rows[1:]:
        print(
            f"  {verdict(r.ok())}  {r.attack}: +{r.growth_mb:.1f} MB, p99 {r.p99_ms:.1f} ms "
            f"(quiet {base.p99_ms:.1f} ms)"
        )
        ok &= r.ok()
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
