"""Every number a user can give, to every `fab` task, the server and the client, given a bad value:
one line on stderr naming the value, what it must be and where it came from; no traceback; a
non-zero exit. The options are read from the code, so a new option is covered the day it lands.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.collection import Collection
from invoke.parser import Argument

import fabfile
from chat import client, config, healthcheck
from pynet.fab_cli import program

REPO = Path(__file__).resolve().parents[1]
FAB = str(Path(sys.executable).with_name("fab"))
COLLECTION = Collection.from_module(fabfile)


def task_arguments() -> list[tuple[str, Argument]]:
    """Each task's arguments, with their help texts (every call gets them: `CheckedTask`)."""
    return [
        (name, arg)
        for name in sorted(COLLECTION.task_names)
        for arg in COLLECTION[name].get_arguments()
    ]


ARGUMENTS = task_arguments()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYNET_", "AWS_"))}
    return subprocess.run(
        args,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, "PYNET_INVENTORY": "/nonexistent/hosts.yml", **(env or {})},
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line(proc: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    code, err = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- fab tasks ------------------------------------------------------------------------------


def _task_cases() -> list[tuple[str, str, str]]:
    cases = []
    for name, arg in ARGUMENTS:
        if arg.kind not in (int, float):
            continue
        low = getattr(arg, "bounds", (0, None))[0]
        flag = f"--{arg.names[0]}"
        cases += [(name, flag, "abc"), (name, flag, "1.5"), (name, flag, str(low - 1))]
    return cases


TASK_CASES = _task_cases()


def test_every_number_flag_of_the_tasks_is_covered() -> None:
    """The known ones at least: the list is read from the tasks, so it can only grow."""
    flags = {(task, flag) for task, flag, _ in TASK_CASES}
    assert {
        ("launch", "--disk-gib"),
        ("launch", "--wait-timeout"),
        ("destroy", "--wait-timeout"),
        ("deploy", "--timeout"),
        ("deploy", "--keep"),
        ("rollback", "--timeout"),
        ("logs", "--lines"),
        ("status", "--app-port"),
        ("doctor", "--app-port"),
    } <= flags


def fab_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`fab ARGS` through the `fab` program object (pynet/fab_cli.py) in this process (a process
    costs seconds on a shared machine; two tests below run the real `fab` to show it is the same).
    Fabric's and Invoke's own flags (-H, -t...) are tested in tests/test_fab_cli.py."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        program.run(["fab", "-H", f"admin@127.0.0.1:{closed_port()}", *args])
    return int(caught.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("task", "flag", "value"), TASK_CASES)
def test_bad_number_flag_of_a_task(
    task: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_line(fab_here([task, flag, value], capsys))
    assert line.startswith(f"error: flag {flag} got {value!r}: expected a whole number")


@pytest.mark.parametrize("task", ["status", "doctor"])
@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_bad_app_port_variable(
    task: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNET_APP_PORT", value)
    assert one_line(fab_here([task], capsys)) == (
        f"error: environment variable PYNET_APP_PORT got {value!r}: "
        "expected a whole number from 1 to 65535"
    )


def test_real_fab_process_says_the_same() -> None:
    port = f"admin@127.0.0.1:{closed_port()}"
    lines = run([FAB, "-H", port, "logs", "--lines", "abc"])
    assert one_line(lines) == "error: flag --lines got 'abc': expected a whole number >= 0"
    disk = run([FAB, "launch", "--name", "x", "--disk-gib", "0"])
    assert (
        one_line(disk) == "error: flag --disk-gib got '0': expected a whole number from 1 to 16384"
    )


@pytest.mark.parametrize(("task", "arg"), ARGUMENTS, ids=lambda x: getattr(x, "name", x))
def test_task_help_shows_the_type_and_default(task: str, arg: Argument) -> None:
    """`fab --help TASK` shows =INT / =STRING (invoke shows nothing for a float: it would read
    as an on/off flag) and every help text says the default (or that the option is required)."""
    assert arg.kind in (bool, int, str), f"{task} --{arg.names[0]}: {arg.kind}"
    text = arg.help or ""
    assert "default" in text or "required" in text, f"{task} --{arg.names[0]}: {text!r}"


# --- the server -------------------------------------------------------------------------------

#: Should a bad value ever be accepted, the server only listens on a free loopback port.
SERVER = [sys.executable, "-m", "chat.server", "--host", "127.0.0.1", "--port", "0"]


def _refuses(option: config.Option, value: str) -> bool:
    try:
        option.parse(value)
    except ValueError:
        return True
    return False


def _server_cases() -> list[tuple[config.Option, str]]:
    # --host resolves names: give it one that is refused without asking a resolver.
    cases = [(option, "no such host!") for option in config.OPTIONS if option.field == "host"]
    defaults = config.Settings()
    for option in config.OPTIONS:
        if option.field == "host":
            continue
        default = getattr(defaults, option.field)
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        for value in ("abc", "-1", "nan", "1e999") if numeric else ("abc",):
            if numeric or _refuses(option, value):
                cases.append((option, value))
    return cases


@pytest.mark.parametrize(("option", "value"), _server_cases(), ids=str)
def test_bad_server_value(
    option: config.Option, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each value from the flag, then from the variable: both must be refused, and say which."""
    with pytest.raises(SystemExit) as flag_exit:
        config.load([option.flag, value], env={})
    line = one_line((int(flag_exit.value.code or 0), capsys.readouterr().err))
    assert line.startswith(f"python -m chat.server: error: argument {option.flag}: ")
    assert f"invalid value {value!r}: " in line
    with pytest.raises(SystemExit) as env_exit:
        config.load([], env={option.env: value})
    line = one_line((int(env_exit.value.code or 0), capsys.readouterr().err))
    assert f"environment variable {option.env}: invalid value {value!r}: " in line


def test_server_process_bad_values() -> None:
    """The real `python -m chat.server`, through the flag and through the variable."""
    flag = run([*SERVER, "--max-clients", "lots"])
    assert "argument --max-clients: invalid value 'lots'" in one_line(flag)
    env = run(SERVER, {"PYNET_STOP_TIMEOUT": "-2"})
    assert "environment variable PYNET_STOP_TIMEOUT: invalid value '-2'" in one_line(env)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"not a database, a text file\n", "is not a SQLite database"), (None, "is a directory")],
)
def test_history_that_cannot_be_a_database(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "history"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    proc = run(SERVER, {"PYNET_HISTORY": str(path)})
    line = one_line(proc)
    assert f"environment variable PYNET_HISTORY: invalid value {str(path)!r}: {expected}" in line


# --- the client -------------------------------------------------------------------------------


def _client_cases() -> list[tuple[str, str]]:
    cases = []
    for action in client.build_parser()._actions:
        if isinstance(action.default, int | float) and not isinstance(action.default, bool):
            name = action.option_strings[0] if action.option_strings else action.dest
            cases += [(name, value) for value in ("abc", "0", "-1", "nan", "70000")]
    return cases


CLIENT_CASES = _client_cases()


def test_client_numbers_are_covered() -> None:
    assert {name for name, _ in CLIENT_CASES} >= {"port", "--max-backoff"}


@pytest.mark.parametrize(("name", "value"), CLIENT_CASES)
def test_bad_client_value(name: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    if name.startswith("--") and value == "70000":
        return  # 70000 seconds is a long wait, not a bad one; only the port has a top
    argv = (
        ["host", value, "--nick", "a"] if name == "port" else ["host", "--nick", "a", name, value]
    )
    with pytest.raises(SystemExit) as caught:
        client.parse_args(argv)
    line = one_line((int(caught.value.code or 0), capsys.readouterr().err))
    assert f"argument {name}: invalid value {value!r}: expected" in line


def test_client_process_bad_port_and_backoff() -> None:
    port = run([sys.executable, "-m", "chat.client", "host", "70000", "--nick", "a"])
    assert "argument port: invalid value '70000': expected a port 1-65535" in one_line(port)
    storm = run([sys.executable, "-m", "chat.client", "host", "--nick", "a", "--max-backoff", "0"])
    assert "argument --max-backoff: invalid value '0'" in one_line(storm)
    env = run([sys.executable, "-m", "chat.client", "host", "--nick", "a"], {"PYNET_PORT": "x"})
    assert "environment variable PYNET_PORT: invalid value 'x'" in one_line(env)


# --- the health check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["127.0.0.1", "70000"], {}, "argument port: invalid value '70000': expected a port"),
        (["127.0.0.1", "abc"], {}, "argument port: invalid value 'abc'"),
        (["--timeout", "0"], {}, "argument --timeout: invalid value '0': expected seconds > 0"),
        (["--timeout", "nan"], {}, "argument --timeout: invalid value 'nan'"),
        ([], {"PYNET_PORT": "x"}, "environment variable PYNET_PORT: invalid value 'x'"),
    ],
)
def test_bad_healthcheck_value(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        healthcheck.main(argv)
    assert expected in one_line((int(caught.value.code or 0), capsys.readouterr().err))


def test_help_texts_survive_a_second_reader() -> None:
    """Invoke hands each help text out once; a second reader of the same task (another test
    module, `fab --help TASK` after a completion) must see them all the same."""
    task = COLLECTION["deploy"]
    first = {arg.name: arg.help for arg in task.get_arguments()}
    second = {arg.name: arg.help for arg in task.get_arguments()}
    assert first == second
    assert all(second.values()), second
