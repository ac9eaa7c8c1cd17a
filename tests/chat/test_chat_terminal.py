"""What the client shows is safe for a terminal, and it notices a server that stops answering."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from chat import client
from chat.protocol import Error, Left, Message, PrivateMessage, Unknown, parse_reply
from tests.chat.fakes import ClientProcess


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\u202eb", "a\\u202eb"),  # RIGHT-TO-LEFT OVERRIDE: would reverse what follows
        ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
        ("\u2066x\u2067y\u2068z\u2069", "\\u2066x\\u2067y\\u2068z\\u2069"),
        ("\x1b[2J", "\\u001b[2J"),
        ("bell\x07 cr\r nul\x00 del\x7f", "bell\\u0007 cr\\u000d nul\\u0000 del\\u007f"),
        ("c1 \u009b31m", "c1 \\u009b31m"),
        ("tab\tstays", "tab\tstays"),
        (
            "caf\u00e9 \U0001f600 \u05e9\u05dc\u05d5\u05dd",
            "caf\u00e9 \U0001f600 \u05e9\u05dc\u05d5\u05dd",
        ),
    ],
)
def test_controls_and_bidi_overrides_are_shown_escaped(text: str, shown: str) -> None:
    assert client.human(Message(1, "ann", text)).endswith(f"<ann> {shown}")  # type: ignore[union-attr]
    assert client.raw(Message(1, "ann", text)) == f"MSG 1 ann {shown}"
    assert client.human(PrivateMessage("ann", text)).endswith(f"*ann* {shown}")  # type: ignore[union-attr]
    assert client.human(Left("ann", text)) == f"-- ann left ({shown})"
    assert client.raw(Unknown(f"NEW {text}")) == f"NEW {shown}"


def test_an_error_code_this_client_does_not_know_is_shown_as_is() -> None:
    event = parse_reply("ERR brand-new-code something happened")
    assert event == Unknown("ERR brand-new-code something happened")
    assert client.raw(event) == "ERR brand-new-code something happened"
    assert parse_reply("ERR bad-text no controls") == Error("bad-text", "no controls")


def test_client_output_is_escaped_end_to_end(server, clients) -> None:
    watcher = ClientProcess(server.port, "--nick", "watcher", "--raw", "--stay")
    try:
        watcher.wait_for("OK nick watcher")
        alice = clients(server.port, "alice")
        alice.send("hello \u202eevil", "\x1b]0;title\x07", "tab\tok")
        assert alice.line() == "MSG 1 alice hello \u202eevil"  # relayed as is: not a control
        assert alice.line().startswith("ERR bad-text ")  # refused: reaches no one
        assert alice.line() == "MSG 2 alice tab\tok"
        watcher.wait_for("MSG 2 alice tab\tok")
        assert "MSG 1 alice hello \\u202eevil" in watcher.lines
        assert not any("title" in line for line in watcher.lines)
    finally:
        watcher.kill()


def test_keepalive_pings_are_not_shown(server) -> None:
    chatter = ClientProcess(
        server.port, "--nick", "quiet", "--raw", "--stay", "--ping-interval", "0.2"
    )
    try:
        chatter.wait_for("OK nick quiet")
        time.sleep(1.2)  # about five keepalive pings, answered but not shown
        chatter.type("/ping")  # one the person asked for: shown
        chatter.wait_for("PONG")
        time.sleep(0.5)
        assert chatter.lines.count("PONG") == 1
        assert chatter.proc.poll() is None
        assert chatter.errors == []  # never gave up on a server that answers
    finally:
        chatter.kill()


class SilentServer:
    """Greets like a chat server, records what it is sent, and never answers anything."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[list[bytes]] = []  # per connection
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            lines: list[bytes] = []
            self.received.append(lines)
            conn.sendall(b"HELLO pynet 9\n")
            threading.Thread(target=self._read, args=(conn, lines), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, lines: list[bytes]) -> None:
        buf = b""
        try:
            while data := conn.recv(4096):
                buf += data
                *done, buf = buf.split(b"\n")
                lines.extend(done)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


def test_client_gives_up_on_a_server_that_stops_answering() -> None:
    silent = SilentServer()
    stuck = ClientProcess(
        silent.port,
        "--nick",
        "zed",
        "--stay",
        "--ping-interval",
        "0.5",
        "--timeout",
        "0.5",
        "--max-backoff",
        "0.2",
    )
    started = time.monotonic()
    try:
        note = stuck.wait_for_error("no answer from", timeout=10)
        assert note == f"-- no answer from 127.0.0.1:{silent.port} within 0.5s"
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 10
        while len(silent.received) < 2:  # it reconnected
            assert time.monotonic() < deadline, stuck.errors
            time.sleep(0.02)
        first = silent.received[0]
        assert first[:2] == [b"/nick zed", b"/ping"]
        assert stuck.proc.poll() is None
    finally:
        stuck.kill()
        silent.close()


def test_client_without_reconnect_exits_1_when_the_server_stops_answering() -> None:
    silent = SilentServer()
    stuck = ClientProcess(
        silent.port,
        "--nick",
        "zed",
        "--stay",
        "--no-reconnect",
        "--ping-interval",
        "0.3",
        "--timeout",
        "0.3",
    )
    try:
        assert stuck.proc.wait(timeout=10) == 1
        assert any("no answer from" in line for line in stuck.errors)
    finally:
        stuck.kill()
        silent.close()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_ping_options_exit_with_one_line(value: str, capsys) -> None:
    for flag in ("--ping-interval", "--timeout"):
        with pytest.raises(SystemExit) as exc:
            client.parse_args(["127.0.0.1", "--nick", "ann", flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag}: invalid value {value!r}: expected seconds > 0" in err


def test_a_reader_in_a_busy_room_is_not_idle_to_the_server(start_server, clients) -> None:
    """The client pings when *it* has been quiet, even while lines keep arriving."""
    server = start_server("--idle-timeout", "1.5")
    reader = ClientProcess(
        server.port, "--nick", "reader", "--raw", "--stay", "--ping-interval", "0.3"
    )
    try:
        reader.wait_for("OK nick reader")
        talker = clients(server.port, "talker")
        for n in range(30):  # 3 s of a busy room, the reader never typing
            talker.send(f"news {n}")
            time.sleep(0.1)
        reader.wait_for("MSG 30 talker news 29")
        assert not any(line.startswith("BYE") for line in reader.lines), reader.lines
        assert "LEFT reader idle-timeout" not in talker.until("MSG 30 ")
    finally:
        reader.kill()
