"""The PyNet chat protocol (docs/protocol.md), sans-I/O.

Nothing here touches sockets, threads or asyncio: bytes go in (`receive_data`), events come out
(`events_received`) and bytes to write come out (`data_to_send`). The server adapter, the
client, the health check and the tests all drive the same code, so the wire format lives in one
place. Time is passed in (a clock callable) so the rate limit is testable without sleeping.

Two kinds of failure are kept apart, as h11 does:
- the peer misbehaved (bad line, unknown command, flood): never raised; it becomes an `ERR`
  reply queued in `data_to_send` plus a `Refused` event the caller may log;
- our caller misused the API (sent after closing, a newline inside a field, an unknown error
  code): `UsageError` is raised, because that is a bug in our own code.
"""

from __future__ import annotations

import enum
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from chat.events import (  # the events are part of this module's public API (h11 style)
    ERROR_CODES,
    NICK_MAX,
    Bye,
    ClientEvent,
    Command,
    Error,
    Hello,
    Info,
    Joined,
    Left,
    Message,
    Nick,
    NickAccepted,
    NickChanged,
    Ping,
    Pong,
    Private,
    PrivateMessage,
    Quit,
    Refused,
    Reply,
    Say,
    ServerEvent,
    Since,
    Unknown,
    UsageError,
    Who,
    WhoList,
    _field,
    parse_reply,
    valid_nick,
)

__all__ = [
    "ERROR_CODES",
    "MAX_LINE",
    "NICK_MAX",
    "Bye",
    "ClientConnection",
    "ClientEvent",
    "Command",
    "Error",
    "Hello",
    "Info",
    "Joined",
    "Left",
    "Message",
    "Nick",
    "NickAccepted",
    "NickChanged",
    "Ping",
    "Pong",
    "Private",
    "PrivateMessage",
    "Quit",
    "Refused",
    "Reply",
    "Say",
    "ServerConnection",
    "ServerEvent",
    "Since",
    "State",
    "TokenBucket",
    "Unknown",
    "UsageError",
    "Who",
    "WhoList",
    "bad_text",
    "parse_reply",
    "valid_nick",
]

MAX_LINE = 4096
"""Default maximum line length in bytes, newline included (docs/protocol.md, Framing)."""

_PONG = Pong().line()  # every reply is formatted by its event class; this one never changes
_UNKNOWN_TEXT = "unknown command; try /nick /msg /who /since /ping /quit, or // to send a /"
_ID_RE = re.compile(r"[0-9]{1,18}")
# Characters that text relayed to others must not hold (docs/protocol.md, Framing): C0 except
# TAB, DEL and C1. They drive terminals (escape sequences, BEL, a bare CR over the line).
_BAD_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_BAD_TEXT_REPLY = "text must not contain control characters (C0 except TAB, DEL, C1)"


def bad_text(text: str) -> bool:
    """True when TEXT holds a character no one may send to others.

    `str.isprintable()` (C speed) is true for nearly every chat line, and every character the
    regex looks for is unprintable, so the regex runs only for the rare rest (a TAB, a space
    other than U+0020, a format character).
    """
    return not text.isprintable() and _BAD_TEXT.search(text) is not None


# --------------------------------------------------------------------------------------------
# Framing, shared by both sides.

_TOO_LONG = object()  # marks, in order, a line that was cut off for being too long


class _LineSplitter:
    """Split a byte stream into lines of at most `max_line` bytes (newline included).

    Memory stays bounded: an over-long partial line is dropped as soon as it passes the limit,
    and the rest of it is skipped up to the next newline.
    """

    __slots__ = ("_buf", "_discarding", "lines", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.lines: deque[bytes | object] = deque()
        self._buf = b""
        self._discarding = False

    def feed(self, data: bytes) -> None:
        if b"\n" not in data:
            if not self._discarding:
                self._buf += data
                if len(self._buf) >= self.max_line:
                    self._cut()
            return
        parts = (self._buf + data if self._buf else data).split(b"\n")
        self._buf = b""
        tail = parts.pop()
        if self._discarding:
            del parts[0]  # the end of the over-long line
            self._discarding = False
        limit, lines = self.max_line, self.lines
        for part in parts:
            lines.append(part if len(part) < limit else _TOO_LONG)
        if tail:
            self._buf = tail
            if len(tail) >= limit:
                self._cut()

    def _cut(self) -> None:
        self.lines.append(_TOO_LONG)
        self._buf = b""
        self._discarding = True

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line (bounded by max_line)."""
        return len(self._buf)

    @property
    def partial(self) -> bool:
        """True between the first byte of a line and its newline."""
        return self._discarding or bool(self._buf)


# --------------------------------------------------------------------------------------------
# The server side of one connection.


class State(enum.Enum):
    """Session states of one connection, seen from the server."""

    CONNECTED = "connected"  # greeted, no nickname yet
    NAMED = "named"  # has a nickname: may talk
    CLOSING = "closing"  # BYE queued: input is ignored, nothing more may be sent


# Everything about the session state lives in these two tables.
# Which commands the peer may use in each state (others get `ERR need-nick`; in CLOSING all
# input is ignored):
ALLOWED: dict[State, frozenset[str]] = {
    State.CONNECTED: frozenset({"nick", "who", "ping", "quit"}),
    State.NAMED: frozenset({"nick", "msg", "who", "since", "ping", "quit", "say"}),
    State.CLOSING: frozenset(),
}
# Which transitions each action causes; an action missing for a state is API misuse.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.CONNECTED, "accept_nick"): State.NAMED,
    (State.NAMED, "accept_nick"): State.NAMED,
    (State.CONNECTED, "close"): State.CLOSING,
    (State.NAMED, "close"): State.CLOSING,
    (State.CONNECTED, "send"): State.CONNECTED,
    (State.NAMED, "send"): State.NAMED,
}


class _Bucket(Protocol):
    """A token bucket's state: a `TokenBucket`'s, or a connection's own."""

    rate: float
    burst: int
    _tokens: float
    _stamp: float
    _clock: Callable[[], float]


def _take(bucket: _Bucket) -> bool:
    """Take one token from BUCKET, if there is one (refilled at `rate` per second up to
    `burst`)."""
    now = bucket._clock()
    tokens = min(bucket.burst, bucket._tokens + (now - bucket._stamp) * bucket.rate)
    bucket._stamp = now
    if tokens < 1.0:
        bucket._tokens = tokens
        return False
    bucket._tokens = tokens - 1.0
    return True


class TokenBucket:
    """RATE tokens per second, up to BURST at once: a rate limit shared by several connections
    (those of one address), so that opening more connections does not buy more lines."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        """One token, if there is one."""
        return _take(self)


class ServerConnection:
    """One client connection as the server sees it.

    Feed bytes with `receive_data`, then iterate `events_received()`; replies the protocol
    decides alone (`ERR`, `PONG`, `BYE` after `/quit`) are queued for `data_to_send()` while
    iterating, so each reply lands in order with the events around it.
    """

    __slots__ = (
        "_clock",
        "_out",
        "_split",
        "_stamp",
        "_tokens",
        "burst",
        "nick",
        "rate",
        "shared",
        "state",
    )

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        rate: float = 0.0,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rate` lines per second with bursts of `burst` (token bucket); rate 0 = no limit."""
        if max_line < 2:
            raise UsageError("max_line must be at least 2")
        self._split = _LineSplitter(max_line)
        self._out: list[bytes] = []
        self.state = State.CONNECTED
        self.nick: str | None = None
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock() if rate else 0.0
        # A second limit, shared with the other connections of the same address (the server
        # sets it once it knows the address); None: this connection's own limit only.
        self.shared: TokenBucket | None = None

    # ---- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer. Never raises for anything the peer sends."""
        if self.state is not State.CLOSING:
            self._split.feed(data)

    def events_received(self) -> Iterator[ServerEvent]:
        """Parse buffered lines one at a time, queueing the protocol's own replies."""
        lines = self._split.lines
        while lines and self.state is not State.CLOSING:
            event = self._line(lines.popleft())
            if event is not None:
                yield event
        if self.state is State.CLOSING:
            lines.clear()

    def _line(self, raw: bytes | object) -> ServerEvent | None:
        if raw is _TOO_LONG:
            return self._refuse(
                "line-too-long", f"lines are limited to {self._split.max_line} bytes"
            )
        assert isinstance(raw, bytes)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return None
        if self.rate and not _take(self):
            return self._refuse("rate-limited", "too many lines, slow down")
        if self.shared is not None and not self.shared.take():
            return self._refuse("rate-limited", "too many lines from your address, slow down")
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            return self._refuse("bad-encoding", "lines must be UTF-8")
        if line[0] != "/":
            return self._say(line)
        if line.startswith("//"):
            return self._say(line[1:])
        word, _, arg = line[1:].partition(" ")
        word = word.lower()
        parse = _COMMANDS.get(word)
        if parse is None:
            # The word is not echoed back: it may hold anything, control characters included.
            return self._refuse("unknown-command", _UNKNOWN_TEXT)
        if word not in ALLOWED[self.state]:
            return self._refuse("need-nick", "choose a nickname first with /nick NAME")
        return parse(self, arg)

    def _say(self, text: str) -> ServerEvent:
        if "say" not in ALLOWED[self.state]:
            return self._refuse("need-nick", "choose a nickname first with /nick NAME")
        if not text.isprintable() and _BAD_TEXT.search(text):  # bad_text(), inlined: hot path
            return self._refuse("bad-text", _BAD_TEXT_REPLY)
        return Say(text)

    def _nick(self, arg: str) -> ServerEvent:
        name = arg.strip(" ")
        if not valid_nick(name):
            return self._refuse("nick-invalid", "use 1 to 32 characters of A-Z a-z 0-9 _ -")
        return Nick(name)

    def _msg(self, arg: str) -> ServerEvent:
        name, _, text = arg.lstrip(" ").partition(" ")
        if not name or not text:
            return self._refuse("bad-argument", "usage: /msg NAME TEXT")
        if not valid_nick(name):
            return self._refuse("no-such-nick", "no such nickname")
        if bad_text(text):
            return self._refuse("bad-text", _BAD_TEXT_REPLY)
        return Private(name, text)

    def _who(self, arg: str) -> ServerEvent:
        return Who()

    def _since(self, arg: str) -> ServerEvent:
        value = arg.strip(" ")
        if not _ID_RE.fullmatch(value):
            return self._refuse("bad-argument", "usage: /since ID (a number >= 0)")
        return Since(int(value))

    def _ping(self, arg: str) -> None:
        self._out.append(_PONG)

    def _quit(self, arg: str) -> ServerEvent:
        reason = arg.strip(" ")
        if bad_text(reason):
            return self._refuse("bad-text", _BAD_TEXT_REPLY)
        self.close("quit")
        return Quit(reason)

    def _refuse(self, code: str, text: str) -> Refused:
        self._out.append(Error(code, text).line())
        return Refused(code, text)

    # ---- output ---------------------------------------------------------------------------

    def _transition(self, action: str) -> None:
        new = TRANSITIONS.get((self.state, action))
        if new is None:
            raise UsageError(f"cannot {action} in state {self.state.value}")
        self.state = new

    def accept_nick(self, name: str) -> None:
        """Grant a `Nick` request: queue `OK nick NAME` and enter NAMED."""
        if not valid_nick(name):
            raise UsageError(f"invalid nickname {name!r}")
        self._transition("accept_nick")
        self.nick = name
        self._out.append(NickAccepted(name).line())

    def refuse(self, code: str, text: str) -> None:
        """Refuse the last command for a reason only the caller knows (nick-taken, ...)."""
        self.send(Error(code, text))

    def send(self, reply: Reply) -> None:
        """Queue one reply to this client."""
        self._transition("send")
        self._out.append(reply.line())

    def close(self, reason: str = "") -> None:
        """Queue `BYE [REASON]` and stop reading. A second close is a no-op."""
        if self.state is State.CLOSING:
            return
        line = Bye(reason).line()
        self._transition("close")
        self._out.append(line)
        self._split.lines.clear()

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer since the last call (b"" when none)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def buffered(self) -> int:
        """Input bytes held for an incomplete line."""
        return self._split.buffered

    @property
    def partial(self) -> bool:
        """True while a line has begun and not ended (held, or an over-long one being skipped).

        The server times such a line out, so a peer cannot hold a connection by never finishing
        one.
        """
        return self._split.partial

    # ---- handover (chat.handover carries these across releases) -----------------------------

    @property
    def holding(self) -> bool:
        """Whether whole lines wait to be parsed (`held_lines`), or output to be sent."""
        return bool(self._split.lines) or bool(self._out)

    def held_lines(self) -> list[bytes | None]:
        """Whole lines received and not parsed yet (the server held them: its answers to this
        client were not read yet), None for an over-long one."""
        return [line if isinstance(line, bytes) else None for line in self._split.lines]

    def hold_lines(self, lines: list[bytes | None]) -> None:
        """Lines to parse before anything received from now on (the inverse of `held_lines`)."""
        limit = self._split.max_line
        self._split.lines.extend(
            line if line is not None and len(line) < limit else _TOO_LONG for line in lines
        )

    def snapshot(self) -> tuple[float, float, bytes, bool]:
        """(tokens, seconds since the bucket was last filled, partial input, discarding)."""
        stamp_age = self._clock() - self._stamp if self.rate else 0.0
        return self._tokens, stamp_age, self._split._buf, self._split._discarding

    def restore(
        self,
        state: State,
        nick: str | None,
        tokens: float,
        stamp_age: float,
        partial: bytes,
        discarding: bool,
    ) -> None:
        """Continue a session that another process began (the inverse of `snapshot`)."""
        if nick is not None and not valid_nick(nick):
            raise UsageError(f"invalid nickname {nick!r}")
        if len(partial) >= self._split.max_line:
            raise UsageError("a partial line longer than the line limit")
        self.state, self.nick = state, nick
        self._tokens = min(float(self.burst), max(0.0, tokens))
        if self.rate:
            self._stamp = self._clock() - max(0.0, stamp_age)
        self._split._buf, self._split._discarding = partial, discarding


_COMMANDS: dict[str, Callable[[ServerConnection, str], ServerEvent | None]] = {
    "nick": ServerConnection._nick,
    "msg": ServerConnection._msg,
    "who": ServerConnection._who,
    "since": ServerConnection._since,
    "ping": ServerConnection._ping,
    "quit": ServerConnection._quit,
}


# --------------------------------------------------------------------------------------------
# The client side.

CLIENT_MAX_LINE = 1 << 20
"""Server lines can be longer than client lines (MSG prefix, WHO with many names)."""


class ClientConnection:
    """A connection to a chat server as a client sees it: server lines in, commands out."""

    __slots__ = ("_events", "_out", "_split")

    def __init__(self, *, max_line: int = CLIENT_MAX_LINE) -> None:
        self._split = _LineSplitter(max_line)
        self._out: list[bytes] = []
        self._events: list[ClientEvent] = []

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the server. A malformed line becomes an `Unknown` event."""
        self._split.feed(data)
        lines = self._split.lines
        while lines:
            raw = lines.popleft()
            if raw is _TOO_LONG:
                self._events.append(Unknown("<line too long>"))
                continue
            assert isinstance(raw, bytes)
            text = raw.decode(errors="replace").removesuffix("\r")
            if text:
                self._events.append(parse_reply(text))

    def events_received(self) -> list[ClientEvent]:
        """Events parsed since the last call."""
        events, self._events = self._events, []
        return events

    def send(self, command: Command) -> None:
        """Queue one command for the server."""
        self._out.append(command.line())

    def send_line(self, text: str) -> None:
        """Queue a line typed by a person, as is (it may be a command or text to broadcast)."""
        self._out.append(_field(text, "line").encode() + b"\n")

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data
