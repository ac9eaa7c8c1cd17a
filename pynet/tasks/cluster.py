"""Fabric tasks for a cluster: `fab launch-cluster --count N`, `fab destroy-cluster`.

A cluster is N chat hosts and one Redis host behind a Network Load Balancer (pynet/aws/cluster.py).
The inventory gets the chat hosts in group `chat` and the Redis host in group `redis`, so
`ansible-playbook playbooks/site.yml` provisions Redis and points every chat host at it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from invoke.context import Context

from pynet import inventory as hosts_file
from pynet.aws import cluster, ec2
from pynet.aws import cluster_requests as req
from pynet.aws.access import operator_label
from pynet.aws.errors import CloudError
from pynet.aws.images import check_os
from pynet.aws.instance_connect import instance_vars
from pynet.aws.keys import find_local_key
from pynet.aws.publicip import ssh_source
from pynet.aws.requests import DEFAULT_OS
from pynet.aws.session import Clients, connect
from pynet.hostkeys import fingerprint, known_hosts_beside, unpin
from pynet.tasks.common import (
    INTERRUPTED,
    REGION_HELP,
    confirm,
    destroy_task,
    display,
    inventory_errors,
    one_line_errors,
    pin_host_key,
    say,
)
from pynet.tasks.options import task

__all__ = ["destroy_cluster", "launch_cluster"]


def _elbv2(clients: Clients) -> object:
    import boto3  # when needed: see pynet.aws.session._config

    return boto3.client("elbv2", region_name=clients.region)


@task(
    positional=[],
    bounds={"count": (1, req.MAX_COUNT)},
    help={
        "name": f"cluster name, at most {req.MAX_NAME} characters (hosts are NAME-chat1.., "
        "NAME-redis; required)",
        "count": "number of chat hosts behind the load balancer (default 2)",
        "region": REGION_HELP,
        "instance-type": "EC2 instance type of every host (default t3.micro)",
        "os": "debian13 (default), debian12 or al2023",
        "ami": "launch this AMI instead of the latest image of --os (default: none)",
        "ssh-cidr": "who may SSH in (default: your public IP as /32, detected)",
        "ssh-label": "whose SSH rule --ssh-cidr is (default: your AWS identity's name)",
        "key": "public key to import (default ~/.ssh/id_ed25519.pub or id_rsa.pub)",
        "wait-timeout": "seconds to wait for each host's running + status checks",
        "inventory": "inventory file to write (default $PYNET_INVENTORY or inventory/hosts.yml)",
    },
)
def launch_cluster(
    c: Context,
    name: str = "",
    count: int = 2,
    region: str | None = None,
    instance_type: str = "t3.micro",
    os: str = DEFAULT_OS,
    ami: str | None = None,
    ssh_cidr: str | None = None,
    ssh_label: str | None = None,
    key: str | None = None,
    wait_timeout: int = 600,
    inventory: str | None = None,
) -> None:
    """Launch N chat hosts, a Redis host and a load balancer (or find them); write the inventory."""
    with one_line_errors(interrupted=INTERRUPTED):
        req.check_cluster(name, count)
        check_os(os)
        with inventory_errors():
            hosts_file.check_writable(inventory)
        clients = connect(region)
        spec = ec2.LaunchSpec(
            name=name,
            ssh_cidr=ssh_source(ssh_cidr),
            ssh_label=operator_label(clients.sts, ssh_label, clients.region),
            instance_type=instance_type,
            os_name=os,
            ami=ami,
        )
        result = cluster.launch(
            clients,
            _elbv2(clients),
            spec,
            count,
            find_local_key(key),
            wait_timeout=wait_timeout,
            say=say,
        )
        path = hosts_file.inventory_path(inventory)
        pinned_in: Path | None = None
        for launched, group in [
            *[(c, hosts_file.GROUP) for c in result.chat],
            (result.redis, hosts_file.REDIS_GROUP),
        ]:
            host = launched.host
            if not host.public_ip:
                raise CloudError(f"{host.instance_id} has no public IPv4 address")
            known_hosts = pin_host_key(host, path)
            entry = hosts_file.Host(
                name=host.name,
                address=host.public_ip,
                user=host.ssh_user,
                key_file=str(launched.private_key_file) if launched.private_key_file else None,
                known_hosts=str(known_hosts) if known_hosts else None,
                extra=instance_vars(host.instance_id, clients.region),
            )
            with inventory_errors():
                hosts_file.upsert_host(entry, inventory, group)
            pinned_in = known_hosts or pinned_in
            pinned = f", host key {fingerprint(host.host_key)}" if known_hosts else ""
            print(f"  {group:5} {host.name}: {host.public_ip} ({host.instance_id}){pinned}")
        print(f"{name}: {count} chat hosts and a Redis host in {clients.region}")
        print(f"  clients connect to: {result.endpoint}:{req.CHAT_PORT}")
        print(f"  ssh key:   {display(result.redis.private_key_file)}")
        print(f"  inventory: {path} (groups chat and redis)")
        if pinned_in:
            print(f"  host keys: pinned in {pinned_in} (Ansible and fab check them strictly)")
        print(
            "next: choose the Redis password (redis_password in Ansible Vault, or the variable "
            "docs/cluster.md names), ansible-playbook playbooks/site.yml, then fab deploy"
        )


def _destroy(
    name: str,
    region: str | None,
    yes: bool,
    wait_timeout: int,
    inventory: str | None,
    ask: Callable[[str], str],
) -> None:
    req.check_cluster(name, 1)
    clients = connect(region)
    elbv2 = _elbv2(clients)
    parts = cluster.find_cluster(clients, elbv2, name)
    if not parts.empty():
        if not yes:
            confirm(name, clients.region, parts.describe(), ask)
        cluster.destroy(clients, elbv2, parts, wait_timeout=wait_timeout, say=say)
    pattern = req.member_pattern(name)
    known = known_hosts_beside(hosts_file.inventory_path(inventory))
    members = {d.name for d in parts.deployments}  # unpinned even if gone from the inventory
    with inventory_errors():
        for group in (hosts_file.GROUP, hosts_file.REDIS_GROUP):
            for host in hosts_file.read_hosts(inventory, group):
                if pattern.match(host.name):
                    hosts_file.remove_host(host.name, inventory, group)
                    members.add(host.name)
        if known.exists():
            for member in sorted(members):
                unpin(known, member)
    if parts.empty():
        print(f"nothing to destroy: no pynet cluster named {name!r} in {clients.region}")
    else:
        print(f"{name}: destroyed in {clients.region}")


destroy_cluster = destroy_task(
    "destroy_cluster",
    "launch-cluster",
    "Delete the load balancer, every host of the cluster and its security groups (asks first).",
    _destroy,
)
