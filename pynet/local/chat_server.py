"""`python -m chat.server` as a process on this machine: the one starter that the tests, the
benchmarks and the local harness share, so a flag or an environment rule changes in one place.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The checkout whose `chat/` the process runs (its working directory)."""


def command(
    *args: str,
    host: str = "127.0.0.1",
    port: int = 0,
    module: str = "chat.server",
    prefix: Sequence[str] = (),
) -> list[str]:
    """The argv of a chat server listening on HOST:PORT (0: a free port, named in its log's
    `listen=` line) with ARGS; PREFIX goes first (e.g. `ip netns exec NAME`)."""
    return [*prefix, sys.executable, "-m", module, "--host", host, "--port", str(port), *args]


def start(
    *args: str,
    host: str = "127.0.0.1",
    port: int = 0,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    module: str = "chat.server",
    **popen: Any,
) -> subprocess.Popen[Any]:
    """Start the server (see `command`) in ROOT, with ENV over this process's environment;
    POPEN goes to `subprocess.Popen` (where its output goes, a CPU pinning `preexec_fn`)."""
    return subprocess.Popen(
        command(*args, host=host, port=port, module=module, prefix=prefix),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        **popen,
    )
