"""Cluster benchmark: two chat servers on one Redis backplane against one server, same load.

    python -m bench.cluster_bench [--clients 1000] [--duration 3] [--rates 400,800,...,25600]
                                  [--cross-rate 10000] [--cross-receivers 20]

1. one server with --clients clients; 2. two servers on one Redis (`--backplane`), half the
clients each, the load generator's senders and sampled clients spread over both. For each,
the offered broadcast rates are tried in order (stopping at the first that is not sustained:
delivered < 95 % of offered, or p99 over --p99-ms) and the best sustained deliveries/s is
reported. 3. cross-host latency: the senders on server A, --cross-receivers clients on server B,
--cross-rate broadcasts/s; p50/p99 post-to-delivery as seen on B.

The load generator is bench/loadgen.py (epoll, one process); only the port each connection goes
to differs. The chat servers and Redis share one core and the load generator has the other (on
a machine with two or more), so the pair gets no more CPU than the single server. Everything
runs on 127.0.0.1; every run is bounded in time. On a shared machine the figures are noisy:
compare them side by side, not with other machines'.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import socket
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from bench._common import HOST, Server, cpu_plan, pin_self, raise_nofile, start_server
from bench.loadgen import LoadGen


class SpreadLoadGen(LoadGen):
    """LoadGen whose connections go to several ports: round robin, or senders on the first
    port and everyone else on the second (`cross`)."""

    def __init__(self, ports: list[int], mode: str, server_pid: int, **kw: Any) -> None:
        super().__init__(ports[0], server_pid, **kw)
        self.ports, self.mode, self.opened = ports, mode, 0

    def _open(self) -> socket.socket:
        i, self.opened = self.opened, self.opened + 1
        if self.mode == "cross":
            self.port = self.ports[0] if i < self.n_senders else self.ports[1]
        else:
            self.port = self.ports[i % len(self.ports)]
        return super()._open()


def _run(ctl: Connection, ports: list[int], mode: str, server_pid: int, kw: dict[str, Any]) -> None:
    raise_nofile()
    pin_self(cpu_plan()[1])
    lg = SpreadLoadGen(ports, mode, server_pid, **kw)
    try:
        while True:
            try:
                cmd = ctl.recv()
            except EOFError:
                break
            try:
                if cmd[0] == "connect":
                    ctl.send(("ok", lg.connect(*cmd[1:])))
                elif cmd[0] == "step":
                    ctl.send(("ok", lg.step(*cmd[1:])))
                else:
                    ctl.send(("ok", {}))
                    break
            except Exception as exc:
                ctl.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        lg.close()


class Driver:
    """The load generator in its own process."""

    def __init__(self, ports: list[int], mode: str, server_pid: int, **kw: Any) -> None:
        ctx = mp.get_context("spawn")
        self.ctl, child = ctx.Pipe()
        self.proc = ctx.Process(target=_run, args=(child, ports, mode, server_pid, kw), daemon=True)
        self.proc.start()
        child.close()

    def call(self, *cmd: Any, timeout: float = 300.0) -> dict[str, Any]:
        self.ctl.send(cmd)
        if not self.ctl.poll(timeout):
            raise RuntimeError(f"load generator did not answer {cmd[0]!r} in {timeout}s")
        status, value = self.ctl.recv()
        if status != "ok":
            raise RuntimeError(f"load generator: {value}")
        return dict(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl.send(("close",))
            self.ctl.poll(10)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


@contextlib.contextmanager
def servers(count: int, clients: int) -> Iterator[list[Server]]:
    """COUNT chat servers; with more than one, a redis-server backplane they all share.

    Every server (Redis too) is pinned to the same core, the load generator to the other: the
    pair and its Redis get no more CPU than the single server does, and the load generator's
    core is its own in both runs, so the comparison is of the servers' work, not of who got
    more of a shared machine."""
    started: list[Server] = []
    cpus = cpu_plan()[0]
    try:
        extra: list[str] = []
        if count > 1:
            redis = start_server("redis", cpus, max_clients=100)
            started.append(redis)
            extra = ["--backplane", f"redis://{HOST}:{redis.port}/0"]
        for _ in range(count):
            started.append(start_server("pynet", cpus, max_clients=clients, extra_args=extra))
        yield [s for s in started if s.kind != "redis"]
    finally:
        for server in reversed(started):
            server.stop()


def best_sustained(
    driver: Driver, rates: list[float], args: argparse.Namespace
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    best, points = None, []
    for rate in rates:
        point = driver.call("step", rate, args.warmup, args.duration, args.drain)
        points.append(point)
        ok = (
            point["p99_ms"] is not None
            and point["p99_ms"] <= args.p99_ms
            and point["delivered_per_s"] >= 0.95 * point["offered"]
        )
        print(
            f"    {rate:>7.0f} bcast/s: delivered {point['delivered_per_s']:>10,.0f}/s "
            f"of {point['offered']:>10,.0f}, p99 {fmt_ms(point['p99_ms'])}"
            f"{'' if ok else '  (not sustained)'}",
            flush=True,
        )
        if not ok:
            break
        best = point
    return best, points


def fmt_ms(value: float | None) -> str:
    return "lost" if value is None else f"{value:.1f} ms"


def run(args: argparse.Namespace) -> int:
    results: dict[str, dict[str, Any] | None] = {}
    for label, count in (("one server", 1), ("two servers + redis", 2)):
        print(f"{label}: {args.clients} clients", flush=True)
        with servers(count, args.clients) as chat:
            driver = Driver([s.port for s in chat], "spread", chat[0].pid)
            try:
                driver.call("connect", args.clients)
                results[label], _ = best_sustained(driver, args.rates, args)
            finally:
                driver.close()
    print(f"cross-host: senders on A, {args.cross_receivers} receivers on B", flush=True)
    with servers(2, args.cross_receivers + 20) as chat:
        driver = Driver([s.port for s in chat], "cross", chat[1].pid, samplers=10)
        try:
            driver.call("connect", args.cross_receivers + 10)
            cross = driver.call("step", args.cross_rate, args.warmup, args.duration, args.drain)
        finally:
            driver.close()
    print("\nsummary (noisy: a shared machine)")
    for label, point in results.items():
        if point is None:
            print(f"  {label:22} no rate sustained")
        else:
            floor = point["rate"] >= max(args.rates)  # never failed: the list ended first
            print(
                f"  {label:22} {'>=' if floor else '  '}{point['delivered_per_s']:>10,.0f} "
                f"deliveries/s sustained (p99 {fmt_ms(point['p99_ms'])} at "
                f"{point['rate']:.0f} bcast/s){'  a floor: raise --rates' if floor else ''}"
            )
    one, two = results["one server"], results["two servers + redis"]
    if one and two:
        ratio = two["delivered_per_s"] / one["delivered_per_s"]
        print(f"  pair / single: {ratio:.2f} (target >= 0.5)")
    print(
        f"  cross-host at {cross['sent_per_s']:,.0f} bcast/s sent: p50 {fmt_ms(cross['p50_ms'])}, "
        f"p99 {fmt_ms(cross['p99_ms'])} (target < 20 ms)"
    )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_bench", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--rates",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[400.0, 800.0, 1600.0, 3200.0, 6400.0, 9600.0, 12800.0, 19200.0, 25600.0],
        help="offered broadcasts/s to try, in order (comma-separated); high enough that the "
        "figures are the servers' limits, not the list's end",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument("--cross-rate", type=float, default=10000.0)
    parser.add_argument("--cross-receivers", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
