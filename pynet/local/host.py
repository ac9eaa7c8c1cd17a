"""The local EC2-like host: a container that boots systemd with sshd, reached over SSH.

Debian 12 (bookworm, the default) or 13 (trixie). Ansible and Fabric talk to it exactly as they
would to a Debian EC2 instance
(`admin@127.0.0.1:PORT` with a key); only the address differs. As `fab launch` does for an
instance, the harness makes the host's SSH key here, puts it on the host before sshd first
starts, and pins it in a known_hosts file of its own: every connection checks it strictly.
The flags are the ones known to run systemd and an inner Docker engine on these machines
(`--privileged` does not work here).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from chat import PORT
from pynet import hostkeys
from pynet.deploy.probe import ProbeError, ssh_banner
from pynet.local.engine import EngineError, docker, ensure_engine
from pynet.local.images import DEFAULT_SUITE, ensure_host_image
from pynet.wait import WaitTimeout, wait_until

LABEL = "pynet.local.host"
SSH_USER = "admin"
CHAT_PORT = PORT

DOCKER_IN_DOCKER = (
    # Emulated privileges a container needs to run systemd or its own dockerd here:
    # `--privileged` fails on these machines (CAP_SYS_RESOURCE is not in the bounding set).
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
    "/tmp:exec",  # noqa: S108 - the container's own /tmp
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    # An anonymous volume: the inner dockerd needs a real filesystem for overlay2.
    "-v",
    "/var/lib/docker",
)
RUN_FLAGS = (
    *DOCKER_IN_DOCKER,
    # What the chat role sets on a real host; /proc/sys is read-only inside a container.
    "--sysctl",
    "net.ipv4.tcp_migrate_req=1",
    "--tmpfs",
    "/run/lock",
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
    known_hosts: str = ""  # the file that pins this host's key

    @property
    def host_key(self) -> str:
        """The pinned public host key ("ssh-ed25519 AAAA...")."""
        return hostkeys.pinned_key(Path(self.known_hosts), self.name) or ""

    def ssh_argv(self, *command: str) -> list[str]:
        """`ssh` to this host with its key pinned and checked strictly."""
        options = hostkeys.ssh_options(self.known_hosts).replace("'", "").split()
        return [
            "ssh",
            "-p",
            str(self.ssh_port),
            "-i",
            self.key_path,
            "-o",
            "BatchMode=yes",
            *options,
            f"{self.user}@{self.address}",
            *command,
        ]

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


#: sshd offers only the key made here, as a cloud-init host given `ssh_keys:` does.
HOST_KEY_CONF = b"HostKey /etc/ssh/ssh_host_ed25519_key\n"


def _host_key_tar(pair: hostkeys.HostKeyPair) -> bytes:
    """A tar of /etc/ssh with the host key files (root-owned, private key 0600), in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in (
            ("ssh_host_ed25519_key", pair.private.encode(), 0o600),
            ("ssh_host_ed25519_key.pub", f"{pair.public} root@pynet-local\n".encode(), 0o644),
            ("sshd_config.d/20-pynet-hostkey.conf", HOST_KEY_CONF, 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def install_host_key(name: str, pair: hostkeys.HostKeyPair) -> None:
    """Put the host key into container NAME's /etc/ssh (before boot, or to swap it in tests)."""
    docker("cp", "-", f"{name}:/etc/ssh", input=_host_key_tar(pair))


def default_known_hosts(key_path: Path) -> Path:
    """The harness's own known_hosts: next to the harness's client key."""
    return key_path.parent / hostkeys.KNOWN_HOSTS_NAME


def wait_for_ssh(host: Host, timeout: float = 60.0) -> None:
    def answers() -> bool:
        try:
            ssh_banner(host.address, host.ssh_port, timeout=2.0)
        except ProbeError:
            return False
        return True

    try:
        wait_until(answers, timeout, f"sshd of {host.name}", interval=0.3)
        return
    except WaitTimeout:
        pass
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
    known_hosts: Path | None = None,
    host_key: hostkeys.HostKeyPair | None = None,
    suite: str = DEFAULT_SUITE,
) -> Host:
    """Boot host NAME (replacing any old one) with a host key made here, and wait for SSH.

    Ports are chosen here rather than by Docker so they survive a restart (a "reboot"). The
    host key (HOST_KEY, else a new one) is pinned in KNOWN_HOSTS (default: known_hosts beside
    the client key). SUITE is the Debian release it runs (bookworm or trixie).
    """
    ensure_engine()
    image = ensure_host_image(suite)
    stop_host(name, known_hosts)
    public_key = Path(public_key_path).resolve()
    pins = (known_hosts or default_known_hosts(public_key)).resolve()
    host = Host(
        name=name,
        ssh_port=ssh_port or free_port(),
        app_port=app_port or free_port(),
        key_path=str(public_key.with_suffix("")),
        known_hosts=str(pins),
    )
    pair = host_key or hostkeys.HostKeyPair.generate()
    docker(
        "create",
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
    install_host_key(name, pair)
    hostkeys.pin(pins, name, host.address, host.ssh_port, pair.public)
    docker("start", name)
    _authorize(name, public_key)
    wait_for_ssh(host, timeout)
    return host


def stop_host(name: str, known_hosts: Path | None = None) -> None:
    """Remove host NAME and its disks (and its pinned key); a no-op when there is none."""
    docker("rm", "-f", "-v", name, check=False)
    if known_hosts is not None:
        hostkeys.unpin(known_hosts, name)


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
