"""Broadcast throughput and latency of the chat server, against reference servers.

For each client count (default 100, 1,000 and 10,000) and each server this starts the server in
its own process pinned to one core, and a load generator (``bench/loadgen.py``) in another
process on the other core. Servers: PyNet (``chat.server``) with memory history (``pynet``) or
with a SQLite history file (``pynet-sqlite``, durable ids), the threaded tutorial server
(``baseline``) and Redis pub/sub (``redis``, Debian's ``redis-server``, the C reference). The
same load generator drives them all: N clients receive every broadcast, ten senders offer
broadcasts at a controlled rate, one per send burst carrying its send time.

Per server and client count, each run measures
- a latency curve: p50/p99 post-to-delivery at fixed offered loads (``--curve``), and
- the highest sustained load: doubling from ``--start`` until a point fails, then bisecting;
  there is no ceiling. When the load generator's own CPU was the limit (>= 90 % of its core)
  the figure is a floor, and is printed as ">= X".
Runs (``--runs``) give min/median. Then the ratios (PyNet over Redis and the baseline) and
PASS/MISS per target.

    .venv/bin/python -m bench.chat_load            # everything, ~45 minutes
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
from typing import Any, NoReturn

from bench._common import (
    REDIS_INSTALL,
    SERVER_KINDS,
    cpu_plan,
    default_nice,
    fmt_ms,
    fmt_rate,
    pin_self,
    protocol,
    raise_nofile,
    redis_server,
    start_server,
    verdict,
)
from bench.loadgen import LoadGenProcess

TARGET_RATIO = 10.0  # PyNet / baseline, sustained, at 1,000 clients
TARGET_REDIS_RATIO = 3.0  # PyNet / Redis, sustained, at 1,000 clients
TARGET_P99_VS_REDIS = 1.2  # PyNet p99 / Redis p99 at each curve load Redis sustains
TARGET_DELIVERIES = 300_000
TARGET_P99_MS = 50.0  # at TARGET_DELIVERIES, from the latency curve
SEARCH_P99_MS = 500.0  # a point whose queue grows over the window fails this
KEEPUP = 0.95  # delivered/offered needed for a point to count as sustained
LG_BOUND = 90.0  # load generator CPU %, above which a point measures the generator
NOISY_PCT = 25.0
DEFAULT_CURVE = "50000,100000,200000,300000,1000000,3000000"

Point = dict[str, Any]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def noise(points: list[Point]) -> float:
    """Median CPU used by other processes during the points, % of one core."""
    return statistics.median(max(0.0, p["other_cpu_pct"]) for p in points) if points else 0.0


def point_ok(r: Point, p99_ms: float) -> bool:
    return (
        r["p99_ms"] is not None
        and r["p99_ms"] < p99_ms
        and r["delivered_per_s"] >= KEEPUP * r["offered"]
        and r["shed"] == 0
        and r["closed"] == 0
        and r["stale"] == 0
    )


def lg_bound(r: Point) -> bool:
    return bool(r["lg_cpu_pct"] >= LG_BOUND)


def describe(kind: str, r: Point, ok: bool) -> str:
    flag = "ok " if ok else "   "
    lg = " lg-bound" if lg_bound(r) else ""
    lg += f" lg-round p99 {r['lg_round_p99_ms']:.1f} ms" if r["lg_round_p99_ms"] >= 5 else ""
    lg += f" stale: {fmt_rate(r['stale'])} still owed" if r["stale"] else ""
    return (
        f"{kind:12} {r['clients']:>6} {fmt_rate(r['rate']):>8} {fmt_rate(r['offered']):>9} "
        f"{fmt_rate(r['delivered_per_s']):>10} {fmt_ms(r['p50_ms']):>8} "
        f"{fmt_ms(r['p99_ms']) if r['p99_ms'] is not None else '>drain':>8} "
        f"{r['srv_cpu_pct']:>6.0f}% {r['srv_rss'] / 2**20:>8.1f} {r['lg_cpu_pct']:>5.0f}% "
        f"{max(0.0, r['other_cpu_pct']):>5.0f}% "
        f"{flag}{lg}"
    )


HEADER = (
    f"{'server':12} {'clients':>6} {'bcast/s':>8} {'offered':>9} {'delivered':>10} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'srvCPU':>7} {'RSS MiB':>8} {'lgCPU':>6} {'other':>6}"
)


def measure(lg: LoadGenProcess, kind: str, n: int, rate: float, args: argparse.Namespace) -> Point:
    """One point; a failing one is run again before it counts (the machine is shared)."""
    r: Point = {}
    for attempt in range(1 + args.retries):
        r = lg.call("step", rate, args.warmup, args.duration, args.drain)
        r.update(ok=point_ok(r, args.p99_ms), server=kind, attempt=attempt, lg_bound=lg_bound(r))
        log(describe(kind, r, r["ok"]) + (" (retry)" if attempt else ""))
        if r["ok"] or r["closed"]:
            break
    return r


def search(lg: LoadGenProcess, kind: str, n: int, args: argparse.Namespace) -> Point:
    """The highest sustained offered rate: double until a point fails, then bisect.

    No ceiling: the search goes up until the server (or the load generator) fails to sustain.
    The result is a floor when the failing point above it was load-generator bound, or when
    ``--max-steps`` ran out before anything failed.
    """
    points: list[Point] = []
    lo: float | None = None  # highest passing broadcast rate
    hi: Point | None = None  # lowest failing point
    rate = args.start / n
    steps = 0
    while steps < args.max_steps:
        r = measure(lg, kind, n, rate, args)
        steps += 1 + r["attempt"]
        points.append(r)
        if r["ok"]:
            lo = rate
        elif hi is None or rate < hi["rate"]:
            hi = r
        if r["closed"]:  # the server cut clients (too slow): this run can go no further
            log(f"  {r['closed']} clients were disconnected: {r['errors'][:3]}")
            break
        if lo is None:
            rate /= 2
            if rate * n < 1000:
                break
        elif hi is None:
            rate *= 2
        else:
            if hi["rate"] / lo < 1.3:
                break
            rate = math.sqrt(lo * hi["rate"])
    best = max((p for p in points if p["ok"]), key=lambda p: p["delivered_per_s"], default=None)
    peak = max(points, key=lambda p: p["delivered_per_s"], default=None)
    floor = best is not None and (hi is None or hi["lg_bound"] or best["lg_bound"])
    return {"points": points, "best": best, "peak": peak, "floor": floor}


def run_server(kind: str, n: int, args: argparse.Namespace, cpus: tuple) -> dict:
    """Per run: a fresh server and n fresh clients, the latency curve, then the search.

    Fresh per run because a search ends where the server cuts clients (too slow) or falls
    behind, which would spoil the next run.
    """
    runs = []
    for i in range(args.runs):
        log(f"-- {kind}: run {i + 1}/{args.runs}, {n} clients")
        runs.append(one_run(kind, n, args, cpus))
    return {"kind": kind, "clients": n, "runs": runs}


def one_run(kind: str, n: int, args: argparse.Namespace, cpus: tuple) -> dict:
    srv_cpus, lg_cpus = cpus
    server = start_server(kind, srv_cpus, max_clients=n, nice=args.nice, rt=args.rt)
    lg = None
    try:
        lg = LoadGenProcess(
            server.port,
            server.pid,
            lg_cpus,
            args.nice,
            args.rt,
            proto=protocol(kind),
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
        curve: dict[float, Point] = {}
        for load in args.curve:
            curve[load] = r = measure(lg, kind, n, load / n, args)
            if not r["ok"]:
                log("   (not sustained: the higher loads of the curve are skipped)")
                break
        res = search(lg, kind, n, args)
        res.update(curve=curve, connect=info, rss_idle=rss_idle)
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


# ---- summary --------------------------------------------------------------------------------


def sustained(res: dict | None) -> tuple[float, float, bool]:
    """(median, min) of the sustained deliveries/s over the runs, and whether it is a floor."""
    if not res:
        return 0.0, 0.0, False
    vals = [r["best"]["delivered_per_s"] if r["best"] else 0.0 for r in res["runs"]]
    return statistics.median(vals), min(vals), any(r["floor"] for r in res["runs"])


def curve_point(res: dict, load: float) -> tuple[float | None, float | None, bool, bool]:
    """Median p50, p99 over the runs at one curve load (None: never delivered), kept up?, lg?"""
    pts = [r["curve"][load] for r in res["runs"] if load in r["curve"]]
    if not pts:
        return None, None, False, False

    def med(key: str) -> float | None:
        vals = [math.inf if p[key] is None else p[key] for p in pts]
        m = statistics.median(vals)
        return None if math.isinf(m) else m

    kept = statistics.median(p["delivered_per_s"] / p["offered"] for p in pts) >= KEEPUP
    return med("p50_ms"), med("p99_ms"), kept, any(p["lg_bound"] for p in pts)


def fmt_sustained(value: float, floor: bool) -> str:
    return (">=" if floor else "") + fmt_rate(value)


def summarize(results: dict[tuple[str, int], dict], args: argparse.Namespace, cpus: tuple) -> int:
    out = print
    srv_cpus, lg_cpus = cpus
    out("")
    out(
        f"PyNet chat_load: server pinned to CPU {sorted(srv_cpus) if srv_cpus else 'any'}, "
        f"load generator on {sorted(lg_cpus) if lg_cpus else 'any'}"
        f" ({f'SCHED_FIFO {args.rt}' if args.rt else f'nice {args.nice}'}); "
        f"{args.duration}s per point, {args.runs} run(s); sustained = p99 < {args.p99_ms:g} ms "
        f"and >= {KEEPUP:.0%} delivered; '>=' = the load generator was the limit (a floor)"
    )
    out(
        f"{'server':12} {'clients':>7} {'sustained deliv/s':>18} {'min':>9} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'srv CPU':>8} {'lg CPU':>7} {'srv RSS MiB':>11} {'peak deliv/s':>13} "
        f"{'noise':>6}"
    )
    for (kind, n), res in results.items():
        med, low, floor = sustained(res)
        bests = [r["best"] for r in res["runs"] if r["best"]]
        b = min(bests, key=lambda p: abs(p["delivered_per_s"] - med), default=None)
        pk = max((r["peak"] for r in res["runs"] if r["peak"]), key=lambda p: p["delivered_per_s"])
        pts = [p for r in res["runs"] for p in r["points"]]
        out(
            f"{kind:12} {n:>7} {fmt_sustained(med, floor):>18} {fmt_rate(low):>9} "
            f"{fmt_ms(b['p50_ms'] if b else None):>7} {fmt_ms(b['p99_ms'] if b else None):>7} "
            f"{(b['srv_cpu_pct'] if b else 0):>7.0f}% {(b['lg_cpu_pct'] if b else 0):>6.0f}% "
            f"{(b or pk)['srv_rss'] / 2**20:>11.1f} {fmt_rate(pk['delivered_per_s']):>13} "
            f"{noise(pts):>5.0f}%"
        )

    if args.curve:
        out("")
        out("latency p50/p99 ms by offered load (deliveries/s), median over runs; ")
        out("  '*' = under 95 % delivered, '!' = load generator bound, '-' = never delivered")
        for n in args.clients:
            kinds = [k for k in args.servers if (k, n) in results]
            out(f"{n} clients: " + " | ".join(f"{k:>17}" for k in kinds))
            for load in args.curve:
                cells = []
                for k in kinds:
                    p50, p99, kept, lgb = curve_point(results[(k, n)], load)
                    mark = ("" if kept else "*") + ("!" if lgb else "")
                    cells.append(f"{fmt_ms(p50):>7} /{fmt_ms(p99):>7}{mark:<2}")
                out(f"  {fmt_rate(load):>9}: " + " | ".join(cells))

    pts = [p for res in results.values() for r in res["runs"] for p in r["points"]]
    worst = noise(pts)
    if worst > NOISY_PCT:
        out(
            f"WARNING: other processes used {worst:.0f}% of a core (median over all points, "
            f"'noise'): figures are unreliable; rerun on a quiet machine"
            + (" (the measured processes ran SCHED_FIFO, ahead of them)" if args.rt else ".")
        )

    out("")
    for n in args.clients:
        pyn = sustained(results.get(("pynet", n)))
        for ref in ("redis", "baseline", "pynet-sqlite"):
            if ("pynet", n) in results and (ref, n) in results:
                base = sustained(results[(ref, n)])
                bound = ">=" if pyn[2] and not base[2] else ("~" if pyn[2] else "")
                shown = f"{bound}{pyn[0] / base[0]:.1f}x" if base[0] else "n/a"
                out(
                    f"ratio pynet/{ref} at {n} clients (sustained deliveries/s): {shown} "
                    f"({fmt_sustained(pyn[0], pyn[2])} vs {fmt_sustained(base[0], base[2])})"
                )
    return targets(results, args)


def targets(results: dict[tuple[str, int], dict], args: argparse.Namespace) -> int:
    out = print
    n = 1000 if 1000 in args.clients else max(args.clients)
    if ("pynet", n) not in results:
        out("targets: not evaluated (the pynet server was not run)")
        return 0
    out("")
    out(f"targets (at {n} clients):")
    rows: list[tuple[str, str, bool]] = []
    pyn, _, pfloor = sustained(results[("pynet", n)])
    for ref, want in (("baseline", TARGET_RATIO), ("redis", TARGET_REDIS_RATIO)):
        if (ref, n) in results:
            base = sustained(results[(ref, n)])[0]
            ratio = pyn / base if base else math.nan
            rows.append(
                (
                    f">= {want:g}x {ref}, sustained",
                    f"{'>=' if pfloor else ''}{ratio:.1f}x" if base else f"{ref} sustained nothing",
                    ratio >= want,
                )
            )
    rows.append(
        (
            f">= {fmt_rate(TARGET_DELIVERIES)} deliveries/s, server on one core",
            f"{fmt_sustained(pyn, pfloor)}/s sustained",
            pyn >= TARGET_DELIVERIES,
        )
    )
    if TARGET_DELIVERIES in args.curve:
        _, p99, kept, _ = curve_point(results[("pynet", n)], TARGET_DELIVERIES)
        rows.append(
            (
                f"p99 < {TARGET_P99_MS:g} ms at {fmt_rate(TARGET_DELIVERIES)}/s",
                f"{fmt_ms(p99)} ms" + ("" if kept else " (under 95 % delivered)"),
                p99 is not None and p99 < TARGET_P99_MS and kept,
            )
        )
    if ("redis", n) in results:
        redis_max = sustained(results[("redis", n)])[0]
        for load in args.curve:
            if load > redis_max:
                continue
            _, mine, kept, _ = curve_point(results[("pynet", n)], load)
            _, theirs, _, their_lg = curve_point(results[("redis", n)], load)
            if theirs is None:
                continue
            ok = mine is not None and kept and mine <= TARGET_P99_VS_REDIS * theirs
            rows.append(
                (
                    f"p99 <= {TARGET_P99_VS_REDIS:g}x redis at {fmt_rate(load)}/s",
                    f"{fmt_ms(mine)} vs {fmt_ms(theirs)} ms"
                    + (" (redis point load-generator bound)" if their_lg else ""),
                    ok,
                )
            )
    for name, shown, ok in rows:
        out(f"  {verdict(ok)}  {name:42} {shown}")
    return 0


# ---- arguments ------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Bad input: one line saying what was wrong, exit 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, lo: float, what: str, inclusive: bool = True) -> Any:
    def conv(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if math.isnan(value) or value < lo or (not inclusive and value == lo):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return conv


def _list(item: Any, what: str) -> Any:
    def conv(text: str) -> list:
        parts = [x.strip() for x in text.split(",") if x.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return [item(x) for x in parts]

    return conv


def _server(text: str) -> str:
    if text not in SERVER_KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown server {text!r} (expected some of {', '.join(SERVER_KINDS)})"
        )
    return text


POS_INT = _number(int, 1, "a positive integer")
POS_FLOAT = _number(float, 0, "a positive number", inclusive=False)
NONNEG_FLOAT = _number(float, 0, "a number >= 0")
NONNEG_INT = _number(int, 0, "an integer >= 0")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="chat_load", description=__doc__.splitlines()[0])
    p.add_argument(
        "--clients",
        type=_list(POS_INT, "comma-separated positive integers"),
        default=[100, 1000, 10000],
        help="comma-separated client counts (default 100,1000,10000)",
    )
    p.add_argument(
        "--servers",
        type=_list(_server, "comma-separated server names"),
        default=["pynet", "pynet-sqlite", "redis", "baseline"],
        help=f"comma-separated, from: {', '.join(SERVER_KINDS)} (default: all)",
    )
    p.add_argument(
        "--curve",
        type=_list(POS_FLOAT, "comma-separated positive loads"),
        default=[float(x) for x in DEFAULT_CURVE.split(",")],
        help=f"fixed offered loads (deliveries/s) for the latency curve (default {DEFAULT_CURVE})",
    )
    p.add_argument("--no-curve", action="store_true", help="skip the latency curve")
    p.add_argument("--runs", type=POS_INT, default=3, help="runs per server and client count")
    p.add_argument("--duration", type=POS_FLOAT, default=2.0, help="measured seconds per point")
    p.add_argument("--warmup", type=NONNEG_FLOAT, default=0.5, help="unmeasured seconds per point")
    p.add_argument(
        "--drain", type=POS_FLOAT, default=4.0, help="max seconds to wait for stragglers"
    )
    p.add_argument(
        "--max-steps", type=POS_INT, default=14, help="search points per run (retries included)"
    )
    p.add_argument(
        "--start",
        type=POS_FLOAT,
        default=100_000,
        help="first offered load of the search, deliveries/s (broadcasts/s x clients)",
    )
    p.add_argument("--senders", type=POS_INT, default=10, help="clients that send the broadcasts")
    p.add_argument("--payload", type=NONNEG_INT, default=32, help="padding bytes per broadcast")
    p.add_argument(
        "--round-ms",
        type=NONNEG_FLOAT,
        default=0.0,
        help="load generator: minimum time between receive rounds (batches reads)",
    )
    p.add_argument(
        "--retries",
        type=NONNEG_INT,
        default=1,
        help="extra runs of a failing point before it counts as failed",
    )
    p.add_argument(
        "--nice",
        type=_number(int, -20, "a nice value from -20 to 19"),
        default=default_nice(),
        help="nice value for the server and load generator (default -10 as root: "
        "keeps them ahead of other work on a shared machine; 0 to leave as is)",
    )
    p.add_argument(
        "--rt",
        type=_number(int, 0, "a priority from 0 to 99"),
        default=0,
        metavar="PRIO",
        help="run the server and load generator SCHED_FIFO at this priority (needs root): "
        "cleaner figures on a busy shared machine, at the neighbours' expense; 0 = off",
    )
    p.add_argument(
        "--p99-ms",
        type=POS_FLOAT,
        default=SEARCH_P99_MS,
        help="a sustained point also needs p99 under this (default %(default)g ms)",
    )
    p.add_argument("--json", metavar="PATH", help="also write every point as JSON")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: short points, one run, few steps (figures are rough)",
    )
    args = p.parse_args(argv)
    if args.nice > 19:
        p.error(f"argument --nice: {args.nice} is not a nice value from -20 to 19")
    if args.rt > 99:
        p.error(f"argument --rt: {args.rt} is not a priority from 0 to 99")
    args.curve = [] if args.no_curve else sorted(set(args.curve))
    if args.quick:
        args.duration = min(args.duration, 0.5)
        args.warmup = min(args.warmup, 0.2)
        args.drain = min(args.drain, 2.0)
        args.max_steps = min(args.max_steps, 3)
        args.retries = 0
        args.runs = 1
    args.clients = list(dict.fromkeys(args.clients))
    args.servers = list(dict.fromkeys(args.servers))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "redis" in args.servers and redis_server() is None:
        print(f"chat_load: {REDIS_INSTALL}", file=sys.stderr)
        return 1
    limit = raise_nofile()
    need = max(args.clients) + args.senders + 100
    if need > limit:
        print(
            f"chat_load: --clients {max(args.clients)} needs ~{need} open files, the limit is "
            f"{limit} (raise the hard limit: ulimit -Hn, or /etc/security/limits.conf)",
            file=sys.stderr,
        )
        return 1
    cpus = cpu_plan()
    pin_self(cpus[1])  # keep this (mostly sleeping) driver off the server's core
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.monotonic()
    results: dict[tuple[str, int], dict] = {}
    try:
        for n in args.clients:
            for kind in args.servers:
                results[(kind, n)] = run_server(kind, n, args, cpus)
    except RuntimeError as exc:
        print(f"chat_load: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
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
