"""Broadcast history: ids, the retained lines for `/since`, and optional SQLite persistence.

Replays are served from memory (the encoded `MSG` lines, ready to write). SQLite only makes
them survive a restart: new rows are batched and written by one worker thread every
`flush_interval`, so a broadcast never waits for the disk, and `close()` writes whatever is
left, so a graceful shutdown loses nothing that was broadcast. After a crash, at most the last
flush interval is lost.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from chat.protocol import Message

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


class History:
    """The last `size` broadcasts, in memory, optionally persisted to `path`."""

    def __init__(self, size: int, path: str | None = None) -> None:
        self.size = size
        self.path = path
        self.last_id = 0
        self._lines: deque[bytes] = deque(maxlen=size)
        self._store = _SqliteStore(path, size) if path else None
        self._pending: list[Row] = []
        self._inflight: Future[None] | None = None
        self._inflight_rows: list[Row] = []
        if self._store:
            self.last_id, rows = self._store.load()
            self._lines.extend(Message(i, name, text).line() for i, name, text, _ in rows)

    def describe(self) -> str:
        where = f"sqlite:{self.path}" if self.path else "memory"
        return f"{where} size={self.size} last_id={self.last_id}"

    def add(self, name: str, text: str) -> bytes:
        """Assign the next id to a broadcast and return its encoded `MSG` line."""
        self.last_id += 1
        line = Message(self.last_id, name, text).line()
        self._lines.append(line)
        if self._store:
            self._pending.append((self.last_id, name, text, time.time()))
        return line

    def since(self, after: int) -> list[bytes]:
        """Retained `MSG` lines whose id is greater than `after`, oldest first."""
        first = self.last_id - len(self._lines) + 1
        start = max(after + 1, first) - first
        return list(islice(self._lines, start, None)) if start < len(self._lines) else []

    def flush(self) -> None:
        """Hand the pending rows to the writer thread (no-op in memory, or while it is busy)."""
        if not self._store:
            return
        if self._inflight is not None:
            if not self._inflight.done():
                return  # the disk is slower than the interval: the next batch is bigger
            self._check_inflight()
        if self._pending:
            self._inflight_rows, self._pending = self._pending, []
            self._inflight = self._store.submit(self._inflight_rows)

    def _check_inflight(self) -> None:
        """Requeue the rows of a failed write (only as many as are retained)."""
        assert self._inflight is not None
        exc = self._inflight.exception()
        if exc is not None:
            log.error("history write failed error=%r rows=%d", exc, len(self._inflight_rows))
            self._pending[:0] = self._inflight_rows[-max(self.size, 1) :]
        self._inflight = None
        self._inflight_rows = []

    def close(self) -> None:
        """Write everything still pending and close the database (blocking)."""
        if self._store:
            if self._inflight is not None:
                self._inflight.exception()  # waits for it
                self._check_inflight()
            self._store.close(self._pending)
            self._pending = []


class _SqliteStore:
    """The SQLite file, written only from its own single worker thread after `load()`."""

    def __init__(self, path: str, size: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.size = size
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")

    def load(self) -> tuple[int, list[Row]]:
        last = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        rows = self._db.execute(
            "SELECT id, name, text, at FROM messages WHERE id > ? ORDER BY id",
            (last - self.size,),
        ).fetchall()
        return last, rows

    def submit(self, rows: list[Row]) -> Future[None]:
        return self._worker.submit(self._write, rows)

    def _write(self, rows: list[Row]) -> None:
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

    def close(self, rows: list[Row]) -> None:
        self._worker.shutdown(wait=True)
        if rows:
            self._write(rows)
        self._db.close()
