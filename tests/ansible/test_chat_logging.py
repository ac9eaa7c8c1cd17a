"""The chat unit's logging flags, rendered by Ansible itself from the role's defaults and vars.

journald by default; with `chat_log_driver: awslogs` (what `fab launch --cloudwatch-logs` puts in
the inventory) Docker's awslogs driver to the launch's group, never creating groups itself.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from tests.ansible.ansible_helpers import BIN, REPO, ROLES, ansible_env

CHAT = ROLES / "chat"


def exec_start(tmp_path: Path, *extra_vars: str) -> list[str]:
    """The rendered unit's ExecStart as argv (continuation lines joined, as systemd does)."""
    (template,) = (CHAT / "templates").glob("*.service.j2")
    out = tmp_path / "unit.service"
    play = tmp_path / "render.yml"
    play.write_text(
        f"""- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: ["{CHAT}/defaults/main.yml", "{CHAT}/vars/main.yml"]
  tasks:
    - ansible.builtin.template:
        src: "{template}"
        dest: "{out}"
        mode: "0644"
"""
    )
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", str(play)]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"]
    for var in extra_vars:
        argv += ["-e", var]
    proc = subprocess.run(
        argv, cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    text = out.read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_journald_is_the_default(tmp_path: Path) -> None:
    argv = exec_start(tmp_path)
    i = argv.index("--log-driver")
    assert argv[i + 1] == "journald"
    assert "--log-opt" not in argv


def test_awslogs_sends_to_the_launched_group_only(tmp_path: Path) -> None:
    group = "/pynet/demo"
    argv = exec_start(
        tmp_path,
        "chat_log_driver=awslogs",
        f"chat_awslogs_group={group}",
        "chat_awslogs_region=eu-central-1",
    )
    assert argv[argv.index("--log-driver") + 1] == "awslogs"
    opts = [argv[i + 1] for i, word in enumerate(argv) if word == "--log-opt"]
    assert opts == [
        "awslogs-region=eu-central-1",
        f"awslogs-group={group}",
        "awslogs-create-group=false",
        "mode=non-blocking",
        "max-buffer-size=4m",
    ]
    assert argv[3:5] == ["/usr/bin/docker", "create"]  # the script runs docker create ...
    assert argv.index("--log-driver") < len(argv) - 1  # before the image, not after it
