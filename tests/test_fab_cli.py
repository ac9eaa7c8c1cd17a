"""`fab` is PyNet's program (pynet/fab_cli.py): Fabric's own, with Fabric's and Invoke's flags
checked while argv is parsed. A bad -t/-T/-D or -H is one line, no traceback, exit 1, before any
task runs: no host is ever contacted by these tests (and every host they name is 127.0.0.1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fabric.main import Fab as FabricFab
from fabric.main import program as fabric_program

from pynet.fab_cli import CoreNumber, Hosts, program

REPO = Path(__file__).resolve().parents[1]
FAB = Path(sys.executable).with_name("fab")
HOST_FORM = "expected [user@]host[:port] with a port from 1 to 65535"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYNET_", "AWS_"))}
    return subprocess.run(
        [str(FAB), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "PYNET_INVENTORY": "/nonexistent/hosts.yml"},
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line(code: int, out: str, err: str) -> str:
    assert code != 0, out
    assert "Traceback" not in out + err
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1, out + err
    return lines[0]


def fab_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`fab ARGS` through the same program object in this process (a process costs seconds)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        program.run(["fab", *args])
    out, err = capsys.readouterr()
    return int(caught.value.code or 0), out, err


def test_the_fab_script_is_pynets_program() -> None:
    """`pip install -e .` must run after Fabric's install; if Fabric's script won, this fails."""
    script = FAB.read_text(encoding="utf-8")
    assert "from pynet.fab_cli import program" in script, script
    assert "fabric.main" not in script


def test_program_is_built_as_fabrics() -> None:
    assert type(program).__bases__ == (FabricFab,)
    assert (program.name, program.version) == (fabric_program.name, fabric_program.version)
    assert program.executor_class is fabric_program.executor_class
    assert program.config_class is fabric_program.config_class


def test_every_number_flag_and_hosts_are_checked() -> None:
    """Read from the flags themselves: a new number flag in Fabric or Invoke is covered too."""
    args = program.core_args()
    numbers = {arg.names for arg in args if arg.kind is int}
    assert {("t", "connect-timeout"), ("command-timeout", "T"), ("list-depth", "D")} <= numbers
    for arg in args:
        if arg.kind is int:
            assert isinstance(arg, CoreNumber), arg
    assert [arg for arg in args if isinstance(arg, Hosts)] != []


# The real `fab`, as a user types it.
REAL = [
    (
        ["-t", "abc", "status"],
        "error: flag -t/--connect-timeout got 'abc': expected a whole number >= 0",
    ),
    (["--connect-timeout=abc", "status"], "error: flag -t/--connect-timeout got 'abc': "),
    (
        ["-H", "user@127.0.0.1:abc", "status"],
        f"error: flag -H/--hosts got 'user@127.0.0.1:abc': {HOST_FORM}",
    ),
    (
        ["-H", "127.0.0.1:70000", "status"],
        f"error: flag -H/--hosts got '127.0.0.1:70000': {HOST_FORM}",
    ),
    (
        ["-H", "a@127.0.0.1:1,c@127.0.0.1:x", "status"],
        f"error: flag -H/--hosts got 'c@127.0.0.1:x' in 'a@127.0.0.1:1,c@127.0.0.1:x': {HOST_FORM}",
    ),
]


@pytest.mark.parametrize(("args", "expected"), REAL, ids=[" ".join(a) for a, _ in REAL])
def test_real_fab_refuses_a_bad_core_value(args: list[str], expected: str) -> None:
    proc = run(*args)
    assert one_line(proc.returncode, proc.stdout, proc.stderr).startswith(expected)


def test_real_fab_still_lists_the_tasks() -> None:
    proc = run("-H", "admin@127.0.0.1:2222", "-t", "5", "--list")
    assert proc.returncode == 0, proc.stderr
    assert "deploy" in proc.stdout
    assert "status" in proc.stdout


# The other spellings, in this process.
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-tabc", "status"], "flag -t/--connect-timeout got 'abc': expected a whole number >= 0"),
        (["status", "-t", "abc"], "flag -t/--connect-timeout got 'abc'"),  # after the task
        (["--connect-timeout=-1", "status"], "flag -t/--connect-timeout got '-1'"),
        (["-T", "abc", "status"], "flag -T/--command-timeout got 'abc': expected a whole number"),
        (["--command-timeout=1.5", "status"], "flag -T/--command-timeout got '1.5'"),
        (["-D", "x", "--list"], "flag -D/--list-depth got 'x': expected a whole number >= 0"),
        (["status", "-H", "127.0.0.1:x"], f"flag -H/--hosts got '127.0.0.1:x': {HOST_FORM}"),
        (["--hosts=127.0.0.1:0", "status"], f"flag -H/--hosts got '127.0.0.1:0': {HOST_FORM}"),
        (["-H", "127.0.0.1:", "status"], f"flag -H/--hosts got '127.0.0.1:': {HOST_FORM}"),
        (["-H", "admin@:22", "status"], f"flag -H/--hosts got 'admin@:22': {HOST_FORM}"),
        (["-H", "127.0.0.1,", "status"], f"flag -H/--hosts got '' in '127.0.0.1,': {HOST_FORM}"),
    ],
)
def test_bad_core_value(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert one_line(*fab_here(args, capsys)).startswith(f"error: {expected}")


@pytest.mark.parametrize(
    "args",
    [
        ["-H", "admin@127.0.0.1:2222,127.0.0.1,root@127.0.0.1:65535", "-t", "0", "--list"],
        ["-H", "admin@::1", "-T", "30", "-D", "1", "--list"],  # IPv6: Fabric takes it whole
        ["--list", "-H", "127.0.0.1:1"],
    ],
)
def test_good_core_values_parse_as_before(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = fab_here(args, capsys)
    assert code == 0
    assert "deploy" in out
    with pytest.raises(SystemExit):
        fabric_program.run(["fab", *args])
    for name in ("hosts", "connect-timeout", "command-timeout", "list-depth"):
        assert program.args[name].value == fabric_program.args[name].value, name


@pytest.mark.parametrize("args", [["--help"], ["--help", "status"], ["--list"], ["--version"]])
def test_output_is_fabrics(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    ours = fab_here(args, capsys)
    with pytest.raises(SystemExit) as caught:
        fabric_program.run(["fab", *args])
    out, err = capsys.readouterr()
    assert ours == (int(caught.value.code or 0), out, err)
