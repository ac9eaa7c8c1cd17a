"""The static inventory `inventory/hosts.yml`: written by `fab launch` (or the local rehearsal),
read by Ansible and by the Fabric deploy tasks.

Group `chat` (one host per deployment name) and, for a cluster (`fab launch-cluster`), group
`redis`; writing one group keeps the others. The file is small YAML that Ansible's `yaml`
inventory plugin reads as is. PYNET_INVENTORY (or a task's --inventory) points elsewhere, which
is how tests and the local rehearsal keep out of the real file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chat import PORT
from pynet.hostkeys import ssh_options

GROUP = "chat"
REDIS_GROUP = "redis"
CHAT_PORT = PORT
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
        """A host from its Ansible variables (the name doubles as the address if none is set).

        ValueError names the host and the variable when a port is not a port number.
        """
        variables = variables or {}
        return cls(
            name=name,
            address=str(variables.get("ansible_host", name)),
            user=str(variables.get("ansible_user", "admin")),
            port=_port(name, variables, "ansible_port", 22),
            key_file=variables.get("ansible_ssh_private_key_file"),
            chat_port=_port(name, variables, "pynet_chat_port", CHAT_PORT),
            known_hosts=variables.get(KNOWN_HOSTS_VAR),
            extra={k: v for k, v in variables.items() if k not in _OWN_VARS},
        )


def _port(host: str, variables: dict[str, Any], key: str, default: int) -> int:
    value = variables.get(key, default)
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if isinstance(value, bool) or not 1 <= port <= 65535:
        raise ValueError(f"host {host}: {key} is {value!r}, expected a port number 1-65535")
    return port


def inventory_path(override: str | os.PathLike[str] | None = None) -> Path:
    """The inventory file: `override`, else $PYNET_INVENTORY, else inventory/hosts.yml."""
    chosen = override or os.environ.get("PYNET_INVENTORY")
    return Path(chosen).expanduser() if chosen else DEFAULT_PATH


def read_hosts(path: str | os.PathLike[str] | None = None, group: str = GROUP) -> list[Host]:
    """The hosts of GROUP (`chat` unless told); an absent file means no hosts yet.

    ValueError (one line naming the file and what is wrong) for a file that cannot be read, is not
    YAML, or is YAML of another shape than an Ansible inventory.
    """
    file = inventory_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"cannot read the inventory {file}: {reason}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{file} is not valid YAML: {reason}") from err
    try:
        hosts = _mapping(data, "the file")
        for key in ("all", "children", group, "hosts"):
            hosts = _mapping(hosts.get(key), key)
        return [Host.from_vars(str(name), _mapping(v, f"host {name}")) for name, v in hosts.items()]
    except ValueError as err:
        raise ValueError(f"{file} is not an Ansible YAML inventory: {err}") from err


def _mapping(value: object, where: str) -> dict[str, Any]:
    """VALUE as a mapping (absent = empty); anything else is a ValueError naming WHERE."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} is a {type(value).__name__}, expected a mapping")
    return value


def check_writable(path: str | os.PathLike[str] | None = None) -> Path:
    """Read the file and prove it can be replaced, before anything is created that it must record.

    Raises ValueError or OSError (each one line) instead of failing after an instance exists.
    """
    file = inventory_path(path)
    read_hosts(file)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        probe = file.with_name(file.name + ".partial")
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write the inventory {file}: {err.strerror or err}") from err
    return file


def write_hosts(
    hosts: list[Host], path: str | os.PathLike[str] | None = None, group: str = GROUP
) -> Path:
    """Make GROUP exactly `hosts`, keeping the other groups (atomically: readers never see half
    a file)."""
    file = inventory_path(path)
    children = {
        g: {"hosts": {h.name: h.to_vars() for h in _others(file, g)}} for g in _groups(file)
    }
    children[group] = {"hosts": {host.name: host.to_vars() for host in hosts}}
    children = {g: v for g, v in children.items() if v["hosts"] or g == GROUP}
    data = {"all": {"children": children}}
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(file.name + ".partial")
    partial.write_text(_HEADER + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    partial.replace(file)
    return file


def _groups(file: Path) -> list[str]:
    """The groups of the file as written by us (chat first)."""
    if not file.exists():
        return [GROUP]
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    children = _mapping(_mapping(data, "the file").get("all"), "all").get("children")
    return [GROUP, *[g for g in _mapping(children, "children") if g != GROUP]]


def _others(file: Path, group: str) -> list[Host]:
    return read_hosts(file, group)


def upsert_host(host: Host, path: str | os.PathLike[str] | None = None, group: str = GROUP) -> Path:
    """Add or replace one host (by name) in GROUP, keeping the others."""
    others = [h for h in read_hosts(path, group) if h.name != host.name]
    return write_hosts([*others, host], path, group)


def remove_host(name: str, path: str | os.PathLike[str] | None = None, group: str = GROUP) -> bool:
    """Drop one host by name from GROUP; True if it was there."""
    hosts = read_hosts(path, group)
    kept = [h for h in hosts if h.name != name]
    if len(kept) == len(hosts):
        return False
    write_hosts(kept, path, group)
    return True
