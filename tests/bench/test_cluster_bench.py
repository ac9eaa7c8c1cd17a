"""bench/cluster_bench.py runs end to end on a tiny load (two servers, a real redis-server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_bench_smoke() -> None:
    argv = [sys.executable, "-m", "bench.cluster_bench", "--clients", "20", "--rates", "20"]
    argv += ["--warmup", "0.3", "--duration", "0.5", "--cross-rate", "100", "--p99-ms", "5000"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "two servers + redis" in proc.stdout
    assert "pair / single:" in proc.stdout, proc.stdout
    assert "cross-host at" in proc.stdout
    assert "p99 lost" not in proc.stdout  # every sampled broadcast arrived on the other host
