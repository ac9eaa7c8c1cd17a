"""What users notice when a release switches: the handover against a plain restart.

    .venv/bin/python -m bench.handover_bench [--clients 1000] [--rate 1000] [--switches 10]
                                         [--cluster]

Server processes on 127.0.0.1 (no Docker: this measures the mechanism, not the host around it),
each with a SQLite history. A live load (pynet/local/load.py: connected clients, a sender at
RATE broadcasts/s, a connect every 10 ms) runs while SWITCHES releases take over one after the
other through the handover socket. Printed: refused connects, sessions cut, lines lost, and the
longest silence any client saw (measured by a few clients in a process of their own,
pynet/local/watch.py, so the load generator's lag is not counted as the server's), split into
the silences that span a switch's pause and the others (a pre-copy's, the steady load's); then the
same load across one plain restart (stop, then start: what the unit did before the handover) as
the baseline. With `--cluster`, every release is a host of a cluster on a redis-server of its
own (Debian's). Targets: 0 refused, 0 cut, 0 lost, longest pause under 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from bench._common import HOST, start_server
from pynet.local import chat_server
from pynet.local.load import LiveLoad, Report
from pynet.local.watch import Watch

ROOT = Path(__file__).resolve().parents[1]
PAUSE_TARGET = 0.100
STEADY = 3.0
"""Seconds of the same load without a switch, measured first."""


class Release:
    """`python -m chat.server` with a handover socket, its log in a file."""

    started: ClassVar[list[Release]] = []
    """Every release started, so none outlives the bench however it ends."""
    extra: ClassVar[list[str]] = []
    """Arguments every release gets (`--backplane URL` with `--cluster`)."""

    def __init__(self, work: Path, name: str, port: int) -> None:
        self.log = work / f"{name}.log"
        Release.started.append(self)
        self.proc = chat_server.start(
            "--release",
            name,
            "--handover-socket",
            str(work / "run" / "handover.sock"),
            "--history",
            str(work / "history.sqlite3"),
            "--rate",
            "0",
            "--max-per-address",
            "0",
            *Release.extra,
            port=port,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        sys.exit(f"{self.log.name}: no {text!r} within {timeout:.0f} s:\n{self.log.read_text()}")

    @property
    def port(self) -> int:
        return int(self.wait_for("listen=").split("listen=")[1].split()[0].rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @classmethod
    def stop_all(cls) -> None:
        for release in cls.started:
            release.stop()


def raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def switch_record(work: Path, release: str, timeout: float = 10) -> dict[str, Any]:
    """RELEASE's switch record (it logs the switch a moment before it writes the file)."""
    path = work / "run" / "last-switch.json"
    deadline = time.monotonic() + timeout
    while True:
        record = json.loads(path.read_text())
        if record.get("release") == release or time.monotonic() > deadline:
            return dict(record)
        time.sleep(0.01)


def handovers(
    work: Path, clients: int, rate: float, switches: int
) -> tuple[Report, list[float], dict[str, object], list[tuple[str, str, float]]]:
    first = Release(work, "r0", 0)
    port = first.port
    load = LiveLoad("127.0.0.1", port, clients=clients, sampled=20, rate=rate, prefix="h").start()
    time.sleep(1.0)
    # The same load with no switch first: how long this machine's fan-out keeps a client waiting
    # anyway (with 10,000 clients, one round of writes is that long), for the pause to be
    # compared with.
    steady = Watch("127.0.0.1", port)
    time.sleep(STEADY)
    quiet = steady.stop()
    watch = Watch("127.0.0.1", port)
    time.sleep(1.0)
    serving, took, laps = first, [], []
    for n in range(1, switches + 1):
        new = Release(work, f"r{n}", port)
        new.wait_for("switch ")
        record = switch_record(work, f"r{n}")
        if record.get("how") != "handover":
            sys.exit(f"release r{n} did not take over: {record}")
        took.append(float(record["ms"]))
        if serving.proc.wait(15) != 99:
            sys.exit(f"r{n - 1} did not exit as handed over")
        gave = serving.wait_for("handover gave ").split(" ms=", 1)[1]
        took_ = new.wait_for("handover took ").split("handover took ", 1)[1]
        laps.append((gave, took_, float(record["time"])))
        serving = new
        time.sleep(1.0)
    verdict = watch.stop()
    report = load.stop()
    serving.stop()
    verdict["steady"] = quiet["longest_pause"]
    return report, took, verdict, laps


def split_silences(
    gaps: list[tuple[float, float]], laps: list[tuple[str, str, float]]
) -> tuple[list[float], float]:
    """The longest of GAPS (when each ended, its length) that overlaps each switch's pause (the
    successor's `paused_ms`, up to its switch record's time), and the longest of the others."""
    windows = []
    for _, took, at in laps:
        paused = float(took.split("paused_ms=", 1)[1].split()[0]) / 1000
        windows.append((at - paused, at))
    across = [0.0] * len(windows)
    elsewhere = 0.0
    for ended, gap in gaps:
        hit = [i for i, (begin, end) in enumerate(windows) if ended - gap < end and ended > begin]
        for i in hit:
            across[i] = max(across[i], gap)
        if not hit:
            elsewhere = max(elsewhere, gap)
    return across, elsewhere


def restart(work: Path, clients: int, rate: float) -> Report:
    """The baseline: the old release stops (BYE restarting), then the new one starts."""
    old = Release(work, "s0", 0)
    port = old.port
    load = LiveLoad("127.0.0.1", port, clients=clients, sampled=20, rate=rate, prefix="s").start()
    time.sleep(1.0)
    old.stop()
    new = Release(work, "s1", port)
    new.wait_for("switch ")
    time.sleep(1.0)
    report = load.stop(drain=1.0)
    new.stop()
    return report


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a number above 0, or one line saying what was wrong."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def record_run(path: Path, run: dict[str, object]) -> None:
    """Add RUN to the data file at PATH (made if missing): what `python -m bench.plot` draws."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("what", "bench.handover_bench: the longest pause clients saw in a run")
    data.setdefault("command", "python -m bench.handover_bench --json PATH")
    data.setdefault("target_ms", round(PAUSE_TARGET * 1000))
    data.setdefault("runs", []).append(run)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=positive(int), default=1000)
    parser.add_argument("--rate", type=positive(float), default=1000.0, help="broadcasts/s")
    parser.add_argument("--switches", type=positive(int), default=10)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="every release on a Redis backplane (a redis-server on a free port of 127.0.0.1)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="work in DIR (made if missing) and keep the releases' logs there",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        help="also add this run to PATH (the `runs` of bench/data/handover.json, for bench.plot)",
    )
    args = parser.parse_args(argv)
    raise_file_limit()
    try:
        return run(args)
    finally:
        Release.stop_all()


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if args.cluster:
            redis = start_server("redis", None)
            stack.callback(redis.stop)
            Release.extra = ["--backplane", f"redis://{HOST}:{redis.port}/0"]
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pynet-handover-")))
        (work / "run").mkdir(mode=0o700, exist_ok=True)
        report, took, verdict, laps = handovers(work, args.clients, args.rate, args.switches)
        pause = float(str(verdict["longest_pause"]))
        print(f"handover x{args.switches}: {report.summary()}")
        print(
            f"  longest pause seen by 5 watching clients in a process of their own: "
            f"{pause * 1000:.0f} ms (the load generator's figure above adds its own lag: "
            f"one Python thread reads all {args.clients} clients)"
        )
        for line in (report.refusals + report.cut + report.lost + report.duplicated)[:5]:
            print(f"    {line}")
        took.sort()
        print(
            f"  successor's takeover (connect to serving): min {took[0]:.0f} ms, "
            f"median {took[len(took) // 2]:.0f} ms, max {took[-1]:.0f} ms"
        )
        steady = float(str(verdict["steady"]))
        print(
            f"  the same load for {STEADY:.0f} s without a switch, watched the same way: longest "
            f"silence {steady * 1000:.0f} ms (the handovers added "
            f"{max(0.0, pause - steady) * 1000:.0f} ms to it)"
        )
        print(
            "  where each handover's time went (ms; the predecessor's laps, then the successor's):"
        )
        for gave, took_, _ in laps:
            print(f"    gave {gave}")
            print(f"    took {took_}")
        gaps: list[tuple[float, float]] = verdict["gaps"]  # type: ignore[assignment]
        print("  the longest silences, and when they ended (ms after the nearest switch):")
        for ended, gap in gaps[:5]:
            nearest = min((ended - at for _, _, at in laps), key=abs)
            print(f"    {gap * 1000:.0f} ms, ended {nearest * 1000:+.0f} ms")
        across, elsewhere = split_silences(gaps, laps)
        print(
            "  the longest silence a watching client saw across each handover (it spans the "
            "successor's pause): " + ", ".join(f"{gap * 1000:.0f} ms" for gap in across)
        )
        print(
            f"  and anywhere else in the run (the pre-copies included): {elsewhere * 1000:.0f} ms"
        )
        os.unlink(work / "history.sqlite3")
        base = restart(work, args.clients, args.rate)
        print(f"restart baseline: {base.summary()}")
    targets = {
        "0 refused": report.refused == 0,
        "0 cut": not report.cut,
        "0 lost": not report.lost and not report.duplicated and not report.out_of_order,
        f"longest pause < {PAUSE_TARGET * 1000:.0f} ms": pause < PAUSE_TARGET,
    }
    for name, met in targets.items():
        print(f"  target {name}: {'met' if met else 'MISSED'}")
    if args.json:
        record_run(
            args.json,
            {
                "clients": args.clients,
                "rate": args.rate,
                "switches": args.switches,
                "longest_pause_ms": round(pause * 1000),
                "across_switch_ms": round(max(across) * 1000),
                "steady_ms": round(steady * 1000),
                "refused": report.refused,
                "cut": len(report.cut),
                "lost": len(report.lost),
                "date": time.strftime("%Y-%m-%d"),
            },
        )
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
