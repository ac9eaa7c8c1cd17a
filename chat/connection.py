"""One TCP connection: the asyncio protocol object, and its session as a handover carries it.

`Peer` is deliberately small (10,000 idle ones must fit in ~100 MB): the protocol state
(`chat.protocol.ServerConnection`) plus what the registry, the fan-out and the timers keep per
connection. It tells its server what happens through the `Owner` Protocol and nothing else.

This is also the one module that names the asyncio transport internals the handover relies on
(`take_unsent`, `hold_socket`): CPython's selector transports, with a fallback for other loops.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from chat.handover import HandoverError, Session, SessionRefused
from chat.protocol import ServerConnection, State


class Owner(Protocol):
    """What a connection tells the server it belongs to."""

    def new_connection(self) -> ServerConnection: ...

    def connected(self, peer: Peer) -> None: ...

    def received(self, peer: Peer, data: bytes) -> None: ...

    def drop(self, peer: Peer, reason: str, left: str, *, announce: bool = True) -> None: ...

    def lost(self, peer: Peer, exc: Exception | None) -> None: ...

    def drained(self, peer: Peer) -> None:
        """PEER's transport wrote out what it held past its high-water mark."""


class Peer(asyncio.Protocol):
    """One TCP connection."""

    __slots__ = (
        "address",
        "adopted",
        "allowance",
        "blocked",
        "close_after_flush",
        "conn",
        "connected_at",
        "dirty",
        "held",
        "held_socket",
        "last_seen",
        "out",
        "owner",
        "partial_since",
        "peer",
        "reason",
        "receiving",
        "replay",
        "seen",
        "throttled",
        "transport",
    )

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        # Its protocol state, from the first byte: a refused connection has one too but is never
        # registered (the registry's `clients` is the one truth of who is served here).
        self.conn = owner.new_connection()
        self.adopted: Session | None = None  # set while taking over from a predecessor
        self.held = False  # made by `hold_socket`: the takeover registers it, not `connected`
        self.held_socket: socket.socket | None = None  # held, on a loop without a transport yet
        self.transport: asyncio.Transport
        self.out: list[bytes] | None = None  # forked: its own lines, in order, until a flush
        self.receiving = False  # named: gets broadcasts
        self.seen = 0  # position in the fan-out's log up to which it has its lines
        self.close_after_flush = False
        self.allowance = 0  # extra backlog tolerated after a /since replay
        self.reason = ""
        self.connected_at = 0.0
        self.peer = "?"
        self.address = ""  # what the per-address cap counts (address_key of the peer)
        self.last_seen = 0.0  # loop time of the last bytes received
        self.partial_since = 0.0  # loop time the unfinished line began; 0.0: none
        # Served as it reads: a /since replay under way ([after, upto] ids), and whether its
        # next lines wait until what it was answered drains (`blocked`: asyncio said so).
        self.replay: list[int] | None = None
        self.throttled = False
        self.blocked = False
        # Changed since a handover pre-copied its session (`snapshot` clears it; the owner
        # sets it whenever the session may have changed: input, an answer, a drop).
        self.dirty = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.held:
            self.owner.connected(self)

    def data_received(self, data: bytes) -> None:
        self.owner.received(self, data)

    def eof_received(self) -> bool:
        self.owner.drop(self, "eof", "connection closed")
        return True  # we close it ourselves once the replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self, exc)

    def pause_writing(self) -> None:
        self.blocked = True

    def resume_writing(self) -> None:
        self.blocked = False
        self.owner.drained(self)

    # ---- a handover's view of it ----------------------------------------------------------

    def snapshot(self, now: float, held_out: bytes = b"", *, unsent: bool = True) -> Session:
        """The session as a successor needs it. With UNSENT, its unsent output is taken from
        the transport (the caller keeps it, to write again if the handover fails); without, the
        session is a pre-copy taken while it is served, and the output stays."""
        conn = self.conn
        tokens, stamp_age, partial, discarding = conn.snapshot()
        self.dirty = False
        extra: dict[str, object] = {}
        held = conn.held_lines()
        if self.replay is not None or held or held_out:
            # Served as it reads: the rest of a replay, what waits behind it, the lines it sent
            # meanwhile.
            extra = {
                "replay": self.replay,
                "held_out": held_out.decode("latin-1"),
                "held": [None if line is None else line.decode("latin-1") for line in held],
            }
        return Session(
            conn.state.value,
            conn.nick,
            self.peer,
            now - self.connected_at,
            now - self.last_seen,
            now - self.partial_since if self.partial_since else None,
            tokens,
            stamp_age,
            partial,
            discarding,
            take_unsent(self.transport) + conn.data_to_send() if unsent else b"",
            self.allowance,
            self.close_after_flush,
            extra,
        )

    def restore(self, session: Session, now: float) -> None:
        """Take SESSION's state (anything it had before is replaced), its clocks relative to
        NOW; raises HandoverError when this release refuses it."""
        conn = self.conn = self.owner.new_connection()
        try:
            conn.restore(
                State(session.state),
                session.nick,
                session.tokens,
                session.stamp_age,
                session.partial,
                session.discarding,
            )
        except Exception as exc:
            raise SessionRefused(f"cannot take the session of {session.peer}: {exc}") from None
        extra = session.extra
        held = extra.get("held")
        self.throttled = False
        if isinstance(held, list) and all(h is None or isinstance(h, str) for h in held):
            conn.hold_lines([None if h is None else h.encode("latin-1") for h in held])
            self.throttled = bool(held)  # served once what it is owed drains
        self.peer = session.peer
        self.connected_at = now - session.connected_age
        self.last_seen = now - session.last_seen_age
        self.partial_since = now - session.partial_age if session.partial_age is not None else 0.0
        self.allowance = session.allowance
        replay = extra.get("replay")
        self.replay = None
        if (
            isinstance(replay, list)
            and len(replay) == 2
            and all(type(i) is int and i >= 0 for i in replay)
        ):
            self.replay = list(replay)

    @staticmethod
    def held_out(session: Session) -> bytes:
        """What waited behind the session's replay (sent once the replay is)."""
        held = session.extra.get("held_out")
        return held.encode("latin-1") if isinstance(held, str) else b""

    def peername(self) -> object:
        """The client's address, held or served (`hold_socket`)."""
        if self.held_socket is not None:
            return self.held_socket.getpeername()
        return self.transport.get_extra_info("peername")


def hold_socket(loop: asyncio.AbstractEventLoop, owner: Owner, sock: socket.socket) -> Peer:
    """A socket a predecessor sends while it still serves it: wrap it now in a transport that
    neither reads nor writes, so the takeover (during the pause every client sees) has nothing
    left to build. CPython's selector loops can make the transport synchronously
    (`_make_socket_transport`, what `connect_accepted_socket` calls inside its task); on a loop
    without it the socket would wait in `held_socket` for the takeover (the server runs the
    selector loop: chat/server.py says why)."""
    peer = Peer(owner)
    peer.held = True
    sock.setblocking(False)
    make = getattr(loop, "_make_socket_transport", None)
    if make is None:
        peer.held_socket = sock
        return peer
    peer.transport = make(sock, peer)
    # Before the loop runs again: the transport would start reading in its next turn.
    peer.transport.pause_reading()
    return peer


def unhold(peer: Peer) -> None:
    """Let go of a held socket (its client left, or the handover failed). Only our copy
    closes: the predecessor still holds the connection, so the client sees nothing."""
    if peer.held_socket is not None:
        peer.held_socket.close()
    else:
        peer.transport.abort()


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
