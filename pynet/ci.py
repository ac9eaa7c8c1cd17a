"""`python -m pynet.ci NAME`: the deploy workflow's inventory, checked against AWS first.

The workflow hands in the host (PYNET_HOST, PYNET_SSH_USER) and its pinned host key
(inventory/known_hosts, from a repository variable). Before anything connects, this checks
with the deploy role's read-only credentials that a running instance tagged with the
deployment NAME has that address, and that the pinned key is the key `fab launch` gave it (its
`pynet:ssh-host-key` tag). Then it writes inventory/hosts.yml for `fab deploy --instance-connect`:
the instance's id and region (where the job's 60-second key goes), and no key file (the job
holds none). One line on stderr and exit 1 for any mismatch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pynet import inventory
from pynet.aws.ec2 import Ec2Host, find_instances
from pynet.aws.errors import CloudError
from pynet.aws.instance_connect import instance_vars
from pynet.aws.session import connect
from pynet.hostkeys import KNOWN_HOSTS_NAME, host_pattern


def pinned_line(known_hosts: Path, address: str) -> str:
    """The pinned key for ADDRESS ("ssh-ed25519 AAAA..."), from the workflow's known_hosts."""
    try:
        lines = known_hosts.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise CloudError(f"cannot read {known_hosts}: {err.strerror}") from err
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and address in fields[0].split(","):
            return f"{fields[1]} {fields[2]}"
    raise CloudError(
        f"{known_hosts} pins no key for {address}: set the PYNET_KNOWN_HOSTS variable to the "
        "line `fab launch` wrote to inventory/known_hosts"
    )


def check(name: str, address: str, pinned: str, region: str | None = None) -> tuple[Ec2Host, str]:
    """The running instance of NAME, if it has ADDRESS and was launched with the PINNED key,
    and its region."""
    clients = connect(region)
    running = [
        Ec2Host.from_instance(i)
        for i in find_instances(clients.ec2, name, ("running",), clients.region)
    ]
    if not running:
        raise CloudError(f"no running instance tagged pynet:deployment={name} in {clients.region}")
    matching = [h for h in running if h.public_ip == address]
    if not matching:
        found = ", ".join(f"{h.instance_id} ({h.public_ip})" for h in running)
        raise CloudError(f"PYNET_HOST {address} is not the address of {name}: {found}")
    host = matching[0]
    if host.host_key and host.host_key != pinned:
        raise CloudError(
            f"the pinned host key for {address} is not the key {host.instance_id} was launched "
            "with: update PYNET_KNOWN_HOSTS from inventory/known_hosts after checking it"
        )
    return host, clients.region


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pynet.ci DEPLOYMENT-NAME", file=sys.stderr)
        return 2
    address = os.environ.get("PYNET_HOST", "").strip()
    user = os.environ.get("PYNET_SSH_USER", "").strip() or "admin"
    path = inventory.inventory_path()
    known_hosts = path.with_name(KNOWN_HOSTS_NAME)
    try:
        if not address:
            raise CloudError("PYNET_HOST is not set: the production host's address")
        pinned = pinned_line(known_hosts, host_pattern(address))
        host, region = check(args[0], address, pinned)
        entry = inventory.Host(
            name=args[0],
            address=address,
            user=user,
            known_hosts=str(known_hosts.resolve()),
            extra=instance_vars(host.instance_id, region),
        )
        inventory.write_hosts([entry], path)
    except (CloudError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args[0]}: {host.instance_id} at {address}, host key pinned; inventory {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
