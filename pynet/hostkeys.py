"""SSH host keys: made here, pinned before the first connection, and checked on every one.

`fab launch` and the local harness generate the host's ed25519 key pair on this machine, give the
private half to the host (cloud-init user data, or a file copied into the local host) and write
the public half to a known_hosts file next to the inventory. Ansible (OpenSSH) and Fabric
(paramiko) then refuse any other key. Entries carry a comment naming the deployment
(`pynet:NAME`), so a relaunch or destroy rewrites exactly its own lines.

The private key only ever lives in memory here: it is never written to disk on this machine,
never logged and never printed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KNOWN_HOSTS_NAME = "known_hosts"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
MARK = "pynet:"


@dataclass(frozen=True)
class HostKeyPair:
    """An ed25519 host key pair. `repr` never shows the private key."""

    public: str  # "ssh-ed25519 AAAA..." (no comment)
    private: str = field(repr=False)  # OpenSSH PEM, for the host only

    @classmethod
    def generate(cls) -> HostKeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
        public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        return cls(public=public.decode("ascii"), private=private.decode("ascii"))


def fingerprint(public: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (what `ssh-keygen -lf` prints)."""
    blob = base64.b64decode(public.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def host_pattern(address: str, port: int = 22) -> str:
    """How OpenSSH and paramiko name a host in known_hosts: `addr`, or `[addr]:port`."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_beside(inventory_file: Path) -> Path:
    """The known_hosts file that belongs to an inventory file (same folder, git-ignored)."""
    return inventory_file.with_name(KNOWN_HOSTS_NAME)


def ssh_options(known_hosts: str | os.PathLike[str]) -> str:
    """OpenSSH options that check a host against exactly this file, refusing any other key."""
    return (
        f"-o UserKnownHostsFile={shlex.quote(str(known_hosts))} "
        "-o StrictHostKeyChecking=yes -o HostKeyAlgorithms=ssh-ed25519"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one known_hosts file (parallel launches, parallel tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _rewrite(path: Path, keep: list[str], add: list[str]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in [*keep, *add]), encoding="utf-8")
    partial.replace(path)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _owner(line: str) -> str | None:
    fields = line.split()
    if len(fields) >= 4 and fields[3].startswith(MARK):
        return fields[3].removeprefix(MARK)
    return None


def pin(path: Path, name: str, address: str, port: int, public: str) -> None:
    """Make `public` the only key of deployment `name`, at address:port, in the file."""
    pattern = host_pattern(address, port)
    entry = f"{pattern} {' '.join(public.split()[:2])} {MARK}{name}"
    with _locked(path):
        keep = [
            line
            for line in _lines(path)
            if _owner(line) != name and (line.split() or [""])[0] != pattern
        ]
        _rewrite(path, keep, [entry])


def unpin(path: Path, name: str) -> bool:
    """Drop the entries of deployment `name`; True if there were any."""
    with _locked(path):
        lines = _lines(path)
        keep = [line for line in lines if _owner(line) != name]
        if len(keep) != len(lines):
            _rewrite(path, keep, [])
            return True
    return False


def pinned_key(path: Path, name: str) -> str | None:
    """The public key pinned for deployment `name`, if any."""
    for line in _lines(path):
        if _owner(line) == name:
            return " ".join(line.split()[1:3])
    return None
