"""Host keys on a real EC2-like host: the pinned key is accepted, any other key is refused.

The harness makes the host key here and pins it, as `fab launch` does through cloud-init. The
tests then swap the key on the host (what an impostor on the path would present) and check that
OpenSSH (Ansible's transport), Ansible itself and Fabric all refuse it, with a message that says
what to check; and that `fab -H` hosts are checked against the user's known_hosts like `ssh`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pynet import hostkeys
from pynet.local.host import Host, install_host_key
from pynet.local.provision import write_inventory, write_ssh_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def fab(host: Host, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`fab ... -H admin@127.0.0.1:PORT -i KEY` (cheapest task that needs an SSH session)."""
    target = f"{host.user}@{host.address}:{host.ssh_port}"
    return run([str(BIN / "fab"), *args, "-H", target, "-i", host.key_path, "unlock"], **env)


def swap_host_key(host: Host) -> hostkeys.HostKeyPair:
    """Give the host a new key, as an impostor or a rebuilt host would present."""
    other = hostkeys.HostKeyPair.generate()
    install_host_key(host.name, other)
    host.exec("systemctl", "restart", "ssh")
    return other


@pytest.fixture
def host(ec2_host: Any) -> Host:
    return ec2_host()


def test_the_pinned_key_is_accepted_and_a_swapped_key_refused(host: Host, tmp_path: Path) -> None:
    pinned = host.host_key
    assert pinned.startswith("ssh-ed25519 ")
    ssh_config = write_ssh_config(tmp_path / "ssh_config", host)
    inventory = write_inventory(tmp_path / "hosts.yml", host)
    ansible = [str(BIN / "ansible"), "-i", str(inventory), "all", "-m", "ansible.builtin.ping"]

    # The host offers exactly the key pinned for it, and only that one.
    offered = run(["ssh-keyscan", "-p", str(host.ssh_port), host.address]).stdout
    assert [" ".join(line.split()[1:]) for line in offered.splitlines()] == [pinned]
    assert run(host.ssh_argv("true")).returncode == 0
    assert run(ansible).returncode == 0
    assert fab(host, "-S", str(ssh_config)).returncode == 0

    impostor = swap_host_key(host)
    proc = run(host.ssh_argv("true"))
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    # A fresh ControlPath: ansible.cfg's ControlPersist would reuse the session opened above.
    proc = run(ansible, ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"))
    assert proc.returncode != 0
    assert "Host key verification failed" in proc.stdout + proc.stderr
    proc = fab(host, "-S", str(ssh_config))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "host key CHANGED, refusing to connect" in line
    assert hostkeys.fingerprint(impostor.public) in line
    assert hostkeys.fingerprint(pinned) in line
    assert "system log" in line  # what to check
    assert "no deploy lock" not in proc.stdout


def test_fab_h_checks_the_users_known_hosts_and_accepts_only_new_keys(
    host: Host, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    known = home / ".ssh" / "known_hosts"
    pattern = f"[{host.address}]:{host.ssh_port}"

    proc = fab(host, HOME=str(home))
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert f"host key not pinned: {pattern} is in none of {known}" in line
    assert hostkeys.fingerprint(host.host_key) in line
    assert f"fab -H USER@{host.address}:{host.ssh_port} accept-host-key" in line
    assert not known.exists()

    target = f"{host.user}@{host.address}:{host.ssh_port}"
    accept = [str(BIN / "fab"), "-H", target, "accept-host-key"]
    proc = run(accept, HOME=str(home))
    assert proc.returncode == 0, proc.stderr
    assert f"pinned ssh-ed25519 {hostkeys.fingerprint(host.host_key)}" in proc.stdout
    assert known.read_text().split() == [pattern, *host.host_key.split()]
    assert fab(host, HOME=str(home)).returncode == 0
    assert "already pinned" in run(accept, HOME=str(home)).stdout

    swap_host_key(host)
    proc = run(accept, HOME=str(home))
    assert proc.returncode == 1
    assert "host key CHANGED" in proc.stderr
    assert known.read_text().split() == [pattern, *host.host_key.split()]  # not replaced
    assert "host key CHANGED" in fab(host, HOME=str(home)).stderr
