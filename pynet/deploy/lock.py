"""The deploy lock on the host: one deploy or rollback at a time, and stale locks found out.

`mkdir` is atomic, so of two racing deploys exactly one gets the lock directory. The holder writes
who it is and touches a heartbeat file while it works; holder and host may be different machines
(no pid to check), so a lock whose heartbeat is older than `stale_after` counts as abandoned.
All times are the host's own clock, so a laptop with a wrong clock cannot fake staleness.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from pynet.deploy import commands as cmd
from pynet.deploy.remote import DeployError, Remote

STALE_AFTER = 120.0  # default; PYNET_LOCK_STALE_AFTER overrides it (see stale_after_setting)
HEARTBEAT_EVERY = 10.0


def stale_after_setting() -> float:
    """PYNET_LOCK_STALE_AFTER, read when a lock is judged: a bad value is one line, not a crash
    of every `fab` command at import."""
    raw = os.environ.get("PYNET_LOCK_STALE_AFTER")
    if raw is None or raw == "":
        return STALE_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise DeployError(
            f"environment variable PYNET_LOCK_STALE_AFTER={raw!r}: expected seconds > 0 "
            f"(default {STALE_AFTER:.0f})"
        )
    return value


class LockHeld(DeployError):
    """Someone else holds the deploy lock."""


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LockInfo:
    """What `commands.lock_info()` printed: host clock, last heartbeat, owner record."""

    now: int
    heartbeat: int
    owner: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> LockInfo:
        lines = text.strip().splitlines()
        owner_text = "\n".join(lines[2:]).strip() or "{}"
        try:
            owner = json.loads(owner_text)
        except json.JSONDecodeError:
            owner = {}
        return cls(int(lines[0]), int(lines[1]), owner if isinstance(owner, dict) else {})

    @property
    def idle(self) -> int:
        """Seconds since the holder last showed signs of life."""
        return max(0, self.now - self.heartbeat)

    def stale(self, stale_after: float | None = None) -> bool:
        return self.idle > (stale_after_setting() if stale_after is None else stale_after)

    def describe(self, stale_after: float | None = None, hint: bool = True) -> str:
        stale_after = stale_after_setting() if stale_after is None else stale_after
        o = self.owner
        who = o.get("user", "an unknown holder")
        what = f", {o['action']} of {o['version']}" if o.get("action") else ""
        pid = f", pid {o['pid']}" if o.get("pid") else ""
        since = f" since {o['since']}" if o.get("since") else ""
        text = f"held by {who}{pid}{what}{since} (last heartbeat {self.idle}s ago)"
        if self.stale(stale_after):
            text += f"; stale: no heartbeat for more than {stale_after:.0f}s"
            if hint:
                text += " (if that deploy is dead, release the lock with `fab unlock`)"
        return text


def read_lock(remote: Remote) -> LockInfo | None:
    result = remote.run(cmd.lock_info(), check=False)
    if result.exited == 3 or remote.dry_run:
        return None
    if result.failed:
        raise DeployError(f"cannot read the deploy lock: {result.stderr.strip()}")
    return LockInfo.parse(result.stdout)


class DeployLock:
    """`with DeployLock(remote, ...)`: hold the host's lock for the block, heartbeating."""

    def __init__(
        self,
        remote: Remote,
        action: str,
        version: str,
        stale_after: float | None = None,
        beat_every: float = HEARTBEAT_EVERY,
    ) -> None:
        self.remote = remote
        self.stale_after = stale_after_setting() if stale_after is None else stale_after
        self.beat_every = beat_every
        self.token = secrets.token_hex(8)
        self.owner = {
            "user": whoami(),
            "pid": os.getpid(),
            "since": utcnow(),
            "action": action,
            "version": version,
            "token": self.token,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False

    def __enter__(self) -> DeployLock:
        self.remote.run(cmd.ensure_state_dir(self.remote.conn.user))
        if self.remote.run(cmd.lock_acquire(self.owner), check=False).failed:
            info = read_lock(self.remote)
            if info is None:  # vanished between our mkdir and our look: just a fast holder
                raise LockHeld("the deploy lock was busy; try again")
            raise LockHeld(
                f"refused: the deploy lock on {self.remote.label} is "
                + info.describe(self.stale_after)
            )
        if not self.remote.dry_run:
            self._thread = threading.Thread(target=self._beat, name="deploy-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_every):
            try:
                self.remote.run(cmd.lock_heartbeat(), check=False)
            except Exception:  # noqa: S112 - a missed beat is harmless; the next may work
                continue

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._released:  # a deploy released it already; its preparer tries again
            return
        self._released = True
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.remote.run(cmd.lock_release(self.token), check=False)
