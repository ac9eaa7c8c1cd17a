"""Taking over from the release that serves now, and giving the service to the next one.

`take` is the successor's side (blocking, before its event loop serves anything); `HandoverPoint`
is the predecessor's: a unix socket it listens on, and `give`, which sends every connection
and its state while still serving (`chat.handover`, over `chat.fdpass`), then freezes them, sends
what changed, and lets go only once the successor has everything. The races this avoids, in
order: connections accepted but whose transport asyncio has not built yet (tracked, and waited
for, once accepting pauses), a session that changes after it was pre-copied (marked, and sent
again), output queued but not written (flushed, and the transport's unsent bytes carried),
input read but not parsed (the partial line carried), and a FIN sent by accident (sockets are
never shut down, only closed, and the successor holds its own descriptor by then).

From the freeze to `commit` the predecessor never yields to its event loop: nothing is read,
so nothing changes, without pausing ten thousand transports one by one (and resuming them all
if the handover fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Collection, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from chat import fdpass, handover
from chat.handover import Begin, HandoverError, Session

log = logging.getLogger("chat.takeover")

ANSWER_LIMIT = 2.0
"""Seconds, at most, for the answers Redis owes paused clients (`/nick`, `/msg`, `/who` in a
cluster) before the handover gives up: an answer changes the session it would hand over."""

ACCEPT_LIMIT = 1.0
"""Seconds, at most, for asyncio to finish building the transports of sockets accepted just
before the listener closed (it does so in follow-up callbacks), so none is left out of the
snapshot (`Giver.accepted_all`)."""

BUSY = "a takeover is already in progress"

T = TypeVar("T")
P = TypeVar("P")
K = TypeVar("K", bound=Hashable)


class Giver(Protocol[K]):
    """What `give` asks of the serving release, in the order it asks. K is its connection."""

    @property
    def release(self) -> str: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def last_id(self) -> int:
        """The last id of its history (what its log lines name)."""

    @property
    def clients(self) -> Collection[K]:
        """The connections it serves now (one changes while the sockets are sent)."""

    def socket_of(self, client: K) -> socket.socket | None:
        """CLIENT's socket, or None once it is gone."""

    def precopy(self, clients: list[K]) -> list[tuple[K, Session]]:
        """The sessions of those CLIENTS that can be copied while they are served, as they
        stand; from now on it notes which of them change (`freeze` sends those again)."""

    def pause_accepting(self) -> None: ...

    async def accepted_all(self, limit: float) -> None:
        """Until every connection accepted before `pause_accepting` is one of `clients`."""

    def stop_accepting(self) -> socket.socket:
        """The listening socket, no longer served here."""

    async def answers_settled(self, limit: float) -> bool:
        """Whether no client waits for an answer that would change its session (it returns
        without yielding once none does: `freeze` follows at once)."""

    def freeze(self, precopied: Collection[K]) -> tuple[list[tuple[K, Session]], list[K]]:
        """Write what is queued and stop every session where it stands (nothing changes them
        until `let_go` or `thaw`): (the session of each client that is new or changed since
        `precopy`, the PRECOPIED clients whose copy stands)."""

    def handover_state(
        self,
    ) -> tuple[int, list[bytes], dict[str, Any] | None, list[bytes] | None]:
        """The last id its clients saw, the retained history, a cluster's reading position and
        the lines its room retains (None on a single host: the history's)."""

    async def thaw(self, listener: socket.socket) -> None:
        """The successor failed: serve again as if nothing happened."""

    def let_go(self) -> None:
        """The successor owns every connection: close ours without a word and stop."""


class Holder(Protocol[P]):
    """What `take` asks of the successor for each socket and session. P is its connection."""

    def hold(self, sock: socket.socket) -> P:
        """A socket the predecessor still serves: made ready to serve, without reading or
        writing it."""

    def prepare(self, held: P, session: Session, *, early: bool = False) -> None:
        """Give HELD the state of SESSION, and count it as served from the moment this release
        reads (HandoverError: this release refuses that state; the predecessor serves on).

        EARLY: a pre-copy, taken while the predecessor serves on, one batch after another, so
        not a consistent cut: a nickname copied with one session may have gone to another by
        the time that one was copied. The later copy wins; the earlier one must be sent again
        in the pause (`prepared` says whether it still stands)."""

    def prepared(self, held: P) -> bool:
        """Whether HELD's session is still taken (an early copy another one displaced is not)."""

    def unprepare(self, held: P) -> None:
        """Undo `prepare` (the session changed since, and comes again)."""

    def unhold(self, held: P) -> None:
        """Let go of HELD (its client left, or the handover failed); `unprepare` first if
        prepared. Only our copy of the socket closes: the client sees nothing."""


class Laps:
    """Where a handover's time goes, in named laps for its log line (milliseconds)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + (now - self._last) * 1000
        self._last = now

    def __str__(self) -> str:
        return " ".join(f"{name}={ms:.1f}" for name, ms in self.laps.items())


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the successor ----------------------------------------------------------------------------


@dataclass
class Inheritance(Generic[P]):
    """Everything a predecessor handed over; the successor owns none of it until `confirm`.

    P is what the successor made of each socket as it arrived (`Holder.hold`), prepared with
    its session.
    """

    begin: Begin
    listener: socket.socket
    sessions: list[tuple[Session, P]]
    channel: fdpass.Channel
    holder: Holder[P]
    frozen_at: float = 0.0
    """`time.perf_counter()` when the begin frame came: about when the predecessor froze its
    clients, so the pause they see ends when this release reads them again."""
    laps: Laps = field(default_factory=Laps)
    """Where the takeover's time went so far (the caller adds its own laps)."""
    changed: int = 0
    """How many of `sessions`, at their end, were sent in the pause; the others are the
    pre-copied ones that stood (`same`), first."""

    def confirm(self) -> bool:
        """Say `ready`; True once the predecessor lets go (`commit`, or it is gone)."""
        try:
            self.channel.send(handover.ready(len(self.sessions)))
            handover.expect(self.channel.recv(), "commit")
        except EOFError:
            log.warning("handover the predecessor went away after ready: taking over")
        except (HandoverError, OSError) as exc:
            log.error("handover aborted by the predecessor reason=%s", exc)
            self.discard()
            return False
        self.channel.close()
        return True

    def refuse(self, reason: str) -> None:
        """Tell the predecessor to serve on, and close every descriptor received."""
        with contextlib.suppress(OSError):
            self.channel.send(handover.abort(reason))
        self.discard()

    def discard(self) -> None:
        # Closing our copies never reaches the clients: the predecessor holds its own.
        self.listener.close()
        for _, held in self.sessions:
            self.holder.unhold(held)
        self.channel.close()


class Taking(Generic[P]):
    """A takeover under way: every socket the predecessor served and the state of most of its
    sessions are here, prepared, while it still serves them. `finish` asks it to freeze."""

    def __init__(
        self,
        channel: fdpass.Channel,
        holder: Holder[P],
        held: dict[int, P],
        precopied: dict[int, Session],
        laps: Laps,
    ) -> None:
        self.channel = channel
        self.holder = holder
        self.held = held
        self.precopied = precopied
        self.laps = laps

    def precopied_held(self) -> list[P]:
        """What the holder made of each socket whose session was pre-copied."""
        return [self.held[key] for key in self.precopied]

    def refuse(self, reason: str) -> None:
        """Tell the predecessor to serve on, and close every descriptor received."""
        with contextlib.suppress(OSError):
            self.channel.send(handover.abort(reason))
        self.channel.close()
        for item in self.held.values():
            self.holder.unhold(item)

    def finish(self) -> Inheritance[P]:
        """Say `prepared`, and take what changed in the pause: the new sockets, the listener,
        the changed sessions. Raises as `take` does (having told the predecessor, which then
        serves on)."""
        channel, holder, held, precopied = self.channel, self.holder, self.held, self.precopied
        sessions: list[tuple[Session, P]] = []
        listener: socket.socket | None = None
        try:
            channel.send(handover.prepared(len(precopied)))
            while (message := channel.recv()).get("t") == "sockets":
                _receive_sockets(channel, message, holder, held)
            begin = Begin.parse(message)
            frozen_at = time.perf_counter()  # sent just after the predecessor froze every client
            self.laps.lap("prepared")
            handover.expect(channel.recv(), "listener")
            (listener_fd,) = channel.take_fds(1)
            listener = socket.socket(fileno=listener_fd)
            changed: list[tuple[int, Session]] = []
            same: list[int] = []
            while (message := channel.recv()).get("t") != "end":
                if message.get("t") == "same":
                    same += handover.parse_same(message)
                else:
                    changed += handover.parse_sessions(message)
            self.laps.lap("changes")
            for key in same:
                session = precopied.pop(key, None)
                if session is None:
                    raise HandoverError(f"socket key {key} is the same as what was never sent")
                item = held.pop(key)
                sessions.append((session, item))  # from here on let go with the others
                if not holder.prepared(item):
                    raise HandoverError(
                        f"socket key {key} stands as copied, yet its nickname moved"
                    )
            for key in precopied:  # changed since, or gone
                holder.unprepare(held[key])
            precopied.clear()
            for key, session in changed:
                fresh = held.pop(key, None)
                if fresh is None:
                    raise HandoverError(f"a session for socket key {key}, never sent (or twice)")
                sessions.append((session, fresh))
                holder.prepare(fresh, session)
            if len(sessions) != begin.sessions:
                raise HandoverError(f"announced {begin.sessions} sessions, sent {len(sessions)}")
            self.laps.lap("sessions")
        except BaseException as exc:
            with contextlib.suppress(OSError):
                channel.send(handover.abort(f"successor failed: {exc}"))
            channel.close()
            if listener is not None:
                listener.close()
            for _, item in sessions:
                holder.unhold(item)
            for item in held.values():
                holder.unhold(item)
            raise
        for item in held.values():  # their clients left before the pause
            holder.unhold(item)
        return Inheritance(
            begin, listener, sessions, channel, holder, frozen_at, self.laps, len(changed)
        )


def _receive_sockets(
    channel: fdpass.Channel, message: dict[str, Any], holder: Holder[P], held: dict[int, P]
) -> None:
    keys = handover.parse_sockets(message)
    fds = channel.take_fds(len(keys))
    try:
        for i, (key, fd) in enumerate(zip(keys, fds, strict=True)):
            if key in held:
                raise HandoverError(f"socket key {key} sent twice")
            sock = socket.socket(fileno=fd)
            fds[i] = -1  # the socket object owns it now
            held[key] = holder.hold(sock)
    finally:
        for fd in fds:  # the rest of a batch that failed half-way
            if fd >= 0:
                os.close(fd)


def take(path: str, release: str, timeout: float, holder: Holder[P]) -> Taking[P] | None:
    """Ask the release serving on PATH for its sockets and sessions; None when nothing serves
    there. Each socket goes to HOLDER as it arrives, and each pre-copied session with it, while
    the predecessor still serves them; `Taking.finish` then has it freeze them.

    Raises HandoverError (refused, another version, garbage, a session this release refuses)
    or OSError/TimeoutError; then the predecessor, if any, still serves and the caller falls
    back to binding the port itself.
    """
    channel = fdpass.connect(path, timeout)
    if channel is None:
        return None
    laps = Laps()
    held: dict[int, P] = {}
    precopied: dict[int, Session] = {}
    try:
        channel.send(handover.hello(release))
        while (message := channel.recv()).get("t") != "precopied":
            if message.get("t") == "sockets":
                _receive_sockets(channel, message, holder, held)
                continue
            for key, session in handover.parse_sessions(message, "presessions"):
                item = held.get(key)
                if item is None or key in precopied:
                    raise HandoverError(f"a session for socket key {key}, never sent (or twice)")
                precopied[key] = session
                holder.prepare(item, session, early=True)
        laps.lap("precopy")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            channel.send(handover.abort(f"successor failed: {exc}"))
        channel.close()
        for item in held.values():
            holder.unhold(item)
        raise
    return Taking(channel, holder, held, precopied, laps)


# --- the predecessor --------------------------------------------------------------------------


class HandoverPoint:
    """The unix socket a successor connects to. One takeover at a time; the rest is refused."""

    def __init__(self, giver: Giver[Any], path: str, timeout: float) -> None:
        self.giver = giver
        self.path = path
        self.timeout = timeout
        self.busy = False
        self._loop = asyncio.get_running_loop()
        self._sock, self._inode = fdpass.bind(path)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self, unlink: bool = True) -> None:
        """Stop listening; UNLINK the socket file unless a successor took over (it binds its
        own there, and the inode a check would compare may be the very one freed for it)."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            if unlink:
                fdpass.unlink_if_ours(self.path, self._inode)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        channel = fdpass.Channel(conn, self.timeout)
        try:
            uid = fdpass.peer_uid(conn)
            if uid not in (os.getuid(), 0):
                raise HandoverError(f"peer uid {uid} is not this service's user")
            conn.setblocking(False)
            data = await asyncio.wait_for(self._loop.sock_recv(conn, 1 << 12), self.timeout)
            conn.settimeout(self.timeout)
            messages = list(handover.FrameReader().feed(data))
            if not messages:
                raise HandoverError("no complete hello")
            successor = handover.check_hello(messages[0])
            if self.busy:
                raise HandoverError(BUSY)
            if self.giver.stopping:
                raise HandoverError("this server is stopping")
        except (HandoverError, OSError, TimeoutError) as exc:
            log.warning("handover refused reason=%s", exc or "timeout")
            with contextlib.suppress(OSError):
                conn.settimeout(1.0)
                channel.send(handover.refuse(str(exc) or "timeout"))
            channel.close()
            return
        self.busy = True
        try:
            if await give(self.giver, channel, successor, self._sock):
                self.close(unlink=False)
        finally:
            self.busy = False


async def give(
    giver: Giver[K], channel: fdpass.Channel, successor: str, point: socket.socket | None = None
) -> bool:
    """Hand every socket and session to SUCCESSOR. True once it took them; else serve on.

    POINT, the handover socket, is watched while the loop is blocked: another successor that
    knocks meanwhile is refused at once."""
    began = time.perf_counter()
    laps = Laps()
    keys: dict[K, int] = {}
    listener: socket.socket | None = None  # set once accepting stopped: failing means `thaw`
    changed: list[tuple[K, Session]] = []
    same: list[K] = []
    try:
        # The sockets and the sessions first, while their clients are still served.
        clients = list(giver.clients)
        for batch in _chunks(clients, handover.FDS_PER_MESSAGE):
            await _send_sockets_later(giver, channel, keys, batch)
            await asyncio.sleep(0)
        laps.lap("sockets")
        precopied: set[K] = set()
        for batch in _chunks([client for client in clients if client in keys], 100):
            items = giver.precopy(batch)
            for chunk in _frames(items):
                rows = [(keys[c], s) for c, s in chunk]
                await channel.send_later(handover.sessions(rows, "presessions"))
            precopied.update(client for client, _ in items)
            await asyncio.sleep(0)  # serve between two batches
        await channel.send_later(handover.precopied())
        # Serving on while the successor takes them in.
        handover.expect(await channel.recv_later(), "prepared")
        laps.lap("precopy")
        giver.pause_accepting()
        await giver.accepted_all(ACCEPT_LIMIT)
        listener = giver.stop_accepting()
        if not await giver.answers_settled(ANSWER_LIMIT):
            raise HandoverError("clients still wait for answers from Redis")
        laps.lap("settle")
        # From here to `commit`, no await: the loop reads nothing and runs nothing else.
        changed, same = giver.freeze(precopied)
        late = [client for client, _ in changed if client not in keys]
        for batch in _chunks(late, handover.FDS_PER_MESSAGE):
            _send_sockets(giver, channel, keys, batch)
        last_id, history, position, retained = giver.handover_state()
        total = len(changed) + len(same)
        channel.send(handover.begin(giver.release, total, last_id, history, position, retained))
        channel.send(handover.listener(), [listener.fileno()])
        for chunk in _frames(changed):
            channel.send(handover.sessions([(keys[client], s) for client, s in chunk]))
        same_keys = [keys[client] for client in same]
        for keys_batch in _chunks(same_keys, handover.KEYS_PER_MESSAGE):
            channel.send(handover.same(keys_batch))
        channel.send(handover.end())
        laps.lap("freeze")
        # Blocking (bounded by the channel's timeout): the loop must not read a frozen client.
        if point is None:
            handover.expect(channel.recv(), "ready")
        else:
            handover.expect(channel.recv_while(point, lambda: _refuse_busy(point)), "ready")
        channel.send(handover.commit())
        laps.lap("ready")
    except Exception as exc:  # whatever went wrong, the clients must be served again
        reason = str(exc) or type(exc).__name__
        if not isinstance(exc, HandoverError | OSError | EOFError):
            log.exception("handover failed unexpectedly")
        with contextlib.suppress(OSError):
            channel.send(handover.abort(reason))
        channel.close()
        if listener is not None:  # else nothing had stopped yet
            await giver.thaw(listener)
        log.warning("handover aborted successor=%s reason=%s: serving on", successor, reason)
        return False
    channel.close()
    giver.let_go()
    listener.close()
    laps.lap("let_go")  # after the commit: the successor serves meanwhile
    log.info(
        "handover gave successor=%s sessions=%d changed=%d unsent=%d/%dB partial=%d "
        "last_id=%d ms=%.1f %s",
        successor,
        len(changed) + len(same),
        len(changed),
        sum(1 for _, s in changed if s.unsent),
        sum(len(s.unsent) for _, s in changed),
        sum(1 for _, s in changed if s.partial),
        giver.last_id,
        (time.perf_counter() - began) * 1000,
        laps,
    )
    return True


def _refuse_busy(point: socket.socket) -> None:
    """Another successor knocked while the loop is blocked for the first one's `ready`."""
    try:
        conn, _ = point.accept()
    except OSError:
        return
    log.warning("handover refused reason=%s", BUSY)
    with contextlib.suppress(OSError):
        fdpass.Channel(conn, 1.0).send(handover.refuse(BUSY))
    conn.close()


def _frames(items: list[tuple[K, Session]]) -> Iterator[list[tuple[K, Session]]]:
    """Sessions in frames of at most SESSIONS_PER_MESSAGE, and of well under MAX_FRAME bytes:
    a slow reader's unsent output can be megabytes (base64 adds a third), and the lines held
    for a client served as it reads travel as latin-1 strings (up to six bytes each: `\u00ff`)."""
    budget = handover.MAX_FRAME // 2
    chunk: list[tuple[K, Session]] = []
    size = 0
    for item in items:
        session = item[1]
        weight = 4 * (len(session.unsent) + len(session.partial)) // 3 + 512
        if session.extra:
            held = session.extra.get("held")
            if isinstance(held, list):
                weight += 6 * sum(len(line) for line in held if isinstance(line, str))
            held_out = session.extra.get("held_out")
            if isinstance(held_out, str):
                weight += 6 * len(held_out)
        if chunk and (len(chunk) >= handover.SESSIONS_PER_MESSAGE or size + weight > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += weight
    if chunk:
        yield chunk


def _socket_batch(
    giver: Giver[K], keys: dict[K, int], clients: list[K]
) -> tuple[dict[str, Any], list[int]] | None:
    """The frame and descriptors of the sockets of CLIENTS that are still served, each under a
    new key (None: none is).

    The descriptors are read here, at the moment they are sent: a client that left since the
    list was made has none (or one that already names another socket).
    """
    served = giver.clients
    batch = [(c, giver.socket_of(c)) for c in clients if c in served]
    pairs = [(c, sock) for c, sock in batch if sock is not None and sock.fileno() >= 0]
    for client, _ in pairs:
        keys[client] = len(keys)
    if not pairs:
        return None
    return handover.sockets([keys[c] for c, _ in pairs]), [sock.fileno() for _, sock in pairs]


def _send_sockets(
    giver: Giver[K], channel: fdpass.Channel, keys: dict[K, int], clients: list[K]
) -> None:
    """Send the sockets of CLIENTS still served (in the freeze: blocking)."""
    batch = _socket_batch(giver, keys, clients)
    if batch is not None:
        channel.send(*batch)


async def _send_sockets_later(
    giver: Giver[K], channel: fdpass.Channel, keys: dict[K, int], clients: list[K]
) -> None:
    """Send the sockets of CLIENTS still served, serving on while the successor catches up."""
    batch = _socket_batch(giver, keys, clients)
    if batch is not None:
        await channel.send_later(*batch)
