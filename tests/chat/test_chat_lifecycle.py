"""Shutdown, restart with persisted history, the health check, and the client reconnecting."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.chat.fakes import ROOT, ClientProcess, LineClient


def test_sigterm_says_bye_and_exits_zero(start_server, clients) -> None:
    server = start_server("--stop-timeout", "3", "--rate", "0")
    alice = clients(server.port, "alice")
    guest = clients(server.port)
    guest.line()  # INFO
    # A client that never reads, with a big backlog, must not delay the exit past the timeout.
    stuck = LineClient(server.port, "stuck", rcvbuf=4096)
    for _ in range(20):
        alice.send(*["z" * 3000] * 100)
    reader = threading.Thread(target=alice.closed, args=(10,))  # alice keeps reading
    reader.start()
    server.wait_for_log("too-slow peer=")
    started = time.monotonic()
    assert server.terminate() == 0
    # The server stops waiting at 80% of the timeout; the rest is slack for process teardown
    # on a busy machine.
    assert time.monotonic() - started < 4
    reader.join()
    for client in (alice, guest):
        rest = client.rest()
        assert rest[-2] == "INFO server restarting, reconnect in a few seconds"
        assert rest[-1] == "BYE restarting"
    assert [line for line in alice.rest() if line.startswith("LEFT")] == ["LEFT stuck too-slow"]
    server.wait_for_log("stop version=")
    assert "reason=too-slow" in server.log
    stuck.close()


def test_sigterm_refuses_new_connections(start_server) -> None:
    server = start_server()
    assert server.terminate() == 0
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    except OSError:
        return
    raise AssertionError("still accepting after SIGTERM")


def test_history_survives_a_restart(start_server, clients, tmp_path: Path) -> None:
    db = str(tmp_path / "history.sqlite3")
    first = start_server("--history", db, "--history-size", "3")
    alice = clients(first.port, "alice")
    alice.send("one", "two", "three", "four")
    assert alice.lines(4)[-1] == "MSG 4 alice four"
    assert first.terminate() == 0
    second = start_server(env={"PYNET_HISTORY": db, "PYNET_HISTORY_SIZE": "3"})
    bob = clients(second.port, "bob")
    bob.send("/since 0")
    assert bob.lines(3) == ["MSG 2 alice two", "MSG 3 alice three", "MSG 4 alice four"]
    bob.send("five")
    assert bob.line() == "MSG 5 bob five"  # ids continue
    bob.send("/since 4")
    assert bob.line() == "MSG 5 bob five"
    assert second.terminate() == 0


def test_memory_history_is_bounded(start_server, clients) -> None:
    server = start_server("--history-size", "2")
    alice = clients(server.port, "alice")
    alice.send("a", "b", "c", "/since 0")
    assert alice.lines(5)[3:] == ["MSG 2 alice b", "MSG 3 alice c"]


def _healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat.healthcheck", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_healthcheck(server) -> None:
    ok = _healthcheck("127.0.0.1", str(server.port))
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("healthy: PONG")
    assert ok.stdout.count("\n") == 1


def test_healthcheck_fails_on_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _healthcheck("127.0.0.1", str(port), "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: cannot reach")


def test_healthcheck_times_out_on_a_silent_server() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        result = _healthcheck("127.0.0.1", str(listener.getsockname()[1]), "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stdout == "unhealthy: no PONG within 0.5s\n"


def test_client_reconnects_restores_nick_and_misses_nothing(
    start_server, clients, tmp_path: Path
) -> None:
    db = str(tmp_path / "history.sqlite3")
    first = start_server("--history", db)
    client = ClientProcess(first.port, "--nick", "zoe", "--raw", "--max-backoff", "1")
    try:
        client.wait_for("OK nick zoe")
        alice = clients(first.port, "alice")
        alice.send("before restart")
        client.wait_for("MSG 1 alice before restart")
        assert first.terminate() == 0
        alice.close()
        # While zoe is away, the new server gets a message she must still see.
        second = start_server("--history", db, port=first.port)
        bob = LineClient(second.port, "bob")
        bob.send("while you were away")
        assert bob.line() == "MSG 2 bob while you were away"
        client.wait_for("OK nick zoe", count=2)
        client.wait_for("MSG 2 bob while you were away")
        client.type("I am back")
        assert bob.until("MSG 3 ")[-1] == "MSG 3 zoe I am back"
        client.wait_for("MSG 3 zoe I am back")
        assert client.lines.count("MSG 1 alice before restart") == 1  # no duplicate
        assert "BYE restarting" in client.lines
        bob.close()
        assert client.proc.stdin is not None
        client.proc.stdin.close()  # end of input: /quit, then exit 0
        assert client.proc.wait(timeout=10) == 0
        assert client.lines[-1] == "BYE quit"
    finally:
        client.proc.kill()
        client.proc.wait()


def run_client(port: int, nick: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """`python -m chat.client` fed STDIN from a pipe, run to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "chat.client", "127.0.0.1", str(port), "--nick", nick],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def test_client_sends_piped_lines_and_exits_at_eof(server, clients) -> None:
    watcher = clients(server.port, "watcher")
    proc = run_client(server.port, "bot", "hello from a pipe\n/who\n/msg watcher psst\n")
    assert proc.returncode == 0, proc.stderr
    assert watcher.until("MSG ") == ["JOIN bot", "MSG 1 bot hello from a pipe"]
    assert watcher.line() == "PRIV bot psst"
    assert watcher.line() == "LEFT bot quit"
    shown = proc.stdout.splitlines()
    assert "-- you are bot" in shown
    assert any(line.endswith("<bot> hello from a pipe") for line in shown)
    assert "-- online (2): bot watcher" in shown


def test_client_refuses_a_taken_nick(server, clients) -> None:
    clients(server.port, "taken")
    proc = run_client(server.port, "TAKEN", "")
    assert proc.returncode == 1
    assert "nickname TAKEN is in use" in proc.stderr


def test_client_leaves_cleanly_on_ctrl_c(server, clients) -> None:
    watcher = clients(server.port, "watcher")
    client = ClientProcess(server.port, "--nick", "ctrlc", "--raw", "--stay")
    try:
        client.wait_for("OK nick ctrlc")
        client.proc.send_signal(signal.SIGINT)
        assert client.proc.wait(timeout=10) == 0
        assert watcher.until("LEFT ctrlc") == ["JOIN ctrlc", "LEFT ctrlc quit"]
    finally:
        client.proc.kill()
        client.proc.wait()


def test_an_installed_uvloop_is_not_used(start_server, clients, tmp_path: Path) -> None:
    """The server runs on the standard loop wherever it is started: a handover needs CPython's
    selector transports, and under uvloop every connection failed as it was made."""
    (tmp_path / "uvloop.py").write_text("raise SystemExit('uvloop was imported')\n")
    server = start_server(env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    alice = clients(server.port, "alice")
    alice.send("hello")
    assert alice.line() == "MSG 1 alice hello"
    assert "loop=asyncio" in server.wait_for_log("start version=")
    assert server.terminate() == 0
