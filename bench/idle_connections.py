"""Server memory per idle connection: hold N idle clients and report (RSS delta) / N.

The server runs in its own process; the clients are opened by the load generator
(``bench/loadgen.py``) in another process. Two states are measured, each on a fresh server:
"connected": every client has read the ``HELLO`` line and then stays silent;
"nick": every client has also sent ``/nick cN`` and read ``OK nick`` (each join is broadcast to
everyone, so setting up costs O(N^2) JOIN lines: ~20 s for 10,000 on two cores).

Server RSS (psutil on the server pid) is read after the server has started and answered one
probe connection (the baseline), and again once all N clients are connected and the server has
been quiet for ``--settle`` seconds. Per connection = (RSS after - RSS before) / N.

    .venv/bin/python -m bench.idle_connections                  # 10,000, both states
    .venv/bin/python -m bench.idle_connections --mode connected -n 3000
    .venv/bin/python -m bench.idle_connections --servers pynet,baseline
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time

from bench._common import (
    cpu_plan,
    default_nice,
    pin_self,
    pynet_server_available,
    raise_nofile,
    start_server,
    verdict,
)
from bench.loadgen import LoadGenProcess

TARGET_KIB = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(kind: str, n: int, nick: bool, settle: float, cpus: tuple, nice: int) -> dict:
    srv_cpus, lg_cpus = cpus
    server = start_server(kind, srv_cpus, max_clients=n, nice=nice)
    lg = None
    try:
        time.sleep(settle)
        rss0 = server.rss()
        lg = LoadGenProcess(server.port, server.pid, lg_cpus, nice)
        info = lg.call("connect", n, nick, timeout=600)
        time.sleep(settle)
        rss1 = server.rss()
        if server.proc.poll() is not None:
            raise RuntimeError(f"{kind} server died:\n{server.log_tail()}")
        per = (rss1 - rss0) / n
        return {
            "kind": kind,
            "n": n,
            "nick": nick,
            "rss0": rss0,
            "rss1": rss1,
            "per_conn": per,
            "connect_s": info["connect_s"] + info["quiesce_s"],
        }
    finally:
        if lg is not None:
            lg.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--connections", type=int, default=10_000)
    p.add_argument(
        "--mode",
        choices=("connected", "nick", "both"),
        default="both",
        help="connected: after HELLO, no /nick; nick: after /nick -> OK nick (default: both)",
    )
    p.add_argument(
        "--servers",
        default="pynet",
        help="comma-separated: pynet, baseline (one thread per connection)",
    )
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS read")
    p.add_argument("--quick", action="store_true", help="smoke run: short settle time")
    args = p.parse_args(argv)
    if args.quick:
        args.settle = min(args.settle, 0.3)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    limit = raise_nofile()
    if args.connections + 100 > limit:
        p.error(f"RLIMIT_NOFILE is {limit}: too low for {args.connections} connections")
    cpus = cpu_plan()
    pin_self(cpus[1])
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if "pynet" in servers and not pynet_server_available():
        log("chat/server.py does not exist yet: running the baseline only")
        servers = [s for s in servers if s != "pynet"] or ["baseline"]

    modes = ["connected", "nick"] if args.mode == "both" else [args.mode]
    states = {"connected": "just connected (HELLO read, no /nick)", "nick": "after /nick"}
    print(f"idle_connections: {args.connections} idle clients per run; server RSS by psutil")
    print(
        f"{'server':8} {'state':10} {'conns':>7} {'RSS before MiB':>15} {'RSS after MiB':>14} "
        f"{'per conn KiB':>13} {'setup s':>8}"
    )
    results = []
    for kind in servers:
        for mode in modes:
            r = measure(kind, args.connections, mode == "nick", args.settle, cpus, default_nice())
            r["mode"] = mode
            results.append(r)
            print(
                f"{kind:8} {mode:10} {r['n']:>7} {r['rss0'] / 2**20:>15.1f} "
                f"{r['rss1'] / 2**20:>14.1f} {r['per_conn'] / 1024:>13.2f} "
                f"{r['connect_s']:>8.1f}",
                flush=True,
            )
    for r in results:
        if r["kind"] == "pynet":
            kib = r["per_conn"] / 1024
            print(
                f"target: {verdict(kib < TARGET_KIB)}  < {TARGET_KIB:g} KiB per idle connection: "
                f"{kib:.2f} KiB with {r['n']} connections, {states[r['mode']]}"
            )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
