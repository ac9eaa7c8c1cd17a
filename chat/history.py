"""Broadcast history: ids, the retained lines for `/since`, and optional SQLite persistence.

Replays are served from memory (the encoded `MSG` lines, ready to write). SQLite makes ids and
lines survive a restart, and it is written by group commit: the server calls `commit()` once per
flush, before the batch goes to any socket, so every line a client has seen is already in the
database. A crash (SIGKILL, OOM kill) then loses nothing anyone saw and can never hand an id out
twice. The commit is one transaction per flush, not per line, so its cost is shared by every
broadcast of the batch.

WAL with `synchronous=NORMAL`: a committed transaction is in the WAL file (the kernel's page
cache) before `commit()` returns, which survives any crash of the process; only a power loss of
the whole machine can lose the last transactions (`synchronous=FULL` would fsync each one).
See https://www.sqlite.org/pragma.html#pragma_synchronous.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from chat.protocol import Message
from chat.window import Window

log = logging.getLogger("chat.history")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    at   REAL NOT NULL
)
"""

Row = tuple[int, str, str, float]


class HistoryError(Exception):
    """The history file cannot be used (not a database, no permission, disk full)."""


class History:
    """The last `size` broadcasts, in memory, optionally persisted to `path`."""

    def __init__(self, size: int, path: str | None = None) -> None:
        self.size = size
        self.path = path
        self._window = Window(size)
        self._store = _SqliteStore(path, size) if path else None
        self._pending: list[Row] = []
        if self._store:
            last_id, rows = self._store.load()
            self._window.reset(last_id, [Message(i, n, t).line() for i, n, t, _ in rows])

    @property
    def last_id(self) -> int:
        """The id of the newest broadcast (in a cluster: the newest one delivered here)."""
        return self._window.last_id

    @last_id.setter
    def last_id(self, value: int) -> None:
        self._window.last_id = value

    def describe(self) -> str:
        where = f"sqlite:{self.path}" if self.path else "memory"
        return f"{where} size={self.size} last_id={self.last_id}"

    def add(self, name: str, text: str) -> bytes:
        """Assign the next id to a broadcast and return its encoded `MSG` line.

        The line must not reach a client before the next `commit()`.
        """
        window = self._window
        msg_id = window.last_id + 1
        line = Message(msg_id, name, text).line()
        window.add(msg_id, line)
        if self._store:
            self._pending.append((msg_id, name, text, time.time()))
        return line

    def since(self, after: int) -> list[bytes]:
        """Retained `MSG` lines whose id is greater than `after`, oldest first."""
        return self._window.since(after)

    def page(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int]:
        """One page of a replay (`chat.window.Window.page`)."""
        return self._window.page(after, upto, limit)

    def adopt(self, last_id: int, lines: list[bytes]) -> None:
        """Continue where a predecessor left off (a handover): its ids and retained lines.

        With a file, both read the same committed rows, so this changes nothing; in memory
        it is the only way `/since` and the ids survive the switch.
        """
        if last_id > self.last_id:
            self._window.reset(last_id, lines)

    @property
    def uncommitted(self) -> int:
        return len(self._pending)

    def commit(self) -> bool:
        """Write the broadcasts added since the last commit in one transaction.

        False when the write failed: the rows stay pending and are retried by the next commit.
        The caller keeps serving (the ids stay unique while this process lives), and the error
        is logged once per failure.
        """
        if not self._pending:
            return True
        assert self._store is not None
        try:
            self._store.write(self._pending)
        except sqlite3.Error as exc:
            log.error("history write failed error=%r rows=%d", exc, len(self._pending))
            del self._pending[: max(0, len(self._pending) - max(self.size, 1))]
            return False
        self._pending.clear()
        return True

    def close(self) -> None:
        """Commit whatever is pending and close the database (once: closing again does nothing)."""
        if self._store:
            self.commit()
            self._store.close()
            self._store = None


class _SqliteStore:
    """The SQLite file behind a `History`."""

    def __init__(self, path: str, size: int) -> None:
        self.size = size
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot use {path} as the history database: {exc}") from None

    def load(self) -> tuple[int, list[Row]]:
        last = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        rows = self._db.execute(
            "SELECT id, name, text, at FROM messages WHERE id > ? ORDER BY id",
            (last - self.size,),
        ).fetchall()
        return last, rows

    def write(self, rows: list[Row]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO messages (id, name, text, at) VALUES (?, ?, ?, ?)", rows)
            # Keep at least the newest row so the ids continue after a restart.
            db.execute("DELETE FROM messages WHERE id <= ?", (rows[-1][0] - max(self.size, 1),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
