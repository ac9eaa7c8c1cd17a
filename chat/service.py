"""`ChatServer`: the asyncio adapter around the rooms of `chat/`.

`ChatServer` connects the parts and implements the seams they talk through:
`chat.connection.Owner` (what a connection tells it), `chat.room.Hub` (what a room may ask of
it), and `chat.takeover.Giver` and `Holder` (what a handover asks of the serving release and of
its successor). The parts, each testable without sockets or processes (docs/design.md,
"Layers"):
- `chat.registry`: who is connected, nicknames, connections per address, timeouts due;
- `chat.fanout`: the broadcast log, stepped writes, flush timing, slow-reader cuts;
- `chat.connection`: one connection and its session as a handover carries it;
- `chat.room` / `chat.cluster`: the conversation's rules, for one host or a cluster;
- `chat.listener`: the listening socket, its accepts in flight, handing it on;
- `chat.takeover`: taking over from the serving release, giving the service to the next.

What stays here: admission (server-full, per-address cap), the release's lifecycle (`Phase`),
the timers, input dispatch and graceful stop. The process around it (take over or start fresh,
signals, exit status) is `chat.server`'s.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import socket
from collections.abc import Callable, Collection
from typing import Any

from chat import __version__, config, keepalive
from chat import metrics as metrics_
from chat.config import Settings
from chat.connection import Peer, hold_socket, unhold
from chat.fanout import Fanout
from chat.handover import Session, SessionRefused
from chat.history import History
from chat.listener import Listener
from chat.pacing import Pacer, owed
from chat.protocol import Bye, Error, Hello, Info, ServerConnection, State, TokenBucket
from chat.registry import Registry, address_key
from chat.room import Done, LocalRoom, Room
from chat.takeover import HandoverPoint, Inheritance

log = logging.getLogger("chat.server")  # the name every log line has carried

RESTART_NOTICE = "server restarting, reconnect in a few seconds"
RESTART_BATCH, RESTART_BATCHES, RESTART_PAUSE = 200, 10, 0.05
"""A stop says BYE to at least RESTART_BATCH clients at a time, in at most RESTART_BATCHES
batches RESTART_PAUSE seconds apart."""
ANSWER_BUDGET = 64 * 1024
"""Bytes of answers a client may leave unread before its next lines wait (they are read again,
and answered, as it reads): a request costs the server no more than this, whatever it asks."""


class Phase(enum.Enum):
    """The release's lifecycle, as `chat.protocol.State` is a session's.

    serving -> frozen (a handover described the sessions; nothing read or written) -> handed
    over (the successor took them) or back to serving (`thaw`);
    serving -> stopping (a signal: BYE to everyone).
    """

    SERVING = "serving"
    FROZEN = "frozen"
    HANDED_OVER = "handed over"
    STOPPING = "stopping"


class ChatServer:
    """One release serving one listening socket: the seams' implementation and the wiring."""

    def __init__(self, settings: Settings, history: History) -> None:
        self.settings = settings
        self.history = history
        self.release = settings.release
        self.phase = Phase.SERVING
        self.port = 0
        self._loop = asyncio.get_running_loop()
        shared = None
        if settings.address_rate and settings.rate and settings.max_per_address:
            rate, burst = settings.address_rate, settings.address_burst
            shared = functools.partial(TokenBucket, rate, burst)
        self.registry: Registry[Peer, TokenBucket] = Registry(shared)
        self.clients = self.registry.clients  # the one truth of who is served here
        self.metrics = metrics_.Metrics(settings.release)
        named = self.registry.named
        self.metrics.gauges = lambda: (len(self.clients), len(named))
        self.fanout: Fanout[Peer] = Fanout(
            self._loop,
            settings.flush_delay,
            settings.max_backlog,
            settings.max_buffered,
            receivers=self.registry.named.values,
            everyone=lambda: self.clients,
            commit=history.commit,
            cut=self._too_slow,
            metrics=self.metrics,
        )
        # Bound once: the rooms call these for every line.
        self.send = self.fanout.send
        fanout_broadcast = self.fanout.broadcast
        metrics = self.metrics

        def broadcast(data: bytes) -> None:
            # Counted per line, never per receiver: every named client gets it.
            receivers = len(named)
            metrics.broadcasts += 1
            metrics.deliveries += receivers
            metrics.bytes_sent += len(data) * receivers
            fanout_broadcast(data)

        self.broadcast = broadcast
        self.receives = self.fanout.receives
        self.room: Room = LocalRoom(self, log, settings.log_messages)
        self.pacer = Pacer(self._loop, self, self.fanout)
        self.listener: Listener[Peer] = Listener(self._loop, self._new_peer)
        self.handed_over = asyncio.Event()  # set once a successor took every connection
        self._all_gone = asyncio.Event()
        self._handover_point: HandoverPoint | None = None
        self._taken: dict[Peer, bytes] = {}  # output taken back from transports by freeze
        self._departed: list[tuple[Peer, Exception | None]] = []  # lost while frozen
        self._housekeeping: asyncio.TimerHandle | None = None
        self.waiting: set[Peer] = set()  # their next lines wait for an answer (`answer_later`)
        self._armed: set[Peer] = set()  # held connections read from the loop's next turn
        self._paused_all = False  # a handover stopped reading every client (`answers_settled`)
        self._hello = Hello(__version__).line()
        self._greeting = self._hello + Info("choose a nickname with /nick NAME").line()

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.phase in (Phase.STOPPING, Phase.HANDED_OVER)

    @property
    def serving(self) -> bool:
        """Not frozen for a handover, nor stopping (`chat.pacing.Paced`)."""
        return self.phase is Phase.SERVING

    def page(self, after: int, upto: int, budget: int) -> tuple[list[bytes], int]:
        return self.room.page(after, upto, budget)

    @property
    def reading(self) -> bool:
        """False while a handover is under way: new connections wait too."""
        return self.phase is Phase.SERVING or self.phase is Phase.STOPPING

    @property
    def frozen(self) -> bool:
        """Between a handover's freeze and its commit (or thaw): write nothing."""
        return self.phase is Phase.FROZEN

    @property
    def last_id(self) -> int:
        return self.history.last_id

    async def start(self, listener: socket.socket | None = None) -> None:
        """Serve on LISTENER (handed over by a predecessor) or on a new socket.

        `reuse_port` (with a handover socket only, so a stray second server still gets "address
        in use"): a release that cannot take over from the one serving (another handover
        version) still starts next to it and shares the port until the old one stops, so no
        connect is refused (with `net.ipv4.tcp_migrate_req=1` not even those in its queue).
        """
        s = self.settings
        self.port = await self.listener.open(
            s.host, s.port, reuse_port=bool(s.handover_socket), sock=listener
        )
        self._housekeep()
        log.info(
            "start version=%s release=%s listen=%s:%d loop=%s history=%s %s",
            __version__,
            self.release,
            self.listener.sockname[0],
            self.port,
            type(self._loop).__module__.split(".")[0],
            self.history.describe().replace(" ", ","),
            config.describe(s),
        )

    async def stop(self) -> None:
        """Stop accepting, say INFO + BYE restarting to everyone, flush history, close."""
        deadline = self._loop.time() + self.settings.stop_timeout * 0.8  # room to exit
        self.phase = Phase.STOPPING
        self.listener.close()
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
            self.fanout.flush_all()
        self.history.close()
        await self.room.close()  # a cluster sends the queued releases, closes Redis
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
        """Once a period: drop connections past a timeout (nickname, unfinished line, idle)."""
        s = self.settings
        for peer, reason, left in self.registry.overdue(
            self._loop.time(), s.nick_timeout, s.line_timeout, s.idle_timeout
        ):
            if reason == "line-timeout" and self._unread(peer):
                continue  # the rest of its line waits for us, not for the client
            self.drop(peer, reason, left)
        timeouts = (s.nick_timeout, s.line_timeout, s.idle_timeout)
        period = min(1.0, *(t / 4 for t in timeouts if t))
        self._housekeeping = self._loop.call_later(period, self._housekeep)

    def _unread(self, client: Peer) -> bool:
        """Whether this server, not the client, stopped reading CLIENT (served as it reads, or
        waiting for an answer)."""
        return client.replay is not None or client.throttled or client in self.waiting

    def new_connection(self) -> ServerConnection:
        s = self.settings
        return ServerConnection(max_line=s.max_line, rate=s.rate, burst=s.rate_burst)

    def _new_peer(self) -> Peer:
        return Peer(self)

    # ---- giving the service to a successor (chat.takeover.Giver) ---------------------------

    def open_handover_point(self, path: str) -> None:
        """Listen for a successor on PATH (the next release's takeover request)."""
        self._handover_point = HandoverPoint(self, path, self.settings.handover_timeout)
        log.info("handover listening path=%s", path)

    def close_handover_point(self) -> None:
        if self._handover_point is not None:
            self._handover_point.close()
            self._handover_point = None

    def socket_of(self, client: Peer) -> socket.socket | None:
        sock: socket.socket | None = client.transport.get_extra_info("socket")
        return sock

    def pause_accepting(self) -> None:
        self.listener.pause()

    async def accepted_all(self, limit: float) -> None:
        await self.listener.settled(limit)

    async def answers_settled(self, limit: float) -> bool:
        """Wait (up to LIMIT seconds, serving) until no client waits for an answer from Redis
        (chat/cluster.py): such an answer changes the session (a nickname, a reply). Returns
        without yielding once none does, so `freeze` follows before anyone asks again.

        Clients that keep asking could keep it waiting: after half of LIMIT nobody is read any
        more (`thaw` reads them again), so the answers owed can only run out."""
        now = self._loop.time()
        deadline, half = now + limit, now + limit / 2
        while self.waiting and self._loop.time() < deadline:
            if not self._paused_all and self._loop.time() >= half:
                self._paused_all = True
                for client in self.clients:
                    client.transport.pause_reading()
            await asyncio.sleep(0.001)
        return not self.waiting

    def stop_accepting(self) -> socket.socket:
        return self.listener.detach()

    def precopy(self, clients: list[Peer]) -> list[tuple[Peer, Session]]:
        """The sessions of CLIENTS that are simple enough to copy while served (no answer, replay
        or held line under way, not closing); reading from one marks it changed (`Peer.dirty`)."""
        now = self._loop.time()
        served = self.clients
        return [
            (client, client.snapshot(now, unsent=False))
            for client in clients
            if client in served and self._plain(client)
        ]

    def _plain(self, client: Peer) -> bool:
        return not (
            client.close_after_flush
            or client.replay is not None
            or client.throttled
            or client.conn.holding
            or client in self.waiting
            or client.conn.state is State.CLOSING
        )

    def freeze(self, precopied: Collection[Peer]) -> tuple[list[tuple[Peer, Session]], list[Peer]]:
        """Stop reading Redis, write what is queued, and describe every connection that is new
        or changed since PRECOPIED (the rest stand as copied).

        Nothing may change a session after this (no timeouts either) until `let_go` or `thaw`:
        the caller does not yield to the loop in between, so no client is read meanwhile.
        """
        self.phase = Phase.FROZEN
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self.room.pause()  # the successor reads on from here
        self.fanout.flush_all()  # commits the history, then hands every queued line out
        self.fanout.hold()
        now = self._loop.time()
        changed: list[tuple[Peer, Session]] = []
        same: list[Peer] = []
        for client in self.clients:
            if (
                not client.dirty
                and client in precopied
                and not client.transport.get_write_buffer_size()
                and self._plain(client)
            ):
                same.append(client)
                continue
            session = client.snapshot(now, self.fanout.held_back(client))
            self._taken[client] = session.unsent
            changed.append((client, session))
        return changed, same

    def handover_state(
        self,
    ) -> tuple[int, list[bytes], dict[str, Any] | None, list[bytes] | None]:
        last_id, position, retained = self.room.handover_state()
        return last_id, self.history.since(0), position, retained

    async def thaw(self, listener: socket.socket) -> None:
        """The successor failed: accept and read again as if nothing happened (nothing was
        paused but the listener, Redis and the fan-out, and the readers if the answers took
        long: the freeze never yielded).

        Everything but the listener is done before the first await: in that loop turn the
        clients are read again, and the pacer goes on with those served as they read (their
        turns came while the loop was blocked, and found the sessions frozen)."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()  # `start` begins it again
        self.phase = Phase.SERVING
        taken, self._taken = self._taken, {}
        for client, data in taken.items():
            if data and client in self.clients:
                client.transport.write(data)  # ours to send again
        departed, self._departed = self._departed, []
        for client, exc in departed:
            self.lost(client, exc)
        paused, self._paused_all = self._paused_all, False
        for client in self.clients:
            if client.replay is not None or client.throttled:
                self.pacer.soon(client)
            elif paused and client not in self.waiting and not client.transport.is_closing():
                client.transport.resume_reading()
        self.room.resume()
        self.fanout.resume()
        await self.start(listener)

    def let_go(self) -> None:
        """The successor owns every connection now: close ours without a word (no FIN: the
        successor holds its own descriptor of each socket) and stop."""
        for client in self.clients:
            client.transport.abort()
        self.registry.clear()  # so their connection_lost is not ours to handle
        self._taken.clear()
        self.fanout.clear()
        self._departed.clear()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self.phase = Phase.HANDED_OVER
        self.handed_over.set()

    # ---- taking over from a predecessor (chat.takeover.take) -------------------------------

    def hold(self, sock: socket.socket) -> Peer:
        """A socket the predecessor sends while it still serves it (`chat.takeover.Holder`)."""
        return hold_socket(self._loop, self, sock)

    def prepare(self, client: Peer, session: Session, *, early: bool = False) -> None:
        """Give the held CLIENT its SESSION and register it (named, receiving), all before the
        pause where the session was pre-copied: what remains for the pause is to read it.
        An EARLY copy whose nickname an earlier copy holds displaces that one (see
        `chat.takeover.Holder.prepare`)."""
        client.restore(session, self._loop.time())
        key = address_key(client.peername())
        self.registry.add(client, key)
        conn = client.conn
        conn.shared = self.registry.shared_of(key)
        if conn.state is State.NAMED and not session.closing:
            assert conn.nick is not None
            other = self.registry.named.get(conn.nick.lower())
            if other is not None and early:
                self.unprepare(other)  # it changed since its copy: it comes again, or is gone
            elif other is not None:
                self.registry.remove(client)
                raise SessionRefused(f"the nickname {conn.nick!r} is handed over twice")
            self.registry.name(client, conn.nick, None)
            self.receives(client)
            if client.replay is not None:  # what waited behind it still does
                self.fanout.hold_back(client, Peer.held_out(session))
        elif conn.state is State.CONNECTED and not session.closing:
            self.registry.unnamed.add(client)

    def arm(self, clients: list[Peer]) -> None:
        """Have the loop watch the held CLIENTS for input from its next turn on (one `epoll_ctl`
        each: ten thousand of them took tens of milliseconds of the pause). Only when nothing
        yields to the loop before the predecessor's `commit`: no byte may be read before it."""
        for client in clients:
            if client.held_socket is None and self._plain(client):
                client.transport.resume_reading()
                self._armed.add(client)

    def unarm(self) -> None:
        """Undo `arm`: something must yield to the loop before the predecessor's `commit` (a
        cluster joined by a release that was not in one); `adopt` resumes them instead."""
        for client in self._armed:
            client.transport.pause_reading()
        self._armed.clear()

    def prepared(self, client: Peer) -> bool:
        return client in self.clients

    def unprepare(self, client: Peer) -> None:
        if client in self.clients:
            self.registry.unname(client, client.conn.nick if client.receiving else None)
            client.receiving = False
            self.registry.remove(client)

    def unhold(self, client: Peer) -> None:
        self.unprepare(client)
        unhold(client)

    async def adopt(self, inheritance: Inheritance[Peer]) -> None:
        """Serve what a predecessor handed over (`prepare`d): every session first, then the
        listener. A pre-copied session that stood, and whose connection is armed, needs nothing
        more: only the others are gone through (at 10,000 sessions, a few against all)."""
        armed, self._armed = self._armed, set()
        sessions = inheritance.sessions
        stood = len(sessions) - inheritance.changed
        todo = [item for item in sessions[:stood] if item[1] not in armed] + sessions[stood:]
        pending = []
        for session, client in todo:
            if client.held_socket is None:
                self._adopted(client, session)
            else:
                client.held, client.adopted = False, session
                connect = self._loop.connect_accepted_socket
                pending.append(connect(_factory(client), sock=client.held_socket))
                client.held_socket = None
        # Together: each waits a loop turn or two for its transport (`connected` then calls
        # `_adopted`), and one at a time a thousand of them would add a thousand turns.
        if pending:
            await asyncio.gather(*pending)
        for _, client in todo:
            if client not in self.clients:
                continue  # it refused the state, or closed
            if client.replay is not None or client.throttled:
                self.pacer.pace(client)  # served as it reads, as before the handover
            elif not client.transport.is_closing():
                client.transport.resume_reading()
        await self.start(inheritance.listener)

    def _adopted(self, client: Peer, session: Session) -> None:
        """Serve a handed-over (and `prepare`d) connection: unsent output first, then whatever
        comes next."""
        client.adopted = None
        transport = client.transport
        if session.unsent:
            transport.write(session.unsent)
        if session.closing or client.conn.state is State.CLOSING:
            client.close_after_flush = True
            transport.close()

    # ---- connections (chat.connection.Owner) -----------------------------------------------

    def connected(self, client: Peer) -> None:
        if client.adopted is not None:
            client.transport.pause_reading()  # until every session is back
            self._adopted(client, client.adopted)
            return
        self.listener.born(client)
        transport = client.transport
        peer = transport.get_extra_info("peername")
        client.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        s = self.settings
        self.metrics.accepted += 1
        if self.stopping or len(self.clients) >= s.max_clients:
            self.metrics.disconnect("server-full")
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
        key = address_key(peer)
        cap = s.max_per_address
        if not self.registry.admits(key, cap):
            transport.write(
                self._hello
                + Error(
                    "server-full", f"too many connections from your address (limit {cap})"
                ).line()
                + Bye("too-many-connections").line()
            )
            transport.close()
            self.metrics.disconnect("too-many-connections")
            log.warning("refuse peer=%s reason=too-many-connections limit=%d", client.peer, cap)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            keepalive.enable(sock, s.keepalive_idle, s.keepalive_interval, s.keepalive_count)
        client.connected_at = client.last_seen = self._loop.time()
        self.registry.add(client, key)
        client.conn.shared = self.registry.shared_of(key)
        self.registry.unnamed.add(client)
        if not self.reading:
            transport.pause_reading()  # a handover is under way: its successor reads this one
        self.send(client, self._greeting)
        log.info("connect peer=%s clients=%d", client.peer, len(self.clients))

    def received(self, client: Peer, data: bytes) -> None:
        if client not in self.clients:
            return  # refused, or handed over to a successor
        client.dirty = True  # its session may change: a handover sends it again
        conn = client.conn
        conn.receive_data(data)
        waiting = self.waiting
        if client in waiting:
            pass  # the rest stays buffered until the answer is there
        elif client.replay is not None or client.throttled:
            client.transport.pause_reading()  # served as it reads what it asked for
        else:
            handlers = self.room.handlers
            for event in conn.events_received():
                self.metrics.lines_received += 1
                self.reply(client)  # replies the protocol made before this event go first
                handlers[type(event)](client, event)
                if client in waiting or client.replay is not None:
                    break
                if client.out is not None and owed(client) > ANSWER_BUDGET:
                    client.throttled = True
                    self.pacer.pace(client)
                    break
            self.reply(client)
        now = client.last_seen = self._loop.time()
        if conn.partial:  # a line has begun: time it from its first byte
            if not client.partial_since or b"\n" in data:
                client.partial_since = now
        elif client.partial_since:
            client.partial_since = 0.0

    def drop(self, client: Peer, reason: str, left: str, *, announce: bool = True) -> None:
        """Say `BYE reason` and close after the next flush; others see `LEFT nick left`."""
        conn = client.conn
        if client not in self.clients or client.close_after_flush:
            return
        client.replay = None  # what waits behind a replay goes out, BYE last
        conn.close(reason)
        self.reply(client)
        if client.out is None:
            self.send(client, b"")  # make sure the next flush closes it
        client.close_after_flush = True
        client.reason = reason
        self._forget(client, left, announce)

    def lost(self, client: Peer, exc: Exception | None) -> None:
        if client not in self.clients:
            return  # refused, or handed over: nothing of ours to forget
        if self.frozen:
            # Its session is already in the successor's hands (which notices the dead socket
            # itself); ours again only if the handover fails (`thaw`).
            self._departed.append((client, exc))
            return
        self.registry.remove(client)
        reason = client.reason or _lost_reason(exc)
        self.metrics.disconnect(reason)
        self._forget(client, reason, announce=not self.stopping)
        log.info(
            "disconnect peer=%s nick=%s reason=%s clients=%d",
            client.peer,
            client.conn.nick or "-",
            reason,
            len(self.clients),
        )
        if self.stopping and not self.clients:
            self._all_gone.set()

    def _forget(self, client: Peer, left: str, announce: bool) -> None:
        """Take the client out of the registry; tell the others it left."""
        if client.receiving:
            client.receiving = False
            nick = client.conn.nick
            assert nick is not None
            self.registry.unname(client, nick)
            self.room.left(nick, left, announce)
        else:
            self.registry.unname(client, None)

    def _too_slow(self, clients: list[Peer]) -> None:
        """The fan-out's verdict: these readers fell too far behind."""
        for client in clients:
            if not client.close_after_flush:
                log.warning(
                    "too-slow peer=%s nick=%s backlog=%d",
                    client.peer,
                    client.conn.nick,
                    client.transport.get_write_buffer_size(),
                )
                self.drop(client, "too-slow", "too-slow")

    def drained(self, client: Peer) -> None:
        if client.replay is not None or client.throttled:
            self.pacer.soon(client)

    # ---- what a room may ask (chat.room.Hub) -----------------------------------------------

    def replay(self, client: Peer, after: int) -> None:
        upto = self.room.newest()
        if upto > after:
            self.reply(client)
            self.fanout.settle(client)  # what it was owed before it asked goes first
            client.replay = [after, upto]
            self.fanout.hold_back(client)  # and what comes after, once the replay is written
            self.pacer.pace(client)

    def reply(self, client: Peer) -> None:
        data = client.conn.data_to_send()
        if data:
            self.send(client, data)

    def answer_later(
        self, client: Peer, future: asyncio.Future[Any], done: Done, abandon: Done
    ) -> None:
        """Hold this client's later lines until FUTURE is done, then answer and go on."""
        self.waiting.add(client)
        client.transport.pause_reading()

        def finish(future: asyncio.Future[Any]) -> None:
            self.waiting.discard(client)
            gone = (
                client not in self.clients
                or client.close_after_flush
                or client.conn.state is State.CLOSING
            )
            if gone:  # a claim that succeeded for a client that left meanwhile: give it back
                abandon(client, future)
                return
            done(client, future)
            self.reply(client)
            # Paused for a handover: reading resumes with the rest (`thaw`), or in the successor.
            if self.reading and not client.transport.is_closing():
                client.transport.resume_reading()
            self.received(client, b"")  # the lines that arrived meanwhile

        future.add_done_callback(finish)


def _lost_reason(exc: Exception | None) -> str:
    if exc is None:
        return "connection closed"
    if isinstance(exc, TimeoutError):  # keepalive or TCP_USER_TIMEOUT gave the peer up
        return "timed out"
    return "connection reset"


def _factory(client: Peer) -> Callable[[], Peer]:
    """A protocol factory that hands asyncio an already made (adopted) `Peer`."""
    return lambda: client
