"""The handover's wire format, sans-I/O: how a release hands its sockets and sessions to the next.

A deploy starts the new release next to the old one. The new process (the successor) connects
to the old one's unix socket and asks for everything; the old process (the predecessor) sends
the listening socket, every client socket (as `SCM_RIGHTS` file descriptors, which
`chat.takeover` moves) and each session's state, described here. Clients keep their TCP
connection: they see a pause, never a disconnect. The idea is the socket takeover of
Facebook's "Zero Downtime Release" (SIGCOMM 2020) and cloudflare/tableflip, applied to every
client socket as well as the listener.

The conversation, one JSON frame (4-byte big-endian length, then UTF-8 JSON) at a time:

    successor                               predecessor
    hello {proto, version, release}  ->
                                     <-     refuse {reason}         (nothing changes), or
                                     <-     sockets {keys}          (+1 fd per key), and
                                     <-     presessions {items}     (each names its socket's
                                                                     key), interleaved
                                     <-     precopied
    prepared {sessions}              ->
                                            ... the predecessor freezes every client here ...
                                     <-     sockets {keys}          (those connected since)
                                     <-     begin {proto, version, release, sessions,
                                                   last_id, history, backplane?}
                                     <-     listener                (+1 fd)
                                     <-     sessions {items}        (changed since pre-copied,
                                                                     or new), repeated
                                     <-     same {keys}             (pre-copied, unchanged)
                                     <-     end
    ready {sessions}                 ->     (or abort {reason}, or the successor dies)
                                     <-     commit                  (the predecessor lets go), or
                                     <-     abort {reason}          (the predecessor serves on)

Everything that can cross before the pause does, the way a live migration copies memory
before it stops the machine: the sockets, and the state of every session as it stands
(`presessions`), while the predecessor still serves them. The successor wraps each socket in a
(paused) transport and takes each session's state as they come, and says `prepared` once it
has; only then does the predecessor freeze its clients and send what changed since: the
sessions that read or were answered meanwhile, the new ones, and the keys of the rest
(`same`), so the pause every client sees no longer grows with the sessions' state. A key no
`sessions` or `same` names was closed meanwhile; the successor closes its copy.

Until `commit` the predecessor owns every socket and the successor neither reads nor writes
one; after it, the predecessor never reads or writes them again. If the successor fails before
`ready`, or `ready` does not come in time, the predecessor resumes serving as if nothing
happened.

Everything here is pure: frames in, messages out; messages in, frames out. Anything a peer sends
that does not fit is a `HandoverError` with a reason for the log, never a crash.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

PROTO = "pynet-handover"
VERSION = 3
"""Bump when the session state changes shape: releases with different versions do not hand
over; the deploy falls back to an overlap instead (docs/design.md)."""

SESSIONS_PER_MESSAGE = 200
"""Sessions per `sessions` or `presessions` frame: small frames keep both processes busy at
once (the successor decodes one while the predecessor encodes the next), and the predecessor
serves its clients between two pre-copy frames."""

KEYS_PER_MESSAGE = 4096
"""Keys per `same` frame."""

MAX_FRAME = 64 << 20
"""Largest frame accepted: a batch of sessions with their unsent output, or the history."""

FDS_PER_MESSAGE = 200
"""Sockets per `sendmsg`: the kernel refuses more than 253 (SCM_MAX_FD)."""

_HEADER = struct.Struct(">I")


class HandoverError(Exception):
    """The peer broke the handover protocol; the text says how, for the log."""


class SessionRefused(HandoverError):
    """This release cannot take a session as the predecessor describes it (a longer line than
    its limit, a nickname its rules refuse): the predecessor must serve on, and this release
    must not start next to it."""


def frame(message: Mapping[str, Any]) -> bytes:
    """One message as bytes on the wire."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise HandoverError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Bytes in, messages out. Bounded: a frame larger than MAX_FRAME is an error."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise HandoverError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < _HEADER.size + size:
                return
            body = bytes(self._buf[_HEADER.size : _HEADER.size + size])
            del self._buf[: _HEADER.size + size]
            try:
                message = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise HandoverError("a frame that is not JSON") from None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise HandoverError("a frame without a message type")
            yield message

    @property
    def pending(self) -> int:
        return len(self._buf)


# --- the messages -----------------------------------------------------------------------------


def hello(release: str) -> dict[str, Any]:
    return {"t": "hello", "proto": PROTO, "version": VERSION, "release": release}


def check_hello(message: Mapping[str, Any]) -> str:
    """The successor's release name, or HandoverError saying why it cannot take over."""
    if message.get("t") != "hello" or message.get("proto") != PROTO:
        raise HandoverError("the peer is not a PyNet release (no handover hello)")
    version = message.get("version")
    if version != VERSION:
        raise HandoverError(f"handover version {version!r} is not {VERSION}")
    release = message.get("release")
    if not isinstance(release, str) or not 0 < len(release) <= 128:
        raise HandoverError("the hello names no release")
    return release


def expect(message: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """MESSAGE if it is of type KIND; a `refuse` or `abort` becomes an error with its reason."""
    got = message.get("t")
    if got == kind:
        return message
    if got in ("refuse", "abort"):
        raise HandoverError(f"{got}: {message.get('reason', 'no reason given')}")
    raise HandoverError(f"expected {kind!r}, got {got!r}")


_STATES = frozenset(("connected", "named", "closing"))


@dataclass(slots=True)  # not frozen: a frozen dataclass is built field by field, and ten
class Session:  # thousand cross in a handover
    """One client connection's state, as it crosses from one release to the next.

    `partial` is input read from the socket that did not make a whole line yet; `unsent` is
    output the predecessor queued but the kernel did not take. Together they make a line split
    across the handover arrive whole and in order. Ages are seconds before the snapshot, so the
    two processes need not share a clock.

    On the wire a session is one JSON array (`row`), not an object: ten thousand of them cross
    in every handover, and an array is both smaller and several times faster to encode and to
    check than an object of named fields.
    """

    state: str  # chat.protocol.State value
    nick: str | None
    peer: str
    connected_age: float
    last_seen_age: float
    partial_age: float | None
    tokens: float
    stamp_age: float
    partial: bytes
    discarding: bool
    unsent: bytes
    allowance: int
    closing: bool
    extra: Mapping[str, Any]
    """What only some sessions have (a replay under way, the lines held behind it), and room
    for per-connection settings added later, kept as they come."""

    def row(self, key: int) -> list[Any]:
        """The session on the wire, with its socket's KEY first."""
        return [
            key,
            self.state,
            self.nick,
            self.peer,
            self.connected_age,
            self.last_seen_age,
            self.partial_age,
            self.tokens,
            self.stamp_age,
            base64.b64encode(self.partial).decode() if self.partial else "",
            self.discarding,
            base64.b64encode(self.unsent).decode() if self.unsent else "",
            self.allowance,
            self.closing,
            dict(self.extra) if self.extra else None,
        ]

    @classmethod
    def from_row(cls, row: Any) -> tuple[int, Session]:
        """(key, session) from a `row`; HandoverError saying what is wrong with it."""
        if type(row) is not list or len(row) != _ROW:
            raise HandoverError(f"a session that is not an array of {_ROW} fields")
        (
            key,
            state,
            nick,
            peer,
            connected_age,
            last_seen_age,
            partial_age,
            tokens,
            stamp_age,
            partial,
            discarding,
            unsent,
            allowance,
            closing,
            extra,
        ) = row
        if type(key) is not int or key < 0:
            raise HandoverError(f"a session whose key is {key!r}")
        if type(state) is not str or state not in _STATES:
            raise HandoverError(f"a session in unknown state {state!r}")
        if (nick is not None and type(nick) is not str) or (state == "named" and not nick):
            raise HandoverError(f"a session whose nickname is {nick!r} in state {state}")
        if type(peer) is not str:
            raise HandoverError(f"a session whose peer is {peer!r}")
        if not (
            type(connected_age) is float
            and type(last_seen_age) is float
            and type(tokens) is float
            and type(stamp_age) is float
        ):
            for name, value in (
                ("connected_age", connected_age),
                ("last_seen_age", last_seen_age),
                ("tokens", tokens),
                ("stamp_age", stamp_age),
            ):
                if type(value) is not float and type(value) is not int:
                    raise HandoverError(f"a session whose {name!r} is {value!r}")
        if partial_age is not None and type(partial_age) is not float:
            raise HandoverError(f"a session whose 'partial_age' is {partial_age!r}")
        if type(discarding) is not bool or type(closing) is not bool:
            raise HandoverError("a session whose flags are not booleans")
        if type(allowance) is not int:
            raise HandoverError(f"a session whose 'allowance' is {allowance!r}")
        if extra is not None and type(extra) is not dict:
            raise HandoverError(f"a session whose 'extra' is {extra!r}")
        return key, cls(
            state,
            nick,
            peer,
            float(connected_age),
            float(last_seen_age),
            partial_age,
            float(tokens),
            float(stamp_age),
            b"" if partial == "" else _bytes("partial", partial),
            discarding,
            b"" if unsent == "" else _bytes("unsent", unsent),
            allowance,
            closing,
            extra or {},
        )


_ROW = 15


def _bytes(name: str, value: Any) -> bytes:
    if type(value) is not str:
        raise HandoverError(f"a session whose {name!r} is {value!r}")
    if not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise HandoverError(f"a session with a bad field: {name} {exc}") from None


def begin(
    release: str,
    sessions: int,
    last_id: int,
    lines: list[bytes],
    backplane: Mapping[str, Any] | None = None,
    retained: list[bytes] | None = None,
) -> dict[str, Any]:
    """The predecessor's answer: how many sessions follow, and the retained history.

    The history travels too, so a server without a history file keeps `/since` and its ids;
    with a file, the successor reads the same file (committed before this is sent). In a
    cluster, `backplane` says where the predecessor stopped reading Redis (the room entry, and
    the entry of each inbox it reads, by host: `chat.backplane.Position`), and `retained` holds
    the room's lines it would replay, so the successor need not load them from Redis in the
    pause. Both are optional: a release that does not know `retained` ignores it, and one that
    gets no `retained` loads the room from Redis as before.
    """
    message = {
        "t": "begin",
        "proto": PROTO,
        "version": VERSION,
        "release": release,
        "sessions": sessions,
        "last_id": last_id,
        "history": [line.decode() for line in lines],
    }
    if backplane is not None:
        message["backplane"] = dict(backplane)
    if retained is not None and sum(map(len, retained)) <= RETAINED_BUDGET:
        message["retained"] = [line.decode("utf-8", "surrogateescape") for line in retained]
    return message


RETAINED_BUDGET = MAX_FRAME // 8
"""Bytes of retained lines a `begin` carries at most (JSON may take six times as many: a byte
that is not UTF-8 crosses as a six-character escape); past it they are left out and the
successor loads them from Redis, as from a release that predates `retained`."""


MAX_INBOXES = 16
"""Inboxes a backplane position may name (chat/backplane.py hands on at most
`MAX_INHERITED + 1`)."""

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_HOST_ID = re.compile(r"[A-Za-z0-9.-]{1,100}")


def _is_position(value: Any) -> bool:
    """A `chat.backplane.Position` as JSON: ids that name Redis keys and stream entries only."""
    if not isinstance(value, dict) or set(value) != {"room", "inboxes"}:
        return False
    room, inboxes = value["room"], value["inboxes"]
    return (
        isinstance(room, str)
        and _STREAM_ID.fullmatch(room) is not None
        and isinstance(inboxes, dict)
        and 0 < len(inboxes) <= MAX_INBOXES
        and all(
            isinstance(host, str)
            and _HOST_ID.fullmatch(host) is not None
            and isinstance(pos, str)
            and _STREAM_ID.fullmatch(pos) is not None
            for host, pos in inboxes.items()
        )
    )


@dataclass(frozen=True, slots=True)
class Begin:
    release: str
    sessions: int
    last_id: int
    history: list[bytes]
    backplane: Mapping[str, Any] | None = None
    retained: list[bytes] | None = None

    @classmethod
    def parse(cls, message: Mapping[str, Any]) -> Begin:
        message = expect(message, "begin")
        if message.get("proto") != PROTO or message.get("version") != VERSION:
            raise HandoverError(f"the predecessor speaks handover {message.get('version')!r}")
        release, sessions = message.get("release"), message.get("sessions")
        last_id, history = message.get("last_id"), message.get("history")
        if not isinstance(release, str) or not isinstance(sessions, int) or sessions < 0:
            raise HandoverError("a begin without release or session count")
        if not isinstance(last_id, int) or last_id < 0 or not isinstance(history, list):
            raise HandoverError("a begin without last id or history")
        if not all(isinstance(line, str) for line in history):
            raise HandoverError("a begin whose history holds something other than lines")
        backplane = message.get("backplane")
        if backplane is not None and not _is_position(backplane):
            raise HandoverError(f"a begin with a malformed backplane position {backplane!r}")
        history_lines = [line.encode() for line in history]
        retained = message.get("retained")
        if retained is not None and (
            not isinstance(retained, list) or not all(isinstance(line, str) for line in retained)
        ):
            raise HandoverError("a begin whose retained lines are not a list of lines")
        try:
            retained_lines = (
                None
                if retained is None
                else [r.encode("utf-8", "surrogateescape") for r in retained]
            )
        except UnicodeEncodeError:
            raise HandoverError("a begin with a retained line that is not text") from None
        return cls(release, sessions, last_id, history_lines, backplane, retained_lines)


def sockets(keys: list[int]) -> dict[str, Any]:
    """Keys for the descriptors that come with this frame, in order (at most FDS_PER_MESSAGE)."""
    return {"t": "sockets", "keys": keys}


def parse_sockets(message: Mapping[str, Any]) -> list[int]:
    keys = expect(message, "sockets").get("keys")
    if (
        not isinstance(keys, list)
        or len(keys) > FDS_PER_MESSAGE
        or not all(type(key) is int for key in keys)
    ):
        raise HandoverError("a sockets frame that is not a list of at most FDS_PER_MESSAGE keys")
    return keys


def sessions(batch: list[tuple[int, Session]], kind: str = "sessions") -> dict[str, Any]:
    """State of sessions whose sockets were sent before, each with its socket's key: as they
    stand in the pause (`sessions`), or as they stood before it (`presessions`)."""
    return {"t": kind, "items": [s.row(key) for key, s in batch]}


def parse_sessions(message: Mapping[str, Any], kind: str = "sessions") -> list[tuple[int, Session]]:
    items = expect(message, kind).get("items")
    if not isinstance(items, list) or len(items) > SESSIONS_PER_MESSAGE:
        raise HandoverError(f"a {kind} frame that is not a list of at most SESSIONS_PER_MESSAGE")
    return [Session.from_row(item) for item in items]


def same(keys: list[int]) -> dict[str, Any]:
    """Keys of sessions pre-copied before the pause and unchanged since (at most
    KEYS_PER_MESSAGE): the successor keeps what it has for them."""
    return {"t": "same", "keys": keys}


def parse_same(message: Mapping[str, Any]) -> list[int]:
    keys = expect(message, "same").get("keys")
    if (
        not isinstance(keys, list)
        or len(keys) > KEYS_PER_MESSAGE
        or not all(type(key) is int for key in keys)
    ):
        raise HandoverError("a same frame that is not a list of at most KEYS_PER_MESSAGE keys")
    return keys


def precopied() -> dict[str, Any]:
    return {"t": "precopied"}


def prepared(count: int) -> dict[str, Any]:
    return {"t": "prepared", "sessions": count}


def listener() -> dict[str, Any]:
    return {"t": "listener"}


def end() -> dict[str, Any]:
    return {"t": "end"}


def ready(count: int) -> dict[str, Any]:
    return {"t": "ready", "sessions": count}


def commit() -> dict[str, Any]:
    return {"t": "commit"}


def refuse(reason: str) -> dict[str, Any]:
    return {"t": "refuse", "reason": reason}


def abort(reason: str) -> dict[str, Any]:
    return {"t": "abort", "reason": reason}
