"""The handover's wire format without sockets: frames, messages, and what a bad peer sends."""

from __future__ import annotations

import dataclasses
import inspect
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import backplane, handover
from chat.backplane import Position
from chat.handover import Begin, FrameReader, HandoverError, Session
from chat.protocol import ServerConnection, State


def session(**changes: object) -> Session:
    fields: dict[str, object] = {
        "state": "named",
        "nick": "ann",
        "peer": "127.0.0.1:4000",
        "connected_age": 12.5,
        "last_seen_age": 1.0,
        "partial_age": 0.5,
        "tokens": 3.0,
        "stamp_age": 0.25,
        "partial": b"half a li",
        "discarding": False,
        "unsent": b"MSG 1 bob hi\n",
        "allowance": 0,
        "closing": False,
        "extra": {},
    }
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


def read_all(data: bytes, step: int) -> list[dict[str, object]]:
    reader = FrameReader()
    out: list[dict[str, object]] = []
    for start in range(0, len(data), step):
        out.extend(reader.feed(data[start : start + step]))
    assert reader.pending == 0
    return out


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_frames_arrive_whole_however_the_bytes_are_cut(step: int) -> None:
    messages = [
        handover.hello("v1"),
        handover.sockets([0, 1]),
        handover.sessions([(1, session())]),
        handover.end(),
    ]
    data = b"".join(handover.frame(m) for m in messages)
    assert read_all(data, step) == messages


def test_sessions_survive_the_wire_exactly() -> None:
    original = [
        (0, session()),
        (7, session(nick=None, state="connected", partial=b"", unsent=b"\xff\x00")),
    ]
    wire = handover.frame(handover.sessions(original))
    (message,) = read_all(wire, 7)
    assert handover.parse_sessions(message) == original


@given(
    partial=st.binary(max_size=64),
    unsent=st.binary(max_size=256),
    tokens=st.floats(min_value=0, max_value=100),
)
def test_any_bytes_in_a_session_round_trip(partial: bytes, unsent: bytes, tokens: float) -> None:
    original = session(partial=partial, unsent=unsent, tokens=tokens)
    (message,) = read_all(handover.frame(handover.sessions([(3, original)])), 5)
    assert handover.parse_sessions(message) == [(3, original)]


def test_begin_carries_history_and_counts() -> None:
    lines = [b"MSG 1 ann one\n", b"MSG 2 bob two\n"]
    message = json.loads(json.dumps(handover.begin("v1", 2, 2, lines)))
    parsed = Begin.parse(message)
    assert parsed == Begin("v1", 2, 2, lines)


def test_begin_carries_where_a_cluster_host_stopped_reading() -> None:
    position = Position("41-0", {"host-a-12-ab12cd": "1764000000000-3", "host-b-9-0f": "0-0"})
    wire = handover.begin("v1", 0, 41, [], dataclasses.asdict(position))
    parsed = Begin.parse(json.loads(json.dumps(wire)))
    assert parsed.backplane is not None
    assert Position(**parsed.backplane) == position


def test_begin_carries_a_cluster_hosts_retained_lines_and_older_begins_parse_without() -> None:
    """`retained` is optional both ways: a release that predates it sends none (the successor
    loads the room from Redis), and one that predates it ignores it."""
    lines = [b"MSG 40 ann one\n", b"MSG 41 bob \xc3\xa9 \xff\n"]
    position = {"room": "41-0", "inboxes": {"host-a": "0-0"}}
    wire = handover.begin("v1", 0, 41, [], position, lines)
    assert Begin.parse(json.loads(json.dumps(wire))).retained == lines
    assert Begin.parse(json.loads(json.dumps(handover.begin("v1", 0, 41, [])))).retained is None
    older = handover.begin("v1", 0, 41, [], position)
    assert "retained" not in older


def test_retained_lines_past_the_budget_are_left_for_redis() -> None:
    """A window of long lines would make the begin frame too large (and the pause long): it is
    left out, and the successor loads the room from Redis as from an older release."""
    line = b"MSG 1 ann " + b"\xc3\xa9" * 2000 + b"\n"
    fits = handover.RETAINED_BUDGET // len(line)
    position = {"room": "1-0", "inboxes": {"h": "0-0"}}
    assert "retained" in handover.begin("v1", 0, 1, [], position, [line] * fits)
    too_many = handover.begin("v1", 0, 1, [], position, [line] * (fits + 1))
    assert "retained" not in too_many
    assert len(handover.frame(handover.begin("v1", 0, 1, [], position, [line] * fits))) < (
        handover.MAX_FRAME
    )


@pytest.mark.parametrize(
    ("retained", "reason"),
    [("MSG 1 a b", "not a list of lines"), ([1], "not a list of lines"), (["\ud800"], "not text")],
)
def test_malformed_retained_lines_are_refused(retained: object, reason: str) -> None:
    message = handover.begin("v1", 0, 1, [], {"room": "1-0", "inboxes": {"h": "0-0"}})
    message["retained"] = retained
    with pytest.raises(HandoverError, match=reason):
        Begin.parse(message)


def test_every_position_a_host_hands_on_passes_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `chat.backplane` sends must be what `Begin.parse` accepts: as many inboxes as it
    hands on, and host ids made from any hostname (even one that is not ASCII)."""
    assert backplane.MAX_INHERITED + 1 <= handover.MAX_INBOXES
    monkeypatch.setattr(backplane.socket, "gethostname", lambda: "chät-höst_1.example")
    hosts = [backplane.host_id() for _ in range(backplane.MAX_INHERITED + 1)]
    position = Position("1-0", dict.fromkeys(hosts, "0-0"))
    message = handover.begin("v1", 0, 1, [], dataclasses.asdict(position))
    assert Begin.parse(message).backplane == dataclasses.asdict(position)


@pytest.mark.parametrize(
    "backplane",
    [
        {"room": "41-0"},
        {"room": "41", "inboxes": {"h": "0-0"}},
        {"room": "41-0", "inboxes": {}},
        {"room": "41-0", "inboxes": {"h x": "0-0"}},  # would name another Redis key
        {"room": "41-0", "inboxes": {"h:room": "0-0"}},
        {"room": "41-0", "inboxes": {"h": 7}},
        {"room": "41-0", "inboxes": {f"h{i}": "0-0" for i in range(17)}},
        {"room": "41-0", "inboxes": {"h": "0-0"}, "extra": 1},
        "41-0",
    ],
)
def test_a_malformed_backplane_position_is_refused(backplane: object) -> None:
    message = {**handover.begin("v1", 0, 41, []), "backplane": backplane}
    with pytest.raises(HandoverError, match="backplane position"):
        Begin.parse(message)


V, P = handover.VERSION, handover.PROTO


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        ({"t": "hello", "proto": "http", "version": V, "release": "x"}, "not a PyNet release"),
        ({"t": "GET / HTTP/1.1"}, "not a PyNet release"),
        ({"t": "hello", "proto": P, "version": V + 1, "release": "x"}, f"version {V + 1}"),
        ({"t": "hello", "proto": P, "version": str(V), "release": "x"}, "version"),
        ({"t": "hello", "proto": P, "version": V}, "names no release"),
        ({"t": "hello", "proto": P, "version": V, "release": ""}, "no release"),
    ],
)
def test_a_hello_that_is_not_ours_is_refused_with_a_reason(
    hello: dict[str, object], reason: str
) -> None:
    with pytest.raises(HandoverError, match=reason):
        handover.check_hello(hello)


def test_our_hello_names_the_release() -> None:
    assert handover.check_hello(handover.hello("abc123")) == "abc123"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (struct.pack(">I", handover.MAX_FRAME + 1), "exceeds"),
        (struct.pack(">I", 4) + b"\xff\xfe{}", "not JSON"),
        (struct.pack(">I", 2) + b"[]", "without a message type"),
        (struct.pack(">I", 8) + b'{"t": 1}', "without a message type"),
    ],
)
def test_garbage_frames_are_errors_not_crashes(data: bytes, reason: str) -> None:
    with pytest.raises(HandoverError, match=reason):
        list(FrameReader().feed(data))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"state": "flying"}, "unknown state"),
        ({"state": ["named"]}, "unknown state"),
        ({"state": "named", "nick": None}, "nickname is None"),
        ({"nick": 7}, "nickname is 7"),
        ({"peer": None}, "peer"),
        ({"tokens": "many"}, "'tokens'"),
        ({"last_seen_age": True}, "'last_seen_age'"),
        ({"partial_age": "1"}, "'partial_age'"),
        ({"allowance": True}, "'allowance'"),
        ({"closing": 0}, "flags"),
        ({"partial": "not base64!"}, "bad field"),
        ({"unsent": None}, "'unsent'"),
        ({"extra": []}, "'extra'"),
        ({"key": "0"}, "key"),
        ({"key": True}, "key"),
        ({"key": -1}, "key"),
    ],
)
def test_a_malformed_session_is_refused(change: dict[str, object], reason: str) -> None:
    fields = list(inspect.signature(Session).parameters)
    row = session().row(0)
    for name, value in change.items():
        row[0 if name == "key" else 1 + fields.index(name)] = value
    with pytest.raises(HandoverError, match=reason):
        handover.parse_sessions({"t": "sessions", "items": [row]})


@pytest.mark.parametrize("row", [{"key": 0}, [0, "named"], "0", None])
def test_a_session_that_is_not_a_row_is_refused(row: object) -> None:
    with pytest.raises(HandoverError, match="not an array"):
        handover.parse_sessions({"t": "sessions", "items": [row]})


def test_presessions_and_same_keys_survive_the_wire() -> None:
    original = [(3, session(unsent=b"")), (9, session(nick="bob", partial=b""))]
    (pre,) = read_all(handover.frame(handover.sessions(original, "presessions")), 11)
    assert handover.parse_sessions(pre, "presessions") == original
    with pytest.raises(HandoverError, match="expected 'sessions'"):
        handover.parse_sessions(pre)
    (same,) = read_all(handover.frame(handover.same([3, 9])), 4)
    assert handover.parse_same(same) == [3, 9]


@pytest.mark.parametrize(
    "message",
    [
        {"t": "same"},
        {"t": "same", "keys": [0, "1"]},
        {"t": "same", "keys": [False]},
        {"t": "same", "keys": list(range(handover.KEYS_PER_MESSAGE + 1))},
    ],
)
def test_a_malformed_same_frame_is_refused(message: dict[str, object]) -> None:
    with pytest.raises(HandoverError, match="same frame"):
        handover.parse_same(message)


@pytest.mark.parametrize(
    "message",
    [
        {"t": "sockets"},
        {"t": "sockets", "keys": "0"},
        {"t": "sockets", "keys": [0, "1"]},
        {"t": "sockets", "keys": [True]},
        {"t": "sockets", "keys": list(range(handover.FDS_PER_MESSAGE + 1))},
    ],
)
def test_a_malformed_sockets_frame_is_refused(message: dict[str, object]) -> None:
    with pytest.raises(HandoverError, match="sockets frame"):
        handover.parse_sockets(message)


def test_refuse_and_abort_become_errors_with_their_reason() -> None:
    with pytest.raises(HandoverError, match="refuse: busy"):
        handover.expect(handover.refuse("busy"), "begin")
    with pytest.raises(HandoverError, match="abort: gone"):
        handover.expect(handover.abort("gone"), "ready")
    with pytest.raises(HandoverError, match="expected 'ready'"):
        handover.expect(handover.end(), "ready")


def test_a_protocol_session_continues_where_it_stopped() -> None:
    """snapshot/restore carry the nick, the rate allowance and a half-received line."""
    now = [100.0]
    old = ServerConnection(rate=1.0, burst=2, clock=lambda: now[0])
    old.receive_data(b"/nick ann\n")
    list(old.events_received())
    old.accept_nick("ann")
    old.receive_data(b"one\ntwo\nthr")
    assert [type(e).__name__ for e in old.events_received()] == ["Say", "Refused"]
    tokens, stamp_age, partial, discarding = old.snapshot()
    assert partial == b"thr"
    new = ServerConnection(rate=1.0, burst=2, clock=lambda: now[0])
    new.restore(State.NAMED, "ann", tokens, stamp_age, partial, discarding)
    new.receive_data(b"ee\n")
    assert [type(e).__name__ for e in new.events_received()] == ["Refused"]  # rate-limited
    now[0] += 1.0
    new.receive_data(b"four\n")
    events = list(new.events_received())
    assert [getattr(e, "text", None) for e in events] == ["four"]
    assert new.nick == "ann"
    assert new.state is State.NAMED
