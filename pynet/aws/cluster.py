"""Launch and tear down a cluster: N chat hosts, one Redis host, a Network Load Balancer.

Each host is launched by `pynet.aws.ec2.launch` as a deployment of its own, so it gets what a
single host gets (pinned host key, recovery alarms, IMDSv2, encrypted disk) and re-running is
safe; requests are built in `pynet.aws.cluster_requests`; everything is found again by name
and tag, so launch and destroy can be repeated and pick up where they stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pynet.aws import access, ec2
from pynet.aws import cluster_requests as req
from pynet.aws.errors import CloudError, code_of, explain, explained
from pynet.aws.keys import LocalKey
from pynet.aws.requests import (
    APP,
    APP_TAG,
    DEPLOYMENT_TAG,
    SSH_PORT,
    SshSource,
    resource_name,
)
from pynet.aws.session import Clients

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    """Say nothing."""


@dataclass(frozen=True)
class ClusterLaunched:
    chat: list[ec2.Launched]
    redis: ec2.Launched
    endpoint: str  # the load balancer's DNS name


@dataclass
class ClusterParts:
    """What destroy finds for one cluster name."""

    name: str
    deployments: list[ec2.Deployment]
    load_balancers: list[dict[str, Any]]
    target_groups: list[dict[str, Any]]
    groups: list[dict[str, Any]]

    def empty(self) -> bool:
        return not (
            any(not d.empty() for d in self.deployments)
            or self.load_balancers
            or self.target_groups
            or self.groups
        )

    def describe(self) -> str:
        parts = [f"{d.name}: {d.describe()}" for d in self.deployments if not d.empty()]
        parts += [f"load balancer {lb['LoadBalancerName']}" for lb in self.load_balancers]
        parts += [f"target group {tg['TargetGroupName']}" for tg in self.target_groups]
        parts += [f"security group {g['GroupName']}" for g in self.groups]
        return "; ".join(parts)


# --- launching --------------------------------------------------------------------------------


def launch(
    clients: Clients,
    elbv2: Any,
    spec: ec2.LaunchSpec,
    count: int,
    local_key: LocalKey,
    *,
    home: Path | None = None,
    wait_timeout: float = 600.0,
    poll: float = 5.0,
    say: Say = _quiet,
) -> ClusterLaunched:
    """The cluster named `spec.name`: its groups, hosts and load balancer (only what is missing)."""
    name, region = req.check_cluster(spec.name, count), clients.region
    vpc = ec2.default_vpc(clients.ec2, region)
    peers = _ensure_group(clients.ec2, req.chat_peers_group_request(name, vpc), region)
    redis_access = _ensure_group(clients.ec2, req.redis_access_group_request(name, vpc), region)
    ssh = SshSource(spec.ssh_cidr, spec.ssh_label)
    _ensure_access_rules(clients.ec2, redis_access, peers, ssh, region)
    say(f"security groups: {peers} (chat hosts), {redis_access} (redis: 6379 from {peers} only)")
    chat = []
    for host_name in req.chat_host_names(name, count):
        say(f"--- chat host {host_name}")
        launched = ec2.launch(
            clients,
            dataclasses.replace(spec, name=host_name),
            local_key,
            home=home,
            wait_timeout=wait_timeout,
            poll=poll,
            say=say,
        )
        _add_group(clients.ec2, launched.host.instance_id, peers, region)
        chat.append(launched)
    say(f"--- redis host {req.redis_host_name(name)}")
    redis = ec2.launch(
        clients,
        dataclasses.replace(spec, name=req.redis_host_name(name), eip=False, cloudwatch_logs=False),
        local_key,
        home=home,
        wait_timeout=wait_timeout,
        poll=poll,
        say=say,
    )
    _only_group(clients.ec2, redis.host.instance_id, redis_access, region)
    endpoint = _ensure_load_balancer(
        clients.ec2, elbv2, name, vpc, [c.host.instance_id for c in chat], region, say
    )
    return ClusterLaunched(chat, redis, endpoint)


def _ensure_group(ec2_client: Any, request: dict[str, Any], region: str) -> str:
    """A security group by name (created with its tags if missing); returns its id."""
    with explained(f"looking up security group {request['GroupName']}", region):
        found = ec2_client.describe_security_groups(
            Filters=[
                {"Name": "group-name", "Values": [request["GroupName"]]},
                {"Name": "vpc-id", "Values": [request["VpcId"]]},
            ]
        )["SecurityGroups"]
    if found:
        return str(found[0]["GroupId"])
    with explained(f"creating security group {request['GroupName']}", region):
        return str(ec2_client.create_security_group(**request)["GroupId"])


def _ensure_access_rules(
    ec2_client: Any, group_id: str, peers: str, ssh: SshSource, region: str
) -> None:
    """Exactly the Redis rule besides SSH: revoke whatever else the group allows, add what is
    missing; SSH from SSH's source, other operators' sources kept (pynet.aws.access)."""
    wanted = req.redis_access_permissions(peers)
    with explained(f"updating the rules of {group_id}", region):
        group = ec2_client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
        current = [p for p in group.get("IpPermissions", []) if p.get("FromPort") != SSH_PORT]
        if _flat(current) != _flat(wanted):
            if current:
                ec2_client.revoke_security_group_ingress(GroupId=group_id, IpPermissions=current)
            ec2_client.authorize_security_group_ingress(GroupId=group_id, IpPermissions=wanted)
    access.allow(ec2_client, group, ssh, region)


def _flat(permissions: list[dict[str, Any]]) -> set[tuple[str, int, int, str]]:
    flat: set[tuple[str, int, int, str]] = set()
    for perm in permissions:
        key = (str(perm["IpProtocol"]), int(perm.get("FromPort", -1)), int(perm.get("ToPort", -1)))
        sources = [r["CidrIp"] for r in perm.get("IpRanges", [])]
        sources += [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
        sources += [p["GroupId"] for p in perm.get("UserIdGroupPairs", [])]
        flat.update((*key, source) for source in sources)
    return flat


def _groups_of(ec2_client: Any, instance_id: str, region: str) -> list[str]:
    with explained(f"describing {instance_id}", region):
        instance = ec2_client.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"
        ][0]
    return [g["GroupId"] for g in instance.get("SecurityGroups", [])]


def _add_group(ec2_client: Any, instance_id: str, group_id: str, region: str) -> None:
    groups = _groups_of(ec2_client, instance_id, region)
    if group_id not in groups:
        with explained(f"adding {group_id} to {instance_id}", region):
            ec2_client.modify_instance_attribute(InstanceId=instance_id, Groups=[*groups, group_id])


def _only_group(ec2_client: Any, instance_id: str, group_id: str, region: str) -> None:
    """The Redis host keeps only the access group: its own opens the chat port to all."""
    if _groups_of(ec2_client, instance_id, region) != [group_id]:
        with explained(f"setting the security group of {instance_id}", region):
            ec2_client.modify_instance_attribute(InstanceId=instance_id, Groups=[group_id])


def _default_subnets(ec2_client: Any, region: str) -> list[str]:
    with explained("listing the default VPC's subnets", region):
        subnets = ec2_client.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
    if not subnets:
        raise CloudError(f"the default VPC in {region} has no default subnets for the NLB")
    return [s["SubnetId"] for s in subnets]


def _ensure_load_balancer(
    ec2_client: Any,
    elbv2: Any,
    name: str,
    vpc: str,
    instance_ids: list[str],
    region: str,
    say: Say,
) -> str:
    lbs = find_load_balancers(elbv2, name, region)
    if lbs:
        lb = lbs[0]
    else:
        request = req.load_balancer_request(name, _default_subnets(ec2_client, region))
        with explained("creating the network load balancer", region):
            lb = elbv2.create_load_balancer(**request)["LoadBalancers"][0]
    tgs = find_target_groups(elbv2, name, region)
    if tgs:
        tg = tgs[0]
    else:
        with explained("creating the target group", region):
            tg = elbv2.create_target_group(**req.target_group_request(name, vpc))["TargetGroups"][0]
    with explained("setting up the load balancer's listener", region):
        listeners = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
        if not listeners:
            elbv2.create_listener(
                **req.listener_request(lb["LoadBalancerArn"], tg["TargetGroupArn"])
            )
        elbv2.register_targets(**req.register_targets_request(tg["TargetGroupArn"], instance_ids))
    say(f"load balancer {lb['DNSName']}: TCP {req.CHAT_PORT} to {len(instance_ids)} chat hosts")
    return str(lb["DNSName"])


def find_load_balancers(elbv2: Any, name: str, region: str = "") -> list[dict[str, Any]]:
    try:
        found = elbv2.describe_load_balancers(Names=[resource_name(name)])["LoadBalancers"]
    except ClientError as err:
        if code_of(err) == "LoadBalancerNotFound":
            return []
        raise explain(err, "listing load balancers", region) from err
    return [lb for lb in found if _ours(elbv2, lb["LoadBalancerArn"], name)]


def find_target_groups(elbv2: Any, name: str, region: str = "") -> list[dict[str, Any]]:
    try:
        found = elbv2.describe_target_groups(Names=[req.group_name(name, "chat")])["TargetGroups"]
    except ClientError as err:
        if code_of(err) == "TargetGroupNotFound":
            return []
        raise explain(err, "listing target groups", region) from err
    return [tg for tg in found if _ours(elbv2, tg["TargetGroupArn"], name)]


def _ours(elbv2: Any, arn: str, name: str) -> bool:
    described = elbv2.describe_tags(ResourceArns=[arn])["TagDescriptions"]
    tags = {t["Key"]: t["Value"] for d in described for t in d.get("Tags", [])}
    return tags.get(APP_TAG) == APP and tags.get(DEPLOYMENT_TAG) == name


# --- destroying -------------------------------------------------------------------------------


def find_cluster(clients: Clients, elbv2: Any, name: str) -> ClusterParts:
    """Every member deployment, the load balancer, target group and cluster groups of NAME."""
    pattern = req.member_pattern(name)
    names = {h.name for h in ec2.list_hosts(clients) if pattern.match(h.name)}
    with explained("listing security groups", clients.region):
        groups = clients.ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{APP_TAG}", "Values": [APP]}]
        )["SecurityGroups"]
    for group in groups:
        deployment = _tag(group, DEPLOYMENT_TAG)
        if pattern.match(deployment):
            names.add(deployment)
    cluster_groups = [g for g in groups if _tag(g, req.CLUSTER_TAG) == name]
    return ClusterParts(
        name=name,
        deployments=[ec2.find_deployment(clients, n) for n in sorted(names)],
        load_balancers=find_load_balancers(elbv2, name, clients.region),
        target_groups=find_target_groups(elbv2, name, clients.region),
        groups=cluster_groups,
    )


def _tag(resource: dict[str, Any], key: str) -> str:
    for tag in resource.get("Tags") or []:
        if tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return ""


def destroy(
    clients: Clients,
    elbv2: Any,
    parts: ClusterParts,
    *,
    home: Path | None = None,
    wait_timeout: float = 600.0,
    poll: float = 5.0,
    say: Say = _quiet,
) -> None:
    """Load balancer first (it points at the hosts), then every host, then the cluster groups."""
    region = clients.region
    for lb in parts.load_balancers:
        with explained(f"deleting load balancer {lb['LoadBalancerName']}", region):
            elbv2.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
        say(f"deleted load balancer {lb['LoadBalancerName']}")
    for tg in parts.target_groups:
        _delete_target_group(elbv2, tg, region, poll)
        say(f"deleted target group {tg['TargetGroupName']}")
    for deployment in parts.deployments:
        if not deployment.empty():
            ec2.destroy(
                clients, deployment, home=home, wait_timeout=wait_timeout, poll=poll, say=say
            )
    # redis-access refers to chat-peers: delete it first.
    for group in sorted(parts.groups, key=lambda g: _tag(g, req.ROLE_TAG) != "redis-access"):
        ec2.delete_security_group(clients.ec2, group["GroupId"], region=region, say=say)
        say(f"deleted security group {group['GroupName']}")


def _delete_target_group(elbv2: Any, tg: dict[str, Any], region: str, poll: float) -> None:
    """A target group stays "in use" for a moment after its load balancer is deleted."""
    for attempt in range(12):
        try:
            elbv2.delete_target_group(TargetGroupArn=tg["TargetGroupArn"])
            return
        except ClientError as err:
            if code_of(err) == "TargetGroupNotFound":
                return
            if code_of(err) != "ResourceInUse" or attempt == 11:
                raise explain(
                    err, f"deleting target group {tg['TargetGroupName']}", region
                ) from err
            time.sleep(poll)
