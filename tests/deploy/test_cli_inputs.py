"""The release tasks' inputs: --inventory, release names, PYNET_* settings, short flags.

Each bad input ends in one line on stderr and a non-zero status, before anything runs.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pynet import inventory
from pynet.deploy import lock
from pynet.deploy.remote import DeployError
from tests.deploy.fakes import FAB, REPO, closed_port

RELEASE_TASKS = ("deploy", "rollback", "releases", "logs", "status", "doctor", "unlock")


def fab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYNET_")}
    return subprocess.run(
        [FAB, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def unreachable(tmp_path: Path) -> Path:
    """An inventory (not the default file) whose one host is a closed port on 127.0.0.1."""
    path = tmp_path / "elsewhere.yml"
    host = inventory.Host(name="t", address="127.0.0.1", user="admin", port=closed_port())
    inventory.write_hosts([host], path)
    return path


@pytest.mark.parametrize("task", RELEASE_TASKS)
def test_every_release_task_reads_the_inventory_launch_wrote(task: str, unreachable: Path) -> None:
    """`fab launch --inventory X` then `fab TASK --inventory X` acts on X's host, not "no hosts"."""
    port = inventory.read_hosts(unreachable)[0].port
    proc = fab(task, "--inventory", str(unreachable), env={"PYNET_INVENTORY": "/nonexistent.yml"})
    if task == "doctor":  # doctor reports its findings on stdout, and fails
        assert proc.returncode == 1, proc.stderr
        assert f"doctor: admin@127.0.0.1:{port}" in proc.stdout
        return
    line = one_line(proc)
    assert f"admin@127.0.0.1:{port}: cannot reach the host over SSH" in line


def test_a_yaml_list_as_inventory_is_one_line(tmp_path: Path) -> None:
    listed = tmp_path / "hosts.yml"
    listed.write_text("- not\n- a mapping\n")
    line = one_line(fab("status", env={"PYNET_INVENTORY": str(listed)}))
    assert (
        line == f"{listed} is not an Ansible YAML inventory: the file is a list, expected a mapping"
    )


def test_deploy_reaches_every_host_before_the_build(unreachable: Path, tmp_path: Path) -> None:
    """The build is the long part: an unreachable host must fail before it starts."""
    marker = tmp_path / "docker-ran"
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\ntouch {marker}\n")
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    proc = fab(
        "deploy",
        "--inventory",
        str(unreachable),
        "--version",
        "v1",
        env={"PYNET_DOCKER": str(docker)},
    )
    assert "cannot reach the host over SSH" in one_line(proc)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("deploy", "--version", "../../etc/x"), "flag --version got '../../etc/x': expected"),
        (("deploy", "--version", "-rf"), "flag --version got '-rf'"),
        (("rollback", "--to", "a/b"), "flag --to got 'a/b'"),
        (("deploy", "--context", "MISSING"), "flag --context got 'MISSING'"),
        (("deploy", "--dockerfile", "MISSING"), "flag --dockerfile got 'MISSING'"),
    ],
)
def test_bad_release_inputs(args: tuple[str, ...], expected: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")  # a path no other test or agent can have made
    args = tuple(missing if a == "MISSING" else a for a in args)
    proc = fab("-H", f"admin@127.0.0.1:{closed_port()}", *args, "--dry-run")
    assert expected.replace("MISSING", missing) in one_line(proc)


def test_docker_that_is_not_there(unreachable: Path) -> None:
    proc = fab("deploy", "--inventory", str(unreachable), env={"PYNET_DOCKER": "no-such-docker"})
    line = one_line(proc)
    assert "environment variable PYNET_DOCKER got 'no-such-docker'" in line


def test_bad_lock_setting_leaves_fab_list_alone_and_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc = fab("--list", env={"PYNET_LOCK_STALE_AFTER": "soon"})
    assert proc.returncode == 0, proc.stderr
    assert "deploy" in proc.stdout
    for bad in ("soon", "0", "-5", "nan", "inf"):
        monkeypatch.setenv("PYNET_LOCK_STALE_AFTER", bad)
        with pytest.raises(DeployError, match=f"PYNET_LOCK_STALE_AFTER={bad!r}: expected seconds"):
            lock.stale_after_setting()
    monkeypatch.setenv("PYNET_LOCK_STALE_AFTER", "30")
    assert lock.stale_after_setting() == 30.0


def test_dash_i_after_a_task_is_the_identity_not_an_option() -> None:
    """Automatic short flags made `rollback -i KEY` parse KEY as --timeout."""
    help_text = fab("--help", "rollback").stdout
    assert " -i" not in help_text
    assert " -t" not in help_text
    proc = fab("-H", f"admin@127.0.0.1:{closed_port()}", "rollback", "-i", "/nonexistent/key")
    line = one_line(proc)
    assert "cannot reach the host over SSH" in line


def test_a_dash_h_port_out_of_range_is_refused_not_wrapped() -> None:
    """paramiko would wrap 70000 around to 4464 and connect there. `fab` refuses it while it
    parses -H (pynet/fab_cli.py), before the task runs."""
    line = one_line(fab("-H", "admin@127.0.0.1:70000", "status"))
    assert line == (
        "error: flag -H/--hosts got 'admin@127.0.0.1:70000': "
        "expected [user@]host[:port] with a port from 1 to 65535"
    )
