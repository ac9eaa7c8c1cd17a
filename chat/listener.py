"""The listening socket: bound here or inherited, paused, settled and handed on.

asyncio accepts a connection in one callback and builds its transport in a later one, so
between the two a connection belongs to nobody. A handover must not leave such a connection
out, so the listener counts them: `accepted` (asyncio called the protocol factory) until `born`
(the transport called `connection_made`), and `settled` waits for that count to reach zero.
Pausing removes the socket from the selector but keeps asyncio's server open: the tasks
building the transports of connections accepted in this very turn need it (closed, they fail
and the connection is dropped without a greeting). `detach` then keeps the socket, and the
connects waiting in its queue, in a duplicate for the successor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("chat.server")

BACKLOG = 4096

P = TypeVar("P", bound=asyncio.Protocol)


class Listener(Generic[P]):
    """One listening socket served by asyncio, with its connections in flight tracked."""

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], P]) -> None:
        self._loop = loop
        self._factory = factory
        self.server: asyncio.Server | None = None
        self.unborn: set[P] = set()  # accepted; their transport has not connected yet
        self._settled: asyncio.Event | None = None  # set when `unborn` empties, while awaited

    @property
    def sockname(self) -> tuple[str, int]:
        assert self.server is not None
        name = self.server.sockets[0].getsockname()
        return name[0], name[1]

    async def open(
        self, host: str, port: int, *, reuse_port: bool, sock: socket.socket | None = None
    ) -> int:
        """Serve on SOCK (inherited from a predecessor) or a new socket; the port."""
        if sock is None:
            self.server = await self._loop.create_server(
                self.accepted, host, port, backlog=BACKLOG, reuse_port=reuse_port
            )
        else:
            self.server = await self._loop.create_server(self.accepted, sock=sock, backlog=BACKLOG)
        return self.sockname[1]

    def accepted(self) -> P:
        """asyncio's protocol factory: called as soon as a connection is accepted, a loop turn
        or more before its transport calls `connection_made` (and the server `born`)."""
        protocol = self._factory()
        self.unborn.add(protocol)
        return protocol

    def born(self, protocol: P) -> None:
        """PROTOCOL's transport is made: it is the server's now."""
        self.unborn.discard(protocol)
        if not self.unborn and self._settled is not None:
            self._settled.set()

    def pause(self) -> None:
        """Accept nothing more (connects wait in the listener's queue), but keep the server
        open for the transports under construction."""
        assert self.server is not None
        self._loop.remove_reader(self.server.sockets[0].fileno())

    async def settled(self, limit: float) -> bool:
        """Wait (up to LIMIT seconds) until every connection accepted before `pause` is born.

        Tracked, not guessed: a fixed settle time was too short when the loop's turns were long
        (a big fan-out). One turn first: the tasks of the last accepts call the factory in the
        next turn. Connections whose transport never came (it failed) are forgotten after
        LIMIT, so they cannot hold up a later handover too.
        """
        await asyncio.sleep(0)
        if self.unborn:
            self._settled = asyncio.Event()
            try:
                await asyncio.wait_for(self._settled.wait(), limit)
            except TimeoutError:
                log.warning("handover %d accepted connections never connected", len(self.unborn))
                self.unborn.clear()
                return False
            finally:
                self._settled = None
        return True

    def detach(self) -> socket.socket:
        """Close the listener for asyncio but keep the socket (and its queue) in a duplicate."""
        assert self.server is not None
        sock = socket.socket(fileno=os.dup(self.server.sockets[0].fileno()))
        self.server.close()
        self.server = None
        return sock

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
