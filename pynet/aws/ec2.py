"""Launch, find and tear down the chat host. Clients are passed in; every request is built in
`pynet.aws.requests`; everything is found again by tag, so each step can be re-run safely.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from pynet.aws import access, address, logs, recovery
from pynet.aws.errors import CloudError, code_of, explain, explained
from pynet.aws.images import resolve_image
from pynet.aws.instance import (
    GONE_STATES,
    client_token,
    launch_nonce,
    rotate_nonce,
    with_launch_extras,
)
from pynet.aws.keys import (
    LocalKey,
    created_key_file,
    delete_key_pair,
    ensure_key_pair,
    find_key_pairs,
)
from pynet.aws.requests import (
    DEFAULT_OS,
    DEPLOYMENT_TAG,
    DESTROYABLE_STATES,
    LIVE_STATES,
    SSH_USER_TAG,
    SSH_USERS,
    SshSource,
    chat_rules,
    create_security_group_request,
    deployment_filters,
    instance_filters,
    is_ssh,
    permissions,
    resource_name,
    rules_of,
    run_instances_request,
    tag_value,
    waiter_config,
)
from pynet.aws.session import Clients
from pynet.aws.userdata import HOST_KEY_TAG, user_data
from pynet.hostkeys import HostKeyPair

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default progress sink: say nothing."""


@dataclass(frozen=True)
class Ec2Host:
    """What the operator needs to know about one of our instances."""

    name: str
    instance_id: str
    state: str
    instance_type: str
    public_ip: str | None
    ssh_user: str
    key_name: str | None
    launch_time: datetime | None
    host_key: str = ""  # the public SSH host key pinned at launch (instance tag)

    @classmethod
    def from_instance(cls, instance: dict[str, Any]) -> Ec2Host:
        """Summarise a DescribeInstances/RunInstances instance dict."""
        return cls(
            name=tag_value(instance, DEPLOYMENT_TAG),
            instance_id=instance["InstanceId"],
            state=instance["State"]["Name"],
            instance_type=instance.get("InstanceType", ""),
            public_ip=instance.get("PublicIpAddress"),
            ssh_user=tag_value(instance, SSH_USER_TAG, SSH_USERS["debian12"]),
            key_name=instance.get("KeyName"),
            launch_time=instance.get("LaunchTime"),
            host_key=tag_value(instance, HOST_KEY_TAG),
        )


@dataclass(frozen=True)
class LaunchSpec:
    """What `fab launch` was asked for."""

    name: str
    ssh_cidr: str
    ssh_label: str = "operator"  # whose SSH rule ssh_cidr is (pynet.aws.access)
    instance_type: str = "t3.micro"
    os_name: str = DEFAULT_OS
    ami: str | None = None
    disk_gib: int = 16
    recovery: bool = True  # CloudWatch alarms: recover (system check), reboot (instance check)
    alarm_topic: str | None = None  # an SNS topic ARN the alarms also notify
    eip: bool = False  # an Elastic IP, so the address survives a stop and start
    cloudwatch_logs: bool = False  # log group + instance profile for Docker's awslogs driver
    log_retention_days: int = 30
    connections_alarm: int = 0  # minutes without an accepted connection that raise an alarm


@dataclass(frozen=True)
class Launched:
    """The outcome of a launch: the host, whether we created it, the key to SSH with."""

    host: Ec2Host
    created: bool
    private_key_file: Path | None
    log_group: str | None = None


@dataclass
class Deployment:
    """Everything tagged with one deployment name."""

    name: str
    instances: list[dict[str, Any]] = field(default_factory=list)
    security_groups: list[dict[str, Any]] = field(default_factory=list)
    key_pairs: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    addresses: list[dict[str, Any]] = field(default_factory=list)
    logging: list[str] = field(default_factory=list)  # log group, instance profile, role

    def empty(self) -> bool:
        """True when there is nothing to destroy."""
        return not (
            self.instances
            or self.security_groups
            or self.key_pairs
            or self.alarms
            or self.addresses
            or self.logging
        )

    def describe(self) -> str:
        """One line listing what would be deleted."""
        parts = [f"instance {i['InstanceId']} ({i['State']['Name']})" for i in self.instances]
        parts += [f"security group {g['GroupId']}" for g in self.security_groups]
        parts += [f"key pair {k['KeyName']}" for k in self.key_pairs]
        parts += [f"alarm {a}" for a in self.alarms]
        parts += [f"Elastic IP {a['PublicIp']}" for a in self.addresses]
        parts += self.logging
        return ", ".join(parts)


# --- finding ----------------------------------------------------------------------------------


def find_instances(
    ec2: Any, name: str | None, states: tuple[str, ...], region: str = ""
) -> list[dict[str, Any]]:
    """Our instances (of one deployment, or all) in the given states, oldest first."""
    found = []
    with explained("listing instances", region):
        for page in ec2.get_paginator("describe_instances").paginate(
            Filters=instance_filters(name, states)
        ):
            for reservation in page["Reservations"]:
                found.extend(reservation["Instances"])
    return sorted(found, key=lambda i: (i.get("LaunchTime") or datetime.max, i["InstanceId"]))


def find_security_groups(ec2: Any, name: str, region: str = "") -> list[dict[str, Any]]:
    """The security groups of one deployment."""
    with explained("listing security groups", region):
        return ec2.describe_security_groups(Filters=deployment_filters(name))["SecurityGroups"]


def find_deployment(clients: Clients, name: str) -> Deployment:
    """Everything of deployment `name` that destroy has to remove."""
    return Deployment(
        name=name,
        instances=find_instances(clients.ec2, name, DESTROYABLE_STATES, clients.region),
        security_groups=find_security_groups(clients.ec2, name, clients.region),
        key_pairs=find_key_pairs(clients.ec2, name, clients.region),
        alarms=recovery.find_alarms(clients.cloudwatch, name, clients.region)
        if clients.cloudwatch is not None
        else [],
        addresses=address.find_addresses(clients.ec2, name, clients.region),
        logging=logs.find_logging(clients.iam, clients.logs, name, clients.region)
        if clients.iam is not None and clients.logs is not None
        else [],
    )


def list_hosts(clients: Clients) -> list[Ec2Host]:
    """All our instances in the region that are not terminated."""
    instances = find_instances(clients.ec2, None, DESTROYABLE_STATES, clients.region)
    return [Ec2Host.from_instance(i) for i in instances]


# --- launching --------------------------------------------------------------------------------


def default_vpc(ec2: Any, region: str) -> str:
    """The default VPC's id: the host lives there, with a public address from its subnets."""
    with explained("looking up the default VPC", region):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudError(
            f"no default VPC in {region}: create one (`aws ec2 create-default-vpc`) or use "
            "another --region"
        )
    return vpcs[0]["VpcId"]


def ensure_security_group(ec2: Any, name: str, ssh: SshSource, region: str = "") -> str:
    """Our security group: the chat port open, SSH from SSH (its label's only source) and from
    whatever other operators added; any other rule is removed. Returns its id."""
    groups = find_security_groups(ec2, name, region)
    if groups:
        group = groups[0]
    else:
        request = create_security_group_request(name, default_vpc(ec2, region))
        duplicate = {
            "InvalidGroup.Duplicate": f"a security group named {resource_name(name)} exists in "
            f"{region} without pynet tags: delete or rename it, or choose another --name"
        }
        with explained("creating the security group", region, duplicate):
            group_id = ec2.create_security_group(**request)["GroupId"]
        group = {"GroupId": group_id, "IpPermissions": []}
    current = {r for r in rules_of(group.get("IpPermissions", [])) if not is_ssh(r)}
    wanted = chat_rules()
    group_id = group["GroupId"]
    with explained(f"updating the rules of security group {group_id}", region):
        if current - wanted:
            ec2.revoke_security_group_ingress(
                GroupId=group_id, IpPermissions=permissions(current - wanted)
            )
        if wanted - current:
            ec2.authorize_security_group_ingress(
                GroupId=group_id, IpPermissions=permissions(wanted - current)
            )
    access.allow(ec2, group, ssh, region)
    return group_id


def _describe(ec2: Any, instance_id: str, region: str) -> dict[str, Any]:
    with explained(f"describing {instance_id}", region):
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]


def _wait(
    ec2: Any, waiter: str, instance_id: str, what: str, timeout: float, poll: float, region: str
) -> None:
    """Run one boto3 waiter; a timeout becomes one sentence with the last state seen."""
    try:
        ec2.get_waiter(waiter).wait(
            InstanceIds=[instance_id], WaiterConfig=waiter_config(timeout, poll)
        )
    except WaiterError as err:
        last = err.last_response or {}
        if "Error" in last:  # the waiter's call itself failed, e.g. permission denied
            raise explain(
                ClientError(last, "DescribeInstances"), f"waiting for {instance_id}", region
            ) from err
        raise CloudError(
            f"{instance_id} is not {what} after {timeout:.0f} s ({_last_state(last)}): raise "
            "--wait-timeout and run the same command again, or check the EC2 console"
        ) from err


def _last_state(response: dict[str, Any]) -> str:
    for reservation in response.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            return f"last state: {instance['State']['Name']}"
    for status in response.get("InstanceStatuses", []):
        return f"status checks: {status.get('InstanceStatus', {}).get('Status', 'unknown')}"
    return "no status yet"


def wait_ready(
    clients: Clients, instance_id: str, *, timeout: float, poll: float = 5.0, say: Say = _quiet
) -> dict[str, Any]:
    """Wait until the instance runs and passes its status checks; return it described."""
    deadline = time.monotonic() + timeout
    say(f"waiting for {instance_id} to run (up to {timeout:.0f} s)")
    _wait(clients.ec2, "instance_running", instance_id, "running", timeout, poll, clients.region)
    say(f"waiting for {instance_id} to pass status checks")
    remaining = max(1.0, deadline - time.monotonic())
    _wait(
        clients.ec2,
        "instance_status_ok",
        instance_id,
        "passing status checks",
        remaining,
        poll,
        clients.region,
    )
    return _describe(clients.ec2, instance_id, clients.region)


def _start_if_stopped(
    clients: Clients, instance: dict[str, Any], timeout: float, poll: float, say: Say
) -> None:
    state, instance_id = instance["State"]["Name"], instance["InstanceId"]
    if state not in ("stopping", "stopped"):
        return
    if state == "stopping":
        say(f"{instance_id} is stopping; waiting for it to stop before starting it again")
        _wait(
            clients.ec2, "instance_stopped", instance_id, "stopped", timeout, poll, clients.region
        )
    say(f"starting the stopped instance {instance_id}")
    with explained(f"starting {instance_id}", clients.region):
        clients.ec2.start_instances(InstanceIds=[instance_id])


def launch(
    clients: Clients,
    spec: LaunchSpec,
    local_key: LocalKey,
    *,
    home: Path | None = None,
    wait_timeout: float = 600.0,
    poll: float = 5.0,
    say: Say = _quiet,
) -> Launched:
    """Return the deployment's instance, creating it (and its group and key) only if none lives."""
    ec2, region = clients.ec2, clients.region
    existing = find_instances(ec2, spec.name, LIVE_STATES, region)
    if existing:
        _ensure_group(ec2, spec, region, say)  # keeps the SSH rule on the current source
        instance = existing[0]
        if len(existing) > 1:
            others = ", ".join(i["InstanceId"] for i in existing[1:])
            say(f"warning: {spec.name} has several instances; using the oldest (also {others})")
        say(f"found {instance['InstanceId']} ({instance['State']['Name']}); not creating another")
        _start_if_stopped(clients, instance, wait_timeout, poll, say)
        group = _ensure_logging(clients, spec, say)
        if group:
            _attach_profile(clients, spec, instance)
        ready = wait_ready(
            clients, instance["InstanceId"], timeout=wait_timeout, poll=poll, say=say
        )
        return Launched(
            _operate(clients, spec, ready, say),
            False,
            _existing_key_file(spec, local_key, home),
            group,
        )
    check_instance_type(ec2, spec.instance_type, region)  # RunInstances would say it too late
    if spec.recovery:
        recovery.check_recoverable(ec2, spec.instance_type, region)
    image = resolve_image(
        ec2,
        clients.ssm,
        os_name=spec.os_name,
        instance_type=spec.instance_type,
        ami=spec.ami,
        region=region,
    )
    say(f"image {image['ImageId']} ({image.get('Name', 'unnamed')})")
    key_name, private_key_file = ensure_key_pair(ec2, spec.name, local_key, home, region)
    group_id = _ensure_group(ec2, spec, region, say)
    request = run_instances_request(
        spec.name,
        image=image,
        instance_type=spec.instance_type,
        key_name=key_name,
        group_id=group_id,
        ssh_user=SSH_USERS[spec.os_name],
        os_name=spec.os_name,
        disk_gib=spec.disk_gib,
    )
    group = _ensure_logging(clients, spec, say)
    profile = (
        logs.ensure_instance_profile(clients.iam, clients.sts, spec.name, region) if group else None
    )
    instance, created = _run_instance(clients, spec, request, group_id, profile, poll, say)
    if created:
        say(f"launched {instance['InstanceId']} with an SSH host key made here")
    ready = wait_ready(clients, instance["InstanceId"], timeout=wait_timeout, poll=poll, say=say)
    return Launched(_operate(clients, spec, ready, say), created, private_key_file, group)


#: RunInstances retries while a new instance profile propagates through IAM (about a minute).
PROFILE_ATTEMPTS = 8


def _run_instance(
    clients: Clients,
    spec: LaunchSpec,
    request: dict[str, Any],
    group_id: str,
    profile_arn: str | None,
    poll: float,
    say: Say,
) -> tuple[dict[str, Any], bool]:
    """RunInstances with a host key and a ClientToken; (instance, False) if another launch won."""
    ec2, region = clients.ec2, clients.region
    host_key = HostKeyPair.generate()  # in memory only: the private half goes to cloud-init
    nonce = launch_nonce(ec2, group_id, region)
    rotated = False
    for attempt in range(1, PROFILE_ATTEMPTS + 1):
        full = with_launch_extras(
            request,
            user_data=user_data(host_key),
            host_public_key=host_key.public,
            client_token=client_token(spec.name, nonce),
            instance_profile_arn=profile_arn,
        )
        try:
            instance = ec2.run_instances(**full)["Instances"][0]
        except ClientError as err:
            message = str(err.response.get("Error", {}).get("Message", ""))
            if code_of(err) == "IdempotentParameterMismatch":
                say("another launch of this name created the instance at the same moment; using it")
                return _adopt(clients, spec.name, poll), False
            propagating = "iam" in message.lower() and code_of(err) == "InvalidParameterValue"
            if propagating and profile_arn and attempt < PROFILE_ATTEMPTS:
                say("the new instance profile is not visible to EC2 yet; retrying")
                time.sleep(min(2.0**attempt, 10.0) * poll / 5.0)
                continue
            raise explain(err, f"launching a {spec.instance_type} instance", region) from err
        if instance["State"]["Name"] in GONE_STATES and not rotated:
            say(
                f"the launch token belongs to {instance['InstanceId']}, terminated since; new token"
            )
            nonce, rotated = rotate_nonce(ec2, group_id, region), True
            continue
        return instance, True
    raise CloudError(f"could not launch {spec.name}: the instance profile never became usable")


def _adopt(clients: Clients, name: str, poll: float, attempts: int = 12) -> dict[str, Any]:
    """The instance a simultaneous launch created (it may take a moment to be listed)."""
    for _ in range(attempts):
        found = find_instances(clients.ec2, name, LIVE_STATES, clients.region)
        if found:
            return found[0]
        time.sleep(poll)
    raise CloudError(
        f"another launch of {name} holds the launch token but its instance is not listed yet: "
        "run the same command again in a minute"
    )


def _ensure_logging(clients: Clients, spec: LaunchSpec, say: Say) -> str | None:
    """The log group (and the instance profile's prerequisites) for --cloudwatch-logs."""
    if not spec.cloudwatch_logs:
        return None
    group = logs.ensure_log_group(clients.logs, spec.name, spec.log_retention_days, clients.region)
    say(f"log group {group} (retention {spec.log_retention_days} days)")
    return group


def _attach_profile(clients: Clients, spec: LaunchSpec, instance: dict[str, Any]) -> None:
    """Give an existing instance the logging profile if it has none."""
    profile = logs.ensure_instance_profile(clients.iam, clients.sts, spec.name, clients.region)
    if instance.get("IamInstanceProfile"):
        return
    with explained(f"attaching the instance profile to {instance['InstanceId']}", clients.region):
        clients.ec2.associate_iam_instance_profile(
            IamInstanceProfile={"Arn": profile}, InstanceId=instance["InstanceId"]
        )


def _operate(clients: Clients, spec: LaunchSpec, instance: dict[str, Any], say: Say) -> Ec2Host:
    """What keeps the host reachable and alive: recovery alarms and the Elastic IP."""
    host = Ec2Host.from_instance(instance)
    if spec.recovery:
        recovery.ensure_alarms(
            clients.cloudwatch, spec.name, host.instance_id, clients.region, spec.alarm_topic
        )
        say(
            f"alarms {', '.join(recovery.alarm_names(spec.name))}: recover on a failed system "
            "check, reboot on a failed instance check"
        )
    if spec.connections_alarm:
        alarm = recovery.ensure_idle_alarm(
            clients.cloudwatch, spec.name, spec.connections_alarm, clients.region, spec.alarm_topic
        )
        say(f"alarm {alarm}: no connection accepted for {spec.connections_alarm} minutes")
    if spec.eip:
        eip = address.ensure_address(clients.ec2, spec.name, host.instance_id, clients.region)
        say(f"Elastic IP {eip['PublicIp']} on {host.instance_id}")
        host = dataclasses.replace(host, public_ip=eip["PublicIp"])
    return host


def check_instance_type(ec2: Any, instance_type: str, region: str) -> None:
    """Refuse a type AWS does not offer while nothing exists yet: RunInstances would say so only
    after the key pair and security group were made. (images.py matches the CPU to the image.)"""
    unknown = (
        f"unknown --instance-type {instance_type!r} in {region}: see `aws ec2 "
        "describe-instance-types` or the EC2 console for the types offered"
    )
    with explained(
        f"checking --instance-type {instance_type}", region, known={"InvalidInstanceType": unknown}
    ):
        found = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    if not found:
        raise CloudError(unknown)


def _ensure_group(ec2: Any, spec: LaunchSpec, region: str, say: Say) -> str:
    source = SshSource(spec.ssh_cidr, spec.ssh_label)
    group_id = ensure_security_group(ec2, spec.name, source, region)
    say(f"security group {group_id}: ssh from {source} (other operators' kept), chat port open")
    return group_id


def _existing_key_file(spec: LaunchSpec, local_key: LocalKey, home: Path | None) -> Path | None:
    """The key to SSH into an instance we did not create now: ours if AWS made one, else yours."""
    pem = created_key_file(spec.name, home)
    return pem if pem.exists() else local_key.private_key_file


# --- destroying -------------------------------------------------------------------------------


#: Retries while a deleted instance's network interface still holds the group: ~2 min in all.
SG_DELETE_ATTEMPTS = 8
SG_FIRST_DELAY = 2.0
SG_MAX_DELAY = 30.0


def delete_security_group(
    ec2: Any,
    group_id: str,
    *,
    region: str = "",
    attempts: int | None = None,
    sleep: Callable[[float], None] | None = None,
    say: Say = _quiet,
) -> None:
    """Delete a group, retrying with backoff while AWS still sees it in use."""
    attempts = attempts or SG_DELETE_ATTEMPTS
    sleep = sleep or time.sleep
    delay = SG_FIRST_DELAY
    for attempt in range(1, attempts + 1):
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except ClientError as err:
            if code_of(err) == "InvalidGroup.NotFound":
                return
            if code_of(err) != "DependencyViolation":
                raise explain(err, f"deleting security group {group_id}", region) from err
            if attempt == attempts:
                raise CloudError(
                    f"security group {group_id} is still in use after {attempts} tries: "
                    "run `fab destroy` again in a few minutes (an instance or network interface "
                    "still uses it)"
                ) from err
            say(f"security group {group_id} still in use; retrying in {delay:.0f} s")
            sleep(delay)
            delay = min(delay * 2, SG_MAX_DELAY)


def destroy(
    clients: Clients,
    deployment: Deployment,
    *,
    home: Path | None = None,
    wait_timeout: float = 600.0,
    poll: float = 5.0,
    say: Say = _quiet,
) -> None:
    """Terminate the instances, wait until they are gone, then delete the group and key pair."""
    ec2, region = clients.ec2, clients.region
    ids = [i["InstanceId"] for i in deployment.instances]
    if ids:
        with explained(f"terminating {', '.join(ids)}", region):
            ec2.terminate_instances(InstanceIds=ids)
        say(f"terminating {', '.join(ids)}; waiting until terminated")
        for instance_id in ids:
            _wait(ec2, "instance_terminated", instance_id, "terminated", wait_timeout, poll, region)
    if deployment.alarms:
        recovery.delete_alarms(clients.cloudwatch, deployment.alarms, region)
        say(f"deleted alarms {', '.join(deployment.alarms)}")
    if deployment.addresses:  # described again: terminating disassociated them
        address.release_addresses(ec2, address.find_addresses(ec2, deployment.name, region), region)
        say(f"released Elastic IP {', '.join(a['PublicIp'] for a in deployment.addresses)}")
    if deployment.logging:
        logs.delete_logging(clients.iam, clients.logs, deployment.name, region)
        say(f"deleted {', '.join(deployment.logging)}")
    for group in deployment.security_groups:
        delete_security_group(ec2, group["GroupId"], region=region, say=say)
        say(f"deleted security group {group['GroupId']}")
    for key_pair in deployment.key_pairs:
        delete_key_pair(ec2, key_pair, home, region)
        say(f"deleted key pair {key_pair['KeyName']}")
