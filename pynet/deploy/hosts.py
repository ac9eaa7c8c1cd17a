"""Which hosts a task acts on: Fabric's `-H` when given, else the `chat` group of the inventory.

Fabric 3 hands a task a `Connection` when hosts come from `-H` (with `-i` already in its
config) and a plain `Context` otherwise; in that case we build the connections from
`inventory/hosts.yml`, the file `fab launch` writes, keeping any `-i` keys from the config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fabric import Connection
from invoke.context import Context

from pynet.deploy.commands import APP_PORT

INVENTORY = Path(os.environ.get("PYNET_INVENTORY", "inventory/hosts.yml"))
GROUP = "chat"


class NoHosts(RuntimeError):
    """Neither -H nor an inventory names a host."""


@dataclass(frozen=True)
class InventoryHost:
    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    app_port: int | None = None


def _group_hosts(tree: Any, group: str) -> dict[str, Any] | None:
    """Find GROUP's `hosts:` anywhere in a YAML inventory (top level or under `children:`)."""
    if not isinstance(tree, dict):
        return None
    for name, node in tree.items():
        if not isinstance(node, dict):
            continue
        if name == group and isinstance(node.get("hosts"), dict):
            return node["hosts"]
        found = _group_hosts(node.get("children"), group)
        if found is not None:
            return found
    return None


def read_inventory(path: Path = INVENTORY, group: str = GROUP) -> list[InventoryHost]:
    """The hosts of GROUP in an Ansible YAML inventory; [] when the file does not exist."""
    if not path.exists():
        return []
    hosts = _group_hosts(yaml.safe_load(path.read_text()) or {}, group) or {}
    result = []
    for name, hostvars in hosts.items():
        hv = hostvars or {}
        port, app_port = hv.get("ansible_port"), hv.get("chat_public_port")
        result.append(InventoryHost(
            name=name,
            address=str(hv.get("ansible_host", name)),
            user=hv.get("ansible_user"),
            port=int(port) if port else None,
            key=hv.get("ansible_ssh_private_key_file"),
            app_port=int(app_port) if app_port else None,
        ))
    return result


@dataclass(frozen=True)
class Target:
    """A host to act on: the SSH connection, and where its chat port is reachable from here."""

    conn: Connection
    app_port: int | None = None

    @property
    def label(self) -> str:
        return f"{self.conn.user}@{self.conn.host}:{self.conn.port}"

    def public_port(self, override: int | None = None) -> int:
        """Option, else PYNET_APP_PORT, else the inventory's, else the service's own port."""
        env = os.environ.get("PYNET_APP_PORT")
        return int(override or env or self.app_port or APP_PORT)


def targets(c: Context, inventory: Path = INVENTORY) -> list[Target]:
    """The host(s) a task should act on."""
    if isinstance(c, Connection):
        return [Target(c)]
    hosts = read_inventory(inventory)
    if not hosts:
        raise NoHosts(f"no hosts: pass -H user@host[:port] (and -i KEY), or run `fab launch` "
                      f"to write {inventory}")
    result = []
    for h in hosts:
        kwargs = {"key_filename": [str(Path(h.key).expanduser())]} if h.key else {}
        conn = Connection(h.address, user=h.user, port=h.port, config=c.config,
                          connect_kwargs=kwargs)
        result.append(Target(conn, h.app_port))
    return result
