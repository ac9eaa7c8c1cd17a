"""Ctrl-C ends `fab logs --follow` within a bounded time, whatever the SSH library does.

A flaky end-to-end run once kept `fab logs --follow` alive for more than 15 s after SIGINT;
these pin the bound with the worst cases made certain: a reader that never returns and a
connection whose close never returns.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.deploy.fakes import REPO

SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from types import SimpleNamespace
    from pynet.tasks.release import _follow_all

    forever = threading.Event()

    class Conn:
        user, host, port, connect_timeout = "admin", "h", 22, 5
        def close(self):
            forever.wait() if sys.argv[1] == "stuck-close" else None

    def one(target):
        print("following", flush=True)
        forever.wait()  # a journal that never ends, a read the close does not wake
        return True

    _follow_all([SimpleNamespace(conn=Conn(), label="admin@h:22")] * 2, one)
    """
)


@pytest.mark.parametrize("case", ["stuck-close", "stuck-reader"])
def test_ctrl_c_ends_follow_within_a_bound(case: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, case], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert "following" in proc.stdout.readline()
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 130  # Ctrl-C's conventional status
    assert time.monotonic() - started < 8  # the 5 s bound, plus start-up slack
