"""Where command builders meet a host: run them over SSH, or print them for --dry-run.

Everything that runs goes through `Remote.run`/`Local.run`, so a dry run prints exactly the
command lines a real run would execute, and failures all read the same way.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fabric import Connection
from invoke.runners import Result

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

    def upload(self, local: Path, remote: str, progress: bool = True) -> None:
        """SFTP with a progress bar on a terminal (a single summary line otherwise)."""
        if self.dry_run:
            print(
                f"[{self.conn.host}:{self.conn.port}] sftp put {local} {remote}",
                file=self.out,
                flush=True,
            )
            return
        bar = ProgressBar(self.out, enabled=progress)
        self.conn.sftp().put(str(local), remote, callback=bar.update)
        bar.done()


@dataclass
class ProgressBar:
    """`[#####.....]  52%  1.2/2.3 MB`, redrawn in place; only on a terminal."""

    out: TextIO
    enabled: bool = True
    width: int = 30
    _last: int = -1

    def update(self, sent: int, total: int) -> None:
        if not (self.enabled and self.out.isatty()) or not total:
            return
        pct = sent * 100 // total
        if pct == self._last:
            return
        self._last = pct
        filled = self.width * sent // total
        self.out.write(
            f"\r  [{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}%  "
            f"{human(sent)}/{human(total)}"
        )
        self.out.flush()

    def done(self) -> None:
        if self._last >= 0:
            self.out.write("\n")
            self.out.flush()


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
