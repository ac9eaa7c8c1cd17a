"""Fabric connections that check the host key strictly, as `ssh` does, instead of trusting it.

Fabric's own default accepts any host key and reads no known_hosts file at all. Every connection
our tasks open goes through `strict()`: the host must already be in the known_hosts file(s) that
apply (the pinned file `fab launch` wrote for inventory hosts; the user's files for `-H` hosts),
an unknown key is refused with the fingerprint and the command that pins it, and a changed key
is refused with what to check. `accept_new()` is the explicit first-contact exception: it adds a
key that is not there yet, never one that replaces a pinned key.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fabric import Connection
from paramiko import MissingHostKeyPolicy, PKey, SSHClient, Transport
from paramiko.hostkeys import HostKeys
from paramiko.ssh_exception import BadHostKeyException, SSHException

from pynet.hostkeys import USER_KNOWN_HOSTS, host_pattern

GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class HostKeyError(SSHException):
    """The host key is not the pinned one (or none is pinned); the message says what to do."""


def _fp(key: PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _where(files: Sequence[Path]) -> str:
    return ", ".join(str(f) for f in files) or "(no known_hosts file)"


def user_files(ssh_config: Any = None) -> list[Path]:
    """The known_hosts files `ssh` would read: ssh_config's UserKnownHostsFile, else the default."""
    configured = ssh_config.get("userknownhostsfile") if ssh_config is not None else None
    names = str(configured).split() if configured else [USER_KNOWN_HOSTS]
    return [Path(os.path.expanduser(n)) for n in names] + [Path(GLOBAL_KNOWN_HOSTS)]


def unknown_message(pattern: str, key: PKey, files: Sequence[Path]) -> str:
    host, _, port = pattern.removeprefix("[").partition("]:")
    port = port or "22"
    return (
        f"host key not pinned: {pattern} is in none of {_where(files)}; it offers "
        f"{_fp(key)}. Compare that with the host's own fingerprint (EC2: the instance's system "
        "log; on the host: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then pin it: "
        f"`fab -H USER@{host}:{port} accept-host-key` (or `ssh-keyscan -p {port} {host} >> "
        f"{USER_KNOWN_HOSTS}`)"
    )


def changed_message(pattern: str, got: PKey, expected: PKey, files: Sequence[Path]) -> str:
    first = files[0] if files else Path(USER_KNOWN_HOSTS)
    return (
        f"host key CHANGED, refusing to connect: {pattern} offers {_fp(got)} but "
        f"{_where(files)} pins {_fp(expected)}. Someone may be intercepting the connection, or "
        "the host was replaced. Check the new fingerprint on the host itself (EC2: the "
        "instance's system log); only if it was really rebuilt, run `fab launch` again (it pins "
        f"the new key) or remove the old entry: `ssh-keygen -R '{pattern}' -f {first}`"
    )


class _Refuse(MissingHostKeyPolicy):
    """Unknown host: refuse, saying what the host offered and how to pin it."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        raise HostKeyError(unknown_message(hostname, key, self.files))


class _StrictClient(SSHClient):
    """SSHClient whose changed-key error reads as a sentence with the next step."""

    def __init__(self, files: Sequence[Path]) -> None:
        super().__init__()
        self.files = list(files)

    def connect(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().connect(*args, **kwargs)
        except BadHostKeyException as err:
            raise HostKeyError(
                changed_message(err.hostname, err.key, err.expected_key, self.files)
            ) from None


def strict(conn: Connection, files: Sequence[Path]) -> Connection:
    """Make CONN check the host key against FILES only and refuse anything not pinned there."""
    client = _StrictClient(files)
    for file in files:
        if file.is_file():
            client.load_system_host_keys(str(file))
    client.set_missing_host_key_policy(_Refuse(files))
    conn.client = client
    return conn


def server_key(host: str, port: int, timeout: float = 10.0) -> PKey:
    """The host key the server at host:port offers (no authentication is attempted)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def accept_new(host: str, port: int, file: Path, files: Sequence[Path]) -> tuple[str, bool]:
    """Pin the key host:port offers in FILE if no file in FILES knows the host yet.

    Returns (fingerprint, added). A key different from a pinned one raises HostKeyError: first
    contact may be accepted on request, a change never is.
    """
    key = server_key(host, port)
    pattern = host_pattern(host, port)
    for known_file in files:
        if not known_file.is_file():
            continue
        known = HostKeys(str(known_file)).lookup(pattern)
        if known is None:
            continue
        if known.get(key.get_name()) == key:
            return _fp(key), False
        expected = known.get(key.get_name()) or next(iter(known.values()))
        raise HostKeyError(changed_message(pattern, key, expected, files))
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(file, "a", encoding="utf-8") as out:
        out.write(f"{pattern} {key.get_name()} {key.get_base64()}\n")
    return _fp(key), True
