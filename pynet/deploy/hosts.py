"""Which hosts a task acts on: Fabric's `-H` when given, else the `chat` group of the inventory.

Fabric 3 hands a task a `Connection` when hosts come from `-H` (with `-i` already in its
config) and a plain `Context` otherwise; in that case we build the connections from the
inventory `fab launch` writes (`pynet.inventory`), keeping any `-i` keys from the config.
Either way the connection checks the host key strictly (`pynet.deploy.trust`): against the file
`fab launch` pinned it in, else the user's known_hosts, as `ssh` would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection
from invoke.context import Context

from pynet import inventory
from pynet.aws.instance_connect import INSTANCE_ID_VAR, REGION_VAR
from pynet.deploy.commands import APP_PORT
from pynet.deploy.trust import strict, user_files


class NoHosts(RuntimeError):
    """Neither -H nor an inventory names a host."""


@dataclass(frozen=True)
class Target:
    """A host to act on: the SSH connection, and where its chat port is reachable from here."""

    conn: Connection
    chat_port: int = APP_PORT  # from the inventory's pynet_chat_port
    instance_id: str | None = None  # the EC2 instance, for a 60-second key (--instance-connect)
    region: str | None = None  # its region

    @property
    def label(self) -> str:
        return f"{self.conn.user}@{self.conn.host}:{self.conn.port}"

    def public_port(self, override: int | None = None) -> int:
        """Option, else PYNET_APP_PORT, else the inventory's port, else the service's port."""
        return int(override or os.environ.get("PYNET_APP_PORT") or self.chat_port)


def targets(c: Context, path: str | None = None) -> list[Target]:
    """The host(s) a task should act on."""
    if isinstance(c, Connection):
        return [Target(strict(c, user_files(c.ssh_config)))]
    try:
        hosts = inventory.read_hosts(path)
    except ValueError as exc:
        raise NoHosts(str(exc)) from None
    if not hosts:
        raise NoHosts(
            f"no hosts: pass -H user@host[:port] (and -i KEY), or run `fab launch` "
            f"to write {inventory.inventory_path(path)}"
        )
    result = []
    for h in hosts:
        keys = {"key_filename": [str(Path(h.key_file).expanduser())]} if h.key_file else {}
        conn = Connection(h.address, user=h.user, port=h.port, config=c.config, connect_kwargs=keys)
        pinned = [Path(h.known_hosts).expanduser()] if h.known_hosts else None
        checked = strict(conn, pinned or user_files(conn.ssh_config))
        instance, region = h.extra.get(INSTANCE_ID_VAR), h.extra.get(REGION_VAR)
        result.append(
            Target(
                checked,
                h.chat_port,
                str(instance) if instance else None,
                str(region) if region else None,
            )
        )
    return result
