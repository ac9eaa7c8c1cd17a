"""Serving a client as it reads: the pages of a `/since` replay, then the lines it sent
meanwhile, each once what it was sent before has drained.

A client can ask for more than its socket takes at once (`/since 0` over a long history) or
send commands faster than it reads the answers; writing all of it would hold megabytes per
client. `Pacer` stops reading such a client, writes the next page when asyncio says its output
drained (`Peer.resume_writing`, then `Owner.drained`), and reads it again once nothing more is
owed. It asks its server only what `Paced` names; the fan-out keeps what waits behind a replay
(`Fanout.hold_back`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Protocol

from chat.connection import Peer
from chat.fanout import Fanout

REPLAY_PAGE = 64 * 1024
"""Bytes of a `/since` replay written at a time: the next page goes once the client read this
one, so a replay costs the server a page, however much is asked (and however often)."""
DRAINED = 16 * 1024
"""A client's unsent bytes at or below which it reads again (asyncio's low-water mark)."""
DRAIN_POLL = 0.005
"""Seconds between looks at a client whose output asyncio will not report drained."""


class Paced(Protocol):
    """What a `Pacer` asks of its server."""

    @property
    def clients(self) -> Collection[Peer]: ...

    @property
    def serving(self) -> bool:
        """False while a handover froze the sessions: nothing is written then."""

    @property
    def reading(self) -> bool:
        """False while a handover is under way: a client is read again by its successor."""

    def page(self, after: int, upto: int, budget: int) -> tuple[list[bytes], int]:
        """The lines after id AFTER up to UPTO, about BUDGET bytes of them, and the last id."""

    def received(self, client: Peer, data: bytes) -> None:
        """Go on with what CLIENT sent (b"": the lines it sent meanwhile)."""


def owed(client: Peer) -> int:
    """Bytes queued for CLIENT and not sent yet."""
    size = client.transport.get_write_buffer_size()
    return size + sum(map(len, client.out)) if client.out is not None else size


class Pacer:
    """Serves the clients of one server as they read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: Paced, fanout: Fanout[Peer]):
        self._loop = loop
        self._server = server
        self._fanout = fanout
        self._continuing: set[Peer] = set()  # a `_continue` is scheduled for them

    def pace(self, client: Peer) -> None:
        """Serve CLIENT as it reads: stop reading it, and have asyncio say when its unsent
        output drained below DRAINED (`Peer.resume_writing`) rather than looking for it."""
        client.transport.pause_reading()
        client.transport.set_write_buffer_limits(high=DRAINED, low=DRAINED)
        self.soon(client)

    def soon(self, client: Peer, delay: float = 0.0) -> None:
        """Go on with CLIENT in DELAY seconds (once, however often asked meanwhile)."""
        if client not in self._continuing:
            self._continuing.add(client)
            self._loop.call_later(delay, self._continue, client)

    def _continue(self, client: Peer) -> None:
        """CLIENT may have read what it was sent: the next page of its replay, then its lines
        held meanwhile. Waits (asyncio's `resume_writing`, or a look every DRAIN_POLL) while
        more than DRAINED bytes are unsent."""
        self._continuing.discard(client)
        if client.replay is None and not client.throttled:
            return
        server = self._server
        if client not in server.clients or client.close_after_flush:
            return
        if not server.serving:
            return  # frozen for a handover: `thaw`, or the successor, goes on from here
        transport = client.transport
        if client.replay is None and client.out is not None:
            self.soon(client, DRAIN_POLL)  # its answers are not even written yet
            return
        if transport.get_write_buffer_size() > DRAINED:
            if not client.blocked:  # asyncio reports the drain only after a pause
                self.soon(client, DRAIN_POLL)
            return
        cursor = client.replay
        if cursor is not None:
            lines, last = server.page(cursor[0], cursor[1], REPLAY_PAGE)
            if lines:
                cursor[0] = last
                transport.write(b"".join(lines))  # before what waits behind it (`hold_back`)
                if last < cursor[1]:
                    self.soon(client)
                    return
            client.replay = None
            if client.out is not None and not self._fanout.scheduled:
                self._fanout.schedule()  # the lines held behind the replay
        client.throttled = False
        if client.partial_since:  # its line's clock stood still while we did not read
            client.partial_since = self._loop.time()
        if server.reading and not transport.is_closing():
            transport.resume_reading()
        server.received(client, b"")
