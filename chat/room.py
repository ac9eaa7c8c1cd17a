"""The conversation's rules, written once for one host and for a cluster alike.

A room answers what clients ask (`/nick`, `/msg`, `/who`, `/since`, a line to everyone) and
says who left. It talks to the server only through `Hub`, the small set of things a room may
ask of it; the server talks to a room only through `Room`. `Conversation` holds the rules;
where one host and a cluster differ, it asks its subclass: `LocalRoom` (here: the history and
the registry of this process) or `chat.cluster.ClusterRoom` (Redis, through the backplane).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from chat.connection import Peer
from chat.history import History
from chat.metrics import Metrics
from chat.protocol import (
    Joined,
    Left,
    Nick,
    NickChanged,
    Private,
    PrivateMessage,
    Quit,
    Refused,
    Say,
    Since,
    Who,
    WhoList,
)
from chat.registry import Registry

Handler = Callable[[Peer, Any], None]
Done = Callable[[Peer, "asyncio.Future[Any]"], None]
"""What `Hub.answer_later` calls with the answered future."""


class Hub(Protocol):
    """What a room may ask of the server it serves in."""

    registry: Registry[Peer, Any]
    history: History
    metrics: Metrics

    @property
    def frozen(self) -> bool: ...

    def reply(self, peer: Peer) -> None:
        """Queue the replies PEER's protocol state made (behind its broadcasts)."""

    def send(self, peer: Peer, data: bytes) -> None:
        """Queue DATA for PEER alone."""

    def broadcast(self, data: bytes) -> None:
        """Queue DATA for every named client of this server."""

    def receives(self, peer: Peer) -> None:
        """PEER is named: it gets every broadcast from now on."""

    def drop(self, peer: Peer, reason: str, left: str, *, announce: bool = True) -> None:
        """Say BYE to PEER and close it."""

    def replay(self, peer: Peer, after: int) -> None:
        """Send PEER the retained lines after id AFTER, a page at a time as it reads them; its
        next lines wait until the replay is written."""

    def answer_later(
        self, peer: Peer, future: asyncio.Future[Any], done: Done, abandon: Done
    ) -> None:
        """Hold PEER's later lines until FUTURE is done, then DONE(peer, future) and go on;
        ABANDON(peer, future) instead if PEER left meanwhile."""


class Room(Protocol):
    """What the server asks of its room."""

    handlers: dict[type, Handler]

    def left(self, nick: str, reason: str, announce: bool) -> None:
        """A named client is gone (announce: tell the others)."""

    def pause(self) -> None:
        """A handover froze the sessions: take in nothing more from elsewhere."""

    def resume(self) -> None:
        """The handover failed: go on."""

    def claim_adopted(self) -> None:
        """The predecessor let go (`commit`): its sessions' nicknames are this host's from now
        on. Called before the loop runs again, so no client's request gets ahead of it."""

    def adopted(self) -> None:
        """The predecessor's sessions are registered here."""

    def handover_state(self) -> tuple[int, dict[str, Any] | None, list[bytes] | None]:
        """The last id the clients saw, where a successor reads on (a cluster's position), and
        a cluster's retained lines (what `/since` replays; a single host's are its history's)."""

    def newest(self) -> int:
        """The id of the newest retained line (what a replay asked now ends with)."""

    def page(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int]:
        """Retained lines with ids in (AFTER, UPTO] that fit in LIMIT bytes, and the last id."""

    async def close(self) -> None:
        """Send what is queued elsewhere and let go of it."""


class Conversation:
    """The rules every room keeps; subclasses say how a line, a claim, a private message and
    `/who` travel."""

    def __init__(self, hub: Hub, log: logging.Logger, log_messages: bool) -> None:
        self.hub = hub
        self.log = log
        self.log_messages = log_messages
        self.handlers: dict[type, Handler] = {
            Say: self._on_say,
            Nick: self._on_nick,
            Private: self._on_private,
            Who: self._on_who,
            Since: self._on_since,
            Quit: self._on_quit,
            Refused: self._on_refused,
        }

    # ---- what differs between one host and a cluster --------------------------------------

    def say(self, peer: Peer, nick: str, text: str) -> None:
        raise NotImplementedError

    def publish(self, line: bytes) -> None:
        """Tell every client of the conversation (JOIN, NICK, LEFT)."""
        raise NotImplementedError

    def holder(self, key: str) -> Peer | None:
        """Who holds or is claiming the lower-cased nickname KEY, as far as this host knows."""
        return self.hub.registry.named.get(key)

    def claim(self, peer: Peer, name: str, old: str | None) -> None:
        """Take NAME for PEER (free here), then `named`."""
        raise NotImplementedError

    def private_elsewhere(self, peer: Peer, nick: str, to: str, text: str) -> None:
        """A private message to a nickname not on this host."""
        raise NotImplementedError

    def who(self, peer: Peer) -> None:
        raise NotImplementedError

    # ---- the rules --------------------------------------------------------------------------

    def _on_say(self, peer: Peer, event: Say) -> None:
        nick = peer.conn.nick
        assert nick is not None
        self.say(peer, nick, event.text)

    def _on_nick(self, peer: Peer, event: Nick) -> None:
        conn = peer.conn
        name = event.name
        holder = self.holder(name.lower())
        if holder is not None and holder is not peer:
            self.refuse(peer, "nick-taken", "that nickname is in use")
            self.hub.reply(peer)
            return
        old = conn.nick
        if old == name:
            conn.accept_nick(name)
            self.hub.reply(peer)
            return
        self.claim(peer, name, old)

    def named(self, peer: Peer, name: str, old: str | None) -> None:
        """NAME is PEER's now (it was OLD): register it and tell everyone."""
        hub = self.hub
        peer.conn.accept_nick(name)
        hub.reply(peer)
        if not peer.receiving:
            hub.registry.name(peer, name, None)
            hub.receives(peer)
            self.publish(Joined(name).line())
            self.log.info("nick peer=%s nick=%s", peer.peer, name)
        elif old is not None:
            hub.registry.name(peer, name, old)
            if old != name:
                self.publish(NickChanged(old, name).line())
            self.log.info("nick peer=%s old=%s nick=%s", peer.peer, old, name)

    def _on_private(self, peer: Peer, event: Private) -> None:
        nick = peer.conn.nick
        assert nick is not None
        target = self.hub.registry.named.get(event.to.lower())
        if target is None:
            self.private_elsewhere(peer, nick, event.to, event.text)
            return
        self.hub.send(target, PrivateMessage(nick, event.text).line())
        if self.log_messages:
            self.log.debug("priv nick=%s to=%s text=%r", nick, target.conn.nick, event.text)

    def _on_who(self, peer: Peer, event: Who) -> None:
        self.who(peer)

    def _on_since(self, peer: Peer, event: Since) -> None:
        self.hub.replay(peer, event.after)

    def _on_quit(self, peer: Peer, event: Quit) -> None:
        self.hub.drop(peer, "quit", event.reason or "quit")

    def _on_refused(self, peer: Peer, event: Refused) -> None:
        self.log.debug("refused peer=%s code=%s", peer.peer, event.code)
        metrics = self.hub.metrics
        metrics.error(event.code)
        if event.code == "rate-limited":
            metrics.rate_limited += 1

    def refuse(self, peer: Peer, code: str, text: str) -> None:
        """Refuse PEER's last command for a reason the room knows (counted by code)."""
        peer.conn.refuse(code, text)
        self.hub.metrics.error(code)

    # ---- the Room's lifecycle, where nothing lives elsewhere -------------------------------

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def claim_adopted(self) -> None:
        pass

    def adopted(self) -> None:
        pass

    async def close(self) -> None:
        pass


class LocalRoom(Conversation):
    """One host's conversation: the history and the registry of this process."""

    def __init__(self, hub: Hub, log: logging.Logger, log_messages: bool) -> None:
        super().__init__(hub, log, log_messages)
        self._who_version = -1
        self._who_line = b""

    def say(self, peer: Peer, nick: str, text: str) -> None:
        history = self.hub.history
        self.hub.broadcast(history.add(nick, text))
        if self.log_messages:
            self.log.debug("msg nick=%s id=%d text=%r", nick, history.last_id, text)

    def publish(self, line: bytes) -> None:
        self.hub.broadcast(line)

    def claim(self, peer: Peer, name: str, old: str | None) -> None:
        self.named(peer, name, old)

    def private_elsewhere(self, peer: Peer, nick: str, to: str, text: str) -> None:
        self.refuse(peer, "no-such-nick", "no such nickname")
        self.hub.reply(peer)

    def who(self, peer: Peer) -> None:
        """The same answer costs the same whoever asks: encoded once per change of names."""
        registry = self.hub.registry
        if self._who_version != registry.version:
            names = sorted(registry.nicks(), key=str.lower)
            self._who_line = WhoList(tuple(names)).line()
            self._who_version = registry.version
        self.hub.send(peer, self._who_line)

    def newest(self) -> int:
        return self.hub.history.last_id

    def page(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int]:
        return self.hub.history.page(after, upto, limit)

    def left(self, nick: str, reason: str, announce: bool) -> None:
        if announce:
            self.hub.broadcast(Left(nick, reason).line())

    def handover_state(self) -> tuple[int, dict[str, Any] | None, list[bytes] | None]:
        return self.hub.history.last_id, None, None
