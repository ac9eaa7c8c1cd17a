"""The chat protocol's events: one small class per line a peer may send, sans-I/O.

Each class both describes a line and formats it (`line()`), so every byte the protocol sends is
made in one place; `parse_reply` turns a server line back into its event for clients. Kept apart
from the connection state machines in `chat.protocol`, as h11 keeps `_events.py` apart from
`_connection.py`. The contract is docs/protocol.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

NICK_MAX = 32
ERROR_CODES = frozenset(
    {
        "need-nick",
        "nick-invalid",
        "nick-taken",
        "no-such-nick",
        "line-too-long",
        "bad-encoding",
        "bad-text",
        "unknown-command",
        "bad-argument",
        "rate-limited",
        "server-full",
        "unavailable",
    }
)

_NICK_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{NICK_MAX}}}")


class UsageError(Exception):
    """Our own code called the protocol wrongly (a bug here, never the peer's fault)."""


def valid_nick(name: str) -> bool:
    """True when NAME is 1 to 32 characters of A-Z a-z 0-9 _ -."""
    return _NICK_RE.fullmatch(name) is not None


def _field(value: str, what: str) -> str:
    """Refuse values that would break framing: that is a bug on our side, not the peer's."""
    if "\n" in value or "\r" in value:
        raise UsageError(f"{what} must not contain a line break: {value!r}")
    return value


def _word(value: str, what: str) -> str:
    if not value or " " in value:
        raise UsageError(f"{what} must be one non-empty word: {value!r}")
    return _field(value, what)


# --------------------------------------------------------------------------------------------
# Events. Client commands (what a client sends, what the server receives) ...


@dataclass(frozen=True, slots=True)
class Nick:
    """`/nick NAME`."""

    name: str

    def line(self) -> bytes:
        return f"/nick {_word(self.name, 'nick')}\n".encode()


@dataclass(frozen=True, slots=True)
class Say:
    """A broadcast line. Text starting with `/` is escaped as `//` on the wire."""

    text: str

    def line(self) -> bytes:
        if not self.text:
            raise UsageError("cannot broadcast an empty line")
        text = _field(self.text, "text")
        return f"/{text}\n".encode() if text.startswith("/") else f"{text}\n".encode()


@dataclass(frozen=True, slots=True)
class Private:
    """`/msg NAME TEXT`."""

    to: str
    text: str

    def line(self) -> bytes:
        if not self.text:
            raise UsageError("cannot send an empty private message")
        return f"/msg {_word(self.to, 'nick')} {_field(self.text, 'text')}\n".encode()


@dataclass(frozen=True, slots=True)
class Who:
    """`/who`."""

    def line(self) -> bytes:
        return b"/who\n"


@dataclass(frozen=True, slots=True)
class Since:
    """`/since ID`: replay retained broadcasts with an id greater than `after`."""

    after: int

    def line(self) -> bytes:
        if self.after < 0:
            raise UsageError("since id must be >= 0")
        return f"/since {self.after}\n".encode()


@dataclass(frozen=True, slots=True)
class Ping:
    """`/ping`. The server protocol answers it by itself; no event reaches the server."""

    def line(self) -> bytes:
        return b"/ping\n"


@dataclass(frozen=True, slots=True)
class Quit:
    """`/quit [REASON]`."""

    reason: str = ""

    def line(self) -> bytes:
        reason = _field(self.reason, "reason")
        return f"/quit {reason}\n".encode() if reason else b"/quit\n"


@dataclass(frozen=True, slots=True)
class Refused:
    """A line from the peer was refused; the `ERR` reply is already queued. For logging."""

    code: str
    text: str


# ... and server replies (what the server sends, what a client receives).


@dataclass(frozen=True, slots=True)
class Hello:
    version: str

    def line(self) -> bytes:
        return f"HELLO pynet {_word(self.version, 'version')}\n".encode()


@dataclass(frozen=True, slots=True)
class NickAccepted:
    name: str

    def line(self) -> bytes:
        return f"OK nick {_word(self.name, 'nick')}\n".encode()


@dataclass(frozen=True, slots=True)
class Message:
    """`MSG ID NAME TEXT`: one broadcast."""

    id: int
    name: str
    text: str

    def line(self) -> bytes:
        # Hot path on the server: the fields come from parsed lines, which hold no newline.
        return f"MSG {self.id} {self.name} {self.text}\n".encode()


@dataclass(frozen=True, slots=True)
class PrivateMessage:
    """`PRIV NAME TEXT`."""

    name: str
    text: str

    def line(self) -> bytes:
        return f"PRIV {_word(self.name, 'nick')} {_field(self.text, 'text')}\n".encode()


@dataclass(frozen=True, slots=True)
class Joined:
    name: str

    def line(self) -> bytes:
        return f"JOIN {_word(self.name, 'nick')}\n".encode()


@dataclass(frozen=True, slots=True)
class Left:
    name: str
    reason: str = ""

    def line(self) -> bytes:
        return _with_tail(f"LEFT {_word(self.name, 'nick')}", self.reason)


@dataclass(frozen=True, slots=True)
class NickChanged:
    old: str
    new: str

    def line(self) -> bytes:
        return f"NICK {_word(self.old, 'nick')} {_word(self.new, 'nick')}\n".encode()


@dataclass(frozen=True, slots=True)
class WhoList:
    names: tuple[str, ...]

    def line(self) -> bytes:
        return _with_tail("WHO", " ".join(_word(n, "nick") for n in self.names))


@dataclass(frozen=True, slots=True)
class Pong:
    def line(self) -> bytes:
        return b"PONG\n"


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str = ""

    def line(self) -> bytes:
        return _with_tail("BYE", self.reason)


@dataclass(frozen=True, slots=True)
class Info:
    text: str

    def line(self) -> bytes:
        return f"INFO {_field(self.text, 'text')}\n".encode()


@dataclass(frozen=True, slots=True)
class Error:
    """`ERR CODE TEXT`."""

    code: str
    text: str

    def line(self) -> bytes:
        if self.code not in ERROR_CODES:
            raise UsageError(f"unknown error code {self.code!r}")
        return f"ERR {self.code} {_field(self.text, 'text')}\n".encode()


@dataclass(frozen=True, slots=True)
class Unknown:
    """A server line this client does not understand (the protocol may grow new words)."""

    line_text: str


def _with_tail(head: str, tail: str) -> bytes:
    tail = _field(tail, "text")
    return f"{head} {tail}\n".encode() if tail else f"{head}\n".encode()


Command = Nick | Say | Private | Who | Since | Ping | Quit
Reply = (
    Hello
    | NickAccepted
    | Message
    | PrivateMessage
    | Joined
    | Left
    | NickChanged
    | WhoList
    | Pong
    | Bye
    | Info
    | Error
)
ServerEvent = Nick | Say | Private | Who | Since | Quit | Refused
ClientEvent = Reply | Unknown


def parse_reply(line: str) -> ClientEvent:
    """Turn one server line (without newline) into an event; never raises."""
    word, _, rest = line.partition(" ")
    try:
        parse = _REPLIES.get(word)
        event = parse(rest) if parse else None
    except (ValueError, IndexError):
        event = None
    return Unknown(line) if event is None else event


def _parse_msg(rest: str) -> Message | None:
    ident, _, tail = rest.partition(" ")
    name, _, text = tail.partition(" ")
    if not ident.isdigit() or not name:
        return None
    return Message(int(ident), name, text)


def _parse_ok(rest: str) -> NickAccepted | None:
    what, _, name = rest.partition(" ")
    return NickAccepted(name) if what == "nick" and name else None


def _parse_hello(rest: str) -> Hello | None:
    product, _, version = rest.partition(" ")
    return Hello(version) if product == "pynet" else None


def _two(rest: str) -> tuple[str, str]:
    head, _, tail = rest.partition(" ")
    return head, tail


def _parse_err(rest: str) -> Error | None:
    code, text = _two(rest)
    # A code this version does not know (a newer server) stays an `Unknown` line, shown as is.
    return Error(code, text) if code in ERROR_CODES else None


def _parse_nick(rest: str) -> NickChanged | None:
    old, new = _two(rest)
    return NickChanged(old, new) if old and new else None


_REPLIES: dict[str, Callable[[str], ClientEvent | None]] = {
    "HELLO": _parse_hello,
    "OK": _parse_ok,
    "MSG": _parse_msg,
    "PRIV": lambda rest: PrivateMessage(*_two(rest)) if rest else None,
    "JOIN": lambda rest: Joined(rest) if rest else None,
    "LEFT": lambda rest: Left(*_two(rest)) if rest else None,
    "NICK": _parse_nick,
    "WHO": lambda rest: WhoList(tuple(rest.split())),
    "PONG": lambda rest: Pong(),
    "BYE": lambda rest: Bye(rest),
    "INFO": lambda rest: Info(rest),
    "ERR": _parse_err,
}
