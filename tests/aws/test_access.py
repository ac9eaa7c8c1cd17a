"""Several operators (and the CI job) SSH in, each through a rule of their own (pynet.aws.access).

In-process moto for the rule logic, moto_server for the real `fab launch` / `fab allow-ssh`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pynet.aws import access
from pynet.aws.cluster_requests import redis_access_group_request
from pynet.aws.ec2 import default_vpc
from pynet.aws.errors import CloudError
from pynet.aws.requests import (
    SshSource,
    create_security_group_request,
    ssh_permission,
    ssh_sources,
)
from pynet.aws.session import Clients
from tests.aws.helpers import REGION, ec2_client, fab, fab_many, one_line_error

ADA, BOB = SshSource("203.0.113.7/32", "ada"), SshSource("198.51.100.4/32", "bob")


def _group(ec2: Any, group_id: str) -> dict[str, Any]:
    return ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]


@pytest.fixture
def group_id(clients: Clients, name: str) -> str:
    request = create_security_group_request(name, default_vpc(clients.ec2, REGION))
    return str(clients.ec2.create_security_group(**request)["GroupId"])


def test_each_label_owns_its_rule(clients: Clients, group_id: str) -> None:
    ec2 = clients.ec2
    assert access.allow(ec2, _group(ec2, group_id), ADA) == [f"added {ADA}"]
    assert access.allow(ec2, _group(ec2, group_id), BOB) == [f"added {BOB}"]
    assert access.allow(ec2, _group(ec2, group_id), ADA) == []  # already there: no call
    moved = SshSource("192.0.2.9/32", "ada")
    assert access.allow(ec2, _group(ec2, group_id), moved) == [f"removed {ADA}", f"added {moved}"]
    assert ssh_sources(_group(ec2, group_id)["IpPermissions"]) == [moved, BOB]
    # One rule per source in AWS: bob adding ada's address relabels it (ada keeps access).
    relabelled = SshSource("192.0.2.9/32", "bob")
    access.allow(ec2, _group(ec2, group_id), relabelled)
    assert ssh_sources(_group(ec2, group_id)["IpPermissions"]) == [relabelled]


def test_remove_takes_one_source_or_one_label(clients: Clients, group_id: str) -> None:
    ec2 = clients.ec2
    ci = SshSource("192.0.2.50/32", "github-actions")
    ec2.authorize_security_group_ingress(
        GroupId=group_id, IpPermissions=[ssh_permission(s) for s in (ADA, BOB, ci)]
    )
    assert access.remove(ec2, _group(ec2, group_id), cidr=None, label="github-actions") == [
        f"removed {ci}"
    ]
    assert access.remove(ec2, _group(ec2, group_id), cidr=BOB.cidr, label=None) == [
        f"removed {BOB}"
    ]
    assert access.remove(ec2, _group(ec2, group_id), cidr=None, label="nobody") == []
    assert ssh_sources(_group(ec2, group_id)["IpPermissions"]) == [ADA]


def test_ssh_groups_of_a_host_and_of_a_cluster(clients: Clients, name: str) -> None:
    """A deployment's own group; for a cluster, its members' groups and the Redis access group
    (not the chat-peers group, which has no rules, nor another deployment's)."""
    ec2, vpc = clients.ec2, default_vpc(clients.ec2, REGION)
    made = {}
    for deployment in (name, f"{name}-chat1", f"{name}-redis", f"{name}x"):
        request = create_security_group_request(deployment, vpc)
        made[deployment] = ec2.create_security_group(**request)["GroupId"]
    redis = ec2.create_security_group(**redis_access_group_request(name, vpc))["GroupId"]
    found = {g["GroupId"] for g in access.ssh_groups(ec2, name, REGION)}
    assert found == {made[name], made[f"{name}-chat1"], made[f"{name}-redis"], redis}
    with pytest.raises(CloudError, match="no pynet security group for 'absent'"):
        access.ssh_groups(ec2, "absent", REGION)


def test_the_default_label_is_the_callers_identity(clients: Clients) -> None:
    assert access.operator_label(clients.sts) == "moto"  # moto's caller: user/moto
    assert access.operator_label(clients.sts, "ada") == "ada"
    with pytest.raises(CloudError, match="bad --ssh-label"):
        access.operator_label(clients.sts, "ada\tx")


def _sources(env: dict[str, str], name: str) -> list[SshSource]:
    ec2 = ec2_client(env)
    [group] = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"pynet-{name}"]}]
    )["SecurityGroups"]
    return ssh_sources(group["IpPermissions"])


def test_teammates_launch_and_allow_ssh_without_locking_each_other_out(
    cli_env: dict[str, str], checkip_url: str, tmp_path: Path
) -> None:
    launch = ("launch", "--name", "team", "--no-recovery")
    ada = fab(*launch, "--ssh-cidr", ADA.cidr, "--ssh-label", "ada", env=cli_env)
    assert ada.code == 0, ada.err
    assert f"ssh from {ADA}" in ada.out
    # Bob relaunches (his own inventory): Ada keeps her rule.
    bob_env = {**cli_env, "PYNET_INVENTORY": str(tmp_path / "bob.yml")}
    bob = fab(*launch, "--ssh-cidr", BOB.cidr, "--ssh-label", "bob", env=bob_env)
    assert bob.code == 0, bob.err
    assert _sources(cli_env, "team") == [BOB, ADA]
    # No label given: the caller's AWS identity names the rule; no cidr: the detected address.
    me = fab("allow-ssh", "--name", "team", env={**cli_env, "PYNET_CHECKIP_URL": checkip_url})
    assert me.code == 0, me.err
    mine = SshSource("203.0.113.77/32", "moto")
    assert f"pynet-team: added {mine}" in me.out
    assert f"ssh from {BOB}, {ADA}, {mine}" in me.out
    removed, listed = fab_many(
        [
            ("allow-ssh", "--name", "team", "--ssh-cidr", BOB.cidr, "--remove"),
            ("allow-ssh", "--name", "team", "--list"),
        ],
        cli_env,
    )
    assert removed.code == 0, removed.err
    assert f"pynet-team: removed {BOB}" in removed.out
    assert listed.code == 0, listed.err
    assert "pynet-team (sg-" in listed.out
    gone = fab("allow-ssh", "--name", "team", "--ssh-label", "ada", "--remove", env=cli_env)
    assert gone.code == 0, gone.err
    assert _sources(cli_env, "team") == [mine]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--name", "team", "--ssh-cidr", "0.0.0.0/0"), "refusing to open SSH to 0.0.0.0/0"),
        (("--name", "team", "--ssh-cidr", "10.0.0.5/8"), "host bits are set"),
        (("--name", "team", "--ssh-label", "é"), "bad --ssh-label 'é'"),
        (
            (
                "--name",
                "Bad_Name",
            ),
            "bad deployment name",
        ),
        (("--name", "nothing-here", "--list"), "no pynet security group for 'nothing-here'"),
    ],
)
def test_allow_ssh_refuses_bad_input_in_one_line(
    cli_env: dict[str, str], args: tuple[str, ...], expected: str
) -> None:
    if "nothing-here" not in args:
        ec2 = ec2_client(cli_env)
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        ec2.create_security_group(**create_security_group_request("team", vpc))
    done = fab("allow-ssh", *args, env=cli_env)
    assert expected in one_line_error(done)
