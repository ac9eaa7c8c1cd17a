"""Log in to each host with a key AWS holds for 60 seconds, not with a stored one.

`fab deploy --instance-connect` makes one key pair for the run (pynet/aws/instance_connect.py),
and right before each host's connection opens, pushes its public half to that host's instance
for the connection's user; the connection then offers that key, and only that key. The session
lasts as long as the deploy, the key 60 seconds: a copy of it taken from the job is worth nothing
a minute later.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import paramiko

from pynet.aws.instance_connect import INSTANCE_ID_VAR, RunKey, push
from pynet.aws.session import Clients
from pynet.deploy.hosts import Target
from pynet.deploy.remote import DeployError


class InstanceConnect:
    """Pushes this run's key to a host's instance and makes its connection log in with it."""

    def __init__(self, connect: Callable[[str | None], Clients], key: RunKey | None = None) -> None:
        self.key = key or RunKey.generate()
        self.pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(self.key.private_openssh))
        self._connect = connect
        self._clients: dict[str | None, Clients] = {}

    @staticmethod
    def check(target: Target) -> str:
        """TARGET's instance id; refused, before anything happens, when it is not known."""
        if not target.instance_id:
            raise DeployError(
                f"--instance-connect needs the host's EC2 instance id ({INSTANCE_ID_VAR} in the "
                "inventory): use the inventory `fab launch` or `python -m pynet.ci` wrote, not -H"
            )
        return target.instance_id

    def attach(self, target: Target) -> None:
        """Push the key right before TARGET's connection opens, however the task opens it
        (most open theirs when they first run a command): a key pushed for every host at the
        start would expire, 60 s later, before a slow task reached the last one."""
        self.check(target)
        conn = target.conn
        opening = conn.open

        def open_after_push() -> Any:
            if not conn.is_connected:
                self.prepare(target)
            return opening()

        conn.open = open_after_push

    def prepare(self, target: Target) -> None:
        """Push the key for TARGET's user to its instance; its next login uses that key only."""
        instance = self.check(target)
        if target.region not in self._clients:
            self._clients[target.region] = self._connect(target.region)
        clients = self._clients[target.region]
        user = str(target.conn.user)
        push(clients.instance_connect, instance, user, self.key.public, clients.region)
        # The pushed key only: no key file, agent or ~/.ssh key is tried (nor needed).
        target.conn.connect_kwargs.update(
            pkey=self.pkey, key_filename=[], look_for_keys=False, allow_agent=False
        )
