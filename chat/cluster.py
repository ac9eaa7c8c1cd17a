"""A cluster's room: the conversation shared with the other hosts through Redis.

`ClusterRoom` is a `chat.room.Room` whose rules are `chat.room.Conversation`'s, written once for
one host and a cluster alike; only how a line, a nickname claim, a private message to another
host and `/who` travel differs (through `chat.backplane`). It is also the backplane's `Sink`:
what Redis delivers goes out through the server's usual fan-out. It talks to the server only
through `chat.room.Hub`; single-host mode never imports this module.

A command whose answer comes from Redis (/nick, /who, /msg to another host) holds that client's
later lines until the answer is there (`Hub.answer_later`), so every client still gets its
replies in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from chat.backplane import BackplaneError, Position, RedisBackplane, Unavailable
from chat.connection import Peer
from chat.protocol import Info, Left, WhoList
from chat.room import Conversation, Hub

log = logging.getLogger("chat.cluster")

UNAVAILABLE = "the shared message store is unreachable; try again shortly"
LOST_NOTICE = "the cluster's message store is unreachable: messages are held, then refused"
BACK_NOTICE = "the cluster's message store is back"
WHO_TTL = 1.0
"""Seconds a `/who` answer from Redis is served again to whoever asks on this host."""


class ClusterRoom(Conversation):
    """A `Room` whose conversation is shared through a `RedisBackplane` (chat/backplane.py),
    and the backplane's `Sink`: what Redis delivers goes out through the server's fan-out."""

    def __init__(self, hub: Hub, backplane: RedisBackplane, log_messages: bool = False) -> None:
        super().__init__(hub, log, log_messages)
        self.backplane = backplane
        self._claiming: dict[str, Peer] = {}  # lower-cased nick -> client awaiting Redis
        self._started = False
        self._who_line: bytes | None = None  # the last answer from Redis, encoded
        self._who_at = 0.0  # loop time it came
        self._who_version = -1  # the registry's version when it was asked
        self._who_asked: asyncio.Future[Any] | None = None  # a question in flight, shared
        self._who_asked_version = -1

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

    # ---- the Room ----------------------------------------------------------------------------

    async def close(self) -> None:
        await self.backplane.stop()

    def pause(self) -> None:
        self.backplane.hold()  # the successor reads on from here

    def resume(self) -> None:
        self.backplane.resume()

    def claim_adopted(self) -> None:
        """Hold the handed-over sessions' nicknames, whoever holds them now (the predecessor):
        queued before any request a client makes once it is read (a `/nick` queued ahead of
        the adopt of the name it leaves would have that name written back, held forever)."""
        for nick in self.nicks_held():
            self.backplane.adopt(nick)

    def adopted(self) -> None:
        """The predecessor's connections are registered: deliver what they have not seen."""
        self.backplane.resume()

    def handover_state(self) -> tuple[int, dict[str, Any] | None, list[bytes] | None]:
        # Its clients saw up to the backplane's id, not the file's; `take_over` takes these.
        backplane = self.backplane
        return backplane.last_id, dataclasses.asdict(backplane.position()), backplane.since(0)

    def take_over(self, last_id: int, retained: list[bytes], inherit: Position) -> None:
        """Start from what a predecessor of this cluster handed over, without awaiting
        (`chat.backplane.RedisBackplane.take_over`)."""
        self.backplane.take_over(self, last_id, retained, inherit)
        self._started = True

    def left(self, nick: str, reason: str, announce: bool) -> None:
        """A named client is gone: free its nickname, tell every host."""
        self.backplane.release(nick)
        if announce:
            self.backplane.line(Left(nick, reason).line())

    # ---- how the conversation's rules travel ------------------------------------------------

    def say(self, peer: Peer, nick: str, text: str) -> None:
        if not self.backplane.say(nick, text):
            self.unavailable(peer)
            self.hub.reply(peer)

    def publish(self, line: bytes) -> None:
        self.backplane.line(line)

    def newest(self) -> int:
        return self.backplane.last_id

    def page(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int]:
        return self.backplane.page(after, upto, limit)

    def who(self, peer: Peer) -> None:
        """Redis is asked at most once per `WHO_TTL` per host, however many ask: `/who`
        costs every host and Redis the same with 10 or 10,000 users online. A name that came
        or went on this host since the answer asks again: a client that just got `OK nick`
        finds itself in the next `/who`."""
        loop = asyncio.get_running_loop()
        version = self.hub.registry.version
        if (
            self._who_line is not None
            and self._who_version == version
            and loop.time() - self._who_at < WHO_TTL
        ):
            self.hub.send(peer, self._who_line)
            return
        if self._who_asked is None:
            self._who_asked_version = version
            self._who_asked = self.backplane.who()
            self._who_asked.add_done_callback(self._who_answered)
        self._later(peer, self._who_asked, self._who_done)

    def _who_answered(self, future: asyncio.Future[Any]) -> None:
        self._who_asked = None
        if not future.cancelled() and future.exception() is None:
            self._who_line = WhoList(tuple(future.result())).line()
            self._who_at = asyncio.get_running_loop().time()
            self._who_version = self._who_asked_version

    def _who_done(self, peer: Peer, result: Any) -> None:
        if isinstance(result, Unavailable):
            self.unavailable(peer)
        else:  # encoded once by `_who_answered`, which runs first
            line = self._who_line
            self.hub.send(peer, line if line is not None else WhoList(tuple(result)).line())

    def private_elsewhere(self, peer: Peer, nick: str, to: str, text: str) -> None:
        self._later(peer, self.backplane.private(nick, to, text), self._priv_done)

    def _priv_done(self, peer: Peer, result: Any) -> None:
        if isinstance(result, Unavailable):
            self.unavailable(peer)
        elif result is not True:
            self.refuse(peer, "no-such-nick", "no such nickname")

    def holder(self, key: str) -> Peer | None:
        return self.hub.registry.named.get(key) or self._claiming.get(key)

    def claim(self, peer: Peer, name: str, old: str | None) -> None:
        self._claiming[name.lower()] = peer
        future = self.backplane.claim(name, old)
        self._later(peer, future, lambda p, result: self._nick_done(p, name, old, result))

    def _nick_done(self, peer: Peer, name: str, old: str | None, result: Any) -> None:
        self._claiming.pop(name.lower(), None)
        if isinstance(result, Unavailable):
            self.unavailable(peer)
        elif result is not True:
            self.refuse(peer, "nick-taken", "that nickname is in use")
        else:
            self.named(peer, name, old)

    def unavailable(self, peer: Peer) -> None:
        """Redis could not take PEER's request: it may ask again (counted apart)."""
        self.refuse(peer, "unavailable", UNAVAILABLE)
        self.hub.metrics.backplane_unavailable += 1

    def _later(
        self, peer: Peer, future: asyncio.Future[Any], done: Callable[[Peer, Any], None]
    ) -> None:
        """Answer PEER with DONE once Redis answered FUTURE (an `Unavailable` is an answer)."""
        self.hub.answer_later(
            peer,
            future,
            lambda p, f: done(p, _outcome(f)),
            lambda p, f: self._abandon_claim(p, _outcome(f)),
        )

    def _abandon_claim(self, peer: Peer, result: Any) -> None:
        """PEER left while Redis answered: a claim that succeeded for it is given back."""
        for key, holder in list(self._claiming.items()):
            if holder is peer:
                del self._claiming[key]
                if result is True:
                    self.backplane.release(key)

    # ---- the backplane's Sink -------------------------------------------------------------

    def deliver(self, lines: list[bytes]) -> None:
        self.hub.metrics.backplane_lag = self.backplane.lag
        broadcast = self.hub.broadcast
        last = 0
        for line in lines:
            broadcast(line)
            if line.startswith(b"MSG "):
                last = int(line[4 : line.index(b" ", 4)])
        if last:
            # The id a handover hands on (`handover_state`) and the stop line log.
            self.hub.history.last_id = last

    def deliver_private(self, to: str, line: bytes) -> None:
        target = self.hub.registry.named.get(to)
        if target is not None:
            self.hub.send(target, line)

    def status(self, available: bool) -> None:
        self.hub.broadcast(Info(BACK_NOTICE if available else LOST_NOTICE).line())

    def nicks_lost(self, nicks: list[str]) -> None:
        if self.hub.frozen:
            return  # the sessions are the successor's now; its own renewal will tell it
        for nick in nicks:
            peer = self.hub.registry.named.get(nick.lower())
            if peer is not None:
                log.warning("nick-lost peer=%s nick=%s", peer.peer, nick)
                self.hub.drop(peer, "nick-lost", "nick-lost")

    def nicks_held(self) -> list[str]:
        return self.hub.registry.nicks()


def _outcome(future: asyncio.Future[Any]) -> Any:
    """What Redis answered: the result, or `Unavailable` (any other failure raises)."""
    exc = future.exception()
    return exc if isinstance(exc, Unavailable) else future.result()


async def connect(hub: Hub, url: str, history_size: int, log_messages: bool = False) -> ClusterRoom:
    """The room of the cluster whose Redis URL names, connected and checked but not started
    (`ClusterRoom.start`, or `take_over` in a handover): what a successor does before a
    handover's pause (importing redis-py alone takes 150 ms of CPU). Raises BackplaneError (one
    line)."""
    try:
        import redis.asyncio  # noqa: F401 - checked here for a clear error
    except ImportError:
        raise BackplaneError(
            "--backplane needs the redis package: pip install 'pynet[cluster]'"
        ) from None
    room = ClusterRoom(hub, RedisBackplane(url, history_size=history_size), log_messages)
    await room.backplane.open()
    return room
