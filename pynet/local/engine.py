"""A Docker engine for the local rehearsal and the tests: find one, or start one.

The harness only ever needs a plain local engine. When `docker info` fails but `dockerd` is
installed and we are root, we start it detached (as a CI machine with no services needs); in any
other case we say exactly how to get one instead of guessing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pynet.wait import WaitTimeout, wait_until

# Debian's client matches the engine Debian ships; a newer client earlier on PATH prints warnings.
DEBIAN_DOCKER = Path("/usr/bin/docker")
DOCKER = str(DEBIAN_DOCKER) if DEBIAN_DOCKER.exists() else (shutil.which("docker") or "docker")
DOCKERD_LOG = Path(
    os.environ.get("PYNET_DOCKERD_LOG") or Path(tempfile.gettempdir()) / "pynet-dockerd.log"
)


class EngineError(RuntimeError):
    """No usable Docker engine, with the reason and what to do about it."""


def docker(
    *args: str,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the docker client; on failure raise with docker's own message."""
    proc = subprocess.run(
        [DOCKER, *args],
        capture_output=capture,
        text=input is None,
        input=input,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode()
        raise EngineError(f"docker {' '.join(args[:2])} failed: {err.strip()}")
    return proc


def engine_running() -> bool:
    try:
        proc = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _clear_stale_pidfiles() -> None:
    for pidfile in (Path("/var/run/docker.pid"), Path("/run/docker/containerd/containerd.pid")):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            pidfile.unlink(missing_ok=True)


def ensure_engine(timeout: float = 60.0) -> None:
    """Make sure a Docker engine answers, starting `dockerd` ourselves where we can."""
    if engine_running():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError(
            "no Docker engine: install one (Debian/Ubuntu: `sudo apt-get install docker.io`, "
            "macOS: Docker Desktop) and start it"
        )
    if os.geteuid() != 0:
        raise EngineError(
            "the Docker engine is not running: start it with `sudo systemctl start docker` "
            "(or run this as root so PyNet can start dockerd itself)"
        )
    _clear_stale_pidfiles()
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_until(engine_running, timeout, "dockerd answering", interval=0.5)
        return
    except WaitTimeout:
        pass
    tail = DOCKERD_LOG.read_text(errors="replace").splitlines()[-5:]
    raise EngineError(
        f"dockerd did not come up in {timeout:.0f}s; its log ({DOCKERD_LOG}) ends:\n"
        + "\n".join(tail)
    )
