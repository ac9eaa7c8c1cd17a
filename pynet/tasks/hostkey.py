"""`fab -H USER@HOST[:PORT] accept-host-key`: pin a host's key on first contact, explicitly.

Every other task refuses a host whose key is not pinned. This one is the deliberate exception
`ssh -o StrictHostKeyChecking=accept-new` makes: it adds a key for a host no known_hosts file
knows yet, after printing its fingerprint, and refuses a key that differs from a pinned one.
"""

from __future__ import annotations

from fabric import Connection, task
from invoke.context import Context
from paramiko.ssh_exception import SSHException

from pynet.deploy.trust import HostKeyError, accept_new, user_files
from pynet.tasks.common import fail

__all__ = ["accept_host_key"]


@task
def accept_host_key(c: Context) -> None:
    """Pin the key of a -H host not seen before in ~/.ssh/known_hosts (never a changed key)."""
    if not isinstance(c, Connection):
        raise fail("name the host: fab -H USER@HOST[:PORT] accept-host-key", about=None)
    files = user_files(c.ssh_config)
    try:
        fingerprint, added = accept_new(c.host, c.port, files[0], files)
    except HostKeyError as exc:
        raise fail(str(exc), about=f"{c.host}:{c.port}") from None
    except (SSHException, OSError) as exc:
        raise fail(f"cannot read its host key ({exc})", about=f"{c.host}:{c.port}") from None
    if added:
        print(f"{c.host}:{c.port}: pinned {fingerprint} in {files[0]}")
    else:
        print(f"{c.host}:{c.port}: already pinned ({fingerprint})")
