"""The chat server: an asyncio adapter around `chat.protocol`.

It accepts connections, keeps the registry of named clients, fans broadcasts out, enforces
the limits, and shuts down gracefully. Everything about parsing and replies is in the protocol;
this module only moves bytes.

How fan-out stays cheap (the benchmark drives 1,000 clients):
- each broadcast is encoded once and appended to `_log`; a flush writes every named client the
  lines it has not had yet, joined once per distinct position (one `transport.write` per client
  per flush, however many messages);
- a fan-out to more than `FANOUT_STEP` clients is written over several loop turns: input read in
  between joins the fan-out for the clients it has not reached yet, so a line is not held behind
  a whole fan-out of an earlier one (at 10,000 clients one fan-out takes ~100 ms);
- a client that also has its own lines (a reply, a private message) gets a private list with
  the broadcasts it has not had yet (it is "forked"), and later broadcasts are appended to it,
  so every client still sees its lines in order;
- one slow reader costs only its own buffer: past `max_backlog` unsent bytes it gets
  `BYE too-slow` and is cut; past `max_buffered` in total the biggest backlogs go first.
- idle connections hold no task and no timer: one housekeeping callback per second checks
  nickname timeouts;
- durable ids: each flush first commits the batch's history rows in one SQLite transaction
  (`History.commit`), so no client ever sees an id that a crash could hand out again.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chat import __version__, config, keepalive
from chat.config import Settings
from chat.flush_policy import FlushPolicy
from chat.handover import HandoverError, Session
from chat.history import History, HistoryError
from chat.protocol import (
    Bye,
    Error,
    Hello,
    Info,
    Joined,
    Left,
    Nick,
    NickChanged,
    Private,
    PrivateMessage,
    Quit,
    Refused,
    Say,
    ServerConnection,
    Since,
    State,
    Who,
    WhoList,
)
from chat.takeover import BUSY, HandoverPoint, Inheritance, take, take_unsent

if TYPE_CHECKING:
    from chat.cluster import Cluster

log = logging.getLogger("chat.server")

BACKLOG = 4096
SLOW_CLOSE_GRACE = 5.0
"""Seconds a disconnected slow reader gets to read its BYE before the socket is cut."""
# Clients written per fan-out step: a 1,000-client fan-out (~5-10 ms) stays one step; a larger
# one lets the loop read new lines every ~10 ms (bench/README.md, "Fan-out steps").
FANOUT_STEP = 1024
RESTART_NOTICE = "server restarting, reconnect in a few seconds"
RESTART_BATCH, RESTART_BATCHES, RESTART_PAUSE = 200, 10, 0.05
"""A stop says BYE to at least RESTART_BATCH clients at a time, in at most RESTART_BATCHES
batches RESTART_PAUSE seconds apart."""
SWITCH_RECORD = "last-switch.json"
HANDED_OVER_EXIT = 99
"""Exit status after a successor took over: the unit must not restart this release
(`RestartPreventExitStatus=` in the chat role's unit)."""


class Client(asyncio.Protocol):
    """One TCP connection. Small on purpose: 10,000 idle ones must fit in ~100 MB."""

    __slots__ = (
        "address",
        "adopted",
        "allowance",
        "close_after_flush",
        "conn",
        "connected_at",
        "held",
        "held_socket",
        "last_seen",
        "out",
        "partial_since",
        "peer",
        "reason",
        "receiving",
        "seen",
        "server",
        "transport",
    )

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        # Its protocol state, from the first byte: a refused connection has one too but is never
        # registered (`ChatServer.clients` is the one truth of who is served here).
        self.conn = server.new_connection()
        self.adopted: Session | None = None  # set while taking over from a predecessor
        self.held = False  # made by `ChatServer.hold`: `adopt` registers it, not `connected`
        self.held_socket: socket.socket | None = None  # held, on a loop without a transport yet
        self.transport: asyncio.Transport
        self.out: list[bytes] | None = None  # forked: its own lines, in order, until a flush
        self.receiving = False  # named: gets broadcasts
        self.seen = 0  # position in the server's broadcast log up to which it has its lines
        self.close_after_flush = False
        self.allowance = 0  # extra backlog tolerated after a /since replay
        self.reason = ""
        self.connected_at = 0.0
        self.peer = "?"
        self.address = ""  # what the per-address cap counts (address_key of the peer)
        self.last_seen = 0.0  # loop time of the last bytes received
        self.partial_since = 0.0  # loop time the unfinished line began; 0.0: none

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.held:
            self.server.connected(self)

    def data_received(self, data: bytes) -> None:
        self.server.received(self, data)

    def eof_received(self) -> bool:
        self.server.drop(self, "eof", "connection closed")
        return True  # we close it ourselves once the replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self, exc)


class ChatServer:
    """Registry, fan-out, limits and shutdown for one listening socket."""

    def __init__(self, settings: Settings, history: History) -> None:
        self.settings = settings
        self.history = history
        self.clients: set[Client] = set()
        self.unnamed: set[Client] = set()
        self.named: dict[str, Client] = {}  # lower-cased nickname -> client
        self.port = 0
        self._log: list[bytes] = []  # broadcasts since the last fan-out began: some lack them
        self._base = 0  # the position of _log[0]; a position counts broadcasts since start
        self._sweeping = False  # a fan-out is under way, to the clients of _sweep from _at on
        self._sweep: list[Client] = []
        self._at = 0
        self._sweep_head = 0  # the log's head when that fan-out began
        self._sweep_began = 0.0
        self._sweep_buffered = 0  # bytes left in the buffers of the clients it wrote
        self._forked: list[Client] = []
        self._flush_scheduled = False
        self._flush_policy = FlushPolicy(settings.flush_delay)
        self._stopping = False
        self._all_gone = asyncio.Event()
        self.release = settings.release
        self.handed_over = asyncio.Event()  # set once a successor took every connection
        self._handover_point: HandoverPoint | None = None
        self._taken: dict[Client, bytes] = {}  # output taken back from transports by freeze
        self.reading = True  # False while a handover is under way: new connections wait too
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self._per_address: dict[str, int] = {}  # connections held per address_key
        self._unborn: set[Client] = set()  # accepted; their transport has not connected yet
        self.frozen = False  # between a handover's freeze and its commit (or thaw): write nothing
        self._departed: list[tuple[Client, Exception | None]] = []  # lost while frozen
        self.cluster: Cluster | None = None  # the shared conversation (chat/cluster.py)
        self.waiting: set[Client] = set()  # their next lines wait for an answer from Redis
        self._hello = Hello(__version__).line()
        self._greeting = self._hello + Info("choose a nickname with /nick NAME").line()
        self._handlers: dict[type, Callable[[Client, Any], None]] = {
            Say: self._on_say,
            Nick: self._on_nick,
            Private: self._on_private,
            Who: self._on_who,
            Since: self._on_since,
            Quit: self._on_quit,
            Refused: self._on_refused,
        }

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self, listener: socket.socket | None = None) -> None:
        """Serve on LISTENER (handed over by a predecessor) or on a new socket.

        `reuse_port` (with a handover socket only, so a stray second server still gets "address
        in use"): a release that cannot take over from the one serving (another handover
        version) still starts next to it and shares the port until the old one stops, so no
        connect is refused (with `net.ipv4.tcp_migrate_req=1` not even those in its queue).
        """
        s = self.settings
        if listener is None:
            self._server = await self._loop.create_server(
                self._accepted,
                s.host,
                s.port,
                backlog=BACKLOG,
                reuse_port=bool(s.handover_socket),
            )
        else:
            self._server = await self._loop.create_server(
                self._accepted, sock=listener, backlog=BACKLOG
            )
        sockname = self._server.sockets[0].getsockname()
        self.port = sockname[1]
        self._housekeep()
        log.info(
            "start version=%s release=%s listen=%s:%d loop=%s history=%s %s",
            __version__,
            self.release,
            sockname[0],
            self.port,
            type(self._loop).__module__.split(".")[0],
            self.history.describe().replace(" ", ","),
            config.describe(s),
        )

    async def stop(self) -> None:
        """Stop accepting, say INFO + BYE restarting to everyone, flush history, close."""
        deadline = self._loop.time() + self.settings.stop_timeout * 0.8  # room to exit
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        notice = Info(RESTART_NOTICE)
        clients = list(self.clients)
        # In batches, so a thousand clients do not all reconnect in the same millisecond.
        size = max(RESTART_BATCH, len(clients) // RESTART_BATCHES + 1)
        for start in range(0, len(clients), size):
            if start:
                await asyncio.sleep(RESTART_PAUSE)
            for client in clients[start : start + size]:
                conn = client.conn
                if conn.state is not State.CLOSING:
                    conn.send(notice)
                self.drop(client, "restarting", "", announce=False)
            self._flush_all()
        self.history.close()
        if self.cluster is not None:
            await self.cluster.stop()  # sends the queued releases, closes Redis connections
        if self.clients:
            try:
                await asyncio.wait_for(
                    self._all_gone.wait(), max(0.0, deadline - self._loop.time())
                )
            except TimeoutError:
                log.warning("stop cut=%d clients still draining", len(self.clients))
                for client in list(self.clients):
                    client.transport.abort()
                await asyncio.sleep(0)

    def _housekeep(self) -> None:
        """Once a period: drop connections that never chose a nickname."""
        now = self._loop.time()
        s = self.settings
        limit = now - s.nick_timeout
        for client in [c for c in self.unnamed if c.connected_at <= limit]:
            self.drop(client, "nick-timeout", "")
        self._cut_stalled(now)
        timeouts = (s.nick_timeout, s.line_timeout, s.idle_timeout)
        period = min(1.0, *(t / 4 for t in timeouts if t))
        self._housekeeping = self._loop.call_later(period, self._housekeep)

    def _cut_stalled(self, now: float) -> None:
        """Close connections stuck in the middle of a line, and idle ones if configured."""
        line_timeout, idle_timeout = self.settings.line_timeout, self.settings.idle_timeout
        if line_timeout:
            limit = now - line_timeout
            for client in [c for c in self.clients if 0.0 < c.partial_since <= limit]:
                self.drop(client, "line-timeout", "line-timeout")
        if idle_timeout:
            limit = now - idle_timeout
            for client in [c for c in self.named.values() if c.last_seen <= limit]:
                self.drop(client, "idle-timeout", "idle-timeout")

    def new_connection(self) -> ServerConnection:
        s = self.settings
        return ServerConnection(max_line=s.max_line, rate=s.rate, burst=s.rate_burst)

    # ---- handover (chat.takeover drives these) ----------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def open_handover_point(self, path: str) -> None:
        """Listen for a successor on PATH (the next release's takeover request)."""
        self._handover_point = HandoverPoint(self, path, self.settings.handover_timeout)
        log.info("handover listening path=%s", path)

    def close_handover_point(self) -> None:
        if self._handover_point is not None:
            self._handover_point.close()
            self._handover_point = None

    def _accepted(self) -> Client:
        """asyncio's protocol factory: called as soon as a connection is accepted, a loop turn
        or more before the transport calls `connection_made` (and `connected`)."""
        client = Client(self)
        self._unborn.add(client)
        return client

    def pause_accepting(self) -> None:
        """Accept nothing more (connects wait in the listener's queue), but keep the server
        open: the tasks building transports for connections accepted in this very turn need
        it (closed, they fail and the connection is dropped without a greeting)."""
        assert self._server is not None
        self._loop.remove_reader(self._server.sockets[0].fileno())

    async def accepted_all(self, limit: float) -> None:
        """Wait (up to LIMIT seconds) until every connection accepted before
        `pause_accepting` is a registered client, so that none is left out of a handover.

        Tracked, not guessed: a fixed settle time was too short when the loop's turns were long
        (a big fan-out). One turn first: the tasks of the last accepts call the factory
        (`_accepted`) in the next turn. Connections whose transport never came (it failed) are
        forgotten after LIMIT, so they cannot hold up a later handover too.
        """
        await asyncio.sleep(0)
        if not await self._until(lambda: not self._unborn, limit):
            log.warning("handover %d accepted connections never connected", len(self._unborn))
            self._unborn.clear()

    async def answers_settled(self, limit: float) -> bool:
        """Wait (up to LIMIT seconds, after `pause`) until no client waits for an answer from
        Redis (chat/cluster.py): such an answer changes the session (a nickname, a reply)."""
        return await self._until(lambda: not self.waiting, limit)

    async def _until(self, done: Callable[[], bool], limit: float) -> bool:
        """Let the loop run until DONE() or LIMIT seconds passed; whether it is done."""
        deadline = self._loop.time() + limit
        while not done() and self._loop.time() < deadline:
            await asyncio.sleep(0.001)
        return done()

    def stop_accepting(self) -> socket.socket:
        """Close the listener for asyncio but keep the socket (and its queue) in a duplicate."""
        assert self._server is not None
        listener = socket.socket(fileno=os.dup(self._server.sockets[0].fileno()))
        self._server.close()
        self._server = None
        return listener

    async def pause(self) -> None:
        """Stop reading from every connection, and let what was already read be handled.

        `pause_reading` takes a socket out of the selector, but a read the loop already queued
        in this turn still runs: one more turn lets those finish here, before the snapshot,
        instead of consuming bytes after it (which would lose them: they would be in neither
        process). Connections made meanwhile are paused as they arrive (`connected`).
        """
        self.reading = False
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.cluster is not None:
            self.cluster.backplane.hold()  # nor from Redis: the successor reads on from here
        for client in self.clients:
            client.transport.pause_reading()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def freeze(self) -> list[tuple[Client, Session]]:
        """Write what is queued and describe every connection as it stands (after `pause`).

        Nothing may change a session after this (no timeouts either) until `let_go` or `thaw`.
        """
        assert not self.reading, "pause() first"
        self._flush_all()  # commits the history, then hands every queued line to the transports
        self.frozen = True
        now = self._loop.time()
        items = []
        for client in self.clients:
            conn = client.conn
            tokens, stamp_age, partial, discarding = conn.snapshot()
            session = Session(
                state=conn.state.value,
                nick=conn.nick,
                peer=client.peer,
                connected_age=now - client.connected_at,
                tokens=tokens,
                stamp_age=stamp_age,
                partial=partial,
                discarding=discarding,
                unsent=self._take_unsent(client),
                allowance=client.allowance,
                closing=client.close_after_flush,
                extra={
                    "last_seen_age": now - client.last_seen,
                    "partial_age": now - client.partial_since if client.partial_since else None,
                },
            )
            items.append((client, session))
        return items

    def _take_unsent(self, client: Client) -> bytes:
        """The client's unsent output, taken from its transport (kept for `thaw`)."""
        data = self._taken[client] = take_unsent(client.transport) + client.conn.data_to_send()
        return data

    async def thaw(self, listener: socket.socket) -> None:
        """The successor failed: accept and read again as if nothing happened."""
        await self.start(listener)  # restarts the housekeeping too
        self.reading = True
        self.frozen = False
        if self.cluster is not None:
            self.cluster.backplane.resume()
        taken, self._taken = self._taken, {}
        for client in self.clients:
            data = taken.get(client)
            if data:
                client.transport.write(data)  # ours to send again
            if not client.transport.is_closing() and client not in self.waiting:
                client.transport.resume_reading()
        departed, self._departed = self._departed, []
        for client, exc in departed:
            self.lost(client, exc)
        if (self._log or self._forked) and not self._flush_scheduled:
            self._schedule_flush()

    def let_go(self) -> None:
        """The successor owns every connection now: close ours without a word (no FIN: the
        successor holds its own descriptor of each socket) and stop."""
        for client in self.clients:
            client.transport.abort()
        self.clients.clear()  # so their connection_lost is not ours to handle
        self._taken.clear()
        self.unnamed.clear()
        self.named.clear()
        self._per_address.clear()
        self._log.clear()
        self._sweeping = False
        self._sweep.clear()
        self._forked.clear()
        self._departed.clear()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self._stopping = True
        self.handed_over.set()

    def hold(self, sock: socket.socket) -> Client:
        """A socket the predecessor sends while it still serves it (`chat.takeover.take`):
        wrap it now in a transport that neither reads nor writes, so `adopt` (during the pause
        every client sees) has nothing left to build. CPython's selector loops can make the
        transport synchronously (`_make_socket_transport`, what `connect_accepted_socket` calls
        inside its task); on other loops (uvloop) the socket waits for `adopt`."""
        client = Client(self)
        client.held = True
        sock.setblocking(False)
        make = getattr(self._loop, "_make_socket_transport", None)
        if make is None:
            client.held_socket = sock
            return client
        client.transport = make(sock, client)
        # Before the loop runs again: the transport would start reading in its next turn.
        client.transport.pause_reading()
        return client

    def unhold(self, client: Client) -> None:
        """Let go of a held socket (its client left, or the handover failed). Only our copy
        closes: the predecessor still holds the connection, so the client sees nothing."""
        if client.held_socket is not None:
            client.held_socket.close()
        else:
            client.transport.abort()

    def restore(self, inheritance: Inheritance[Client]) -> None:
        """Give each held connection its session's protocol state, before saying `ready`: a
        state this release cannot take (a longer line than its `max_line`, a nickname its
        rules refuse) must fail the handover while the predecessor can still serve on."""
        for session, client in inheritance.sessions:
            try:
                client.conn.restore(
                    State(session.state),
                    session.nick,
                    session.tokens,
                    session.stamp_age,
                    session.partial,
                    session.discarding,
                )
            except Exception as exc:
                raise HandoverError(f"cannot take the session of {session.peer}: {exc}") from None

    async def adopt(self, inheritance: Inheritance[Client]) -> None:
        """Serve what a predecessor handed over (`restore`d): every session first, then the
        listener."""
        pending = []
        for session, client in inheritance.sessions:
            if client.held_socket is None:
                self._adopted(client, session)
            else:
                client.held, client.adopted = False, session
                connect = self._loop.connect_accepted_socket
                pending.append(connect(_factory(client), sock=client.held_socket))
                client.held_socket = None
        # Together: each waits a loop turn or two for its transport (`connected` then calls
        # `_adopted`), and one at a time a thousand of them would add a thousand turns.
        await asyncio.gather(*pending)
        for client in self.clients:
            if not client.transport.is_closing():
                client.transport.resume_reading()
        await self.start(inheritance.listener)

    def _adopted(self, client: Client, session: Session) -> None:
        """Register a handed-over connection: unsent output first, then whatever comes next."""
        client.adopted = None
        transport = client.transport
        transport.pause_reading()  # until every session is back: no broadcast may miss one
        now = self._loop.time()
        client.peer = session.peer
        client.connected_at = now - session.connected_age
        last_seen_age = session.extra.get("last_seen_age")
        client.last_seen = now - (last_seen_age if isinstance(last_seen_age, float) else 0.0)
        partial_age = session.extra.get("partial_age")
        client.partial_since = now - partial_age if isinstance(partial_age, float) else 0.0
        client.allowance = session.allowance
        key = address_key(transport.get_extra_info("peername"))
        self._per_address[key] = self._per_address.get(key, 0) + 1
        client.address = key
        self.clients.add(client)
        if session.unsent:
            transport.write(session.unsent)
        conn = client.conn
        if session.closing or conn.state is State.CLOSING:
            client.close_after_flush = True
            transport.close()
        elif conn.state is State.NAMED:
            assert conn.nick is not None
            self.named[conn.nick.lower()] = client
            self._receives(client)
        else:
            self.unnamed.add(client)

    # ---- connections ----------------------------------------------------------------------

    def connected(self, client: Client) -> None:
        if client.adopted is not None:
            self._adopted(client, client.adopted)
            return
        self._unborn.discard(client)
        transport = client.transport
        peer = transport.get_extra_info("peername")
        client.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        s = self.settings
        if self._stopping or len(self.clients) >= s.max_clients:
            transport.write(
                self._hello
                + Error("server-full", "too many clients, try again later").line()
                + Bye("server-full").line()
            )
            transport.close()
            log.warning(
                "refuse peer=%s reason=server-full clients=%d", client.peer, len(self.clients)
            )
            return
        if not self._admit_address(client, peer):
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            keepalive.enable(sock, s.keepalive_idle, s.keepalive_interval, s.keepalive_count)
        client.connected_at = client.last_seen = self._loop.time()
        self.clients.add(client)
        self.unnamed.add(client)
        if not self.reading:
            transport.pause_reading()  # a handover is under way: its successor reads this one
        self._send(client, self._greeting)
        log.info("connect peer=%s clients=%d", client.peer, len(self.clients))

    def _admit_address(self, client: Client, peer: object) -> bool:
        """Count the connection against its address; refuse it past `max_per_address`."""
        key = address_key(peer)
        count = self._per_address.get(key, 0)
        cap = self.settings.max_per_address
        if cap and count >= cap:
            client.transport.write(
                self._hello
                + Error(
                    "server-full", f"too many connections from your address (limit {cap})"
                ).line()
                + Bye("too-many-connections").line()
            )
            client.transport.close()
            log.warning("refuse peer=%s reason=too-many-connections limit=%d", client.peer, cap)
            return False
        self._per_address[key] = count + 1
        client.address = key
        return True

    def _release_address(self, client: Client) -> None:
        count = self._per_address.pop(client.address, 0) - 1
        if count > 0:
            self._per_address[client.address] = count

    def received(self, client: Client, data: bytes) -> None:
        if client not in self.clients:
            return  # refused, or handed over to a successor
        conn = client.conn
        conn.receive_data(data)
        handlers = self._handlers
        waiting = self.waiting
        if client not in waiting:
            for event in conn.events_received():
                self._pump(client)  # replies the protocol made before this event go first
                handlers[type(event)](client, event)
                if client in waiting:
                    break  # the rest stays buffered until the answer is there
            self._pump(client)
        now = client.last_seen = self._loop.time()
        if conn.partial:  # a line has begun: time it from its first byte
            if not client.partial_since or b"\n" in data:
                client.partial_since = now
        elif client.partial_since:
            client.partial_since = 0.0

    def drop(self, client: Client, reason: str, left: str, *, announce: bool = True) -> None:
        """Say `BYE reason` and close after the next flush; others see `LEFT nick left`."""
        conn = client.conn
        if client not in self.clients or client.close_after_flush:
            return
        conn.close(reason)
        self._pump(client)
        if client.out is None:
            self._send(client, b"")  # make sure the next flush closes it
        client.close_after_flush = True
        client.reason = reason
        self._forget(client, left, announce)

    def lost(self, client: Client, exc: Exception | None) -> None:
        if client not in self.clients:
            return  # refused, or handed over: nothing of ours to forget
        if self.frozen:
            # Its session is already in the successor's hands (which notices the dead socket
            # itself); ours again only if the handover fails (`thaw`).
            self._departed.append((client, exc))
            return
        self.clients.discard(client)
        self._release_address(client)
        reason = client.reason or _lost_reason(exc)
        self._forget(client, reason, announce=not self._stopping)
        log.info(
            "disconnect peer=%s nick=%s reason=%s clients=%d",
            client.peer,
            client.conn.nick or "-",
            reason,
            len(self.clients),
        )
        if self._stopping and not self.clients:
            self._all_gone.set()

    def _forget(self, client: Client, left: str, announce: bool) -> None:
        """Take the client out of the registry; tell the others it left."""
        self.unnamed.discard(client)
        if client.receiving:
            client.receiving = False
            nick = client.conn.nick
            assert nick is not None
            del self.named[nick.lower()]
            if self.cluster is not None:
                self.cluster.left(nick, left, announce)
            elif announce:
                self._broadcast(Left(nick, left).line())

    # ---- events ---------------------------------------------------------------------------

    def _on_say(self, client: Client, event: Say) -> None:
        nick = client.conn.nick
        assert nick is not None
        self._broadcast(self.history.add(nick, event.text))
        if self.settings.log_messages:
            log.debug("msg nick=%s id=%d text=%r", nick, self.history.last_id, event.text)

    def _on_nick(self, client: Client, event: Nick) -> None:
        conn = client.conn
        name, key = event.name, event.name.lower()
        holder = self.named.get(key)
        if holder is not None and holder is not client:
            conn.refuse("nick-taken", "that nickname is in use")
            self._pump(client)
            return
        old = conn.nick
        conn.accept_nick(name)
        self._pump(client)
        if not client.receiving:
            self.unnamed.discard(client)
            self.named[key] = client
            self._receives(client)
            self._broadcast(Joined(name).line())
            log.info("nick peer=%s nick=%s", client.peer, name)
        elif old is not None and old != name:
            del self.named[old.lower()]
            self.named[key] = client
            self._broadcast(NickChanged(old, name).line())
            log.info("nick peer=%s old=%s nick=%s", client.peer, old, name)

    def _on_private(self, client: Client, event: Private) -> None:
        target = self.named.get(event.to.lower())
        conn = client.conn
        assert conn.nick is not None
        if target is None:
            conn.refuse("no-such-nick", "no such nickname")
            self._pump(client)
            return
        self._send(target, PrivateMessage(conn.nick, event.text).line())
        if self.settings.log_messages:
            log.debug("priv nick=%s to=%s text=%r", conn.nick, target.conn.nick, event.text)

    def _nicks(self) -> list[str]:
        """The nicknames of the named clients, as they chose them."""
        return [c.conn.nick for c in self.named.values() if c.conn.nick]

    def _on_who(self, client: Client, event: Who) -> None:
        names = sorted(self._nicks(), key=str.lower)
        client.conn.send(WhoList(tuple(names)))
        self._pump(client)

    def _on_since(self, client: Client, event: Since) -> None:
        lines = self.history.since(event.after)
        if lines:
            data = b"".join(lines)
            client.allowance = len(data)  # a replay may exceed the backlog limit once
            self._send(client, data)

    def _on_quit(self, client: Client, event: Quit) -> None:
        self.drop(client, "quit", event.reason or "quit")

    def _on_refused(self, client: Client, event: Refused) -> None:
        log.debug("refused peer=%s code=%s", client.peer, event.code)

    # ---- output ---------------------------------------------------------------------------

    def _pump(self, client: Client) -> None:
        data = client.conn.data_to_send()
        if data:
            self._send(client, data)

    def _send(self, client: Client, data: bytes) -> None:
        """Queue lines for one client, behind the broadcasts it has not had yet."""
        out = client.out
        if out is None:
            out = client.out = []
            if client.receiving and client.seen != self._head:
                assert client.seen >= self._base, "a client's lines were trimmed from the log"
                out.append(b"".join(self._log[client.seen - self._base :]))
            self._forked.append(client)
        out.append(data)
        if not self._flush_scheduled:
            self._schedule_flush()

    def _broadcast(self, data: bytes) -> None:
        """Queue one encoded line for every named client."""
        self._log.append(data)
        for client in self._forked:
            out = client.out  # never None for a forked client
            if client.receiving and out is not None:
                out.append(data)
        if not self._flush_scheduled:
            self._schedule_flush()

    @property
    def _head(self) -> int:
        """The position after the last broadcast."""
        return self._base + len(self._log)

    def _receives(self, client: Client) -> None:
        """CLIENT is named: from now on it gets every broadcast (none from before)."""
        client.receiving = True
        client.seen = self._head

    def _schedule_flush(self) -> None:
        """Flush at the end of this tick while fan-outs keep up, a little later when they do not.

        The policy (chat/flush_policy.py) writes at once while fan-outs keep up (the last one
        carried a single broadcast), so a quiet server adds no wait; while broadcasts arrive
        faster than a fan-out completes it waits up to a quarter of a fan-out's cost (capped by
        `flush_delay`) so the broadcasts arriving meanwhile share one write per client.
        """
        self._flush_scheduled = True
        delay = self._flush_policy.delay(time.perf_counter())
        if delay <= 0.0:
            self._loop.call_soon(self._flush)
        else:
            self._loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        """Write queued output: one step of the fan-out, the next one after a loop turn."""
        self._flush_scheduled = False
        if self.frozen:
            return  # kept for `thaw`: the sessions as sent to the successor must stay true
        self._step(FANOUT_STEP)
        if self._flush_scheduled:
            return  # the step cut a slow reader, and that scheduled the next one
        if self._sweeping:  # read what came, then write on
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        elif self._log:
            self._schedule_flush()  # lines came during the fan-out: the first clients lack them

    def _flush_all(self) -> None:
        """Write everything queued, now (before a handover's snapshot, when stopping)."""
        self._step(None)
        while self._log or self._forked:  # dropping a slow reader broadcasts its LEFT
            self._step(None)

    def _step(self, limit: int | None) -> None:
        """Write up to LIMIT clients of the fan-out (all: None), then every forked client.

        A fan-out begins with the named clients as they are; each gets the log from its own
        position to the head, so a line that came since the fan-out began reaches the clients
        it has not written yet in the same write, and the others in the next fan-out.
        """
        began = time.perf_counter()
        # Group commit: the lines are durable before any client sees an id from them.
        self.history.commit()
        log_, base, head = self._log, self._base, self._head
        max_backlog = self.settings.max_backlog
        slow: list[Client] = []
        if not self._sweeping and log_:
            self._sweeping = True
            self._sweep = list(self.named.values())
            self._at = 0
            self._sweep_head = head
            self._sweep_began = began
            self._sweep_buffered = 0
        if self._sweeping:
            sweep = self._sweep
            at = self._at
            end = len(sweep) if limit is None else min(len(sweep), at + limit)
            joined: dict[int, bytes] = {}  # a client's position -> the lines after it
            buffered = 0
            for client in sweep[at:end]:
                seen = client.seen
                if seen == head or client.out is not None or not client.receiving:
                    continue
                data = joined.get(seen)
                if data is None:
                    data = joined[seen] = b"".join(log_[seen - base :])
                client.seen = head
                transport = client.transport
                transport.write(data)
                size = transport.get_write_buffer_size()
                if size:
                    buffered += size
                    if size > max_backlog and size > max_backlog + client.allowance:
                        slow.append(client)
                elif client.allowance:
                    client.allowance = 0
            self._sweep_buffered += buffered
            self._at = end
            if end == len(sweep):  # every client has the lines up to where it began
                self._sweeping = False
                self._sweep = []
                carried = head - base
                del log_[: self._sweep_head - base]
                self._base = self._sweep_head
                self._flush_policy.flushed(self._sweep_began, time.perf_counter(), carried)
        total = self._sweep_buffered
        if not self._sweeping:
            self._sweep_buffered = 0
        forked, self._forked = self._forked, []
        for client in forked:
            out, client.out = client.out, None
            client.seen = head  # its list got every broadcast since it forked
            transport = client.transport
            if transport.is_closing():
                continue
            transport.write(b"".join(out or ()))
            if client.close_after_flush:
                transport.close()
                if transport.get_write_buffer_size():
                    self._loop.call_later(SLOW_CLOSE_GRACE, transport.abort)
                continue
            size = transport.get_write_buffer_size()
            total += size
            if size > max_backlog and size > max_backlog + client.allowance:
                slow.append(client)
        if total > self.settings.max_buffered:
            total = sum(c.transport.get_write_buffer_size() for c in self.clients)
        if total > self.settings.max_buffered:
            slow.extend(self._biggest_backlogs(total))
            self._sweep_buffered = 0
        for client in slow:
            if not client.close_after_flush:
                log.warning(
                    "too-slow peer=%s nick=%s backlog=%d",
                    client.peer,
                    client.conn.nick,
                    client.transport.get_write_buffer_size(),
                )
                self.drop(client, "too-slow", "too-slow")

    def _biggest_backlogs(self, total: int) -> list[Client]:
        """Clients to cut, biggest backlog first, to bring the total back under the bound."""
        target = self.settings.max_buffered * 3 // 4
        chosen = []
        for client in sorted(
            self.clients, key=lambda c: c.transport.get_write_buffer_size(), reverse=True
        ):
            if total <= target:
                break
            total -= client.transport.get_write_buffer_size()
            chosen.append(client)
        return chosen


def _lost_reason(exc: Exception | None) -> str:
    if exc is None:
        return "connection closed"
    if isinstance(exc, TimeoutError):  # keepalive or TCP_USER_TIMEOUT gave the peer up
        return "timed out"
    return "connection reset"


def address_key(peer: object) -> str:
    """The address a connection counts against for `max_per_address`.

    IPv4: the address. IPv6: its /64, since one host or home usually gets a whole /64 and
    could otherwise pick a new address per connection. IPv4-mapped IPv6 counts as IPv4.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    return _address_key(str(host))


@functools.lru_cache(maxsize=4096)
def _address_key(host: str) -> str:
    """Cached: a handover registers a thousand sessions at once, mostly from few addresses,
    and parsing each address again was a tenth of the time every client waited."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _factory(client: Client) -> Callable[[], Client]:
    """A protocol factory that hands asyncio an already made (adopted) `Client`."""
    return lambda: client


# --------------------------------------------------------------------------------------------
# Entry point.


def _raise_open_file_limit() -> int:
    """Allow as many sockets as the hard limit permits (the soft default is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (faster), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def serve(settings: Settings) -> int:
    """Take over from the release serving now, or start fresh; run until SIGTERM/SIGINT or
    until a successor takes over. Returns the exit status."""
    began = time.perf_counter()
    # The history first: the predecessor's clients wait from `take` on, not for this; and a
    # file that cannot be used stops this release before it disturbs the one serving.
    try:
        history = History(settings.history_size, settings.history)
    except HistoryError as exc:
        log.error("error starting: %s", exc)
        return 1
    server = ChatServer(settings, history)
    inheritance, how, why = None, "fresh", ""

    def give_up(exc: Exception) -> int:
        """Before `ready`: say why, and let the serving release (if any) serve on."""
        log.error("error starting: %s", exc)
        if inheritance is not None:
            inheritance.refuse(f"successor failed: {exc}")
        history.close()
        return 1

    if settings.handover_socket:
        try:
            inheritance = take(
                settings.handover_socket,
                settings.release,
                settings.handover_timeout,
                server.hold,
                server.unhold,
            )
        except (HandoverError, OSError, EOFError) as exc:
            how, why = "fallback", str(exc) or type(exc).__name__
            if BUSY in why:
                log.error("error starting: the serving release refused: %s", why)
                history.close()
                return 1
            log.warning("handover impossible reason=%s: starting next to the serving release", why)
    if settings.backplane:
        from chat.backplane import BackplaneError, Position
        from chat.cluster import join

        try:
            # Before listening: no client is served without Redis. A successor reads on from
            # the last id the predecessor's clients saw.
            if inheritance is None:
                await join(server)
            else:
                begin = inheritance.begin
                inherit = Position(**begin.backplane) if begin.backplane else None
                await join(server, begin.last_id, inherit)
        except BackplaneError as exc:
            return give_up(exc)
    if inheritance is not None:
        try:
            server.restore(inheritance)
        except HandoverError as exc:
            return give_up(exc)
    try:
        if inheritance is not None:
            if not inheritance.confirm():
                history.close()
                return 1
            history.adopt(inheritance.begin.last_id, inheritance.begin.history)
            await server.adopt(inheritance)
            if server.cluster is not None:
                server.cluster.adopted()
            how = "handover"
        else:
            await server.start()
        if settings.handover_socket:
            server.open_handover_point(settings.handover_socket)
    except (OSError, HandoverError) as exc:
        log.error("error starting: %s", exc)
        history.close()
        return 1
    record = {
        "how": how,
        "release": settings.release,
        "sessions": len(server.clients),
        "ms": round((time.perf_counter() - began) * 1000, 1),
        "time": time.time(),
    }
    if inheritance is not None:
        record["from"] = inheritance.begin.release
    if why:
        record["reason"] = why
    log.info("switch %s", " ".join(f"{k}={v}" for k, v in record.items()))
    if settings.handover_socket:
        write_switch_record(settings.handover_socket, record)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    handed = asyncio.ensure_future(server.handed_over.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({handed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    handed.cancel()
    stopped.cancel()
    if server.handed_over.is_set():
        history.close()
        if server.cluster is not None:
            await server.cluster.stop()  # what this release queued still reaches Redis
        log.info("stop version=%s release=%s handed over", __version__, settings.release)
        return HANDED_OVER_EXIT
    log.info("stopping signal=%s clients=%d", received[0], len(server.clients))
    server.close_handover_point()
    await server.stop()
    log.info("stop version=%s last_id=%d", __version__, history.last_id)
    return 0


def write_switch_record(handover_socket: str, record: dict[str, object]) -> None:
    """`last-switch.json` beside the handover socket: how this release took over (for
    `fab releases`). Best effort: a failure to write it is logged, never fatal."""
    path = os.path.join(os.path.dirname(handover_socket), SWITCH_RECORD)
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(record, file, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("switch record not written path=%s error=%s", path, exc)


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)
    setup_logging(settings.log_level)
    nofile = _raise_open_file_limit()
    if nofile < settings.max_clients:
        log.warning("open file limit %d is below max_clients=%d", nofile, settings.max_clients)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
