"""Fabric tasks for the cloud host: `fab launch`, `fab hosts`, `fab destroy`.

Thin on purpose: they parse flags, call `pynet.aws`, print, and turn our CloudError into one
line on stderr and exit status 1 (never a traceback for a failure the operator can fix).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from invoke.context import Context

from pynet import inventory as hosts_file
from pynet.aws import ec2
from pynet.aws.access import operator_label
from pynet.aws.errors import CloudError, explained
from pynet.aws.images import check_os
from pynet.aws.instance_connect import instance_vars
from pynet.aws.keys import find_local_key
from pynet.aws.logs import check_retention
from pynet.aws.publicip import ssh_source
from pynet.aws.recovery import check_topic
from pynet.aws.requests import DEFAULT_OS, WIDEST_SSH_PREFIX, check_name, launched_os
from pynet.aws.session import Clients, connect
from pynet.hostkeys import fingerprint, known_hosts_beside, unpin
from pynet.tables import columns
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

__all__ = ["destroy", "hosts", "launch"]


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


#: gp3 volumes are 1 GiB to 16 TiB.
DISK_GIB = (1, 16384)


@task(
    positional=[],
    bounds={"disk_gib": DISK_GIB, "connections_alarm": (0, 1440)},
    help={
        "name": "deployment name (tags, security group and key pair are named after it; "
        "required, no default)",
        "region": REGION_HELP,
        "instance-type": "EC2 instance type; Graviton types (t4g, m7g...) get arm64 images "
        "(default t3.micro)",
        "os": "debian13 (default) or debian12 (SSH user admin), or al2023 (SSH user ec2-user)",
        "ami": "launch this AMI instead of the latest image of --os (default: none)",
        "ssh-cidr": "who may SSH in (default: your public IP as /32, detected)",
        "ssh-label": "whose SSH rule --ssh-cidr is, in its description; your earlier source "
        "under it is replaced, other labels' kept (default: your AWS identity's name)",
        "allow-ssh-from-anywhere": f"permit an --ssh-cidr wider than /{WIDEST_SSH_PREFIX[4]} "
        f"(IPv4) or /{WIDEST_SSH_PREFIX[6]} (IPv6), 0.0.0.0/0 included (not recommended)",
        "key": "public key to import (default ~/.ssh/id_ed25519.pub or id_rsa.pub; "
        "else AWS makes one, saved as ~/.ssh/pynet-NAME.pem)",
        "disk-gib": "root volume size in GiB (encrypted gp3)",
        "wait-timeout": "seconds to wait for running + status checks",
        "inventory": "inventory file to write (default $PYNET_INVENTORY or inventory/hosts.yml)",
        "eip": "give the host an Elastic IP, kept across stop/start, released by destroy",
        "no-recovery": "no CloudWatch alarms that recover/reboot the host (default: alarms)",
        "alarm-topic": "SNS topic ARN the recovery alarms also notify (default: none)",
        "cloudwatch-logs": "log group /pynet/NAME and an instance profile that may write only "
        "to it; the inventory switches the chat role to Docker's awslogs driver",
        "log-retention-days": "days CloudWatch Logs keeps the chat's logs (default 30)",
        "connections-alarm": "with --cloudwatch-logs: a CloudWatch alarm when no chat "
        "connection is accepted for this many minutes (default 0: none)",
    },
)
def launch(
    c: Context,
    name: str = "",
    region: str | None = None,
    instance_type: str = "t3.micro",
    os: str = DEFAULT_OS,
    ami: str | None = None,
    ssh_cidr: str | None = None,
    ssh_label: str | None = None,
    allow_ssh_from_anywhere: bool = False,
    key: str | None = None,
    disk_gib: int = 16,
    wait_timeout: int = 600,
    inventory: str | None = None,
    eip: bool = False,
    no_recovery: bool = False,
    alarm_topic: str | None = None,
    cloudwatch_logs: bool = False,
    log_retention_days: int = 30,
    connections_alarm: int = 0,
) -> None:
    """Launch the chat host (or find the one already running) and write the inventory."""
    with one_line_errors(interrupted=INTERRUPTED):
        check_name(name)
        check_os(os)
        with inventory_errors():  # read and writable now, not after an instance exists
            hosts_file.check_writable(inventory)
        if connections_alarm and not cloudwatch_logs:
            raise CloudError(
                f"--connections-alarm {connections_alarm} needs --cloudwatch-logs: the figure "
                "reaches CloudWatch through the chat's log stream"
            )
        clients = connect(region)
        source = ssh_source(ssh_cidr, allow_anywhere=allow_ssh_from_anywhere)
        spec = ec2.LaunchSpec(
            name=name,
            ssh_cidr=source,
            ssh_label=operator_label(clients.sts, ssh_label, clients.region),
            instance_type=instance_type,
            os_name=os,
            ami=ami,
            disk_gib=disk_gib,
            recovery=not no_recovery,
            alarm_topic=check_topic(alarm_topic, clients.region),
            eip=eip,
            cloudwatch_logs=cloudwatch_logs,
            log_retention_days=check_retention(log_retention_days),
            connections_alarm=connections_alarm,
        )
        local_key = find_local_key(key)
        try:
            result = ec2.launch(clients, spec, local_key, wait_timeout=wait_timeout, say=say)
        except CloudError as err:
            raise CloudError(f"{err}{_left_behind(clients, name)}") from err
        if not result.created:
            _say_unapplied(clients, spec, result.host)
        _report(result, clients.region, inventory)


def _left_behind(clients: Clients, name: str) -> str:
    """What a failed launch leaves in the account, and how to finish or remove it."""
    try:
        deployment = ec2.find_deployment(clients, name)
    except CloudError:
        return ""  # the listing fails the same way; the error already says why
    if deployment.empty():
        return "; nothing was created"
    return (
        f"; left behind: {deployment.describe()} (run the same launch again to carry on, "
        f"or `fab destroy --name {name}` to remove them)"
    )


def unapplied(spec: ec2.LaunchSpec, instance: dict[str, Any], disk_gib: int | None) -> list[str]:
    """The launch options an existing instance does not match: they only apply to a new one."""
    found = ec2.Ec2Host.from_instance(instance)
    os_name = launched_os(instance)
    notes = []
    if found.instance_type != spec.instance_type:
        notes.append(f"--instance-type {spec.instance_type} (it is {found.instance_type})")
    if os_name != spec.os_name:
        notes.append(f"--os {spec.os_name} (it runs {os_name or found.ssh_user})")
    if spec.ami and instance.get("ImageId") != spec.ami:
        notes.append(f"--ami {spec.ami} (it runs {instance.get('ImageId')})")
    if disk_gib is not None and disk_gib != spec.disk_gib:
        notes.append(f"--disk-gib {spec.disk_gib} (it has {disk_gib} GiB)")
    return notes


def _say_unapplied(clients: Clients, spec: ec2.LaunchSpec, host: ec2.Ec2Host) -> None:
    """Relaunching with other options reuses the instance: say which options did not apply."""
    with explained("describing the instance", clients.region):
        reply = clients.ec2.describe_instances(InstanceIds=[host.instance_id])
        instance = reply["Reservations"][0]["Instances"][0]
        root = instance.get("RootDeviceName")
        volumes = [
            m["Ebs"]["VolumeId"]
            for m in instance.get("BlockDeviceMappings", [])
            if m.get("DeviceName") == root and "Ebs" in m
        ]
        size = None
        if volumes:
            size = clients.ec2.describe_volumes(VolumeIds=volumes[:1])["Volumes"][0]["Size"]
    notes = unapplied(spec, instance, size)
    if notes:
        print(
            f"note: {spec.name} already exists, so these options did not apply: "
            f"{'; '.join(notes)}. To change them: `fab destroy --name {spec.name}`, then launch "
            "again",
            flush=True,
        )


def _log_vars(log_group: str | None, region: str, name: str = "") -> dict[str, Any]:
    """Inventory variables that switch the chat role to CloudWatch Logs, and the server to
    printing its figures there as embedded-metric lines (CloudWatch Metrics, no agent)."""
    if not log_group:
        return {}
    extra: dict[str, Any] = {
        "chat_log_driver": "awslogs",
        "chat_awslogs_group": log_group,
        "chat_awslogs_region": region,
    }
    if name:
        extra["chat_env"] = {"PYNET_METRICS_CLOUDWATCH": name}
    return extra


def _report(result: ec2.Launched, region: str, inventory_file: str | None) -> None:
    """Write the inventory entry and tell the operator where the host is and what comes next."""
    host = result.host
    if not host.public_ip:
        raise CloudError(
            f"{host.instance_id} runs but has no public IPv4 address: the default VPC's subnet "
            "does not assign one; enable auto-assign public IPv4 on it, then destroy and relaunch"
        )
    key_file = result.private_key_file
    known_hosts = pin_host_key(host, hosts_file.inventory_path(inventory_file))
    entry = hosts_file.Host(
        name=host.name,
        address=host.public_ip,
        user=host.ssh_user,
        key_file=str(key_file) if key_file else None,
        known_hosts=str(known_hosts) if known_hosts else None,
        extra={
            **_log_vars(result.log_group, region, host.name),
            **instance_vars(host.instance_id, region),  # for fab deploy --instance-connect
        },
    )
    with inventory_errors():
        path = hosts_file.upsert_host(entry, inventory_file)
    verb = "launched" if result.created else "already there"
    print(f"{host.name}: {verb}, {host.instance_id} ({host.instance_type}) in {region}")
    print(f"  address:   {host.public_ip}")
    print(f"  ssh user:  {host.ssh_user}")
    print(f"  ssh key:   {display(key_file)}")
    if known_hosts:
        print(f"  host key:  {fingerprint(host.host_key)} (pinned in {known_hosts})")
    if result.log_group:
        print(f"  logs:      CloudWatch Logs {result.log_group} in {region}")
    print(f"  inventory: {path} (group {hosts_file.GROUP})")
    custom = path != hosts_file.DEFAULT_PATH
    playbook = f"ansible-playbook{f' -i {path}' if custom else ''} playbooks/site.yml"
    print(f"next: {playbook}, then fab deploy{f' --inventory {path}' if custom else ''}")


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
        with inventory_errors():
            hosts_file.remove_host(name, inventory_file)
            unpin(known_hosts_beside(hosts_file.inventory_path(inventory_file)), name)
        print(f"nothing to destroy: no pynet resources named {name!r} in {clients.region}")
        return
    if not yes:
        confirm(name, clients.region, deployment.describe(), ask)
    ec2.destroy(clients, deployment, wait_timeout=wait_timeout, say=say)
    with inventory_errors():
        hosts_file.remove_host(name, inventory_file)
        unpin(known_hosts_beside(hosts_file.inventory_path(inventory_file)), name)
    print(f"{name}: destroyed in {clients.region}")


destroy = destroy_task(
    "destroy",
    "launch",
    "Terminate the host and delete its security group and key pair (asks first).",
    _destroy,
)


@task(help={"region": REGION_HELP})
def hosts(c: Context, region: str | None = None) -> None:
    """List our instances in the region with state, address and age."""
    with one_line_errors(interrupted=INTERRUPTED):
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
        print(columns(rows))
