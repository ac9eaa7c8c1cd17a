"""The test kit every suite shares: one way to wait for a condition, one free local port.

Both live in the package (pynet/wait.py, pynet/local/host.py) because the harness and the demo
wait the same way; tests import them from here.
"""

from __future__ import annotations

from pynet.local.host import free_port
from pynet.wait import WaitTimeout, wait_until

__all__ = ["WaitTimeout", "free_port", "wait_until"]
