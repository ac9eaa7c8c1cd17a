"""`fab doctor`: walk from the laptop to the chat port, stop at the first broken link, name the fix.

The order is the order of dependence: no SSH without an address, no docker check without SSH, no
service without docker, no outside reachability without a listening port. Saying "the security
group blocks 5050" is only useful once we know the port listens on the host.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fabric import Connection
from paramiko.ssh_exception import AuthenticationException, SSHException

from pynet.deploy import commands as cmd
from pynet.deploy.probe import ProbeError, chat_hello, ssh_banner
from pynet.deploy.release import HostState
from pynet.deploy.remote import Remote
from pynet.deploy.status import parse_show
from pynet.deploy.trust import HostKeyError

DISK_FULL_PCT = 90
MEMORY_LOW_KB = 64 * 1024


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    diagnosis: str = ""
    fix: str = ""


def _resolve(conn: Connection) -> Finding:
    try:
        infos = socket.getaddrinfo(conn.host, conn.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Finding(
            "address",
            False,
            f"{conn.host} does not resolve ({exc.strerror})",
            "the host name is wrong or its DNS record is gone",
            "check ansible_host in inventory/hosts.yml (or -H); after a stop/start "
            "an EC2 public address changes: run `fab launch` again to refresh it",
        )
    return Finding("address", True, f"{conn.host} -> {infos[0][4][0]}")


def _ssh_port(conn: Connection) -> Finding:
    try:
        banner = ssh_banner(conn.host, conn.port)
    except ProbeError as exc:
        text = str(exc)
        if "refused" in text:
            why = (
                f"SSH is refused: nothing accepts connections on port {conn.port} "
                "(sshd is stopped, or the port is wrong)"
            )
        elif "did not answer" in text:
            why = (
                f"SSH port {conn.port} does not answer: the security group or a firewall drops "
                "it, or the instance is stopped"
            )
        else:
            why = f"SSH is refused: the port answers but sshd is not behind it ({text})"
        return Finding(
            "ssh port",
            False,
            text,
            why,
            "check the instance is running and the security group allows TCP "
            f"{conn.port} from your address; start sshd from the console "
            "(`sudo systemctl start ssh`) if it was stopped",
        )
    return Finding("ssh port", True, banner)


def _auth(conn: Connection) -> Finding:
    try:
        conn.open()
    except HostKeyError as exc:
        return Finding(
            "ssh auth",
            False,
            str(exc),
            "the host key is not the one pinned for this host",
            "check the fingerprint as the line above says before trusting the host",
        )
    except AuthenticationException:
        return Finding(
            "ssh auth",
            False,
            f"the host refused our key for user {conn.user!r}",
            "wrong key or wrong user",
            "pass the key the instance was launched with (-i KEY or "
            "ansible_ssh_private_key_file) and the image's user (`admin` on Debian)",
        )
    except (SSHException, OSError) as exc:
        return Finding(
            "ssh auth",
            False,
            f"SSH handshake failed: {exc}",
            "sshd answered but the SSH session could not be set up",
            "retry; if it persists, check sshd's log from the console",
        )
    return Finding("ssh auth", True, f"logged in as {conn.user}")


def _unit_active(remote: Remote, unit: str, what: str, fix: str) -> Finding:
    show = parse_show(
        remote.output(
            ["systemctl", "show", unit, "--property", "LoadState,ActiveState,SubState"], check=False
        )
    )
    if show.get("LoadState") == "not-found":
        return Finding(
            what,
            False,
            f"{unit} is not installed",
            f"the host was not provisioned ({unit} is missing)",
            "run `ansible-playbook playbooks/site.yml` against it",
        )
    state = f"{show.get('ActiveState', '?')} ({show.get('SubState', '?')})"
    if show.get("ActiveState") != "active":
        return Finding(what, False, f"{unit} is {state}", f"{unit} is not running", fix)
    return Finding(what, True, f"{unit} is {state}")


def _release_active(remote: Remote) -> Finding:
    """The unit of the current release (`pynet-chat@VERSION`) runs."""
    version = HostState.read(remote).current
    if version is None:
        return Finding(
            "service",
            False,
            "no release on the host",
            "nothing was deployed yet (no pynet-chat:current image)",
            "`fab deploy`",
        )
    unit = cmd.unit(version)
    return _unit_active(
        remote,
        unit,
        "service",
        f"`fab logs` to see why, then `sudo systemctl start {unit}` or `fab rollback`",
    )


def _listening(remote: Remote, port: int) -> Finding:
    if remote.output(cmd.port_listening(port), check=False):
        return Finding("port on host", True, f"something listens on :{port}")
    return Finding(
        "port on host",
        False,
        f"nothing listens on :{port} on the host",
        "the chat release runs but does not listen (or is still starting)",
        f"`fab logs` to see why; the release listens on its PYNET_PORT ({port} expected)",
    )


def _outside(conn: Connection, app_port: int) -> Finding:
    try:
        hello = chat_hello(conn.host, app_port)
    except ProbeError as exc:
        return Finding(
            "port from here",
            False,
            str(exc),
            f"the chat port listens on the host but is not reachable from here: the "
            f"security group (or a host firewall) blocks TCP {app_port}",
            f"allow inbound TCP {app_port} in the instance's security group "
            "(`fab launch` adds the rule); on the host check `sudo iptables -S`",
        )
    return Finding("port from here", True, hello)


def _resources(remote: Remote) -> Finding:
    df = remote.output(cmd.disk_usage(), check=False).splitlines()
    used = int(df[-1].split()[4].rstrip("%")) if len(df) > 1 else 0
    mem = {
        k.rstrip(":"): int(v)
        for k, v, *_ in (
            line.split() for line in remote.output(cmd.memory(), check=False).splitlines()
        )
    }
    available = mem.get("MemAvailable", MEMORY_LOW_KB)
    detail = f"disk {used}% used, {available // 1024} MB memory available"
    if used >= DISK_FULL_PCT:
        return Finding(
            "resources",
            False,
            detail,
            "the disk holding docker's data is nearly full",
            "free space: `sudo docker image prune -a` (keeps images in use), lower "
            "`fab deploy --keep`, or grow the volume",
        )
    if available < MEMORY_LOW_KB:
        return Finding(
            "resources",
            False,
            detail,
            "the host is almost out of memory",
            "see `fab logs` for OOM kills; use a larger instance type",
        )
    return Finding("resources", True, detail)


def diagnose(remote: Remote, app_port: int) -> Iterator[Finding]:
    """Yield findings in order, ending with the first that is not ok."""
    conn = remote.conn
    steps: list[Callable[[], Finding]] = [
        lambda: _resolve(conn),
        lambda: _ssh_port(conn),
        lambda: _auth(conn),
        lambda: _unit_active(
            remote,
            "docker",
            "docker",
            "`sudo systemctl start docker` (see `sudo journalctl -u docker -n 50` "
            "for why it stopped), then `fab status`",
        ),
        lambda: _release_active(remote),
        lambda: _listening(remote, cmd.APP_PORT),  # on the host (the port from here may differ)
        lambda: _outside(conn, app_port),
        lambda: _resources(remote),
    ]
    for step in steps:
        finding = step()
        yield finding
        if not finding.ok:
            return


def report(findings: list[Finding]) -> str:
    lines = [f"  {'ok' if f.ok else 'FAIL':<5} {f.check:<15} {f.detail}" for f in findings]
    bad = next((f for f in findings if not f.ok), None)
    if bad:
        lines += [f"diagnosis: {bad.diagnosis}", f"fix: {bad.fix}"]
    else:
        lines.append("diagnosis: all checks passed")
    return "\n".join(lines)
