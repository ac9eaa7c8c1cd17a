"""Fabric tasks for the cloud host: `fab launch`, `fab hosts`, `fab destroy`.

Thin on purpose: they parse flags, call `pynet.aws`, print, and turn our CloudError into one
line on stderr and exit status 1 (never a traceback for a failure the operator can fix).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from fabric import task
from invoke.context import Context
from invoke.exceptions import Exit

from pynet import inventory
from pynet.aws import ec2
from pynet.aws.errors import CloudError
from pynet.aws.images import check_os
from pynet.aws.keys import find_local_key
from pynet.aws.publicip import ssh_source
from pynet.aws.requests import check_name
from pynet.aws.session import connect

__all__ = ["destroy", "hosts", "launch"]


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Our errors end the command with one line on stderr and status 1."""
    try:
        yield
    except CloudError as err:
        raise Exit(f"error: {err}", code=1) from None
    except KeyboardInterrupt:
        raise Exit(
            "interrupted: run the same command again; it picks up where it stopped", code=130
        ) from None


@contextmanager
def _inventory_errors() -> Iterator[None]:
    """A broken or unwritable inventory file is the operator's to fix: say which."""
    try:
        yield
    except (ValueError, OSError) as err:
        raise CloudError(f"cannot update the inventory: {err}") from err


def _say(message: str) -> None:
    print(message, flush=True)


def format_age(launched: datetime | None, now: datetime | None = None) -> str:
    """A short age like 3d4h, 2h05m or 7m."""
    if launched is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - launched).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m"


def _display(path: Path | None) -> str:
    if path is None:
        return "(your ssh agent or default key)"
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


@task(
    positional=[],
    auto_shortflags=False,  # fab's own -i/-H mean identity and host; avoid look-alikes
    help={
        "name": "deployment name (tags, security group and key pair are named after it)",
        "region": "AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your profile's)",
        "instance-type": "EC2 instance type; Graviton types (t4g, m7g...) get arm64 images",
        "os": "debian12 (default; SSH user admin) or al2023 (SSH user ec2-user)",
        "ami": "launch this AMI instead of the latest image of --os",
        "ssh-cidr": "who may SSH in (default: your public IP as /32, detected)",
        "allow-ssh-from-anywhere": "permit --ssh-cidr 0.0.0.0/0 (not recommended)",
        "key": "public key to import (default ~/.ssh/id_ed25519.pub or id_rsa.pub; "
        "else AWS makes one, saved as ~/.ssh/pynet-NAME.pem)",
        "disk-gib": "root volume size in GiB (encrypted gp3)",
        "wait-timeout": "seconds to wait for running + status checks",
        "inventory": "inventory file to write (default $PYNET_INVENTORY or inventory/hosts.yml)",
    },
)
def launch(
    c: Context,
    name: str = "",
    region: str | None = None,
    instance_type: str = "t3.micro",
    os: str = "debian12",
    ami: str | None = None,
    ssh_cidr: str | None = None,
    allow_ssh_from_anywhere: bool = False,
    key: str | None = None,
    disk_gib: int = 16,
    wait_timeout: int = 600,
    inventory: str | None = None,
) -> None:
    """Launch the chat host (or find the one already running) and write the inventory."""
    with _one_line_errors():
        check_name(name)
        check_os(os)
        clients = connect(region)
        source = ssh_source(ssh_cidr, allow_anywhere=allow_ssh_from_anywhere)
        spec = ec2.LaunchSpec(
            name=name,
            ssh_cidr=source,
            instance_type=instance_type,
            os_name=os,
            ami=ami,
            disk_gib=disk_gib,
        )
        result = ec2.launch(clients, spec, find_local_key(key), wait_timeout=wait_timeout, say=_say)
        _report(result, clients.region, inventory)


def _report(result: ec2.Launched, region: str, inventory_file: str | None) -> None:
    """Write the inventory entry and tell the operator where the host is and what comes next."""
    host = result.host
    if not host.public_ip:
        raise CloudError(
            f"{host.instance_id} runs but has no public IPv4 address: the default VPC's subnet "
            "does not assign one; enable auto-assign public IPv4 on it, then destroy and relaunch"
        )
    key_file = result.private_key_file
    entry = inventory.Host(
        name=host.name,
        address=host.public_ip,
        user=host.ssh_user,
        key_file=str(key_file) if key_file else None,
    )
    with _inventory_errors():
        path = inventory.upsert_host(entry, inventory_file)
    verb = "launched" if result.created else "already there"
    print(f"{host.name}: {verb}, {host.instance_id} ({host.instance_type}) in {region}")
    print(f"  address:   {host.public_ip}")
    print(f"  ssh user:  {host.ssh_user}")
    print(f"  ssh key:   {_display(key_file)}")
    print(f"  inventory: {path} (group {inventory.GROUP})")
    custom = "" if path == inventory.DEFAULT_PATH else f" -i {path}"
    print(f"next: ansible-playbook{custom} playbooks/site.yml")


@task(
    positional=[],
    auto_shortflags=False,  # fab's own -i/-H mean identity and host; avoid look-alikes
    help={
        "name": "deployment name given to `fab launch`",
        "region": "AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your profile's)",
        "yes": "do not ask for confirmation",
        "wait-timeout": "seconds to wait for the instance to terminate",
        "inventory": "inventory file to update (default $PYNET_INVENTORY or inventory/hosts.yml)",
    },
)
def destroy(
    c: Context,
    name: str = "",
    region: str | None = None,
    yes: bool = False,
    wait_timeout: int = 600,
    inventory: str | None = None,
) -> None:
    """Terminate the host and delete its security group and key pair (asks first)."""
    with _one_line_errors():
        _destroy(name, region, yes, wait_timeout, inventory, input)


def _destroy(
    name: str,
    region: str | None,
    yes: bool,
    wait_timeout: int,
    inventory_file: str | None,
    ask: Callable[[str], str],
) -> None:
    check_name(name)
    clients = connect(region)
    deployment = ec2.find_deployment(clients, name)
    if deployment.empty():
        with _inventory_errors():
            inventory.remove_host(name, inventory_file)
        print(f"nothing to destroy: no pynet resources named {name!r} in {clients.region}")
        return
    if not yes:
        _confirm(name, clients.region, deployment, ask)
    ec2.destroy(clients, deployment, wait_timeout=wait_timeout, say=_say)
    with _inventory_errors():
        inventory.remove_host(name, inventory_file)
    print(f"{name}: destroyed in {clients.region}")


def _confirm(name: str, region: str, deployment: ec2.Deployment, ask: Callable[[str], str]) -> None:
    """Ask on a terminal; without one, refuse rather than guess."""
    if not sys.stdin or not sys.stdin.isatty():
        raise CloudError(
            f"refusing to destroy {name!r} without confirmation (stdin is not a terminal): "
            "pass --yes"
        )
    print(f"about to delete in {region}: {deployment.describe()}")
    try:
        answer = ask(f"type the deployment name ({name}) to confirm: ")
    except EOFError:
        answer = ""
    if answer.strip() != name:
        raise CloudError("not confirmed; nothing was deleted")


@task(help={"region": "AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your profile's)"})
def hosts(c: Context, region: str | None = None) -> None:
    """List our instances in the region with state, address and age."""
    with _one_line_errors():
        clients = connect(region)
        found = ec2.list_hosts(clients)
        if not found:
            print(f"no pynet hosts in {clients.region}")
            return
        rows = [("NAME", "INSTANCE", "STATE", "ADDRESS", "TYPE", "AGE")]
        rows += [
            (
                h.name,
                h.instance_id,
                h.state,
                h.public_ip or "-",
                h.instance_type,
                format_age(h.launch_time),
            )
            for h in found
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
