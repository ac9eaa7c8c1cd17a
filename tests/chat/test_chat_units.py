"""Settings, history and client helpers, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat import client, config
from chat.history import History, HistoryError
from chat.protocol import Bye, Info, Message, Unknown


def test_defaults_env_and_flags() -> None:
    assert config.load([], env={}) == config.Settings()
    env = {"PYNET_PORT": "6000", "PYNET_HOST": "127.0.0.1", "PYNET_HISTORY": "/tmp/h.db",
           "PYNET_LOG_MESSAGES": "yes", "PYNET_LOG_LEVEL": "debug", "PYNET_RATE": "0"}  # fmt: skip
    settings = config.load([], env=env)
    assert (settings.port, settings.host, settings.history) == (6000, "127.0.0.1", "/tmp/h.db")
    assert settings.log_messages is True
    assert settings.log_level == "DEBUG"
    assert settings.rate == 0
    assert config.load(["--port", "7000", "--history", ""], env=env).port == 7000
    assert config.load(["--history", ""], env=env).history is None  # a flag wins, even empty


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "70000"], {}),
        (["--max-clients", "0"], {}),
        ([], {"PYNET_NICK_TIMEOUT": "soon"}),
        ([], {"PYNET_LOG_LEVEL": "loud"}),
        ([], {"PYNET_LOG_MESSAGES": "maybe"}),
    ],
)
def test_bad_values_exit_with_usage(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exc:
        config.load(argv, env=env)
    assert exc.value.code == 2


def test_every_option_has_a_flag_an_env_var_and_help() -> None:
    text = " ".join(config.build_parser().format_help().split())
    for option in config.OPTIONS:
        assert option.env.startswith("PYNET_")
        assert option.flag in text
        assert f"env {option.env}" in text


def test_memory_history_replays_and_forgets() -> None:
    history = History(3)
    lines = [history.add("ann", f"m{i}") for i in range(1, 6)]
    assert lines[0] == b"MSG 1 ann m1\n"
    assert history.last_id == 5
    assert history.since(0) == lines[2:]
    assert history.since(3) == lines[3:]
    assert history.since(5) == []
    assert history.since(99) == []
    assert History(0).since(0) == []


def test_sqlite_history_keeps_ids_and_retained_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "history.sqlite3")
    history = History(2, path)
    history.add("ann", "one")
    assert history.commit()
    history.add("bob", "two")
    history.add("ann", "three")
    history.close()
    again = History(2, path)
    assert again.last_id == 3
    assert again.since(0) == [b"MSG 2 bob two\n", b"MSG 3 ann three\n"]
    assert again.add("cat", "four") == b"MSG 4 cat four\n"
    again.close()
    zero = History(0, path)  # nothing retained, but the ids still continue
    assert zero.last_id == 4
    assert zero.since(0) == []
    zero.close()


def test_sqlite_history_commit_survives_a_crash_without_close(tmp_path: Path) -> None:
    """What `commit()` returned from is on disk even if the process never closes the file."""
    path = str(tmp_path / "history.sqlite3")
    history = History(10, path)
    history.add("ann", "one")
    history.add("bob", "two")
    assert history.uncommitted == 2
    assert history.commit()
    assert history.uncommitted == 0
    history.add("ann", "not committed")  # never committed: lost, but never seen by anyone
    again = History(10, path)  # the first one is never closed, as after SIGKILL
    assert again.last_id == 2
    assert again.since(0) == [b"MSG 1 ann one\n", b"MSG 2 bob two\n"]
    again.close()


def test_history_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(
        HistoryError, match=r"cannot use .*history\.sqlite3 as the history database"
    ):
        History(10, str(path))


def test_client_shows_lines_for_people_and_is_safe() -> None:
    assert (client.human(Message(3, "ann", "hi\x1b[2J")) or "").endswith("<ann> hi\\u001b[2J")
    assert client.human(Bye("restarting")) == "-- server closed the connection: restarting"
    assert client.human(Info("welcome")) == "-- welcome"
    assert client.raw(Message(3, "ann", "hi")) == "MSG 3 ann hi"
    assert client.raw(Unknown("WHAT")) == "WHAT"


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = client.Backoff(base=1, cap=8)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1
