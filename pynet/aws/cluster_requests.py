"""Pure request builders for a cluster: N chat hosts, one Redis host, a Network Load Balancer.

Each host is an ordinary deployment of its own (`NAME-chat1`..`NAME-chatN`, `NAME-redis`),
launched by `pynet.aws.ec2.launch` with everything that brings (pinned host key, alarms, key
pair). What makes them a cluster is built here and tested as dicts:
- a `chat-peers` security group that every chat host also carries, with no rules of its own:
  it only names the chat hosts;
- a `redis-access` group that replaces the Redis host's own group: SSH from the operators (each
  source its own labelled rule, `pynet.aws.access`) and 6379 from the `chat-peers` group only
  (not from an address range, not from the internet);
- an internet-facing NLB, TCP 5050 to the chat hosts, with a TCP health check.
"""

from __future__ import annotations

import re
from typing import Any

from pynet.aws.errors import CloudError
from pynet.aws.requests import (
    CHAT_PORT,
    check_name,
    resource_name,
    tag_specifications,
    tags,
)

REDIS_PORT = 6379
CLUSTER_TAG = "pynet:cluster"
ROLE_TAG = "pynet:role"
MAX_NAME = 20  # so that pynet-NAME-chat (a target group name) stays within AWS's 32 characters
MAX_COUNT = 20


def check_cluster(name: str, count: int) -> str:
    """A cluster name short enough for every derived name, and a sane number of chat hosts."""
    check_name(name)
    if len(name) > MAX_NAME:
        raise CloudError(
            f"cluster name {name!r} is {len(name)} characters; use at most {MAX_NAME} "
            "(load balancer and host names are made from it)"
        )
    if not 1 <= count <= MAX_COUNT:
        raise CloudError(f"--count {count}: expected 1 to {MAX_COUNT} chat hosts")
    return name


def chat_host_names(name: str, count: int) -> list[str]:
    return [f"{name}-chat{i}" for i in range(1, count + 1)]


def redis_host_name(name: str) -> str:
    return f"{name}-redis"


def member_pattern(name: str) -> re.Pattern[str]:
    """Deployment names that belong to cluster NAME (what destroy looks for)."""
    return re.compile(rf"^{re.escape(name)}-(chat[1-9]\d*|redis)$")


def group_name(name: str, role: str) -> str:
    return f"{resource_name(name)}-{role}"


def _tags(name: str, role: str) -> dict[str, str]:
    return {CLUSTER_TAG: name, ROLE_TAG: role}


def chat_peers_group_request(name: str, vpc_id: str) -> dict[str, Any]:
    """The group that names the chat hosts (Redis admits it); no inbound rules of its own."""
    return {
        "GroupName": group_name(name, "chat-peers"),
        "Description": f"pynet cluster {name}: the chat hosts (admitted by its Redis host)",
        "VpcId": vpc_id,
        "TagSpecifications": tag_specifications(
            name, "security-group", **_tags(name, "chat-peers")
        ),
    }


def redis_access_group_request(name: str, vpc_id: str) -> dict[str, Any]:
    return {
        "GroupName": group_name(name, "redis-access"),
        "Description": f"pynet cluster {name}: Redis from its chat hosts, ssh from the operators",
        "VpcId": vpc_id,
        "TagSpecifications": tag_specifications(
            name, "security-group", **_tags(name, "redis-access")
        ),
    }


def redis_access_permissions(chat_peers_group_id: str) -> list[dict[str, Any]]:
    """6379 from the chat hosts' group only (SSH rules are the operators': pynet.aws.access)."""
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": REDIS_PORT,
            "ToPort": REDIS_PORT,
            "UserIdGroupPairs": [
                {"GroupId": chat_peers_group_id, "Description": "redis from the chat hosts"}
            ],
        },
    ]


def load_balancer_request(name: str, subnet_ids: list[str]) -> dict[str, Any]:
    """An internet-facing Network Load Balancer in the default VPC's subnets."""
    return {
        "Name": resource_name(name),
        "Type": "network",
        "Scheme": "internet-facing",
        "IpAddressType": "ipv4",
        "Subnets": sorted(subnet_ids),
        "Tags": tags(name, **_tags(name, "load-balancer")),
    }


def target_group_request(name: str, vpc_id: str) -> dict[str, Any]:
    """TCP 5050 to the chat instances; a TCP connect is the health check (what a client does)."""
    return {
        "Name": group_name(name, "chat"),
        "Protocol": "TCP",
        "Port": CHAT_PORT,
        "VpcId": vpc_id,
        "TargetType": "instance",
        "HealthCheckEnabled": True,
        "HealthCheckProtocol": "TCP",
        "HealthCheckPort": "traffic-port",
        "HealthCheckIntervalSeconds": 10,
        "HealthyThresholdCount": 2,
        "UnhealthyThresholdCount": 2,
        "Tags": tags(name, **_tags(name, "target-group")),
    }


def listener_request(load_balancer_arn: str, target_group_arn: str) -> dict[str, Any]:
    return {
        "LoadBalancerArn": load_balancer_arn,
        "Protocol": "TCP",
        "Port": CHAT_PORT,
        "DefaultActions": [{"Type": "forward", "TargetGroupArn": target_group_arn}],
    }


def register_targets_request(target_group_arn: str, instance_ids: list[str]) -> dict[str, Any]:
    return {
        "TargetGroupArn": target_group_arn,
        "Targets": [{"Id": i, "Port": CHAT_PORT} for i in sorted(instance_ids)],
    }
