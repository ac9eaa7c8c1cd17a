"""The seam between one chat server and the shared conversation of a cluster.

`Cluster` replaces the server's handlers for the events that span hosts (broadcast, /nick,
/msg, /who, /since) and is the backplane's `Sink`: what Redis delivers goes out through the
server's usual fan-out. The server itself only asks "is there a cluster?" when a client leaves
and at start and stop; single-host mode never imports this module.

A command whose answer comes from Redis (/nick, /who, /msg to another host) holds that client's
later lines until the answer is there, so every client still gets its replies in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from chat.backplane import Position, RedisBackplane, Unavailable
from chat.protocol import (
    Info,
    Joined,
    Left,
    Nick,
    NickChanged,
    Private,
    PrivateMessage,
    Say,
    Since,
    State,
    Who,
    WhoList,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from chat.server import ChatServer, Client

log = logging.getLogger("chat.cluster")

UNAVAILABLE = "the shared message store is unreachable; try again shortly"
LOST_NOTICE = "the cluster's message store is unreachable: messages are held, then refused"
BACK_NOTICE = "the cluster's message store is back"


class Cluster:
    """Binds a `ChatServer` to a `RedisBackplane` (see chat/backplane.py)."""

    def __init__(self, server: ChatServer, backplane: RedisBackplane) -> None:
        self.server = server
        self.backplane = backplane
        self._claiming: dict[str, Client] = {}  # lower-cased nick -> client awaiting Redis
        self._started = False
        server._handlers.update(
            {
                Say: self._on_say,
                Nick: self._on_nick,
                Private: self._on_private,
                Who: self._on_who,
                Since: self._on_since,
            }
        )
        server.cluster = self

    @property
    def last_id(self) -> int:
        return self.backplane.last_id

    def describe(self) -> str:
        return self.backplane.describe()

    async def start(self, resume_from: int | None = None, inherit: Position | None = None) -> None:
        """Raises chat.backplane.BackplaneError when Redis cannot serve."""
        if not self._started:
            await self.backplane.start(self, resume_from, inherit)
            self._started = True

    async def stop(self) -> None:
        await self.backplane.stop()

    def adopted(self) -> None:
        """The predecessor's connections are registered: hold their nicknames (whoever holds
        them now: the predecessor) and deliver what they have not seen yet."""
        for client in self.server.named.values():
            nick = client.conn.nick if client.conn else None
            if nick is not None:
                self.backplane.adopt(nick)
        self.backplane.resume()

    def left(self, nick: str, reason: str, announce: bool) -> None:
        """A named client is gone: free its nickname, tell every host."""
        self.backplane.release(nick)
        if announce:
            self.backplane.line(Left(nick, reason).line())

    # ---- events ---------------------------------------------------------------------------

    def _on_say(self, client: Client, event: Say) -> None:
        conn = client.conn
        assert conn.nick is not None
        if not self.backplane.say(conn.nick, event.text):
            conn.refuse("unavailable", UNAVAILABLE)
            self.server._pump(client)

    def _on_since(self, client: Client, event: Since) -> None:
        lines = self.backplane.since(event.after)
        if lines:
            data = b"".join(lines)
            client.allowance = len(data)  # a replay may exceed the backlog limit once
            self.server._send(client, data)

    def _on_who(self, client: Client, event: Who) -> None:
        self._wait(client, self.backplane.who(), self._who_done)

    def _who_done(self, client: Client, result: Any) -> None:
        conn = client.conn
        if isinstance(result, Unavailable):
            conn.refuse("unavailable", UNAVAILABLE)
        else:
            conn.send(WhoList(tuple(result)))

    def _on_private(self, client: Client, event: Private) -> None:
        conn = client.conn
        assert conn.nick is not None
        target = self.server.named.get(event.to.lower())
        if target is not None:  # on this host: no round trip
            self.server._send(target, PrivateMessage(conn.nick, event.text).line())
            return
        self._wait(client, self.backplane.private(conn.nick, event.to, event.text), self._priv_done)

    def _priv_done(self, client: Client, result: Any) -> None:
        conn = client.conn
        if isinstance(result, Unavailable):
            conn.refuse("unavailable", UNAVAILABLE)
        elif result is not True:
            conn.refuse("no-such-nick", "no such nickname")

    def _on_nick(self, client: Client, event: Nick) -> None:
        conn = client.conn
        name, key = event.name, event.name.lower()
        holder = self.server.named.get(key) or self._claiming.get(key)
        if holder is not None and holder is not client:
            conn.refuse("nick-taken", "that nickname is in use")
            self.server._pump(client)
            return
        old = conn.nick
        if old == name:
            conn.accept_nick(name)
            self.server._pump(client)
            return
        self._claiming[key] = client
        future = self.backplane.claim(name, old)
        self._wait(client, future, lambda c, result: self._nick_done(c, name, old, result))

    def _nick_done(self, client: Client, name: str, old: str | None, result: Any) -> None:
        server = self.server
        conn = client.conn
        key = name.lower()
        self._claiming.pop(key, None)
        if isinstance(result, Unavailable):
            conn.refuse("unavailable", UNAVAILABLE)
            return
        if result is not True:
            conn.refuse("nick-taken", "that nickname is in use")
            return
        conn.accept_nick(name)
        server._pump(client)
        if not client.receiving:
            server.unnamed.discard(client)
            server.named[key] = client
            server._receives(client)
            self.backplane.line(Joined(name).line())
            log.info("nick peer=%s nick=%s", client.peer, name)
        elif old is not None:
            server.named.pop(old.lower(), None)
            server.named[key] = client
            if old != name:
                self.backplane.line(NickChanged(old, name).line())
            log.info("nick peer=%s old=%s nick=%s", client.peer, old, name)

    def _wait(
        self,
        client: Client,
        future: asyncio.Future[Any],
        done: Callable[[Client, Any], None],
    ) -> None:
        """Hold this client's later lines until FUTURE is done, then answer and go on."""
        server = self.server
        server.waiting.add(client)
        client.transport.pause_reading()

        def finish(future: asyncio.Future[Any]) -> None:
            server.waiting.discard(client)
            exc = future.exception()
            result: Any = exc if isinstance(exc, Unavailable) else future.result()
            gone = (
                client not in server.clients
                or client.close_after_flush
                or client.conn.state is State.CLOSING
            )
            if gone:  # a claim that succeeded for a client that left meanwhile: give it back
                self._abandon_claim(client, result)
                return
            done(client, result)
            server._pump(client)
            # Paused for a handover: reading resumes with the rest (`thaw`), or in the successor.
            if server.reading and not client.transport.is_closing():
                client.transport.resume_reading()
            server.received(client, b"")  # the lines that arrived meanwhile

        future.add_done_callback(finish)

    def _abandon_claim(self, client: Client, result: Any) -> None:
        for key, holder in list(self._claiming.items()):
            if holder is client:
                del self._claiming[key]
                if result is True:
                    self.backplane.release(key)

    # ---- the backplane's Sink -------------------------------------------------------------

    def deliver(self, lines: list[bytes]) -> None:
        broadcast = self.server._broadcast
        last = 0
        for line in lines:
            broadcast(line)
            if line.startswith(b"MSG "):
                last = int(line[4 : line.index(b" ", 4)])
        if last:
            # The id a handover hands on (chat/takeover.py sends history.last_id): the successor
            # delivers from there.
            self.server.history.last_id = last

    def deliver_private(self, to: str, line: bytes) -> None:
        target = self.server.named.get(to)
        if target is not None:
            self.server._send(target, line)

    def status(self, available: bool) -> None:
        self.server._broadcast(Info(BACK_NOTICE if available else LOST_NOTICE).line())

    def nicks_lost(self, nicks: list[str]) -> None:
        if self.server.frozen:
            return  # the sessions are the successor's now; its own renewal will tell it
        for nick in nicks:
            client = self.server.named.get(nick.lower())
            if client is not None:
                log.warning("nick-lost peer=%s nick=%s", client.peer, nick)
                self.server.drop(client, "nick-lost", "nick-lost")

    def nicks_held(self) -> list[str]:
        return [c.conn.nick for c in self.server.named.values() if c.conn and c.conn.nick]


async def join(
    server: ChatServer, resume_from: int | None = None, inherit: Position | None = None
) -> Cluster:
    """Connect SERVER to the backplane its settings name. Raises BackplaneError (one line)."""
    from chat.backplane import BackplaneError

    url = server.settings.backplane
    assert url is not None
    try:
        import redis.asyncio  # noqa: F401 - checked here for a clear error
    except ImportError:
        raise BackplaneError(
            "--backplane needs the redis package: pip install 'pynet[cluster]'"
        ) from None
    cluster = Cluster(server, RedisBackplane(url, history_size=server.settings.history_size))
    await cluster.start(resume_from, inherit)
    log.info("cluster %s", cluster.describe())
    return cluster
