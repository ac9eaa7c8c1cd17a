"""When queued output is written: at once while fan-outs keep up, batched while they do not.

Socket-free on purpose (the server feeds it times), so the policy is unit-tested as data.

A fan-out to N clients costs N writes (several microseconds each on loopback), so with 1,000
clients one takes milliseconds. Two regimes:
- the server keeps up: since the last fan-out ended it has been idle at least ``keep_up`` x as
  long as that fan-out took. Then output is written at the end of this loop turn, like a C
  server: a quiet server adds no wait to a line.
- broadcasts arrive faster than a fan-out completes (output is queued right after the last
  fan-out ended). Then the next fan-out starts no sooner than one fan-out's cost after the last
  ended, capped by ``max_delay``: the broadcasts arriving meanwhile share one write per
  client, so throughput grows with the load instead of the write count, and the server keeps
  time for reading its input.
"""

from __future__ import annotations

# Below this a timer costs more than it saves: write at the end of the loop turn instead.
MIN_WAIT = 0.0005
KEEP_UP = 0.5


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
        idle = now - self.ended
        if idle >= self.keep_up * self.cost:
            return 0.0
        wait = min(self.ended + self.cost - now, self.max_delay)
        return wait if wait >= MIN_WAIT else 0.0

    def flushed(self, began: float, ended: float) -> None:
        """Record one flush (its start and end on the same clock as ``delay``'s ``now``)."""
        self.cost = max(0.0, ended - began)
        self.ended = ended
