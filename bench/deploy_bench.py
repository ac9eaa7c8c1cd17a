"""How fast `fab deploy` is, how much it sends, and how long the chat is away, on a local host.

Boots an EC2-like host, provisions it with the playbook WITHOUT a seed release, then measures:
  1. the first deploy (every layer shipped): the baseline for 2,
  2. a code-only deploy (one file changed): time and bytes, while a client connects to the chat
     port in a loop and records the window in which connections are refused,
  3. recovery: `docker kill` of the chat container until the port answers HELLO again.
Targets (issue 5): code-only deploy serving in < 15 s and shipping < 1 MB; recovery < 2 s.

    .venv/bin/python bench/deploy_bench.py [--rounds 3] [--keep-host] [--restart-sec 100ms]

Recovery is systemd's RestartSec plus `docker run` start-up (about 1.2 s here): measured 2.3 to
2.5 s with RestartSec=1, 1.4 to 1.5 s with the chat role's 200ms; `--restart-sec` tries others.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from pynet.deploy.probe import ProbeError, chat_hello  # noqa: E402
from pynet.local.engine import ensure_engine  # noqa: E402
from pynet.local.host import Host, make_keypair, start_host, stop_host  # noqa: E402
from pynet.local.images import ensure_base_image  # noqa: E402
from pynet.local.provision import (  # noqa: E402
    build_context_copy,
    playbook_argv,
    write_inventory,
    write_ssh_config,
)

UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.email=bench@pynet.test",
            "-c",
            "user.name=bench",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def hello(port: int, timeout: float = 1.0) -> bool:
    """True when the chat answers with its HELLO line (a proxy may accept and then close)."""
    try:
        chat_hello("127.0.0.1", port, timeout)
    except ProbeError:
        return False
    return True


@dataclass
class Prober:
    """Connects in a loop until stopped; records when connections failed."""

    port: int
    interval: float = 0.02
    failures: list[float] = field(default_factory=list)
    attempts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            if not hello(self.port, timeout=0.5):
                self.failures.append(time.monotonic())
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def longest_window(self) -> float:
        """Longest run of consecutive failures, in seconds (gaps over 0.6 s split runs)."""
        best = 0.0
        start = last = None
        for t in self.failures:
            if start is None or last is None or t - last > 0.6:
                start = t
            last = t
            best = max(best, t - start + self.interval)
        return best


@dataclass
class Deploy:
    seconds: float
    shipped: float
    layers: str


def fab_deploy(host: Host, key: Path, src: Path) -> Deploy:
    env = {**os.environ, "PYNET_DOCKER": "/usr/bin/docker", "PYNET_BASE_IMAGE": ensure_base_image()}
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(BIN / "fab"),
            "-S",
            str(write_ssh_config(key.parent / "ssh_config", host)),
            "-H",
            f"admin@127.0.0.1:{host.ssh_port}",
            "-i",
            str(key),
            "deploy",
            "--context",
            str(src),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"fab deploy failed:\n{proc.stdout}{proc.stderr}")
    m = re.search(r"shipping (\d+ of \d+) layers \(([\d.]+) (\w+) compressed\)", proc.stdout)
    if not m:
        sys.exit(f"no shipping line in:\n{proc.stdout}")
    return Deploy(seconds, float(m[2]) * UNITS[m[3]], m[1])


def change_code(src: Path, n: int) -> None:
    server = src / "chat" / "server.py"
    server.write_text(server.read_text() + f"\n# bench change {n}\n")


def recovery(host: Host, port: int) -> float:
    subprocess.run(
        [
            "/usr/bin/docker",
            "exec",
            host.name,
            "sh",
            "-c",
            "docker kill $(docker ps --quiet --filter name=^pynet-chat-)",
        ],
        check=True,
        capture_output=True,
    )
    killed = time.monotonic()
    while not hello(port, timeout=0.5):
        if time.monotonic() - killed > 60:
            sys.exit("the chat did not come back within 60 s")
        time.sleep(0.02)
    return time.monotonic() - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="code-only deploys and kills")
    parser.add_argument("--keep-host", action="store_true", help="leave the host running")
    parser.add_argument("--restart-sec", help="the chat role's chat_restart_sec (default: role's)")
    args = parser.parse_args()

    ensure_engine()
    ensure_base_image()
    name = f"pynet-bench-deploy-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="pynet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        key, pub = make_keypair(tmp / "id_ed25519")
        print("booting and provisioning the host (no seed release) ...", flush=True)
        host = start_host(name, pub)
        try:
            extra = [f"chat_restart_sec={args.restart_sec}"] if args.restart_sec else []
            proc = subprocess.run(
                playbook_argv(write_inventory(tmp / "hosts.yml", host), *extra),
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                sys.exit(f"provisioning failed:\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}")
            src = build_context_copy(tmp / "src", commit=True)

            first = fab_deploy(host, key, src)
            print(
                f"first deploy:     {first.seconds:5.1f} s, {first.shipped / 1e6:7.2f} MB "
                f"({first.layers} layers)"
            )

            code: list[Deploy] = []
            windows: list[float] = []
            for n in range(args.rounds):
                change_code(src, n)
                prober = Prober(host.app_port)
                thread = threading.Thread(target=prober.run, daemon=True)
                thread.start()
                code.append(fab_deploy(host, key, src))
                time.sleep(0.5)  # let the prober see the new release answer
                prober.stop()
                thread.join()
                windows.append(prober.longest_window())
                print(
                    f"code-only deploy: {code[-1].seconds:5.1f} s, "
                    f"{code[-1].shipped / 1e3:7.1f} kB ({code[-1].layers} layers), "
                    f"refused for {windows[-1]:.2f} s "
                    f"({len(prober.failures)}/{prober.attempts} probes failed)"
                )

            recoveries = [recovery(host, host.app_port) for _ in range(args.rounds)]
            for r in recoveries:
                print(f"killed -> serving: {r:.2f} s")
        finally:
            if not args.keep_host:
                stop_host(name)

    worst = max(c.seconds for c in code)
    biggest = max(c.shipped for c in code)
    print("\nsummary (target in brackets)")
    print(
        f"  code-only deploy, worst:  {worst:.1f} s [< 15 s] "
        f"{'ok' if worst < 15 else 'MISSED'}; first deploy {first.seconds:.1f} s"
    )
    print(
        f"  code-only bytes, largest: {biggest / 1e3:.1f} kB [< 1000 kB] "
        f"{'ok' if biggest < 1e6 else 'MISSED'}; first deploy {first.shipped / 1e6:.1f} MB "
        f"({first.shipped / biggest:.0f}x more)"
    )
    print(
        f"  refused window per deploy: median {statistics.median(windows):.2f} s, "
        f"max {max(windows):.2f} s"
    )
    rec = max(recoveries)
    print(
        f"  recovery after a kill, worst: {rec:.2f} s [< 2 s] {'ok' if rec < 2 else 'MISSED'}; "
        f"median {statistics.median(recoveries):.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
