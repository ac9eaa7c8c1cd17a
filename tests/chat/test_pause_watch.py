"""The pause watcher (pynet/local/watch.py) against a real server: what it reports is what
happened on the wire."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from pynet.local.watch import NOTED, Watch
from tests.chat.fakes import LineClient, ServerProcess


def test_it_reports_the_longest_silence_between_lines(
    start_server: Callable[..., ServerProcess], clients: Callable[..., LineClient]
) -> None:
    server = start_server("--rate", "0")
    watch = Watch("127.0.0.1", server.port, clients=2)
    sender = clients(server.port, "sender")
    for n in range(5):
        sender.send(f"tick {n}")
        time.sleep(0.05)
    time.sleep(0.4)  # the silence to be measured
    sender.send("tick 5")
    sender.until("MSG 6")
    time.sleep(0.1)  # let the watchers read it before their stdin closes
    verdict = watch.stop()
    assert verdict["lines"] == [6, 6]
    pause = verdict["longest_pause"]
    assert isinstance(pause, float)
    assert 0.4 <= pause < 1.0
    gaps = verdict["gaps"]
    assert isinstance(gaps, list)
    assert gaps[0][1] == pause  # longest first, with the wall-clock time it ended
    assert abs(gaps[0][0] - time.time()) < 5
    assert all(gap >= NOTED for _, gap in gaps)
    assert len(gaps) >= 4  # each watcher's 50 ms silences between the ticks too


def test_bad_arguments_get_the_usage_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pynet.local.watch", "127.0.0.1", "port"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m pynet.local.watch")
    assert "Traceback" not in result.stderr
