"""Where command builders meet a host: run them over SSH, or print them for --dry-run.

Everything that runs goes through `Remote.run`/`Local.run`, so a dry run prints exactly the
command lines a real run would execute, and failures all read the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fabric import Connection
from invoke.runners import Result
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pynet.deploy.commands import Argv, render


class DeployError(RuntimeError):
    """A step failed; the message says which, why, and what to do."""


def _failure(line: str, exited: int, stderr: str, stdout: str = "") -> DeployError:
    detail = (stderr.strip() or stdout.strip()).splitlines()[-3:]
    return DeployError(
        f"`{line}` failed (exit {exited})" + (": " + " / ".join(detail) if detail else "")
    )


@dataclass
class Local:
    """Commands on this machine (docker build/save)."""

    dry_run: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def run(
        self, argv: Argv, *, check: bool = True, quiet: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        line = render(argv)
        if self.dry_run:
            print(f"[local] {line}", file=self.out, flush=True)
            return subprocess.CompletedProcess(argv, 0, "", "")
        try:
            proc = subprocess.run(argv, cwd=cwd, text=True, check=False, capture_output=quiet)
        except FileNotFoundError:
            raise DeployError(
                f"`{argv[0]}` not found here: install Docker (or set PYNET_DOCKER)"
            ) from None
        if check and proc.returncode:
            raise _failure(line, proc.returncode, proc.stderr or "", proc.stdout or "")
        return proc

    def stream(self, argv: Argv, *, what: str, cwd: Path | None = None, keep: int = 60) -> None:
        """Run ARGV showing its output line by line as it comes (a long build shows its
        progress); on failure raise with docker's error line and the output before it."""
        line = render(argv)
        if self.dry_run:
            print(f"[local] {line}", file=self.out, flush=True)
            return
        last: deque[str] = deque(maxlen=keep)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except FileNotFoundError:
            raise DeployError(
                f"`{argv[0]}` not found here: install Docker (or set PYNET_DOCKER)"
            ) from None
        with proc:
            for text in proc.stdout or ():
                last.append(ANSI.sub("", text.rstrip("\n")))
                print(f"  {last[-1]}", file=self.out, flush=True)
        if proc.returncode:
            raise stream_failure(what, proc.returncode, list(last))


#: The line a failed `docker build` says why on: BuildKit's `ERROR: ...`, the classic builder's
#: `The command '...' returned a non-zero code: N`, a client `error ...`.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # the classic builder colours its error line
BUILD_ERROR = re.compile(r"\bERROR\b|^error|returned a non-zero code|^failed to ", re.I)


def stream_failure(what: str, exited: int, lines: list[str], context: int = 20) -> DeployError:
    """WHAT failed: docker's own error line first, then the output that led to it."""
    text = [line for line in lines if line.strip()]
    errors = [line for line in text if BUILD_ERROR.search(line)]
    headline = (errors or text or ["no output"])[-1].strip()
    before = [line for line in text if line.strip() != headline][-context:]
    detail = "\n".join(f"  {line}" for line in before)
    return DeployError(
        f"{what} failed (exit {exited}): {headline}"
        + (f"\nThe output before it:\n{detail}" if detail else "")
    )


@dataclass
class Remote:
    """Commands on one host over an open Fabric connection."""

    conn: Connection
    dry_run: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)

    @property
    def label(self) -> str:
        return f"{self.conn.user}@{self.conn.host}:{self.conn.port}"

    def say(self, message: str) -> None:
        print(f"[{self.conn.host}:{self.conn.port}] {message}", file=self.out, flush=True)

    def run(self, argv: Argv, *, check: bool = True, hide: bool = True, **kwargs: Any) -> Result:
        line = render(argv)
        if self.dry_run:
            print(f"[{self.conn.host}:{self.conn.port}] {line}", file=self.out, flush=True)
            return Result(command=line, exited=0)
        result = self.conn.run(line, hide=hide, warn=True, in_stream=False, **kwargs)
        if check and result.failed:
            raise _failure(line, result.exited, result.stderr, result.stdout)
        return result

    def ok(self, argv: Argv) -> bool:
        return self.run(argv, check=False).ok

    def output(self, argv: Argv, *, check: bool = True) -> str:
        return self.run(argv, check=check).stdout.strip()

    def feed(self, argv: Argv, local: Path, progress: bool = True) -> Fed:
        """Run ARGV on the host with the file LOCAL as its stdin, over the open connection:
        no SFTP session, no file on the host, one round trip (a `docker load`). The result
        tells how long the sending took and how long the command ran on after it."""
        line = render(argv)
        if self.dry_run:
            self.say(f"{line} < {local}")
            return Fed(Result(command=line, exited=0), 0.0, 0.0)
        transport = self.conn.client.get_transport()
        if transport is None:
            raise DeployError(f"the SSH connection to {self.label} is closed")
        bar = UploadProgress(self.out, f"ssh {local.name}", enabled=progress)
        began = time.monotonic()
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        with transport.open_session() as chan:
            chan.exec_command(line)
            readers = [
                threading.Thread(target=_drain, args=(read, chunks[key]), daemon=True)
                for key, read in (("out", chan.recv), ("err", chan.recv_stderr))
            ]
            for reader in readers:
                reader.start()
            try:
                total, sent = local.stat().st_size, 0
                with local.open("rb") as data:
                    while block := data.read(FEED_BLOCK):
                        chan.sendall(block)
                        sent += len(block)
                        bar.update(sent, total)
                chan.shutdown_write()
            except OSError:
                pass  # the command ended early (it failed): its status and stderr say why
            finally:
                bar.done()
            sending = time.monotonic() - began
            exited = chan.recv_exit_status()
            for reader in readers:
                reader.join()
        result = Result(
            stdout=b"".join(chunks["out"]).decode(errors="replace"),
            stderr=b"".join(chunks["err"]).decode(errors="replace"),
            exited=exited,
            command=line,
        )
        return Fed(result, sending, time.monotonic() - began - sending)

    def upload(self, local: Path, remote: str, progress: bool = True) -> None:
        """SFTP with a progress bar on a terminal (a single summary line otherwise)."""
        if self.dry_run:
            print(
                f"[{self.conn.host}:{self.conn.port}] sftp put {local} {remote}",
                file=self.out,
                flush=True,
            )
            return
        bar = UploadProgress(self.out, f"sftp {local.name}", enabled=progress)
        try:
            self.conn.sftp().put(str(local), remote, callback=bar.update)
        finally:
            bar.done()


FEED_BLOCK = 256 * 1024


def _drain(read: Callable[[int], bytes], into: list[bytes]) -> None:
    """Read a channel stream to its end (both are read while sending: a command that writes
    a lot must not stall on a full window)."""
    while chunk := read(65536):
        into.append(chunk)


@dataclass(frozen=True)
class Fed:
    """What `Remote.feed` ran: its result, seconds spent sending, seconds it ran on after."""

    result: Result
    sending: float
    after: float


class UploadProgress:
    """Upload progress from rich: on a terminal a bar that fits its width, with size, rate and
    time left; elsewhere (CI logs, pipes) no redrawing, only one summary line at the end.
    """

    def __init__(self, out: TextIO, label: str, enabled: bool = True) -> None:
        self.out, self.label, self.enabled = out, label, enabled
        self.console = Console(file=out, highlight=False)
        self.live = enabled and self.console.is_terminal
        self.started = time.monotonic()
        self.sent = 0
        self.progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task(label, total=None)
        self.progress.start()

    def update(self, sent: int, total: int) -> None:
        """Paramiko's SFTP callback: bytes sent so far of TOTAL."""
        self.sent = sent
        self.progress.update(self.task, completed=sent, total=total or None)

    def done(self) -> None:
        self.progress.stop()
        if self.enabled and not self.live:
            seconds = max(time.monotonic() - self.started, 1e-3)
            print(
                f"  {self.label}: {human(self.sent)} in {seconds:.1f} s "
                f"({human(self.sent / seconds)}/s)",
                file=self.out,
                flush=True,
            )


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
