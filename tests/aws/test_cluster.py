"""A cluster on moto: N chat hosts, one Redis host reachable only from them, an NLB; destroy."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
)

from pynet import hostkeys
from pynet import inventory as hosts_file
from pynet.aws import cluster
from pynet.aws import cluster_requests as req
from pynet.aws.ec2 import LaunchSpec, find_instances
from pynet.aws.errors import CloudError
from pynet.aws.keys import LocalKey
from pynet.aws.requests import LIVE_STATES, tag_value
from pynet.aws.session import Clients
from pynet.aws.userdata import HOST_KEY_TAG, host_key_of
from tests.aws.helpers import (
    PUBLIC_KEY,
    REGION,
    SSH,
    ec2_client,
    fab,
    instances,
    moto_ami,
    public_key,
)


def launch(clients: Clients, name: str, count: int, home: Path) -> cluster.ClusterLaunched:
    elbv2 = boto3.client("elbv2", region_name=REGION)
    spec = LaunchSpec(name=name, ssh_cidr=SSH, ami=moto_ami(clients), recovery=False)
    return cluster.launch(
        clients, elbv2, spec, count, LocalKey(PUBLIC_KEY, None), home=home, poll=0.01
    )


def handed_over_key(ec2: Any, instance_id: str) -> str:
    """The public host key an instance was given: the ed25519 pair in its user data (the public
    half derived from the private one), which must also be its HOST_KEY_TAG."""
    raw = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    pair = host_key_of(base64.b64decode(raw["UserData"]["Value"]).decode())
    assert pair is not None, f"{instance_id} got no host key in its user data"
    private = load_ssh_private_key(pair.private.encode(), None)
    assert isinstance(private, Ed25519PrivateKey)
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    assert public == pair.public
    [instance] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert tag_value(instance, HOST_KEY_TAG) == public
    return public


def test_request_builders() -> None:
    assert req.chat_host_names("c", 2) == ["c-chat1", "c-chat2"]
    [perm] = req.redis_access_permissions("sg-123")  # SSH rules: pynet.aws.access
    assert perm["FromPort"] == perm["ToPort"] == 6379
    assert perm["UserIdGroupPairs"][0]["GroupId"] == "sg-123"
    assert "IpRanges" not in perm  # never from an address range
    tg = req.target_group_request("c", "vpc-1")
    assert (tg["Protocol"], tg["Port"], tg["HealthCheckProtocol"]) == ("TCP", 5050, "TCP")
    lb = req.load_balancer_request("c", ["s2", "s1"])
    assert (lb["Type"], lb["Scheme"], lb["Subnets"]) == ("network", "internet-facing", ["s1", "s2"])
    assert req.member_pattern("c").match("c-chat12")
    assert not req.member_pattern("c").match("c-chat0")
    assert not req.member_pattern("c").match("cc-chat1")
    with pytest.raises(CloudError, match="at most 20"):
        req.check_cluster("a" * 21, 2)
    with pytest.raises(CloudError, match="--count 0"):
        req.check_cluster("c", 0)


def test_launch_makes_the_cluster_and_destroy_removes_all_of_it(
    clients: Clients, aws_env: Path, name: str
) -> None:
    name = name[:12]
    elbv2 = boto3.client("elbv2", region_name=REGION)
    result = launch(clients, name, 2, aws_env)
    assert len(result.chat) == 2
    assert result.endpoint.endswith(".elb.amazonaws.com")
    ec2 = clients.ec2
    groups = {
        g["GroupName"]: g
        for g in ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{req.CLUSTER_TAG}", "Values": [name]}]
        )["SecurityGroups"]
    }
    peers = groups[f"pynet-{name}-chat-peers"]
    access = groups[f"pynet-{name}-redis-access"]
    assert peers["IpPermissions"] == []
    redis_rules = [p for p in access["IpPermissions"] if p["FromPort"] == 6379]
    assert len(redis_rules) == 1
    assert redis_rules[0]["IpRanges"] == []
    assert redis_rules[0].get("Ipv6Ranges", []) == []
    assert [p["GroupId"] for p in redis_rules[0]["UserIdGroupPairs"]] == [peers["GroupId"]]
    # every chat host carries the peers group; the Redis host only the access group
    for launched in result.chat:
        instance = find_instances(ec2, launched.host.name, LIVE_STATES)[0]
        assert peers["GroupId"] in [g["GroupId"] for g in instance["SecurityGroups"]]
    redis = find_instances(ec2, f"{name}-redis", LIVE_STATES)[0]
    assert [g["GroupId"] for g in redis["SecurityGroups"]] == [access["GroupId"]]
    # the NLB forwards TCP 5050 to both chat hosts, checked by a TCP health check
    lb = elbv2.describe_load_balancers(Names=[f"pynet-{name}"])["LoadBalancers"][0]
    assert lb["Type"] == "network"
    listener = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"][0]
    assert (listener["Protocol"], listener["Port"]) == ("TCP", 5050)
    tg = elbv2.describe_target_groups(Names=[f"pynet-{name}-chat"])["TargetGroups"][0]
    assert tg["HealthCheckProtocol"] == "TCP"
    targets = elbv2.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])
    registered = {t["Target"]["Id"] for t in targets["TargetHealthDescriptions"]}
    assert registered == {c.host.instance_id for c in result.chat}
    # every host (chat and redis) got a host key of its own, like `fab launch` gives one host
    hosts = [*result.chat, result.redis]
    keys = {h.host.name: handed_over_key(ec2, h.host.instance_id) for h in hosts}
    assert keys == {h.host.name: h.host.host_key for h in hosts}
    assert len(set(keys.values())) == 3

    again = launch(clients, name, 2, aws_env)  # idempotent: nothing new
    assert {c.host.instance_id for c in again.chat} == registered
    assert not any(c.created for c in again.chat)
    assert not again.redis.created
    assert {h.host.name: h.host.host_key for h in [*again.chat, again.redis]} == keys  # from tags

    parts = cluster.find_cluster(clients, elbv2, name)
    assert [d.name for d in parts.deployments] == [
        f"{name}-chat1",
        f"{name}-chat2",
        f"{name}-redis",
    ]
    cluster.destroy(clients, elbv2, parts, home=aws_env, poll=0.01)
    assert cluster.find_cluster(clients, elbv2, name).empty()
    # destroy again: nothing left, nothing fails
    cluster.destroy(clients, elbv2, cluster.find_cluster(clients, elbv2, name), poll=0.01)


def test_fab_launch_cluster_writes_both_groups_and_destroy_cluster_clears_them(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"  # beside the inventory, as for `fab launch`
    other = f"203.0.113.9 {public_key().decode()} pynet:other"  # another deployment's pin
    known.write_text(other + "\n")
    args = ("--name", "cl", "--count", "2", "--ssh-cidr", SSH, "--wait-timeout", "60")
    first = fab("launch-cluster", *args, env=cli_env)
    assert first.code == 0, first.err + first.out
    assert ".elb.amazonaws.com:5050" in first.out
    chat = hosts_file.read_hosts(tmp_path / "hosts.yml")
    redis = hosts_file.read_hosts(tmp_path / "hosts.yml", hosts_file.REDIS_GROUP)
    assert sorted(h.name for h in chat) == ["cl-chat1", "cl-chat2"]
    assert [h.name for h in redis] == ["cl-redis"]
    # Every host's key: handed over in its user data, tagged, pinned beside the inventory, which
    # its inventory entry names (Ansible's UserKnownHostsFile, fab's strict check).
    ec2 = ec2_client(cli_env)
    pins = {}
    for host in [*chat, *redis]:
        [instance] = instances(cli_env, host.name)
        pins[host.name] = handed_over_key(ec2, instance["InstanceId"])
        assert f"{host.address} {pins[host.name]} pynet:{host.name}" in known.read_text()
        assert host.known_hosts == str(known)
        assert f"UserKnownHostsFile={known}" in host.to_vars()["ansible_ssh_common_args"]
        assert f"host key {hostkeys.fingerprint(pins[host.name])}" in first.out
    assert len(set(pins.values())) == 3  # one key per host
    assert known.read_text().splitlines()[0] == other
    assert "PRIVATE KEY" not in first.out + first.err

    # A relaunch re-pins from the tags: the same keys; a pin that differs is replaced, loudly.
    hostkeys.pin(known, "cl-chat1", chat[0].address, 22, public_key().decode())
    again = fab("launch-cluster", *args, env=cli_env)
    assert again.code == 0, again.err
    assert "not creating another" in again.out
    assert again.out.count("host key changed") == 1
    assert "warning: cl-chat1's host key changed" in again.out
    assert {n: hostkeys.pinned_key(known, n) for n in pins} == pins
    assert len(known.read_text().splitlines()) == 4

    # destroy-cluster unpins every member, also one no longer in the inventory
    hosts_file.remove_host("cl-redis", tmp_path / "hosts.yml", hosts_file.REDIS_GROUP)
    gone = fab("destroy-cluster", "--name", "cl", "--yes", env=cli_env)
    assert gone.code == 0, gone.err
    assert hosts_file.read_hosts(tmp_path / "hosts.yml") == []
    assert hosts_file.read_hosts(tmp_path / "hosts.yml", hosts_file.REDIS_GROUP) == []
    assert known.read_text() == other + "\n"
    noop = fab("destroy-cluster", "--name", "cl", "--yes", env=cli_env)
    assert noop.code == 0, noop.err
    assert "nothing to destroy" in noop.out
    bad = fab("launch-cluster", "--name", "x", "--count", "0", env=cli_env)
    assert bad.code != 0
    assert "count" in bad.err
    assert "Traceback" not in bad.err
