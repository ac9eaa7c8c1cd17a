"""When queued output is written: at once while fan-outs keep up, batched while they do not.

Socket-free on purpose (the server feeds it times), so the policy is unit-tested as data.

A fan-out to N clients costs N writes (several microseconds each on loopback), so with 1,000
clients one takes milliseconds. The rule:
- While fan-outs keep up (the last flush carried at most one broadcast: none arrived while the
  one before was being written), output is written at the end of this loop turn, like a C
  server's: a quiet or lightly loaded server adds no wait to a line.
- While broadcasts arrive faster than a fan-out completes (the last flush carried several),
  the next flush starts no sooner than ``keep_up x cost`` after the last one ended (and never
  waits more than ``max_delay``): the broadcasts arriving meanwhile share one write per client,
  so throughput grows with the load instead of the write count, and the server keeps at least
  ``keep_up / (1 + keep_up)`` of its time (20 %) for reading its input.
``keep_up`` = 0.25 and the one-broadcast test were chosen by measurement (bench/README.md,
"Flush policy"): waiting after every costly fan-out, or 0.5-1.0 x its cost, added up to a
fan-out's cost to every line at 100-200 broadcasts/s with 1,000 clients; 0.1 left the server
too little time to read, so its highest sustained rate fell.
"""

from __future__ import annotations

# Below this a timer costs more than it saves: write at the end of the loop turn instead.
MIN_WAIT = 0.0005
KEEP_UP = 0.25


class FlushPolicy:
    """Decides how long output first queued at ``now`` waits before the next flush."""

    __slots__ = ("batched", "cost", "ended", "keep_up", "max_delay")

    def __init__(self, max_delay: float, keep_up: float = KEEP_UP) -> None:
        self.max_delay = max_delay
        self.keep_up = keep_up
        self.cost = 0.0  # seconds the last flush took
        self.ended = float("-inf")  # when it ended (the caller's clock)
        self.batched = False  # it carried several broadcasts: they outrun the fan-outs

    def delay(self, now: float) -> float:
        """Seconds to wait before flushing; 0 means at the end of this loop turn."""
        if not self.batched:
            return 0.0
        wait = min(self.ended + self.keep_up * self.cost - now, self.max_delay)
        return wait if wait >= MIN_WAIT else 0.0

    def flushed(self, began: float, ended: float, broadcasts: int) -> None:
        """Record one flush: its start and end (the clock of ``delay``'s ``now``) and how many
        broadcasts it wrote to every client."""
        self.cost = max(0.0, ended - began)
        self.ended = ended
        self.batched = broadcasts > 1
