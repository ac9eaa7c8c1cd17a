"""When queued output is written: at once while fan-outs keep up, batched while they do not.

Socket-free on purpose (the server feeds it times), so the policy is unit-tested as data.

A fan-out to N clients costs N writes (several microseconds each on loopback), so with 1,000
clients one takes milliseconds. The rule: after a flush that took ``cost`` seconds, the next one
starts no sooner than ``keep_up x cost`` after it ended (and never waits more than
``max_delay``).
- A quiet server, or one whose fan-outs keep up with the broadcasts, has been idle that long
  already: output is written at the end of this loop turn, like a C server's, with no wait.
- When broadcasts arrive faster than a fan-out completes, output is queued right after the last
  fan-out ended and waits up to ``keep_up x cost``: the broadcasts arriving meanwhile share one
  write per client, so throughput grows with the load instead of the write count, and the
  server keeps at least ``keep_up / (1 + keep_up)`` of its time (20 %) for reading input.
``keep_up`` = 0.25 was chosen by measurement (bench/README.md, "Flush policy"): 0.5 and 1.0
added up to a fan-out's cost to every line at 100-200 broadcasts/s with 1,000 clients; 0.1 left
the server too little time to read, so its highest sustained rate fell.
"""

from __future__ import annotations

# Below this a timer costs more than it saves: write at the end of the loop turn instead.
MIN_WAIT = 0.0005
KEEP_UP = 0.25


class FlushPolicy:
    """Decides how long output first queued at ``now`` waits before the next flush."""

    __slots__ = ("cost", "ended", "keep_up", "max_delay")

    def __init__(self, max_delay: float, keep_up: float = KEEP_UP) -> None:
        self.max_delay = max_delay
        self.keep_up = keep_up
        self.cost = 0.0  # seconds the last flush took
        self.ended = float("-inf")  # when it ended (the caller's clock)

    def delay(self, now: float) -> float:
        """Seconds to wait before flushing; 0 means at the end of this loop turn."""
        wait = min(self.ended + self.keep_up * self.cost - now, self.max_delay)
        return wait if wait >= MIN_WAIT else 0.0

    def flushed(self, began: float, ended: float) -> None:
        """Record one flush (its start and end on the same clock as ``delay``'s ``now``)."""
        self.cost = max(0.0, ended - began)
        self.ended = ended
