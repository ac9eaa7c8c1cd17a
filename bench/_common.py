"""Helpers shared by the benchmark scripts: limits, CPU pinning, starting and stopping servers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pynet.local import chat_server
from pynet.local.host import free_port  # the one free_port (127.0.0.1, as HOST)
from pynet.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the benchmarks only ever talk to the loopback interface

# Server kinds: "pynet" is the real server under chat/ with memory-only history, "pynet-sqlite"
# the same with its history in a SQLite file (durable ids), "baseline" the tutorial server in
# bench/, "redis" Debian's redis-server (pub/sub, the C reference).
# BENCH_PYNET_MODULE=pkg.mod runs another module as "pynet" (to try a patched server).
SERVER_MODULES = {
    "pynet": "chat.server",
    "pynet-sqlite": "chat.server",
    "baseline": "bench.baseline_threaded",
}
SERVER_KINDS = ("pynet", "pynet-sqlite", "baseline", "redis")
REDIS_INSTALL = (
    "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server, "
    "or run scripts/system-deps.sh as root)"
)


def protocol(kind: str) -> str:
    """The load generator's wire protocol for a server kind."""
    return "resp" if kind == "redis" else "chat"


def redis_server() -> str | None:
    """Path of redis-server, or None."""
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)),
        None,
    )


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(server cpus, load generator cpus): one core each when there are at least two."""
    avail = cpus()
    if len(avail) < 2:
        return None, None
    return {avail[0]}, set(avail[1:])


def pin_self(cpuset: set[int] | None, nice: int = 0, rt: int = 0) -> None:
    if cpuset:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpuset)
    renice(nice)
    realtime(rt)


def realtime(prio: int) -> None:
    """SCHED_FIFO at ``prio`` (1-99) when ``prio`` > 0 and allowed; threads started later inherit.

    For measuring on a busy shared machine: the measured processes then run whenever they are
    runnable, ahead of all normal tasks (the kernel's RT throttling still leaves others 5 %).
    """
    if prio > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))


def renice(nice: int) -> None:
    """Lower (nice < 0, needs root or CAP_SYS_NICE) or raise this process's nice value.

    On a shared machine a negative nice keeps the measured processes ahead of neighbours.
    """
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def pynet_server_available() -> bool:
    return (REPO / "chat" / "server.py").exists()


def _child_setup(cpuset: set[int] | None, nice: int, rt: int) -> None:  # child, before exec
    if cpuset:
        os.sched_setaffinity(0, cpuset)  # inherited by every thread the server starts
    renice(nice)
    realtime(rt)
    with contextlib.suppress(Exception):  # die with the benchmark, even if it is SIGKILLed
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen
    workdir: tempfile.TemporaryDirectory
    log: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.workdir.cleanup()


def server_env(kind: str, port: int, workdir: str, max_clients: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYNET_HOST"] = HOST
    env["PYNET_PORT"] = str(port)
    if kind.startswith("pynet"):
        # Benchmark settings for the real server (chat/config.py): no per-client rate limit (a
        # few senders carry the whole offered load), room for every client. Values set by the
        # user win, except the history, which the kind names: memory, or a scratch SQLite file.
        env["PYNET_HISTORY"] = (
            os.path.join(workdir, "history.sqlite3") if kind == "pynet-sqlite" else ""
        )
        defaults = {
            "PYNET_RATE": "0",
            "PYNET_NICK_TIMEOUT": "600",  # idle_connections holds un-named clients a while
            "PYNET_MAX_CLIENTS": str(max(20000, max_clients + 100)),
            "PYNET_MAX_PER_ADDRESS": "0",  # every bench client comes from the same address
        }
        for k, v in defaults.items():
            env.setdefault(k, v)
    return env


def start_server(
    kind: str,
    cpuset: set[int] | None,
    max_clients: int = 1000,
    extra_args: list[str] | None = None,
    ready_timeout: float = 30.0,
    nice: int = 0,
    rt: int = 0,
) -> Server:
    """Start a server in its own process (pinned to ``cpuset``) and wait until it says HELLO."""
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix=f"pynet-bench-{kind}-")
    log = Path(workdir.name) / "server.log"
    if kind == "redis":
        exe = redis_server()
        if exe is None:
            raise RuntimeError(REDIS_INSTALL)
        # no persistence (a pub/sub reference, not a store), loopback only, room for everyone
        cmd = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        cmd += ["--dir", workdir.name, "--maxclients", str(max_clients + 100)]
    else:
        module = os.environ.get("BENCH_PYNET_MODULE", "") if kind.startswith("pynet") else ""
        module = module or SERVER_MODULES[kind]
        cmd = chat_server.command(host=HOST, port=port, module=module)
    cmd += extra_args or []
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=server_env(kind, port, workdir.name, max_clients),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _child_setup(cpuset, nice, rt),
        )
    server = Server(kind, port, proc, workdir, log)
    try:
        wait_ready(server, ready_timeout)
    except BaseException:
        server.stop(timeout=3)
        raise
    return server


def wait_ready(server: Server, timeout: float) -> None:
    last = [""]

    def ready() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.kind} server exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection((HOST, server.port), timeout=2) as s:
                if server.kind == "redis":
                    s.sendall(b"PING\r\n")
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            last[0] = str(exc)
            return False
        last[0] = data.decode(errors="replace")
        return data.startswith((b"HELLO", b"+PONG"))

    try:
        wait_until(ready, timeout, f"{server.kind} server ready", interval=0.1)
    except WaitTimeout as error:
        raise RuntimeError(f"{error} ({last[0]}):\n{server.log_tail()}") from None


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def default_nice() -> int:
    """-10 when we may lower it (root), else 0."""
    return -10 if os.geteuid() == 0 else 0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
