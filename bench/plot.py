"""Draw the benchmark figures from their data files: `python -m bench.plot`.

The benchmarks' results are kept as small JSON files in bench/data/ (what bench/README.md's
tables say, with the date and the command that measured them); this script turns them into the
PNGs bench/README.md shows first:

- `throughput.png`: sustained deliveries/s, PyNet and Redis, at 100, 1,000 and 10,000 clients;
- `latency.png`: p99 against offered load at each client count (one panel each);
- `handover.png`: the longest pause clients saw in a handover, against the client count;
- `deploy.png`: a deploy's steps, timed, with the handover and before it (restart).

`python -m bench.plot --from-chat-load RAW.json` first turns what `bench.chat_load --json RAW.json`
wrote (every run and point) into bench/data/chat_load.json, so a new measurement becomes a new
picture in one command. Matplotlib draws without a display (the Agg backend).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SIZE = (9.0, 4.5)  # inches
DPI = 100  # so a picture is 900 x 450 pixels
COLORS = {"pynet": "#1f77b4", "redis": "#d62728", "pynet-sqlite": "#2ca02c", "baseline": "#7f7f7f"}
LABELS = {"pynet": "PyNet", "redis": "Redis (pub/sub)", "pynet-sqlite": "PyNet + SQLite"}
KEEPUP = 0.95  # bench.chat_load's "kept up": delivered >= 95 % of offered


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench.plot: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"bench.plot: {path} is not a JSON object")
    return data


def _footer(fig: Figure, data: dict[str, Any]) -> None:
    fig.text(
        0.01,
        0.01,
        f"{data.get('date', '')}: {data.get('command', '')}",
        fontsize=7,
        color="#555555",
    )


def throughput(data: dict[str, Any]) -> Figure:
    """Grouped bars: sustained deliveries/s per server at each client count (log scale)."""
    results = data["results"]
    counts = sorted({r["clients"] for r in results})
    servers = list(dict.fromkeys(r["server"] for r in results))
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        xs, ys, floors = [], [], []
        for j, n in enumerate(counts):
            found = [r for r in results if r["server"] == server and r["clients"] == n]
            if found:
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                ys.append(found[0]["sustained"])
                floors.append(found[0].get("floor", False))
        bars = ax.bar(xs, ys, width, label=LABELS.get(server, server), color=COLORS.get(server))
        for bar, value, floor in zip(bars, ys, floors, strict=True):
            ax.annotate(
                f"{'>=' if floor else ''}{value / 1e6:.1f}M",
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_yscale("log")
    ax.set_xticks(range(len(counts)), [f"{n:,} clients" for n in counts])
    ax.set_ylabel("sustained deliveries/s")
    ax.set_title("Broadcast throughput, one server core ('>=': the load generator was the limit)")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    _footer(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def latency(data: dict[str, Any]) -> Figure:
    """p99 against offered load, one panel per client count; hollow = under 95 % delivered."""
    results = data["results"]
    counts = sorted({r["clients"] for r in results})
    fig, axes = plt.subplots(1, len(counts), figsize=SIZE, dpi=DPI, sharey=False, squeeze=False)
    for ax, n in zip(axes[0], counts, strict=True):
        for r in (r for r in results if r["clients"] == n):
            points = [p for p in r["curve"] if p.get("p99_ms") is not None]
            color = COLORS.get(r["server"])
            ax.plot(
                [p["offered"] for p in points],
                [p["p99_ms"] for p in points],
                marker="o",
                color=color,
                label=LABELS.get(r["server"], r["server"]),
            )
            short = [p for p in points if not p.get("kept_up", True)]
            ax.scatter(
                [p["offered"] for p in short],
                [p["p99_ms"] for p in short],
                s=80,
                facecolors="white",
                edgecolors=color,
                zorder=3,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{n:,} clients")
        ax.set_xlabel("offered deliveries/s")
        ax.grid(which="both", alpha=0.3)
    axes[0][0].set_ylabel("p99 latency (ms)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Latency against offered load (hollow: under 95 % delivered)", fontsize=10)
    _footer(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def handover(data: dict[str, Any]) -> Figure:
    """The longest pause per run of handovers, against the client count, and the target."""
    runs = data["runs"]
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    ax.scatter(
        [r["clients"] for r in runs],
        [r["longest_pause_ms"] for r in runs],
        color=COLORS["pynet"],
        label="longest pause in a run of handovers",
        zorder=3,
    )
    counts = sorted({r["clients"] for r in runs})
    medians = [
        statistics.median(r["longest_pause_ms"] for r in runs if r["clients"] == n) for n in counts
    ]
    ax.plot(counts, medians, color=COLORS["pynet"], alpha=0.5)
    if "target_ms" in data:
        ax.axhline(data["target_ms"], color="#555555", linestyle="--", label="target")
    ax.set_xscale("log")
    ax.set_xlim(min(counts) / 3, max(counts) * 3)
    ax.set_ylim(0, max([*medians, data.get("target_ms", 0)]) * 1.3)
    ax.set_xlabel("connected clients")
    ax.set_ylabel("pause (ms)")
    ax.set_title("Handover: the pause connected clients see (none are cut)")
    ax.legend()
    ax.grid(alpha=0.3)
    _footer(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


#: The two ways a deploy was compared when the data file does not name its own (`series`).
DEPLOY_SERIES = [
    {"key": "handover_s", "label": "with the handover"},
    {"key": "restart_s", "label": "before (restart)"},
]


def deploy(data: dict[str, Any]) -> Figure:
    """Each step of a deploy, timed: ranges (worst and best of the runs), one bar per way of
    deploying (the data's `series`: the first is the one measured, the others what it is
    compared with)."""
    steps = data["steps"]
    series = data.get("series") or DEPLOY_SERIES
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    height = 0.7 / len(series)
    for k, way in enumerate(series):
        key, label = way["key"], way["label"]
        color = COLORS["pynet"] if k == 0 else COLORS["baseline"]
        ys = [i - 0.35 + height * (k + 0.5) for i in range(len(steps))]
        highs = [max(s[key]) for s in steps]
        lows = [min(s[key]) for s in steps]
        ax.barh(ys, highs, height=height, color=color, alpha=0.35, label=f"{label} (worst)")
        ax.barh(ys, lows, height=height, color=color, label=f"{label} (best)")
        for y, high in zip(ys, highs, strict=True):
            ax.annotate(
                f"{high:g} s", (high, y), xytext=(3, -3), textcoords="offset points", fontsize=8
            )
    ax.set_yticks(range(len(steps)), [s["step"] for s in steps])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Deploys on a local EC2-like host")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    _footer(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


#: picture -> (data file, how it is drawn)
FIGURES = {
    "throughput.png": ("chat_load.json", throughput),
    "latency.png": ("chat_load.json", latency),
    "handover.png": ("handover.json", handover),
    "deploy.png": ("deploy.json", deploy),
}


def draw(data_dir: Path, out_dir: Path) -> list[Path]:
    """Every picture whose data file exists in DATA_DIR, written to OUT_DIR."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (source, drawer) in FIGURES.items():
        path = data_dir / source
        if not path.is_file():
            continue
        fig = drawer(load(path))
        fig.savefig(out_dir / name, dpi=DPI)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def from_chat_load(raw: list[dict[str, Any]], command: str = "", date: str = "") -> dict:
    """bench.chat_load's --json output (every run and point) as the data file plots read:
    per server and client count the median sustained figure, and the median of each curve
    point over the runs, as chat_load's own summary computes them."""
    from bench.chat_load import curve_point, sustained

    results = []
    for res in raw:
        for run in res["runs"]:  # JSON made the curve's float keys strings
            run["curve"] = {float(k): v for k, v in run.get("curve", {}).items()}
        med, low, floor = sustained(res)
        loads = sorted({load for run in res["runs"] for load in run["curve"]})
        curve = []
        for load in loads:
            p50, p99, kept, lg = curve_point(res, load)
            delivered = [
                run["curve"][load]["delivered_per_s"] for run in res["runs"] if load in run["curve"]
            ]
            curve.append(
                {
                    "offered": load,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "delivered": statistics.median(delivered),
                    "kept_up": kept,
                    "lg_bound": lg,
                }
            )
        results.append(
            {
                "server": res["kind"],
                "clients": res["clients"],
                "sustained": med,
                "sustained_min": low,
                "floor": floor,
                "curve": curve,
            }
        )
    return {"what": "bench.chat_load", "date": date, "command": command, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the data files")
    parser.add_argument("--out", type=Path, default=DATA, help="folder to write the PNGs to")
    parser.add_argument(
        "--from-chat-load",
        type=Path,
        metavar="RAW",
        help="first turn `bench.chat_load --json RAW` output into DATA/chat_load.json",
    )
    parser.add_argument("--date", default="", help="with --from-chat-load: when it was measured")
    parser.add_argument("--command", default="", help="with --from-chat-load: what was run")
    args = parser.parse_args(argv)
    if args.from_chat_load:
        raw = json.loads(args.from_chat_load.read_text(encoding="utf-8"))
        converted = from_chat_load(raw, args.command, args.date)
        args.data.mkdir(parents=True, exist_ok=True)
        (args.data / "chat_load.json").write_text(json.dumps(converted, indent=1) + "\n")
    written = draw(args.data, args.out)
    if not written:
        print(f"bench.plot: no data files in {args.data}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
