"""The sans-I/O protocol with no sockets: every command, reply, error code and limit."""

from __future__ import annotations

import pytest

from chat import protocol as p
from chat.protocol import ClientConnection, ServerConnection, State, UsageError


def feed(conn: ServerConnection, data: bytes, *, bytewise: bool = False) -> tuple[list, bytes]:
    """Feed data (whole or one byte at a time); return the events and the bytes to send."""
    events: list = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        conn.receive_data(chunk)
        events += list(conn.events_received())
    return events, conn.data_to_send()


def named(nick: str = "alice", **kwargs: object) -> ServerConnection:
    conn = ServerConnection(**kwargs)  # type: ignore[arg-type]
    conn.accept_nick(nick)
    conn.data_to_send()
    return conn


BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


@BYTEWISE
@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"/nick bob\n", p.Nick("bob")),
        (b"/nick  Bob_-9 \n", p.Nick("Bob_-9")),
        (b"/NICK bob\n", p.Nick("bob")),
        (b"hello world\n", p.Say("hello world")),
        (b"//not a command\n", p.Say("/not a command")),
        (b"  leading space\r\n", p.Say("  leading space")),
        (b"/msg bob hi there\n", p.Private("bob", "hi there")),
        (b"/who\n", p.Who()),
        (b"/who ignored\n", p.Who()),
        (b"/since 0\n", p.Since(0)),
        (b"/since 42\n", p.Since(42)),
        (b"/quit\n", p.Quit("")),
        (b"/quit gone fishing\n", p.Quit("gone fishing")),
        ("caf\u00e9 \U0001f600\n".encode(), p.Say("caf\u00e9 \U0001f600")),
        (b"tab\there\n", p.Say("tab\there")),  # TAB is the one C0 character allowed
        (b"/msg bob a\tb\n", p.Private("bob", "a\tb")),
        ("nbsp\u00a0\u200b \u202e bidi\n".encode(), p.Say("nbsp\u00a0\u200b \u202e bidi")),
        (b"/quit \tbye\n", p.Quit("\tbye")),
    ],
)
def test_commands_parse_to_events(line: bytes, event: object, bytewise: bool) -> None:
    events, _ = feed(named(), line, bytewise=bytewise)
    assert events == [event]


@BYTEWISE
@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"/nick\n", "nick-invalid"),
        (b"/nick a b\n", "nick-invalid"),
        (b"/nick " + b"x" * 33 + b"\n", "nick-invalid"),
        ("/nick caf\u00e9\n".encode(), "nick-invalid"),
        (b"/msg\n", "bad-argument"),
        (b"/msg bob\n", "bad-argument"),
        (b"/msg b@d hi\n", "no-such-nick"),
        (b"/since\n", "bad-argument"),
        (b"/since -1\n", "bad-argument"),
        (b"/since 1e3\n", "bad-argument"),
        (b"/since 9999999999999999999999\n", "bad-argument"),
        (b"/frobnicate\n", "unknown-command"),
        (b"/\n", "unknown-command"),
        (b"/ nick bob\n", "unknown-command"),
        (b"\xff\n", "bad-encoding"),
        (b"\xc0\xaf\n", "bad-encoding"),  # overlong "/"
        (b"\xed\xa0\x80\n", "bad-encoding"),  # a UTF-16 surrogate
        (b"\xe2\x82\n", "bad-encoding"),  # truncated sequence
        (b"x" * 4096 + b"\n", "line-too-long"),
        (b"hi\x1b[2J\n", "bad-text"),  # ESC: clears the screen
        (b"\x1b]0;owned\x07\n", "bad-text"),  # OSC: sets the window title
        (b"//x\x00y\n", "bad-text"),
        (b"fake\rline\n", "bad-text"),  # a bare CR inside the line
        (b"del\x7f\n", "bad-text"),
        ("c1 \u009b2J\n".encode(), "bad-text"),  # CSI as one C1 character
        ("c1 \u0080\n".encode(), "bad-text"),
        (b"/msg bob \x1b[31mred\n", "bad-text"),
        (b"/quit \x07\n", "bad-text"),
    ],
)
def test_bad_lines_become_err_replies(line: bytes, code: str, bytewise: bool) -> None:
    conn = named()
    events, out = feed(conn, line, bytewise=bytewise)
    assert [type(e) for e in events] == [p.Refused]
    assert events[0].code == code
    assert out.startswith(f"ERR {code} ".encode())
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1
    assert conn.state is State.NAMED


def test_bad_text_quit_keeps_the_connection() -> None:
    conn = named()
    events, out = feed(conn, b"/quit \x1b[2J\n/ping\n")
    assert events == [p.Refused("bad-text", events[0].text)]
    assert out.startswith(b"ERR bad-text ")
    assert out.endswith(b"\nPONG\n")
    assert conn.state is State.NAMED


@pytest.mark.parametrize("code", [*range(0x20), 0x7F, *range(0x80, 0xA0)])
def test_every_control_character_but_tab_is_bad_text(code: int) -> None:
    assert p.bad_text(f"a{chr(code)}b") is (code != 0x09)


def test_printable_and_format_characters_are_not_bad_text() -> None:
    for text in ["plain", "caf\u00e9", "\u00a0\u2028\u202e\u2066\ufeff", "\U0001f600", "\xa0"]:
        assert not p.bad_text(text), text


def test_before_nick_only_nick_ping_quit_who() -> None:
    conn = ServerConnection()
    events, out = feed(conn, b"hi\n/msg a b\n/since 1\n/ping\n/who\n/nick ann\n")
    codes = [e.code for e in events if isinstance(e, p.Refused)]
    assert codes == ["need-nick"] * 3
    assert events[3:] == [p.Who(), p.Nick("ann")]
    assert out.split(b"\n")[3] == b"PONG"


def test_ping_is_answered_by_the_protocol_itself() -> None:
    events, out = feed(ServerConnection(), b"/ping\n/PING extra\n")
    assert events == []
    assert out == b"PONG\nPONG\n"


def test_replies_stay_in_order_with_events() -> None:
    conn = named()
    conn.receive_data(b"\xff\nhello\n/ping\n")
    order: list[object] = []
    for event in conn.events_received():
        order.append(conn.data_to_send())
        order.append(event)
    order.append(conn.data_to_send())
    assert isinstance(order[0], bytes)
    assert order[0].startswith(b"ERR bad-encoding")
    assert order[2:5] == [b"", p.Say("hello"), b"PONG\n"]


@BYTEWISE
def test_crlf_and_empty_lines(bytewise: bool) -> None:
    events, out = feed(named(), b"\n\r\n\r\none\r\n", bytewise=bytewise)
    assert events == [p.Say("one")]
    assert out == b""


@pytest.mark.parametrize("split", range(1, 4))
def test_multibyte_character_split_across_chunks(split: int) -> None:
    data = "\U0001f600!\n".encode()
    conn = named()
    conn.receive_data(data[:split])
    assert list(conn.events_received()) == []
    conn.receive_data(data[split:])
    assert list(conn.events_received()) == [p.Say("\U0001f600!")]


def test_line_length_limit_counts_the_newline() -> None:
    conn = named(max_line=16)
    events, _ = feed(conn, b"x" * 15 + b"\n" + b"y" * 14 + b"\r\n" + b"z" * 16 + b"\n")
    assert events[:2] == [p.Say("x" * 15), p.Say("y" * 14)]
    assert events[2] == p.Refused("line-too-long", "lines are limited to 16 bytes")


@BYTEWISE
def test_over_long_line_is_discarded_up_to_the_newline(bytewise: bool) -> None:
    conn = named(max_line=64)
    events, out = feed(conn, b"a" * 500 + b"\nafter\n", bytewise=bytewise)
    assert [type(e) for e in events] == [p.Refused, p.Say]
    assert events[1] == p.Say("after")
    assert out.count(b"ERR line-too-long") == 1
    assert conn.buffered == 0


def test_input_buffer_stays_bounded() -> None:
    conn = named(max_line=64)
    for _ in range(100):
        conn.receive_data(b"b" * 1000)
        assert conn.buffered < 64
    assert len(list(conn.events_received())) == 1  # one ERR for the whole line


def test_rate_limit_token_bucket() -> None:
    now = [100.0]
    conn = named(rate=2.0, burst=3, clock=lambda: now[0])
    events, _ = feed(conn, b"a\nb\nc\nd\n")
    assert events[:3] == [p.Say("a"), p.Say("b"), p.Say("c")]
    assert events[3] == p.Refused("rate-limited", "too many lines, slow down")
    now[0] += 0.5  # one token back
    events, _ = feed(conn, b"e\nf\n")
    assert events[0] == p.Say("e")
    assert events[1].code == "rate-limited"
    now[0] += 100  # refills only up to the burst
    events, _ = feed(conn, b"1\n2\n3\n4\n")
    assert [type(e) for e in events] == [p.Say, p.Say, p.Say, p.Refused]


def test_quit_closes_and_ignores_the_rest() -> None:
    conn = named()
    events, out = feed(conn, b"/quit bye all\nignored\n")
    assert events == [p.Quit("bye all")]
    assert out == b"BYE quit\n"
    assert conn.state is State.CLOSING
    assert feed(conn, b"more\n") == ([], b"")


def test_server_side_actions_and_states() -> None:
    conn = ServerConnection()
    assert conn.state.value == "connected"  # (`is` would narrow the type for good)
    conn.accept_nick("ann")
    assert (conn.state, conn.nick) == (State.NAMED, "ann")
    conn.accept_nick("anne")
    conn.refuse("nick-taken", "that nickname is in use")
    conn.send(p.WhoList(("a", "b")))
    conn.send(p.Info("hello"))
    conn.close("restarting")
    conn.close("twice is fine")
    assert conn.data_to_send() == (
        b"OK nick ann\nOK nick anne\nERR nick-taken that nickname is in use\n"
        b"WHO a b\nINFO hello\nBYE restarting\n"
    )
    assert conn.state is State.CLOSING


@pytest.mark.parametrize(
    "misuse",
    [
        lambda c: c.accept_nick("bad name"),
        lambda c: c.refuse("no-such-code", "x"),
        lambda c: c.send(p.Info("two\nlines")),
        lambda c: c.send(p.Bye("a\rb")),
        lambda c: (c.close(), c.send(p.Pong())),
        lambda c: (c.close(), c.accept_nick("ann")),
        lambda c: ServerConnection(max_line=1),
    ],
)
def test_api_misuse_raises_usage_error(misuse) -> None:
    with pytest.raises(UsageError):
        misuse(ServerConnection())


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (p.Hello("1.2.3"), b"HELLO pynet 1.2.3\n"),
        (p.NickAccepted("ann"), b"OK nick ann\n"),
        (p.Message(7, "ann", "hi there"), b"MSG 7 ann hi there\n"),
        (p.PrivateMessage("ann", "psst"), b"PRIV ann psst\n"),
        (p.Joined("ann"), b"JOIN ann\n"),
        (p.Left("ann"), b"LEFT ann\n"),
        (p.Left("ann", "gone home"), b"LEFT ann gone home\n"),
        (p.NickChanged("ann", "anne"), b"NICK ann anne\n"),
        (p.WhoList(()), b"WHO\n"),
        (p.WhoList(("a", "b")), b"WHO a b\n"),
        (p.Pong(), b"PONG\n"),
        (p.Bye(), b"BYE\n"),
        (p.Bye("too-slow"), b"BYE too-slow\n"),
        (p.Info("server restarting"), b"INFO server restarting\n"),
        (p.Error("rate-limited", "slow down"), b"ERR rate-limited slow down\n"),
    ],
)
def test_replies_round_trip_through_the_client(event: object, line: bytes) -> None:
    assert event.line() == line  # type: ignore[attr-defined]
    client = ClientConnection()
    client.receive_data(line)
    assert client.events_received() == [event]


def test_client_parses_byte_by_byte_and_tolerates_junk() -> None:
    client = ClientConnection()
    data = b"MSG 1 ann caf\xc3\xa9\r\nWHAT is this\nMSG x ann y\n\xff\n"
    for i in range(len(data)):
        client.receive_data(data[i : i + 1])
    assert client.events_received() == [
        p.Message(1, "ann", "caf\u00e9"),
        p.Unknown("WHAT is this"),
        p.Unknown("MSG x ann y"),
        p.Unknown("\ufffd"),
    ]


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (p.Nick("ann"), b"/nick ann\n"),
        (p.Say("hello"), b"hello\n"),
        (p.Say("/slash"), b"//slash\n"),
        (p.Private("bob", "hi"), b"/msg bob hi\n"),
        (p.Who(), b"/who\n"),
        (p.Since(5), b"/since 5\n"),
        (p.Ping(), b"/ping\n"),
        (p.Quit(), b"/quit\n"),
        (p.Quit("later"), b"/quit later\n"),
    ],
)
def test_client_commands_round_trip_through_the_server(command, line: bytes) -> None:
    client = ClientConnection()
    client.send(command)
    assert client.data_to_send() == line
    events, out = feed(named(), line)
    if isinstance(command, p.Ping):
        assert out == b"PONG\n"
    else:
        assert events == [command]


@pytest.mark.parametrize(
    "bad",
    [p.Say(""), p.Say("a\nb"), p.Nick("a b"), p.Since(-1), p.Private("bob", "")],
)
def test_client_misuse_raises(bad) -> None:
    with pytest.raises(UsageError):
        ClientConnection().send(bad)
