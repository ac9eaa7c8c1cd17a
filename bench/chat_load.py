"""Broadcast throughput and latency of the chat server, against the threaded tutorial baseline.

For each client count (default 100 and 1,000) and each server (PyNet ``chat.server`` and
``bench/baseline_threaded.py``) this starts the server in its own process pinned to one core,
and a load generator (``bench/loadgen.py``) in another process on the other core. The load
generator connects the clients (all /nick), then a few senders offer broadcasts at a controlled
rate, each carrying its send time (``time.monotonic_ns``); every client counts the lines it
receives and sampled clients record latency. The offered rate is searched (doubling, then
bisecting) for the highest *sustainable* point: every broadcast delivered to every client at
the offered rate (>= 95 %) with p99 latency under the bound. It prints per point: delivered
messages/s (lines received by all clients), p50/p99 latency, server CPU and RSS (psutil on the
server pid), then the baseline ratio and PASS/MISS per target.

    .venv/bin/python -m bench.chat_load            # full run, about 3 minutes
    .venv/bin/python -m bench.chat_load --quick    # smoke run, a few seconds per server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import statistics
import sys
import time

from bench._common import (
    cpu_plan,
    default_nice,
    fmt_ms,
    fmt_rate,
    pin_self,
    pynet_server_available,
    raise_nofile,
    start_server,
    verdict,
)
from bench.loadgen import LoadGenProcess

TARGET_RATIO = 10.0
TARGET_DELIVERIES = 300_000
TARGET_P99_MS = 50.0
KEEPUP = 0.95  # delivered/offered needed for a point to count as sustained


NOISY_PCT = 25.0


def noise(points: list[dict]) -> float:
    """Median CPU used by other processes during the points, % of one core."""
    return statistics.median(max(0.0, p["other_cpu_pct"]) for p in points) if points else 0.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def point_ok(r: dict, p99_ms: float) -> bool:
    return (
        r["p99_ms"] is not None
        and r["p99_ms"] < p99_ms
        and r["delivered_per_s"] >= KEEPUP * r["offered"]
        and r["shed"] == 0
        and r["closed"] == 0
    )


def describe(kind: str, r: dict, ok: bool) -> str:
    flag = "ok " if ok else "   "
    lg = " lg-bound?" if r["lg_cpu_pct"] > 90 else ""
    lg += f" lg-round p99 {r['lg_round_p99_ms']:.1f} ms" if r["lg_round_p99_ms"] >= 5 else ""
    return (
        f"{kind:8} {r['clients']:>6} {fmt_rate(r['rate']):>8} {fmt_rate(r['offered']):>9} "
        f"{fmt_rate(r['delivered_per_s']):>10} {fmt_ms(r['p50_ms']):>8} "
        f"{fmt_ms(r['p99_ms']) if r['p99_ms'] is not None else '>drain':>8} "
        f"{r['srv_cpu_pct']:>6.0f}% {r['srv_rss'] / 2**20:>8.1f} {r['lg_cpu_pct']:>5.0f}% "
        f"{max(0.0, r['other_cpu_pct']):>5.0f}% "
        f"{flag}{lg}"
    )


HEADER = (
    f"{'server':8} {'clients':>6} {'bcast/s':>8} {'offered':>9} {'delivered':>10} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'srvCPU':>7} {'RSS MiB':>8} {'lgCPU':>6} {'other':>6}"
)


def search(lg: LoadGenProcess, kind: str, n: int, args: argparse.Namespace) -> dict:
    """Find the highest sustainable offered rate; return all points and the best one.

    Doubling from ``--start`` while points pass, then bisecting (geometric) between the last
    pass and the first fail; halving instead when the very first point fails. A failing point
    is run a second time before it counts as a fail (neighbours on a shared machine are noisy).
    """
    points: list[dict] = []
    lo: float | None = None  # highest passing broadcast rate
    hi: float | None = None  # lowest failing broadcast rate
    rate = args.start / n
    min_rate = 1.0
    max_rate = args.max_offered / n
    steps = 0
    while steps < args.max_steps:
        for attempt in range(1 + args.retries):
            r = lg.call("step", rate, args.warmup, args.duration, args.drain)
            steps += 1
            ok = point_ok(r, args.p99_ms)
            r.update(ok=ok, server=kind, attempt=attempt)
            points.append(r)
            log(describe(kind, r, ok) + (" (retry)" if attempt else ""))
            if ok or r["closed"] or steps >= args.max_steps:
                break
        if r["closed"]:
            log(f"  {r['closed']} clients were disconnected: {r['errors'][:3]}")
            break
        if ok:
            lo = rate
        else:
            hi = rate
        if lo is None:
            rate = rate / 2
            if rate < min_rate:
                break
        elif hi is None:
            if rate >= max_rate:
                break
            rate = min(rate * 2, max_rate)
        else:
            if hi / lo < 1.3:
                break
            rate = math.sqrt(lo * hi)
    best = max((p for p in points if p["ok"]), key=lambda p: p["delivered_per_s"], default=None)
    peak = max(points, key=lambda p: p["delivered_per_s"], default=None)
    return {"points": points, "best": best, "peak": peak}


def run_one(kind: str, n: int, args: argparse.Namespace, cpus: tuple) -> dict:
    srv_cpus, lg_cpus = cpus
    log(f"-- {kind}: starting server, {n} clients")
    server = start_server(kind, srv_cpus, max_clients=n, nice=args.nice, rt=args.rt)
    lg = None
    try:
        lg = LoadGenProcess(
            server.port,
            server.pid,
            lg_cpus,
            args.nice,
            args.rt,
            senders=args.senders,
            payload=args.payload,
            round_ms=args.round_ms,
        )
        rss_idle = server.rss()
        info = lg.call("connect", n, True)
        log(
            f"   connected {n} in {info['connect_s']:.1f}s (+{info['quiesce_s']:.1f}s quiet), "
            f"{info['senders']} senders, {info['samplers']} sampled clients"
        )
        log(HEADER)
        res = search(lg, kind, n, args)
        fixed = None
        if kind == "pynet" and n == max(args.clients) and args.fixed > 0:
            for attempt in range(1 + args.retries):
                fixed = lg.call("step", args.fixed / n, args.warmup, args.duration, args.drain)
                fixed.update(ok=point_ok(fixed, args.p99_ms), server=kind, attempt=attempt)
                log(
                    describe(kind, fixed, fixed["ok"])
                    + f" <- fixed {fmt_rate(args.fixed)}/s load"
                    + (" (retry)" if attempt else "")
                )
                if fixed["ok"]:
                    break
        res.update(kind=kind, clients=n, connect=info, rss_idle=rss_idle, fixed=fixed)
        if server.proc.poll() is not None:
            raise RuntimeError(f"{kind} server died:\n{server.log_tail()}")
        return res
    except Exception:
        log(f"!! {kind} with {n} clients failed; server log tail:\n{server.log_tail()}")
        raise
    finally:
        if lg is not None:
            lg.close()
        server.stop()


def summarize(results: dict, args: argparse.Namespace, cpus: tuple) -> int:
    out = print
    srv_cpus, lg_cpus = cpus
    out("")
    out(
        f"PyNet chat_load: server pinned to CPU {sorted(srv_cpus) if srv_cpus else 'any'}, "
        f"load generator on {sorted(lg_cpus) if lg_cpus else 'any'}"
        f" ({f'SCHED_FIFO {args.rt}' if args.rt else f'nice {args.nice}'}); "
        f"{args.duration}s per point; sustained = p99 < {args.p99_ms:g} ms and "
        f">= {KEEPUP:.0%} delivered"
    )
    out(
        f"{'server':8} {'clients':>7} {'sustained deliv/s':>18} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU':>8} {'srv RSS MiB':>11} {'peak deliv/s':>13} {'peak p99':>9} "
        f"{'noise':>6}"
    )
    for (kind, n), res in results.items():
        b, pk = res["best"], res["peak"]
        out(
            f"{kind:8} {n:>7} {fmt_rate(b['delivered_per_s'] if b else 0):>18} "
            f"{fmt_ms(b['p50_ms'] if b else None):>7} {fmt_ms(b['p99_ms'] if b else None):>7} "
            f"{(b['srv_cpu_pct'] if b else 0):>7.0f}% "
            f"{(b or pk)['srv_rss'] / 2**20:>11.1f} "
            f"{fmt_rate(pk['delivered_per_s']):>13} "
            f"{fmt_ms(pk['p99_ms']) if pk['p99_ms'] is not None else '>drain':>9} "
            f"{noise(res['points']):>5.0f}%"
        )

    worst = max(noise(r["points"]) for r in results.values())
    if worst > NOISY_PCT and args.rt:
        out(
            f"note: other processes used up to {worst:.0f}% of a core (median per run, 'noise'); "
            f"the server and load generator ran SCHED_FIFO, ahead of them."
        )
    elif worst > NOISY_PCT:
        out(
            f"WARNING: other processes used up to {worst:.0f}% of a core (median per run, "
            f"'noise'): latency and sustained figures are unreliable; rerun on a quiet machine "
            f"(or with --rt 10)."
        )

    def sustained(kind: str, n: int) -> float:
        res = results.get((kind, n))
        return res["best"]["delivered_per_s"] if res and res["best"] else 0.0

    for n in args.clients:
        if ("pynet", n) in results and ("baseline", n) in results:
            base = sustained("baseline", n)
            ratio = sustained("pynet", n) / base if base else math.inf
            out(f"ratio pynet/baseline at {n} clients (sustained deliveries/s): {ratio:.1f}x")

    n = max(args.clients)
    if ("pynet", n) not in results:
        out("targets: not evaluated (the PyNet server was not run)")
        return 0
    out("")
    out(f"targets (at {n} clients):")
    rows = []
    if ("baseline", n) in results:
        base = sustained("baseline", n)
        ratio = sustained("pynet", n) / base if base else math.inf
        rows.append((f">= {TARGET_RATIO:g}x the baseline", f"{ratio:.1f}x", ratio >= TARGET_RATIO))
    best = sustained("pynet", n)
    rows.append(
        (
            f">= {fmt_rate(TARGET_DELIVERIES)} deliveries/s, server on one core",
            f"{fmt_rate(best)}/s sustained",
            best >= TARGET_DELIVERIES,
        )
    )
    fixed = results[("pynet", n)]["fixed"]
    if fixed is not None:
        p99 = fixed["p99_ms"]
        kept = fixed["delivered_per_s"] >= KEEPUP * fixed["offered"]
        shown = (
            f"{fmt_ms(p99) if p99 is not None else '>drain'} ms at "
            f"{fmt_rate(fixed['offered'])}/s offered, "
            f"{fmt_rate(fixed['delivered_per_s'])}/s delivered"
        )
        rows.append(
            (
                f"p99 < {args.p99_ms:g} ms at {fmt_rate(args.fixed)}/s",
                shown,
                p99 is not None and p99 < args.p99_ms and kept,
            )
        )
    for name, shown, ok in rows:
        out(f"  {verdict(ok)}  {name:42} {shown}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    p.add_argument(
        "--servers",
        default="pynet,baseline",
        help="comma-separated: pynet (chat.server), baseline (bench/baseline_threaded)",
    )
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per point")
    p.add_argument("--drain", type=float, default=4.0, help="max seconds to wait for stragglers")
    p.add_argument(
        "--max-steps",
        type=int,
        default=10,
        help="points per server and client count (retries included)",
    )
    p.add_argument(
        "--start",
        type=float,
        default=50_000,
        help="first offered load, deliveries/s (broadcasts/s x clients)",
    )
    p.add_argument(
        "--max-offered",
        type=float,
        default=6_400_000,
        help="highest offered load tried, deliveries/s",
    )
    p.add_argument(
        "--fixed",
        type=float,
        default=TARGET_DELIVERIES,
        help="also run PyNet at this fixed offered load (deliveries/s) at the "
        "largest client count; 0 to skip",
    )
    p.add_argument("--senders", type=int, default=10, help="clients that send the broadcasts")
    p.add_argument("--payload", type=int, default=32, help="padding bytes per broadcast text")
    p.add_argument(
        "--round-ms",
        type=float,
        default=0.0,
        help="load generator: minimum time between receive rounds (batches reads)",
    )
    p.add_argument(
        "--retries", type=int, default=1, help="runs of a failing point before it counts as failed"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=default_nice(),
        help="nice value for the server and load generator (default -10 as root: "
        "keeps them ahead of other work on a shared machine; 0 to leave as is)",
    )
    p.add_argument(
        "--rt",
        type=int,
        default=0,
        metavar="PRIO",
        help="run the server and load generator SCHED_FIFO at this priority (needs root): "
        "cleaner figures on a busy shared machine, at the neighbours' expense; 0 = off",
    )
    p.add_argument("--p99-ms", type=float, default=TARGET_P99_MS)
    p.add_argument("--json", metavar="PATH", help="also write every point as JSON")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: short points, few steps (figures are rough)",
    )
    args = p.parse_args(argv)
    args.clients = [int(x) for x in args.clients.split(",") if x]
    args.servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    if args.quick:
        args.duration = min(args.duration, 0.5)
        args.warmup = min(args.warmup, 0.2)
        args.drain = min(args.drain, 2.0)
        args.max_steps = min(args.max_steps, 3)
        args.retries = 0
    for s in args.servers:
        if s not in ("pynet", "baseline"):
            p.error(f"unknown server {s!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    cpus = cpu_plan()
    pin_self(cpus[1])  # keep this (mostly sleeping) driver off the server's core
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if "pynet" in args.servers and not pynet_server_available():
        log("chat/server.py does not exist yet: running the baseline only")
        args.servers = [s for s in args.servers if s != "pynet"]
    t0 = time.monotonic()
    results: dict[tuple[str, int], dict] = {}
    for n in args.clients:
        for kind in args.servers:
            results[(kind, n)] = run_one(kind, n, args, cpus)
    rc = summarize(results, args, cpus)
    log(f"(total {time.monotonic() - t0:.0f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(list(results.values()), f, indent=1, default=str)
    return rc


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
