"""Smoke tests for the benchmark scripts in bench/: they run with tiny parameters, print their
figures and exit 0. They check the scripts work, not how fast anything is."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(*argv: str, timeout: float = 150) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.timeout(180)
def test_chat_load_against_the_baseline_prints_its_figures() -> None:
    out = run_bench(
        "bench.chat_load",
        "--quick",
        "--servers",
        "baseline",
        "--clients",
        "20",
        "--start",
        "2000",
        "--max-steps",
        "2",
    )
    assert "sustained deliv/s" in out
    assert "baseline      20" in out


@pytest.mark.timeout(180)
def test_chat_load_compares_pynet_with_the_baseline() -> None:
    out = run_bench(
        "bench.chat_load",
        "--quick",
        "--clients",
        "20",
        "--start",
        "2000",
        "--max-steps",
        "2",
        "--fixed",
        "2000",
    )
    assert "pynet         20" in out
    assert "ratio pynet/baseline at 20 clients" in out
    assert "targets (at 20 clients):" in out
    assert out.count("PASS") + out.count("MISS") == 3


@pytest.mark.timeout(180)
def test_idle_connections_prints_rss_per_connection() -> None:
    out = run_bench("bench.idle_connections", "-n", "50", "--quick", "--servers", "pynet,baseline")
    assert "per conn KiB" in out
    assert "baseline connected       50" in out
    assert out.count("target: ") == 2


@pytest.mark.timeout(60)
def test_baseline_server_speaks_enough_of_the_protocol() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.baseline_threaded",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "baseline server did not start"
                time.sleep(0.05)
        with conn, conn.makefile("rwb") as f:
            assert f.readline().startswith(b"HELLO ")
            f.write(b"/nick ann\n")
            f.flush()
            assert f.readline() == b"OK nick ann\n"
            f.write(b"hello world\r\n")
            f.flush()
            assert f.readline() == b"MSG 1 ann hello world\n"
    finally:
        proc.terminate()
        proc.wait(10)
