"""The static inventory `inventory/hosts.yml`: written by `fab launch` (or the local rehearsal),
read by Ansible and by the Fabric deploy tasks.

One group, `chat`; one host per deployment name. The file is small YAML that Ansible's `yaml`
inventory plugin reads as is. PYNET_INVENTORY (or a task's --inventory) points elsewhere, which
is how tests and the local rehearsal keep out of the real file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pynet.hostkeys import ssh_options

GROUP = "chat"
CHAT_PORT = 5050
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = PROJECT_ROOT / "inventory" / "hosts.yml"
KNOWN_HOSTS_VAR = "pynet_known_hosts"
_OWN_VARS = {
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_ssh_private_key_file",
    "ansible_ssh_common_args",
    "pynet_chat_port",
    KNOWN_HOSTS_VAR,
}

_HEADER = "# Written by `fab launch` (pynet/inventory.py); git-ignored. Edit freely or re-launch.\n"


@dataclass(frozen=True)
class Host:
    """One SSH target as Ansible and Fabric need it."""

    name: str
    address: str
    user: str
    port: int = 22
    key_file: str | None = None
    chat_port: int = CHAT_PORT  # where the chat answers from here (a local rehearsal maps it)
    known_hosts: str | None = None  # the file pinning this host's key (pynet/hostkeys.py)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # more host variables

    def to_vars(self) -> dict[str, Any]:
        """The Ansible host variables."""
        variables: dict[str, Any] = {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": self.user,
        }
        if self.key_file:
            variables["ansible_ssh_private_key_file"] = self.key_file
        if self.chat_port != CHAT_PORT:
            variables["pynet_chat_port"] = self.chat_port
        if self.known_hosts:
            # OpenSSH (Ansible) checks the host against the pinned key only, strictly.
            variables["ansible_ssh_common_args"] = ssh_options(self.known_hosts)
            variables[KNOWN_HOSTS_VAR] = self.known_hosts
        variables.update(self.extra)
        return variables

    @classmethod
    def from_vars(cls, name: str, variables: dict[str, Any] | None) -> Host:
        """A host from its Ansible variables (the name doubles as the address if none is set)."""
        variables = variables or {}
        return cls(
            name=name,
            address=str(variables.get("ansible_host", name)),
            user=str(variables.get("ansible_user", "admin")),
            port=int(variables.get("ansible_port", 22)),
            key_file=variables.get("ansible_ssh_private_key_file"),
            chat_port=int(variables.get("pynet_chat_port", CHAT_PORT)),
            known_hosts=variables.get(KNOWN_HOSTS_VAR),
            extra={k: v for k, v in variables.items() if k not in _OWN_VARS},
        )


def inventory_path(override: str | os.PathLike[str] | None = None) -> Path:
    """The inventory file: `override`, else $PYNET_INVENTORY, else inventory/hosts.yml."""
    chosen = override or os.environ.get("PYNET_INVENTORY")
    return Path(chosen).expanduser() if chosen else DEFAULT_PATH


def read_hosts(path: str | os.PathLike[str] | None = None) -> list[Host]:
    """The hosts of group `chat`; an absent file means no hosts yet."""
    file = inventory_path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return []
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{file} is not valid YAML: {reason}") from err
    group = _group(data)
    hosts = group.get("hosts") or {}
    return [Host.from_vars(name, variables) for name, variables in hosts.items()]


def _group(data: dict[str, Any]) -> dict[str, Any]:
    children = (data.get("all") or {}).get("children") or {}
    return children.get(GROUP) or {}


def write_hosts(hosts: list[Host], path: str | os.PathLike[str] | None = None) -> Path:
    """Replace the file with exactly `hosts` (atomically: readers never see half a file)."""
    file = inventory_path(path)
    data = {"all": {"children": {GROUP: {"hosts": {host.name: host.to_vars() for host in hosts}}}}}
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(file.name + ".partial")
    partial.write_text(_HEADER + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    partial.replace(file)
    return file


def upsert_host(host: Host, path: str | os.PathLike[str] | None = None) -> Path:
    """Add or replace one host (by name), keeping the others."""
    others = [h for h in read_hosts(path) if h.name != host.name]
    return write_hosts([*others, host], path)


def remove_host(name: str, path: str | os.PathLike[str] | None = None) -> bool:
    """Drop one host by name; True if it was there."""
    hosts = read_hosts(path)
    kept = [h for h in hosts if h.name != name]
    if len(kept) == len(hosts):
        return False
    write_hosts(kept, path)
    return True
