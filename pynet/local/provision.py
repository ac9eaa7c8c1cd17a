"""Provision a local host the way a user does, and copy the sources to build a changed version.

Shared by the rehearsal (`make demo`), the end-to-end tests and the deploy benchmark, so that
all of them run `ansible-playbook playbooks/site.yml` with an inventory file, exactly as a user
does after `fab launch`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pynet import inventory
from pynet.local.host import Host
from pynet.local.images import REPO

SITE = REPO / "playbooks" / "site.yml"
# What `docker build` needs: the Dockerfile, its ignore file, the package and its wheels.
BUILD_CONTEXT = ("Dockerfile", ".dockerignore", "chat", "wheels")


def inventory_entry(host: Host, name: str | None = None) -> inventory.Host:
    """The inventory entry that reaches HOST over SSH, with its published chat port."""
    return inventory.Host(
        name=name or host.name,
        address=host.address,
        user=host.user,
        port=host.ssh_port,
        key_file=host.key_path,
        chat_port=host.app_port,
        known_hosts=host.known_hosts or None,
    )


def write_inventory(path: Path, *hosts: Host) -> Path:
    return inventory.write_hosts([inventory_entry(h) for h in hosts], path)


def write_ssh_config(path: Path, *hosts: Host) -> Path:
    """An ssh_config for `fab -S PATH -H admin@127.0.0.1:PORT`: the hosts' pinned keys file.

    Fabric reads it as `ssh` would, so `-H` connections check the key strictly against the
    harness's known_hosts instead of the user's ~/.ssh/known_hosts.
    """
    files = sorted({h.known_hosts for h in hosts if h.known_hosts})
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "Host 127.0.0.1 localhost\n"
    if files:
        text += f"    UserKnownHostsFile {' '.join(files)}\n"
    path.write_text(text + "    StrictHostKeyChecking yes\n", encoding="utf-8")
    return path


def playbook_argv(inventory_file: Path, *extra_vars: str) -> list[str]:
    """`ansible-playbook -i INVENTORY playbooks/site.yml -e VAR...` from this venv."""
    binary = Path(sys.executable).parent / "ansible-playbook"
    return [
        str(binary),
        "-i",
        str(inventory_file),
        str(SITE),
        *[arg for var in extra_vars for arg in ("-e", var)],
    ]


def build_context_copy(dest: Path, commit: bool = False) -> Path:
    """Copy what the image is built from to DEST (a git repository of its own with COMMIT)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in BUILD_CONTEXT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy(source, dest / name)
    if commit:
        git = [
            "git",
            "-C",
            str(dest),
            "-c",
            "user.email=local@pynet.invalid",
            "-c",
            "user.name=pynet-local",
        ]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "build context copy"]):
            subprocess.run([*git, *args], check=True, capture_output=True)
    return dest
