"""Ctrl-C ends `fab logs --follow` within a bounded time, whatever the SSH library does.

An end-to-end run kept `fab logs --follow` alive for more than 15 s after SIGINT: the run was
a background job, whose SIGINT comes in ignored, so Python never raised KeyboardInterrupt.
These pin the bound with the worst cases made certain: a reader that never returns, a
connection whose close never returns, SIGINT ignored at start, and SIGTERM.
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

    if sys.argv[1] == "signal-while-starting":  # the second thread never starts
        import os, signal
        real, starts = threading.Thread.start, []
        def start(self):
            starts.append(self)
            if len(starts) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here, before the thread is started
            real(self)
        threading.Thread.start = start

    _follow_all([SimpleNamespace(conn=Conn(), label="admin@h:22")] * 2, one)
    """
)


@pytest.mark.parametrize(
    ("case", "sig", "ignored"),
    [
        ("stuck-close", signal.SIGINT, False),
        ("stuck-reader", signal.SIGINT, False),
        # Started with SIGINT ignored (a background job of a non-interactive shell, as some CI
        # runners start steps): Ctrl-C must end it all the same.
        ("stuck-reader", signal.SIGINT, True),
        ("stuck-close", signal.SIGTERM, False),  # how a CI runner stops a step
    ],
    ids=["ctrl-c-stuck-close", "ctrl-c-stuck-reader", "ctrl-c-ignored-at-start", "sigterm"],
)
def test_a_signal_ends_follow_within_a_bound(case: str, sig: int, ignored: bool) -> None:
    def start() -> None:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, case],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=start,  # only sets a signal disposition
    )
    assert proc.stdout is not None
    assert "following" in proc.stdout.readline()
    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 128 + sig  # 130 after Ctrl-C, 143 after SIGTERM
    assert time.monotonic() - started < 8  # the 5 s bound, plus start-up slack


def test_a_signal_while_the_threads_start_ends_follow_all_the_same() -> None:
    """SIGTERM came while a thread was being started (a fresh-clone CI run caught it): the
    thread never started, and joining it raised instead of exiting 143."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "signal-while-starting"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr
