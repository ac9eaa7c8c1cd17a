"""The fan-out: what every connection is owed, written in as few writes as possible.

No sockets: it writes to whatever has an asyncio transport's `write`, `close`, `abort`,
`is_closing` and `get_write_buffer_size`, and asks its owner through three callbacks, each called
once per step, never once per connection: `receivers` (who gets broadcasts now), `commit` (make
the history durable before any id goes out) and `cut` (these readers are too slow).

How it stays cheap (the benchmark drives 1,000 and 10,000 clients):
- each broadcast is encoded once and appended to the log; a flush writes every receiver the lines
  it has not had yet, joined once per distinct position (one `write` per receiver per flush,
  however many messages);
- a fan-out to more than `FANOUT_STEP` receivers is written over several loop turns: input read
  in between joins the fan-out for the receivers it has not reached yet, so a line is not held
  behind a whole fan-out of an earlier one (at 10,000 clients one fan-out takes ~100 ms);
- a receiver that also has its own lines (a reply, a private message) gets a private list with
  the broadcasts it has not had yet (it is "forked"), and later broadcasts are appended to it,
  so every connection still sees its lines in order;
- one slow reader costs only its own buffer: past `max_backlog` unsent bytes it is cut; past
  `max_buffered` in total the biggest backlogs go first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from chat.flush_policy import FlushPolicy
from chat.metrics import Metrics

# Clients written per fan-out step: a 1,000-client fan-out (~5-10 ms) stays one step; a larger
# one lets the loop read new lines every ~10 ms (bench/README.md, "Fan-out steps").
FANOUT_STEP = 1024
SLOW_CLOSE_GRACE = 5.0
"""Seconds a disconnected slow reader gets to read its BYE before the socket is cut."""


class Receiver(Protocol):
    """What the fan-out reads and keeps on each connection (`chat.connection.Peer`)."""

    transport: asyncio.Transport
    out: list[bytes] | None  # forked: its own lines, in order, until a flush
    receiving: bool  # gets broadcasts
    seen: int  # position in the log up to which it has its lines
    allowance: int  # extra backlog tolerated after a /since replay
    close_after_flush: bool
    replay: list[int] | None  # a replay under way: its later lines wait in `out` (paced)


R = TypeVar("R", bound=Receiver)


class Fanout(Generic[R]):
    """The broadcast log, each receiver's position in it, and when and how it is written."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        flush_delay: float,
        max_backlog: int,
        max_buffered: int,
        *,
        receivers: Callable[[], Iterable[R]],
        everyone: Callable[[], Iterable[R]],
        commit: Callable[[], object],
        cut: Callable[[list[R]], None],
        metrics: Metrics | None = None,
    ) -> None:
        self._loop = loop
        self.metrics = metrics or Metrics()  # fan-out and commit times, once per step
        self.max_backlog = max_backlog
        self.max_buffered = max_buffered
        self._receivers = receivers
        self._everyone = everyone
        self._commit = commit
        self._cut = cut
        self.log: list[bytes] = []  # broadcasts since the last fan-out began: some lack them
        self.base = 0  # the position of log[0]; a position counts broadcasts since start
        self.sweeping = False  # a fan-out is under way, to the receivers of _sweep from _at on
        self._sweep: list[R] = []
        self._at = 0
        self._sweep_head = 0  # the log's head when that fan-out began
        self._sweep_began = 0.0
        self._sweep_buffered = 0  # bytes left in the buffers of the receivers it wrote
        self.forked: list[R] = []
        self.scheduled = False
        self.policy = FlushPolicy(flush_delay)
        self.held = False  # between a handover's freeze and its commit (or thaw): write nothing

    @property
    def head(self) -> int:
        """The position after the last broadcast."""
        return self.base + len(self.log)

    @property
    def pending(self) -> bool:
        """Whether anything is queued and not written yet."""
        return bool(self.log or self.forked)

    def receives(self, receiver: R) -> None:
        """RECEIVER is named: from now on it gets every broadcast (none from before)."""
        receiver.receiving = True
        receiver.seen = self.head

    def send(self, receiver: R, data: bytes) -> None:
        """Queue lines for one receiver, behind the broadcasts it has not had yet."""
        out = receiver.out
        if out is None:
            out = receiver.out = []
            if receiver.receiving and receiver.seen != self.head:
                assert receiver.seen >= self.base, "a client's lines were trimmed from the log"
                out.append(b"".join(self.log[receiver.seen - self.base :]))
            self.forked.append(receiver)
        out.append(data)
        if not self.scheduled:
            self.schedule()

    def settle(self, receiver: R) -> None:
        """Write everything queued for RECEIVER now, so what is written to it next directly
        (a replay's pages) comes after it."""
        out = receiver.out
        if out is not None:
            receiver.out = None
            self.forked.remove(receiver)
            data = b"".join(out)
        elif receiver.receiving and receiver.seen != self.head:
            data = b"".join(self.log[receiver.seen - self.base :])
        else:
            data = b""
        receiver.seen = self.head
        if data:
            receiver.transport.write(data)

    def hold_back(self, receiver: R, held: bytes = b"") -> None:
        """From now on, while `receiver.replay` is set, keep what comes for RECEIVER (after
        HELD) in its own list, unwritten: its replay's pages go first. Its backlog counts it."""
        if receiver.out is None:
            receiver.out = []
            self.forked.append(receiver)
            receiver.seen = self.head
        if held:
            receiver.out.insert(0, held)

    def held_back(self, receiver: R) -> bytes:
        """What waits behind RECEIVER's replay (for a handover to carry)."""
        return b"".join(receiver.out or ()) if receiver.replay is not None else b""

    def broadcast(self, data: bytes) -> None:
        """Queue one encoded line for every receiver."""
        self.log.append(data)
        for receiver in self.forked:
            out = receiver.out  # never None for a forked receiver
            if receiver.receiving and out is not None:
                out.append(data)
        if not self.scheduled:
            self.schedule()

    def schedule(self) -> None:
        """Flush at the end of this tick while fan-outs keep up, a little later when they do not.

        The policy (chat/flush_policy.py) writes at once while fan-outs keep up (the last one
        carried a single broadcast), so a quiet server adds no wait; while broadcasts arrive
        faster than a fan-out completes it waits up to a quarter of a fan-out's cost (capped by
        `flush_delay`) so the broadcasts arriving meanwhile share one write per receiver.
        """
        self.scheduled = True
        delay = self.policy.delay(time.perf_counter())
        if delay <= 0.0:
            self._loop.call_soon(self.flush)
        else:
            self._loop.call_later(delay, self.flush)

    def flush(self) -> None:
        """Write queued output: one step of the fan-out, the next one after a loop turn."""
        self.scheduled = False
        if self.held:
            return  # kept for `resume`: the sessions as sent to the successor must stay true
        self.step(FANOUT_STEP)
        if self.scheduled:
            return  # the step cut a slow reader, and that scheduled the next one
        if self.sweeping:  # read what came, then write on
            self.scheduled = True
            self._loop.call_soon(self.flush)
        elif self.log:
            self.schedule()  # lines came during the fan-out: the first receivers lack them

    def flush_all(self) -> None:
        """Write everything queued, now (before a handover's snapshot, when stopping), except
        what waits behind a replay (`hold_back`)."""
        self.step(None)
        while self.log or any(r.replay is None for r in self.forked):
            self.step(None)  # cutting a slow reader broadcasts its LEFT

    def hold(self) -> None:
        """Write nothing until `resume` (a handover froze the sessions)."""
        self.held = True

    def resume(self) -> None:
        """Write again what was queued while held."""
        self.held = False
        if self.pending and not self.scheduled:
            self.schedule()

    def clear(self) -> None:
        """Forget everything queued (the successor owns every connection now)."""
        self.log.clear()
        self.sweeping = False
        self._sweep.clear()
        self.forked.clear()

    def step(self, limit: int | None) -> None:
        """Write up to LIMIT receivers of the fan-out (all: None), then every forked one.

        A fan-out begins with the receivers as they are; each gets the log from its own
        position to the head, so a line that came since the fan-out began reaches the receivers
        it has not written yet in the same write, and the others in the next fan-out.
        """
        began = time.perf_counter()
        # Group commit: the lines are durable before any client sees an id from them.
        self._commit()
        log_, base, head = self.log, self.base, self.head
        if log_:
            self.metrics.commit.observe(time.perf_counter() - began)
        max_backlog = self.max_backlog
        slow: list[R] = []
        if not self.sweeping and log_:
            self.sweeping = True
            self._sweep = list(self._receivers())
            self._at = 0
            self._sweep_head = head
            self._sweep_began = began
            self._sweep_buffered = 0
        if self.sweeping:
            sweep = self._sweep
            at = self._at
            end = len(sweep) if limit is None else min(len(sweep), at + limit)
            joined: dict[int, bytes] = {}  # a receiver's position -> the lines after it
            buffered = 0
            for receiver in sweep[at:end]:
                seen = receiver.seen
                if seen == head or receiver.out is not None or not receiver.receiving:
                    continue
                data = joined.get(seen)
                if data is None:
                    data = joined[seen] = b"".join(log_[seen - base :])
                receiver.seen = head
                transport = receiver.transport
                transport.write(data)
                size = transport.get_write_buffer_size()
                if size:
                    buffered += size
                    if size > max_backlog and size > max_backlog + receiver.allowance:
                        slow.append(receiver)
                elif receiver.allowance:
                    receiver.allowance = 0
            self._sweep_buffered += buffered
            self.metrics.fanout.observe(time.perf_counter() - began)
            self._at = end
            if end == len(sweep):  # every receiver has the lines up to where it began
                self.sweeping = False
                self._sweep = []
                carried = head - base
                del log_[: self._sweep_head - base]
                self.base = self._sweep_head
                self.policy.flushed(self._sweep_began, time.perf_counter(), carried)
        total = self._sweep_buffered
        if not self.sweeping:
            self._sweep_buffered = 0
        forked, self.forked = self.forked, []
        for receiver in forked:
            transport = receiver.transport
            if receiver.replay is not None and not transport.is_closing():
                self.forked.append(receiver)  # paced: written once its replay is
                size = transport.get_write_buffer_size() + sum(map(len, receiver.out or ()))
                if size > max_backlog:
                    slow.append(receiver)
                continue
            out, receiver.out = receiver.out, None
            receiver.seen = head  # its list got every broadcast since it forked
            if transport.is_closing():
                continue
            transport.write(b"".join(out or ()))
            if receiver.close_after_flush:
                transport.close()
                if transport.get_write_buffer_size():
                    self._loop.call_later(SLOW_CLOSE_GRACE, transport.abort)
                continue
            size = transport.get_write_buffer_size()
            total += size
            if size > max_backlog and size > max_backlog + receiver.allowance:
                slow.append(receiver)
        if total > self.max_buffered:
            total = sum(r.transport.get_write_buffer_size() for r in self._everyone())
        if total > self.max_buffered:
            slow.extend(self._biggest_backlogs(total))
            self._sweep_buffered = 0
        if slow:
            self._cut(slow)

    def _biggest_backlogs(self, total: int) -> list[R]:
        """Receivers to cut, biggest backlog first, to bring the total back under the bound."""
        target = self.max_buffered * 3 // 4
        chosen = []
        for receiver in sorted(
            self._everyone(), key=lambda r: r.transport.get_write_buffer_size(), reverse=True
        ):
            if total <= target:
                break
            total -= receiver.transport.get_write_buffer_size()
            chosen.append(receiver)
        return chosen
