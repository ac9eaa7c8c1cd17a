"""The real `fab` CLI, without Docker: --dry-run, and failures that must read as one line."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.fakes import REPO, closed_port, fab


def test_tasks_are_listed() -> None:
    out = fab("--list").stdout
    for name in ("deploy", "rollback", "releases", "logs", "status", "doctor", "unlock"):
        assert f"  {name} " in out


def test_deploy_dry_run_prints_every_step_and_runs_none() -> None:
    proc = fab(
        "-H",
        "admin@127.0.0.1:1",
        "deploy",
        "--dry-run",
        "--version",
        "v9",
        "--base-image",
        "pynet-local/debian:bookworm",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "[127.0.0.1:1] uname -m"  # the build is for the host's architecture
    assert lines[1] == (
        f"[local] docker build -t pynet-chat:v9 --build-arg "
        f"BASE_IMAGE=pynet-local/debian:bookworm {REPO}"
    )
    text = proc.stdout
    for step in (
        "[127.0.0.1:1] mkdir /var/lib/pynet-deploy/lock && ",
        "[local] docker save -o ",
        "[127.0.0.1:1] uname -m ; echo --pynet-section-- ; ",  # the host, read in one go
        "[127.0.0.1:1] sudo -n docker load && sudo -n docker image inspect ",
        ".tar.gz\n",  # the archive goes into docker load's stdin
        "[127.0.0.1:1] date +%s ; sudo -n systemctl reset-failed pynet-chat@v9.service "
        "2>/dev/null ; sudo -n systemctl start pynet-chat@v9.service",
        "[127.0.0.1:1] sudo -n python3 -c ",
        "/run/pynet/last-switch.json v9 pynet-chat@v9.service ",
        "[127.0.0.1:1] sudo -n systemctl enable --quiet pynet-chat@v9.service && "
        "sudo -n docker tag pynet-chat:v9 pynet-chat:current && printf ",
        ">> /var/lib/pynet-deploy/releases.jsonl",
        "[127.0.0.1:1] grep -qF ",
    ):
        assert step in text, step
    order = [
        text.index(s)
        for s in ("docker load", "systemctl start", "last-switch.json", "docker tag", "grep -qF")
    ]
    assert order == sorted(order)
    assert re.search(
        r"^\[127\.0\.0\.1:1\] deployed v9 in [\d.]+s: build [\d.]+s, save [\d.]+s, "
        r"ship [\d.]+s \(0 B\), load [\d.]+s, start [\d.]+s, switch [\d.]+s$",
        text,
        re.M,
    ), text


def test_rollback_dry_run() -> None:
    proc = fab("-H", "admin@127.0.0.1:1", "rollback", "--to", "v1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "sudo -n systemctl start pynet-chat@v1.service" in proc.stdout
    assert " && sudo -n docker tag pynet-chat:v1 pynet-chat:current && " in proc.stdout


def test_unreachable_host_is_one_line_and_no_traceback() -> None:
    port = closed_port()
    proc = fab("-H", f"admin@127.0.0.1:{port}", "status")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"admin@127.0.0.1:{port}: cannot reach the host over SSH "
        f"([Errno None] Unable to connect to port {port} on 127.0.0.1); `fab doctor` says why"
    ]


def test_doctor_names_a_closed_ssh_port() -> None:
    port = closed_port()
    proc = fab("-H", f"admin@127.0.0.1:{port}", "doctor")
    assert proc.returncode == 1
    assert f"FAIL  ssh port        127.0.0.1:{port} refused the connection" in proc.stdout
    assert "diagnosis: SSH is refused: nothing accepts connections on port" in proc.stdout


def test_no_hosts_anywhere(tmp_path: Path) -> None:
    proc = fab("status", env={"PYNET_INVENTORY": str(tmp_path / "hosts.yml")})
    assert proc.returncode == 1
    assert proc.stderr.startswith("no hosts: pass -H user@host[:port]")


def test_hosts_come_from_the_inventory(tmp_path: Path) -> None:
    port = closed_port()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    chat:\n      hosts:\n        web1:\n"
        f"          ansible_host: 127.0.0.1\n          ansible_port: {port}\n"
        "          ansible_user: admin\n          ansible_ssh_private_key_file: ~/k.pem\n"
    )
    proc = fab("releases", env={"PYNET_INVENTORY": str(inventory)})
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"admin@127.0.0.1:{port}: cannot reach the host over SSH")
