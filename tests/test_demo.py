"""`make demo` is the README's first command: the whole rehearsal must run, end to end."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pynet.demo import REPO

pytestmark = pytest.mark.e2e


def test_demo_runs_the_whole_journey() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pynet.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "launching again finds the same instance" in out
    assert "Debian GNU/Linux 13 (trixie)" in out  # the stand-in runs what fab launch boots
    assert re.search(r"found i-\w+ \(running\); not creating another", out)
    assert re.search(r"failed=0", out)  # the playbook's recap
    assert "MSG 1 ada hello bob, from the rehearsal" in out.split("bob saw:")[1]
    assert re.search(r"serving again after \d+\.\d+ s", out)
    assert re.search(r"shipping 1 of \d+ layers", out)  # the code-only change
    assert "HELLO pynet 2.0.0-next+" in out
    assert out.rstrip().splitlines()[-1].startswith("done in ")
    assert "nothing to destroy" in out
