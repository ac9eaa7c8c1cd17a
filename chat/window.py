"""The retained window: the last `size` broadcasts as encoded `MSG` lines, for `/since`.

One class for both places that keep it: a single host's `chat.history.History` and a
cluster's `chat.backplane.RedisBackplane` (which reads ids from a stream that may skip).
"""

from __future__ import annotations

from collections import deque
from itertools import islice


class Window:
    """The newest `size` lines and the id of the newest (`last_id`), ids consecutive."""

    __slots__ = ("last_id", "lines", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.lines: deque[bytes] = deque(maxlen=size)
        self.last_id = 0

    def add(self, msg_id: int, line: bytes) -> None:
        """LINE has id MSG_ID; ids increase, and a gap (trimmed while away) restarts the window."""
        if self.size:
            if self.lines and msg_id != self.last_id + 1:
                self.lines.clear()
            self.lines.append(line)
        self.last_id = msg_id

    def since(self, after: int) -> list[bytes]:
        """Retained lines whose id is greater than AFTER, oldest first."""
        lines = self.lines
        first = self.last_id - len(lines) + 1
        start = max(after + 1, first) - first
        return list(islice(lines, start, None)) if start < len(lines) else []

    def page(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int]:
        """The retained lines with ids in (AFTER, UPTO], oldest first, as many as fit in LIMIT
        bytes (at least one), and the id of the last one (AFTER when there is none): a replay
        is written a page at a time, as its client reads."""
        lines = self.lines
        first = self.last_id - len(lines) + 1
        start = max(after + 1, first)
        page: list[bytes] = []
        size = 0
        for line in islice(lines, start - first, max(0, upto - first + 1)):
            if page and size + len(line) > limit:
                break
            page.append(line)
            size += len(line)
        return page, start + len(page) - 1 if page else after

    def reset(self, last_id: int, lines: list[bytes]) -> None:
        """Hold LINES (the newest, up to `size` of them), the last of which has id LAST_ID."""
        self.last_id = last_id
        self.lines.clear()
        self.lines.extend(lines[-self.size :] if self.size else [])
