"""bench/plot.py draws its pictures from small fixed data files: each PNG is a real image of the
expected size, and the figures carry the axes, labels and points of the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy
import pytest
from matplotlib.patches import Rectangle

from bench import plot

REPO = Path(__file__).resolve().parents[2]

CHAT_LOAD: dict[str, Any] = {
    "date": "2026-12-01",
    "command": "python -m bench.chat_load --quick",
    "results": [
        {
            "server": server,
            "clients": n,
            "sustained": rate,
            "sustained_min": rate,
            "floor": server == "pynet",
            "curve": [
                {"offered": 5e4, "p50_ms": 1.0, "p99_ms": 2.0, "kept_up": True, "lg_bound": False},
                {"offered": 1e5, "p50_ms": 2.0, "p99_ms": p99, "kept_up": kept, "lg_bound": False},
            ],
        }
        for server, n, rate, p99, kept in (
            ("pynet", 100, 5e6, 3.0, True),
            ("redis", 100, 2e6, 4.0, True),
            ("pynet", 1000, 8e6, 9.0, True),
            ("redis", 1000, 1e6, 90.0, False),
        )
    ],
}
HANDOVER = {
    "date": "d",
    "command": "c",
    "target_ms": 100,
    "runs": [{"clients": 100, "longest_pause_ms": 20}, {"clients": 1000, "longest_pause_ms": 80}],
}
DEPLOY = {
    "date": "d",
    "command": "c",
    "steps": [
        {"step": "first deploy", "handover_s": [10.0], "restart_s": [11.0]},
        {"step": "code-only deploy", "handover_s": [4.0, 5.0], "restart_s": [4.5]},
    ],
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name, content in (
        ("chat_load.json", CHAT_LOAD),
        ("handover.json", HANDOVER),
        ("deploy.json", DEPLOY),
    ):
        (folder / name).write_text(json.dumps(content))
    return folder


def test_the_command_writes_every_png_at_its_size(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.plot", "--data", str(data), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    expected = {"throughput.png", "latency.png", "handover.png", "deploy.png"}
    assert {p.name for p in out.iterdir()} == expected
    width, height = (int(v * plot.DPI) for v in plot.SIZE)
    for name in expected:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[:2] == (height, width), name
        assert pixels.std() > 0.05, f"{name} is blank"


def test_the_latency_figure_has_a_panel_per_client_count() -> None:
    fig = plot.latency(CHAT_LOAD)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["100 clients", "1,000 clients"]
    assert axes[0].get_ylabel() == "p99 latency (ms)"
    assert all(ax.get_xlabel() == "offered deliveries/s" for ax in axes)
    assert all(ax.get_xscale() == "log" for ax in axes)
    lines = {
        line.get_label(): numpy.asarray(line.get_ydata()).tolist() for line in axes[1].get_lines()
    }
    assert lines == {"PyNet": [2.0, 9.0], "Redis (pub/sub)": [2.0, 90.0]}
    # The point Redis did not keep up with is marked (a hollow circle over it).
    [short] = [c for c in axes[1].collections if len(numpy.asarray(c.get_offsets()))]
    assert numpy.asarray(short.get_offsets()).tolist() == [[1e5, 90.0]]


def test_the_throughput_figure_has_a_bar_per_server_and_count() -> None:
    fig = plot.throughput(CHAT_LOAD)
    [ax] = fig.axes
    assert ax.get_ylabel() == "sustained deliveries/s"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100 clients", "1,000 clients"]
    heights = sorted(bar.get_height() for bar in ax.patches if isinstance(bar, Rectangle))
    assert heights == [1e6, 2e6, 5e6, 8e6]
    labels = {t.get_text() for t in ax.texts}
    assert {">=5.0M", ">=8.0M", "2.0M", "1.0M"} <= labels


def test_the_handover_and_deploy_figures() -> None:
    [ax] = plot.handover(HANDOVER).axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("connected clients", "pause (ms)")
    [points] = ax.collections
    assert numpy.asarray(points.get_offsets()).tolist() == [[100, 20], [1000, 80]]
    [ax] = plot.deploy(DEPLOY).axes
    assert ax.get_xlabel() == "seconds"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["first deploy", "code-only deploy"]
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()][::2] == [
        "with the handover (worst)",
        "before (restart) (worst)",
    ]


def test_a_deploy_file_names_its_own_ways() -> None:
    named = {
        **DEPLOY,
        "series": [{"key": "made_s", "label": "code layer made here"}],
        "steps": [{"step": "code-only deploy", "made_s": [1.5, 1.7]}],
    }
    [ax] = plot.deploy(named).axes
    worst, best = ax.containers
    assert [bar.get_width() for bar in worst] == [1.7]
    assert [bar.get_width() for bar in best] == [1.5]
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        "code layer made here (worst)",
        "code layer made here (best)",
    ]


def test_chat_load_json_becomes_the_data_file(tmp_path: Path) -> None:
    """What `bench.chat_load --json` writes (JSON made the curve's keys strings)."""
    point = {"p50_ms": 1.0, "p99_ms": 2.0, "delivered_per_s": 49_000.0, "offered": 50_000.0}
    raw = [
        {
            "kind": "pynet",
            "clients": 100,
            "runs": [
                {
                    "best": {"delivered_per_s": 4e6},
                    "floor": False,
                    "curve": {"50000.0": {**point, "lg_bound": False}},
                },
                {
                    "best": {"delivered_per_s": 6e6},
                    "floor": True,
                    "curve": {"50000.0": {**point, "p99_ms": 4.0, "lg_bound": True}},
                },
            ],
        }
    ]
    data = plot.from_chat_load(json.loads(json.dumps(raw)), "cmd", "today")
    [result] = data["results"]
    assert (result["server"], result["clients"]) == ("pynet", 100)
    assert (result["sustained"], result["sustained_min"], result["floor"]) == (5e6, 4e6, True)
    assert result["curve"] == [
        {
            "offered": 50_000.0,
            "p50_ms": 1.0,
            "p99_ms": 3.0,
            "delivered": 49_000.0,
            "kept_up": True,
            "lg_bound": True,
        }
    ]
    plot.latency(data)  # and it draws


def test_the_committed_pictures_are_drawn_from_the_committed_data(tmp_path: Path) -> None:
    """bench/README.md shows bench/data/*.png: they are what bench.plot draws from the data."""
    written = plot.draw(plot.DATA, tmp_path)
    assert {p.name for p in written} == set(plot.FIGURES)
    for path in written:
        committed = plot.DATA / path.name
        assert committed.is_file(), f"{committed} missing: run python -m bench.plot"
        assert matplotlib.image.imread(committed).shape == matplotlib.image.imread(path).shape


def test_a_missing_data_folder_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.plot", "--data", str(tmp_path / "none")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"bench.plot: no data files in {tmp_path / 'none'}"]


def test_handover_bench_runs_become_the_data_file(tmp_path: Path) -> None:
    from bench.handover_bench import record_run

    path = tmp_path / "handover.json"
    record_run(path, {"clients": 100, "longest_pause_ms": 30})
    record_run(path, {"clients": 3000, "longest_pause_ms": 140})
    data = json.loads(path.read_text())
    assert data["target_ms"] == 100
    assert [run["clients"] for run in data["runs"]] == [100, 3000]
    [ax] = plot.handover(data).axes
    assert numpy.asarray(ax.collections[0].get_offsets()).tolist() == [[100, 30], [3000, 140]]
