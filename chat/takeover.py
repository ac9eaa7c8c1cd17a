"""Taking over from the release that serves now, and giving the service to the next one.

`take` is the successor's side (blocking, before its event loop serves anything); `HandoverPoint`
is the predecessor's: a unix socket it listens on, and `give`, which pauses every connection,
sends them with their state (`chat.handover`, over `chat.fdpass`) and lets go only once the
successor has everything. The races this avoids, in order: connections accepted but whose
transport asyncio has not built yet (tracked, and waited for, once accepting pauses),
output queued but not written (flushed, and the transport's unsent bytes carried), input read
but not parsed (the partial line carried), and a FIN sent by accident (sockets are never shut
down, only closed, and the successor holds its own descriptor by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from chat import fdpass, handover
from chat.handover import Begin, HandoverError, Session

if TYPE_CHECKING:
    from chat.server import ChatServer, Client

log = logging.getLogger("chat.takeover")

ANSWER_LIMIT = 2.0
"""Seconds, at most, for the answers Redis owes paused clients (`/nick`, `/msg`, `/who` in a
cluster) before the handover gives up: an answer changes the session it would hand over."""

ACCEPT_LIMIT = 1.0
"""Seconds, at most, for asyncio to finish building the transports of sockets accepted just
before the listener closed (it does so in follow-up callbacks), so none is left out of the
snapshot (`ChatServer.accepted_all`)."""

BUSY = "a takeover is already in progress"

T = TypeVar("T")
P = TypeVar("P")


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the successor ----------------------------------------------------------------------------


@dataclass
class Inheritance(Generic[P]):
    """Everything a predecessor handed over; the successor owns none of it until `confirm`.

    P is what the successor made of each socket as it arrived (`take`'s `hold`).
    """

    begin: Begin
    listener: socket.socket
    sessions: list[tuple[Session, P]]
    channel: fdpass.Channel
    drop: Callable[[P], None]

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
            self.drop(held)
        self.channel.close()


def take(
    path: str,
    release: str,
    timeout: float,
    hold: Callable[[socket.socket], P],
    drop: Callable[[P], None],
) -> Inheritance[P] | None:
    """Ask the release serving on PATH for its sockets; None when nothing serves there.

    HOLD gets each client socket as it arrives (before the predecessor pauses, for most), so
    the successor can prepare it without reading or writing; DROP undoes that for a socket
    whose client left meanwhile, or for all of them if the handover fails.

    Raises HandoverError (refused, another version, garbage) or OSError/TimeoutError; then the
    predecessor, if any, still serves and the caller falls back to binding the port itself.
    """
    channel = fdpass.connect(path, timeout)
    if channel is None:
        return None
    held: dict[int, P] = {}
    sessions: list[tuple[Session, P]] = []
    listener: socket.socket | None = None
    try:
        channel.send(handover.hello(release))
        while (message := channel.recv()).get("t") == "sockets":
            keys = handover.parse_sockets(message)
            fds = channel.take_fds(len(keys))
            try:
                for i, (key, fd) in enumerate(zip(keys, fds, strict=True)):
                    if key in held:
                        raise HandoverError(f"socket key {key} sent twice")
                    sock = socket.socket(fileno=fd)
                    fds[i] = -1  # the socket object owns it now
                    held[key] = hold(sock)
            finally:
                for fd in fds:  # the rest of a batch that failed half-way
                    if fd >= 0:
                        os.close(fd)
        begin = Begin.parse(message)
        handover.expect(channel.recv(), "listener")
        (listener_fd,) = channel.take_fds(1)
        listener = socket.socket(fileno=listener_fd)
        while (message := channel.recv()).get("t") != "end":
            for key, session in handover.parse_sessions(message):
                if key not in held:
                    raise HandoverError(f"a session for socket key {key}, never sent (or twice)")
                sessions.append((session, held.pop(key)))
        if len(sessions) != begin.sessions:
            raise HandoverError(f"announced {begin.sessions} sessions, sent {len(sessions)}")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            channel.send(handover.abort(f"successor failed: {exc}"))
        channel.close()
        if listener is not None:
            listener.close()
        for _, item in sessions:
            drop(item)
        for item in held.values():
            drop(item)
        raise
    for item in held.values():  # their clients left before the pause
        drop(item)
    return Inheritance(begin, listener, sessions, channel, drop)


# --- the predecessor --------------------------------------------------------------------------


class HandoverPoint:
    """The unix socket a successor connects to. One takeover at a time; the rest is refused."""

    def __init__(self, server: ChatServer, path: str, timeout: float) -> None:
        self.server = server
        self.path = path
        self.timeout = timeout
        self.busy = False
        self._loop = asyncio.get_running_loop()
        self._sock, self._inode = fdpass.bind(path)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
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
            if self.server.stopping:
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
            if await give(self.server, channel, successor):
                self.close()
        finally:
            self.busy = False


async def give(server: ChatServer, channel: fdpass.Channel, successor: str) -> bool:
    """Hand every socket and session to SUCCESSOR. True once it took them; else serve on."""
    began = time.perf_counter()
    keys: dict[Client, int] = {}
    listener: socket.socket | None = None  # set once accepting stopped: failing means `thaw`
    items: list[tuple[Client, Session]] = []
    try:
        # The sockets first, while their clients are still served (see chat.handover).
        for batch in _chunks(list(server.clients), handover.FDS_PER_MESSAGE):
            _send_sockets(server, channel, keys, batch)
            await asyncio.sleep(0)
        server.pause_accepting()
        await server.accepted_all(ACCEPT_LIMIT)
        listener = server.stop_accepting()
        await server.pause()
        if not await server.answers_settled(ANSWER_LIMIT):
            raise HandoverError("clients still wait for answers from Redis")
        items = server.freeze()
        late = [client for client, _ in items if client not in keys]
        for batch in _chunks(late, handover.FDS_PER_MESSAGE):
            _send_sockets(server, channel, keys, batch)
        history, cluster = server.history, server.cluster
        last_id, position = history.last_id, None
        if cluster is not None:  # its clients saw up to the backplane's id, not the file's
            last_id = cluster.backplane.last_id
            position = dataclasses.asdict(cluster.backplane.position())
        channel.send(
            handover.begin(server.release, len(items), last_id, history.since(0), position)
        )
        channel.send(handover.listener(), [listener.fileno()])
        for chunk in _frames(items):
            channel.send(handover.sessions([(keys[client], s) for client, s in chunk]))
        channel.send(handover.end())
        # Awaited: the loop stays free to refuse a second successor meanwhile.
        handover.expect(await channel.recv_later(), "ready")
        channel.send(handover.commit())
    except Exception as exc:  # whatever went wrong, the clients must be served again
        reason = str(exc) or type(exc).__name__
        if not isinstance(exc, HandoverError | OSError | EOFError):
            log.exception("handover failed unexpectedly")
        with contextlib.suppress(OSError):
            channel.send(handover.abort(reason))
        channel.close()
        if listener is not None:  # else nothing had stopped yet
            await server.thaw(listener)
        log.warning("handover aborted successor=%s reason=%s: serving on", successor, reason)
        return False
    channel.close()
    server.let_go()
    listener.close()
    log.info(
        "handover gave successor=%s sessions=%d unsent=%d/%dB partial=%d last_id=%d ms=%.1f",
        successor,
        len(items),
        sum(1 for _, s in items if s.unsent),
        sum(len(s.unsent) for _, s in items),
        sum(1 for _, s in items if s.partial),
        server.history.last_id,
        (time.perf_counter() - began) * 1000,
    )
    return True


def _frames(items: list[tuple[Client, Session]]) -> Iterator[list[tuple[Client, Session]]]:
    """Sessions in frames of at most SESSIONS_PER_MESSAGE, and of well under MAX_FRAME bytes:
    a slow reader's unsent output can be megabytes (base64 adds a third)."""
    budget = handover.MAX_FRAME // 2
    chunk: list[tuple[Client, Session]] = []
    size = 0
    for item in items:
        weight = 4 * (len(item[1].unsent) + len(item[1].partial)) // 3 + 512
        if chunk and (len(chunk) >= handover.SESSIONS_PER_MESSAGE or size + weight > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += weight
    if chunk:
        yield chunk


def _send_sockets(
    server: ChatServer, channel: fdpass.Channel, keys: dict[Client, int], clients: list[Client]
) -> None:
    """Send the sockets of CLIENTS that are still served, each under a new key.

    The descriptors are read here, at the moment they are sent: a client that left since the
    list was made has none (or one that already names another socket).
    """
    batch = [(c, c.transport.get_extra_info("socket")) for c in clients if c in server.clients]
    batch = [(c, sock) for c, sock in batch if sock is not None and sock.fileno() >= 0]
    for client, _ in batch:
        keys[client] = len(keys)
    if batch:
        channel.send(
            handover.sockets([keys[c] for c, _ in batch]), [sock.fileno() for _, sock in batch]
        )


def take_unsent(transport: asyncio.Transport) -> bytes:
    """Take back the bytes a transport accepted but the kernel has not: from now on they are
    the successor's to send (or ours again, through `write`, if the handover fails).

    Taking, not copying: the loop keeps running while the successor confirms, and a transport
    that still held them would send them then, so the client would get them twice. asyncio has
    no public way to do this; CPython's selector transports keep the bytes in `_buffer` (a
    bytearray up to 3.11, a deque of memoryviews after) and write them from a writer callback,
    removed here too (the public `remove_writer` refuses a transport's descriptor). Another
    kind of transport must have nothing buffered.
    """
    buffer = getattr(transport, "_buffer", None)
    if buffer is None:
        if transport.get_write_buffer_size():
            raise HandoverError(f"cannot take the unsent output of {type(transport).__name__}")
        return b""
    data = bytes(buffer) if isinstance(buffer, bytearray) else b"".join(bytes(p) for p in buffer)
    if data:
        buffer.clear()
        sock = transport.get_extra_info("socket")
        asyncio.get_running_loop()._remove_writer(sock.fileno())  # type: ignore[attr-defined]
    return data
