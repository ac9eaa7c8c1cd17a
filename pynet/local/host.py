"""The local EC2-like host: a container that boots systemd with sshd, reached over SSH.

Ansible and Fabric talk to it exactly as they would to a Debian EC2 instance
(`admin@127.0.0.1:PORT` with a key); only the address differs. The flags are the ones known to
run systemd and an inner Docker engine on these machines (`--privileged` does not work here).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pynet.deploy.probe import ProbeError, ssh_banner
from pynet.local.engine import EngineError, docker, ensure_engine
from pynet.local.images import ensure_host_image

LABEL = "pynet.local.host"
SSH_USER = "admin"
CHAT_PORT = 5050

RUN_FLAGS = (
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp:exec",  # noqa: S108 - the host's own /tmp
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    # An anonymous volume: the inner dockerd needs a real filesystem for overlay2.
    "-v",
    "/var/lib/docker",
)


@dataclass(frozen=True)
class Host:
    """How to reach one local host: everything an inventory entry needs."""

    name: str
    ssh_port: int
    app_port: int
    key_path: str
    user: str = SSH_USER
    address: str = "127.0.0.1"

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    def restart(self, timeout: float = 60.0) -> None:
        """Reboot the host (the container restarts; its disks, like an instance's, persist)."""
        docker("restart", "-t", "10", self.name)
        _authorize(self.name, Path(self.key_path).with_suffix(".pub"))
        wait_for_ssh(self, timeout)

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command on the host as root, behind SSH's back (for tests and fault injection)."""
        return docker("exec", self.name, *argv, check=check)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _authorize(name: str, public_key: Path) -> None:
    """Install the public key for `admin`, as cloud-init does on EC2 at first boot."""
    script = (
        "install -d -m 0700 -o admin -g admin /home/admin/.ssh && "
        "cat > /home/admin/.ssh/authorized_keys && "
        "chown admin:admin /home/admin/.ssh/authorized_keys && "
        "chmod 0600 /home/admin/.ssh/authorized_keys"
    )
    docker("exec", "-i", name, "sh", "-c", script, input=public_key.read_bytes())


def wait_for_ssh(host: Host, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ProbeError):
            ssh_banner(host.address, host.ssh_port, timeout=2.0)
            return
        time.sleep(0.3)
    logs = docker("logs", "--tail", "20", host.name, check=False).stdout
    raise EngineError(
        f"host {host.name}: sshd did not answer on 127.0.0.1:{host.ssh_port} "
        f"within {timeout:.0f}s\n{logs}"
    )


def start_host(
    name: str,
    public_key_path: Path | str,
    ssh_port: int = 0,
    app_port: int = 0,
    timeout: float = 60.0,
) -> Host:
    """Boot host NAME (replacing any old one) and wait until SSH answers.

    Ports are chosen here rather than by Docker so they survive a restart (a "reboot").
    """
    ensure_engine()
    image = ensure_host_image()
    stop_host(name)
    public_key = Path(public_key_path).resolve()
    host = Host(
        name=name,
        ssh_port=ssh_port or free_port(),
        app_port=app_port or free_port(),
        key_path=str(public_key.with_suffix("")),
    )
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        name,
        "--label",
        LABEL,
        *RUN_FLAGS,
        "-p",
        f"127.0.0.1:{host.ssh_port}:22",
        "-p",
        f"127.0.0.1:{host.app_port}:{CHAT_PORT}",
        image,
    )
    _authorize(name, public_key)
    wait_for_ssh(host, timeout)
    return host


def stop_host(name: str) -> None:
    """Remove host NAME and its disks; a no-op when there is none."""
    docker("rm", "-f", "-v", name, check=False)


def list_hosts() -> list[str]:
    proc = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}", check=False)
    return proc.stdout.split()


def make_keypair(path: Path) -> tuple[Path, Path]:
    """An ed25519 key pair for the harness (PATH and PATH.pub), made once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pynet-local", "-f", str(path)],
            check=True,
        )
    return path, path.with_suffix(".pub")
