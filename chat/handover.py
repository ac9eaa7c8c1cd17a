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
                                     <-     sockets {keys}          (+1 fd per key), repeated
                                            ... the predecessor pauses every client here ...
                                     <-     sockets {keys}          (those connected since)
                                     <-     begin {proto, version, release, sessions,
                                                   last_id, history, backplane?}
                                     <-     listener                (+1 fd)
                                     <-     sessions {items}        (each names its socket's key)
                                     <-     end
    ready {sessions}                 ->     (or abort {reason}, or the successor dies)
                                     <-     commit                  (the predecessor lets go), or
                                     <-     abort {reason}          (the predecessor serves on)

The sockets travel first, while the predecessor still serves them, so the successor wraps each
in its (paused) transport outside the pause every client sees; only the sessions' state crosses
during it, the way a live migration copies memory before it stops the machine. A socket whose
key no session names was closed meanwhile; the successor closes its copy.

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
VERSION = 2
"""Bump when the session state changes shape: releases with different versions do not hand
over; the deploy falls back to an overlap instead (docs/design.md)."""

SESSIONS_PER_MESSAGE = 100
"""Sessions per `sessions` frame: small frames keep both processes busy at once (the successor
decodes one while the predecessor encodes the next)."""

MAX_FRAME = 64 << 20
"""Largest frame accepted: a batch of sessions with their unsent output, or the history."""

FDS_PER_MESSAGE = 200
"""Sockets per `sendmsg`: the kernel refuses more than 253 (SCM_MAX_FD)."""

_HEADER = struct.Struct(">I")


class HandoverError(Exception):
    """The peer broke the handover protocol; the text says how, for the log."""


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


@dataclass(frozen=True, slots=True)
class Session:
    """One client connection's state, as it crosses from one release to the next.

    `partial` is input read from the socket that did not make a whole line yet; `unsent` is
    output the predecessor queued but the kernel did not take. Together they make a line split
    across the handover arrive whole and in order. Ages are seconds before the snapshot, so the
    two processes need not share a clock.
    """

    state: str  # chat.protocol.State value
    nick: str | None
    peer: str
    connected_age: float
    tokens: float
    stamp_age: float
    partial: bytes
    discarding: bool
    unsent: bytes
    allowance: int
    closing: bool
    extra: Mapping[str, Any]
    """Room for per-connection settings added later, kept as they come."""

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "nick": self.nick,
            "peer": self.peer,
            "connected_age": self.connected_age,
            "tokens": self.tokens,
            "stamp_age": self.stamp_age,
            "partial": base64.b64encode(self.partial).decode(),
            "discarding": self.discarding,
            "unsent": base64.b64encode(self.unsent).decode(),
            "allowance": self.allowance,
            "closing": self.closing,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, item: Any) -> Session:
        if not isinstance(item, dict):
            raise HandoverError("a session that is not an object")
        try:
            session = cls(
                state=_typed(item, "state", str),
                nick=item.get("nick") if item.get("nick") is None else _typed(item, "nick", str),
                peer=_typed(item, "peer", str),
                connected_age=float(_typed(item, "connected_age", (int, float))),
                tokens=float(_typed(item, "tokens", (int, float))),
                stamp_age=float(_typed(item, "stamp_age", (int, float))),
                partial=base64.b64decode(_typed(item, "partial", str), validate=True),
                discarding=_typed(item, "discarding", bool),
                unsent=base64.b64decode(_typed(item, "unsent", str), validate=True),
                allowance=_typed(item, "allowance", int),
                closing=_typed(item, "closing", bool),
                extra=_typed(item, "extra", dict),
            )
        except ValueError as exc:  # binascii.Error is a ValueError
            raise HandoverError(f"a session with a bad field: {exc}") from None
        if session.state not in ("connected", "named", "closing"):
            raise HandoverError(f"a session in unknown state {session.state!r}")
        if session.state == "named" and not session.nick:
            raise HandoverError("a named session without a nickname")
        return session


def _typed(item: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = item.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HandoverError(f"a session whose {key!r} is {value!r}")
    return value


def begin(
    release: str,
    sessions: int,
    last_id: int,
    lines: list[bytes],
    backplane: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The predecessor's answer: how many sessions follow, and the retained history.

    The history travels too, so a server without a history file keeps `/since` and its ids;
    with a file, the successor reads the same file (committed before this is sent). In a
    cluster, `backplane` says where the predecessor stopped reading Redis (the room entry, and
    the entry of each inbox it reads, by host: `chat.backplane.Position`).
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
    return message


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
        return cls(release, sessions, last_id, history_lines, backplane)


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


def sessions(batch: list[tuple[int, Session]]) -> dict[str, Any]:
    """State of sessions whose sockets were sent before, each with its socket's key."""
    return {"t": "sessions", "items": [{"key": key, **s.to_json()} for key, s in batch]}


def parse_sessions(message: Mapping[str, Any]) -> list[tuple[int, Session]]:
    items = expect(message, "sessions").get("items")
    if not isinstance(items, list) or len(items) > SESSIONS_PER_MESSAGE:
        raise HandoverError("a sessions frame that is not a list of at most SESSIONS_PER_MESSAGE")
    batch = []
    for item in items:
        session = Session.from_json(item)
        batch.append((_typed(item, "key", int), session))
    return batch


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
