"""How fast `fab deploy` is, how much it sends, and how long the chat is away, on a local host.

Boots an EC2-like host, provisions it with the playbook WITHOUT a seed release, then measures:
  1. the first deploy (every layer shipped): the baseline for 2,
  2. code-only deploys (`__version__` changed, so HELLO names the release): bytes, the deploy's
     own per-phase breakdown (build, save, ship, load, start, switch), and the time from
     `fab deploy` starting until a client's HELLO names the new release, while a client
     connects to the chat port in a loop and counts refused connections,
  3. recovery: `docker kill` of the chat container until the port answers HELLO again.
Targets: code-only deploy serving the new release < 2 s after `fab deploy` starts (median,
issue 21), shipping < 1 MB, 0 refused; recovery < 2 s.

    .venv/bin/python bench/deploy_bench.py [--rounds 5] [--baseline] [--keep-host]
        [--restart-sec 100ms]

A code-only change skips `docker build` and `docker save` (pynet/deploy/codelayer.py);
`--baseline` also deploys each round with `PYNET_DEPLOY_CACHE=off` (built and saved by Docker,
as before), alternating with the code-layer path, and prints both.

Recovery is systemd's RestartSec plus `docker run` start-up (about 1.2 s here): measured 2.3 to
2.5 s with RestartSec=1, 1.4 to 1.5 s with the chat role's 200ms; `--restart-sec` tries others.
A checkout whose deploy prints no breakdown (before issue 21) is measured too, phases blank.
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
    """Connects in a loop until stopped; records failed connects and when HELLO first named
    the release EXPECT (empty: do not look)."""

    port: int
    expect: str = ""
    interval: float = 0.02
    failures: list[float] = field(default_factory=list)
    attempts: int = 0
    serving: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            try:
                line = chat_hello("127.0.0.1", self.port, 0.5)
            except ProbeError:
                self.failures.append(time.monotonic())
            else:
                if self.serving is None and self.expect and line.endswith(self.expect):
                    self.serving = time.monotonic()
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


PHASES = ("build", "save", "ship", "load", "start", "switch")
BREAKDOWN = re.compile(
    r"deployed \S+ in ([\d.]+)s: "
    + ", ".join(rf"{name} ([\d.]+)s" + (r" \([^)]*\)" if name == "ship" else "") for name in PHASES)
)


@dataclass
class Deploy:
    seconds: float  # the `fab deploy` process, start to exit
    shipped: float
    layers: str
    started: float = 0.0  # time.monotonic() when `fab deploy` was started
    phases: dict[str, float] = field(default_factory=dict)  # with "total"; empty if not printed


def fab_deploy(host: Host, key: Path, src: Path, cache: str) -> Deploy:
    env = {
        **os.environ,
        "PYNET_DOCKER": "/usr/bin/docker",
        "PYNET_BASE_IMAGE": ensure_base_image(),
        "PYNET_DEPLOY_CACHE": cache,  # "off": docker build and docker save every time
    }
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
    m = re.search(r"shipping (\d+ of \d+) layers \(([\d.]+) (\w+) compressed", proc.stdout)
    if not m:
        sys.exit(f"no shipping line in:\n{proc.stdout}")
    found = BREAKDOWN.search(proc.stdout)
    phases = (
        {
            "total": float(found[1]),
            **{n: float(v) for n, v in zip(PHASES, found.groups()[1:], strict=True)},
        }
        if found
        else {}
    )
    return Deploy(seconds, float(m[2]) * UNITS[m[3]], m[1], started, phases)


@dataclass
class Round:
    """One code-only deploy under a connecting client."""

    deploy: Deploy
    serving: float  # from `fab deploy` starting until HELLO named the new release
    window: float  # longest run of refused connects
    refused: int
    attempts: int

    def __str__(self) -> str:
        d = self.deploy
        return (
            f"serving after {self.serving:4.2f} s, fab exit {d.seconds:4.2f} s, "
            f"{d.shipped / 1e3:7.1f} kB ({d.layers} layers), {self.refused}/{self.attempts} "
            f"connects refused; {describe(d.phases)}"
        )


def code_only(host: Host, key: Path, src: Path, n: int, cache: str) -> Round:
    """Change the code, deploy it while a client connects in a loop, and time it."""
    label = change_code(src, n)
    prober = Prober(host.app_port, expect=label)
    thread = threading.Thread(target=prober.run, daemon=True)
    thread.start()
    deploy = fab_deploy(host, key, src, cache)
    deadline = time.monotonic() + 10
    while prober.serving is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the new release answers by now; let the prober see it
    time.sleep(0.3)
    prober.stop()
    thread.join()
    if prober.serving is None:
        sys.exit(f"HELLO never named {label} after the deploy")
    return Round(
        deploy,
        prober.serving - deploy.started,
        prober.longest_window(),
        len(prober.failures),
        prober.attempts,
    )


def change_code(src: Path, n: int) -> str:
    """A code-only change HELLO shows: `__version__` gets the suffix `+benchN`. Returns it."""
    init = src / "chat" / "__init__.py"
    label = f"+bench{n}"
    init.write_text(
        re.sub(r'__version__ = "([^"+]*)[^"]*"', rf'__version__ = "\1{label}"', init.read_text())
    )
    git(src, "commit", "-qam", f"bench change {n}")
    return label


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


def describe(phases: dict[str, float]) -> str:
    if not phases:
        return "no breakdown printed"
    return (
        ", ".join(f"{name} {phases[name]:.2f}" for name in PHASES)
        + f" (total {phases['total']:.1f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="code-only deploys and kills")
    parser.add_argument("--keep-host", action="store_true", help="leave the host running")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="each round also deploys with PYNET_DEPLOY_CACHE=off (docker build and docker "
        "save, as before the code layer was made here), alternating, for a same-run comparison",
    )
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

            cache = str(tmp / "deploy-cache")
            first = fab_deploy(host, key, src, cache)
            print(
                f"first deploy:     {first.seconds:5.1f} s, {first.shipped / 1e6:7.2f} MB "
                f"({first.layers} layers)"
            )

            ways = {"code layer made here": cache}
            if args.baseline:  # in the same run, alternating: the machine's load moves both
                ways = {"docker build + save": "off", **ways}
            runs: dict[str, list[Round]] = {way: [] for way in ways}
            n = 0
            for _ in range(args.rounds):
                for way, setting in ways.items():
                    runs[way].append(code_only(host, key, src, n, setting))
                    n += 1
                    print(f"{way:>20}: {runs[way][-1]}")

            recoveries = [recovery(host, host.app_port) for _ in range(args.rounds)]
            for r in recoveries:
                print(f"killed -> serving: {r:.2f} s")
        finally:
            if not args.keep_host:
                stop_host(name)

    biggest = 0.0
    for way, rounds in runs.items():
        code = [r.deploy for r in rounds]
        serving = [r.serving for r in rounds]
        biggest = max(biggest, *(c.shipped for c in code))
        median = statistics.median(serving)
        print(f"\nsummary, {way}: median of {len(code)} code-only deploys (target in brackets)")
        print(
            f"  fab deploy start -> HELLO names the new release: {median:.2f} s [< 2 s] "
            f"{'ok' if median < 2 else 'MISSED'} (min {min(serving):.2f}, max {max(serving):.2f})"
        )
        print(
            f"  fab deploy process: median {statistics.median(c.seconds for c in code):.2f} s, "
            f"worst {max(c.seconds for c in code):.2f} s; first deploy {first.seconds:.1f} s"
        )
        with_phases = [c.phases for c in code if c.phases]
        if with_phases:
            medians = {
                name: statistics.median(p[name] for p in with_phases) for name in ("total", *PHASES)
            }
            print(
                "  phases (median): "
                + ", ".join(f"{name} {medians[name]:.2f} s" for name in (*PHASES, "total"))
            )
        else:
            print("  phases: this checkout's deploy prints no breakdown")
        refused = sum(r.refused for r in rounds)
        print(
            f"  refused connects during deploys: {refused} of {sum(r.attempts for r in rounds)} "
            f"[0] {'ok' if not refused else 'MISSED'}; "
            f"longest window {max(r.window for r in rounds):.2f} s"
        )
    print(
        f"\n  code-only bytes, largest: {biggest / 1e3:.1f} kB [< 1000 kB] "
        f"{'ok' if biggest < 1e6 else 'MISSED'}; first deploy {first.shipped / 1e6:.1f} MB "
        f"({first.shipped / biggest:.0f}x more)"
    )
    rec = max(recoveries)
    print(
        f"  recovery after a kill, worst: {rec:.2f} s [< 2 s] {'ok' if rec < 2 else 'MISSED'}; "
        f"median {statistics.median(recoveries):.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
