"""Launch, find and destroy against moto in-process (`mock_aws`)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from pynet.aws.ec2 import (
    LaunchSpec,
    destroy,
    find_deployment,
    find_instances,
    launch,
    list_hosts,
)
from pynet.aws.errors import CloudError
from pynet.aws.images import resolve_image
from pynet.aws.keys import LocalKey, find_local_key
from pynet.aws.requests import (
    DESTROYABLE_STATES,
    LIVE_STATES,
    SshSource,
    debian_images_request,
    rules_of,
    ssh_sources,
)
from pynet.aws.session import Clients
from tests.aws.helpers import PUBLIC_KEY, SSH, fail_call, moto_ami


def spec(clients: Clients, name: str, **kw: Any) -> LaunchSpec:
    return LaunchSpec(name=name, ssh_cidr=kw.pop("ssh_cidr", SSH), ami=moto_ami(clients), **kw)


def group_of(clients: Clients, name: str) -> dict:
    return find_deployment(clients, name).security_groups[0]


def test_launch_creates_a_tagged_locked_down_host(
    clients: Clients, aws_env: Path, name: str
) -> None:
    result = launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    assert result.created
    host = result.host
    assert host.state == "running"
    assert host.public_ip
    assert host.ssh_user == "admin"
    instance = clients.ec2.describe_instances(InstanceIds=[host.instance_id])["Reservations"][0][
        "Instances"
    ][0]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags.pop("pynet:ssh-host-key") == host.host_key  # pinned: tests/aws/test_operate.py
    assert tags == {
        "Name": f"pynet-{name}",
        "pynet:app": "pynet",
        "pynet:deployment": name,
        "pynet:ssh-user": "admin",
        "pynet:os": "debian13",
    }
    volumes = clients.ec2.describe_volumes(
        Filters=[{"Name": "tag:pynet:deployment", "Values": [name]}]
    )["Volumes"]
    assert len(volumes) == 1
    assert volumes[0]["Encrypted"]
    assert volumes[0]["VolumeType"] == "gp3"
    group = group_of(clients, name)
    assert {t["Key"]: t["Value"] for t in group["Tags"]}["pynet:deployment"] == name
    inbound = sorted(
        (p["FromPort"], r.get("CidrIp") or r.get("CidrIpv6"))
        for p in group["IpPermissions"]
        for r in p.get("IpRanges", []) + p.get("Ipv6Ranges", [])
    )
    assert inbound == [(22, SSH), (5050, "0.0.0.0/0"), (5050, "::/0")]
    key_pairs = find_deployment(clients, name).key_pairs
    assert [k["KeyName"] for k in key_pairs] == [f"pynet-{name}"]


def test_launch_twice_returns_the_same_instance(clients: Clients, aws_env: Path, name: str) -> None:
    first = launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    second = launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    assert not second.created
    assert second.host.instance_id == first.host.instance_id
    assert len(find_instances(clients.ec2, name, LIVE_STATES)) == 1
    assert len(find_deployment(clients, name).security_groups) == 1


def test_relaunch_moves_only_the_callers_ssh_rule(
    clients: Clients, aws_env: Path, name: str
) -> None:
    """A teammate's relaunch adds their source and keeps ours; our own relaunch from a new
    address moves our rule (no pile-up), and stray non-SSH rules still go."""
    key = LocalKey(PUBLIC_KEY, None)
    launch(clients, spec(clients, name, ssh_label="ada"), key, home=aws_env)
    group_id = group_of(clients, name)["GroupId"]
    clients.ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 80,
                "ToPort": 80,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    launch(clients, spec(clients, name, ssh_cidr="198.51.100.4/32", ssh_label="bob"), key)
    assert ssh_sources(group_of(clients, name)["IpPermissions"]) == [
        SshSource("198.51.100.4/32", "bob"),
        SshSource(SSH, "ada"),
    ]
    launch(clients, spec(clients, name, ssh_cidr="192.0.2.9/32", ssh_label="ada"), key)
    permissions = group_of(clients, name)["IpPermissions"]
    assert ssh_sources(permissions) == [
        SshSource("192.0.2.9/32", "ada"),
        SshSource("198.51.100.4/32", "bob"),
    ]
    assert {r.from_port for r in rules_of(permissions)} == {22, 5050}  # port 80 went


def test_launch_starts_a_stopped_instance(clients: Clients, aws_env: Path, name: str) -> None:
    first = launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    clients.ec2.stop_instances(InstanceIds=[first.host.instance_id])
    again = launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    assert again.host.instance_id == first.host.instance_id
    assert again.host.state == "running"


def test_deployments_are_kept_apart(clients: Clients, aws_env: Path, name: str) -> None:
    one, two = f"{name}-1", f"{name}-2"
    launch(clients, spec(clients, one), LocalKey(PUBLIC_KEY, None), home=aws_env)
    launch(clients, spec(clients, two), LocalKey(PUBLIC_KEY, None), home=aws_env)
    assert {one, two} <= {h.name for h in list_hosts(clients)}
    destroy(clients, find_deployment(clients, one), home=aws_env)
    names = {h.name for h in list_hosts(clients)}
    assert one not in names
    assert two in names


def test_without_a_local_key_aws_makes_one_saved_0600(
    clients: Clients, aws_env: Path, name: str
) -> None:
    local = find_local_key(home=aws_env)
    assert local == LocalKey(None, None)
    result = launch(clients, spec(clients, name), local, home=aws_env)
    pem = aws_env / ".ssh" / f"pynet-{name}.pem"
    assert result.private_key_file == pem
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_text().startswith("-----BEGIN")
    destroy(clients, find_deployment(clients, name), home=aws_env)
    assert not pem.exists()


def test_default_public_key_is_found(aws_env: Path) -> None:
    ssh = aws_env / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa.pub").write_bytes(b"ssh-rsa AAAAB3 me\n")
    (ssh / "id_ed25519.pub").write_bytes(PUBLIC_KEY + b"\n")
    (ssh / "id_ed25519").write_text("private")
    assert find_local_key(home=aws_env) == LocalKey(PUBLIC_KEY, ssh / "id_ed25519")
    assert find_local_key(str(ssh / "id_rsa.pub"), aws_env).public_key == b"ssh-rsa AAAAB3 me"
    assert find_local_key(str(ssh / "id_ed25519"), aws_env).public_key == PUBLIC_KEY


def test_bad_key_file(aws_env: Path) -> None:
    with pytest.raises(CloudError, match="cannot read public key"):
        find_local_key(str(aws_env / "missing.pub"))
    bad = aws_env / "bad.pub"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(CloudError, match="not an OpenSSH public key"):
        find_local_key(str(bad))


def test_half_failed_launch_leaves_only_tagged_things(
    clients: Clients, aws_env: Path, name: str
) -> None:
    fail_call(clients.ec2, "RunInstances", "InsufficientInstanceCapacity", times=1)
    with pytest.raises(CloudError, match="no capacity"):
        launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    leftovers = find_deployment(clients, name)
    assert not leftovers.instances
    assert len(leftovers.security_groups) == 1
    assert len(leftovers.key_pairs) == 1
    # The next launch reuses the group and replaces the key pair: still one of each.
    launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    again = find_deployment(clients, name)
    assert (len(again.instances), len(again.security_groups), len(again.key_pairs)) == (1, 1, 1)
    destroy(clients, again, home=aws_env)
    assert find_deployment(clients, name).empty()


def test_destroy_removes_everything(clients: Clients, aws_env: Path, name: str) -> None:
    result = launch(clients, spec(clients, name), LocalKey(PUBLIC_KEY, None), home=aws_env)
    deployment = find_deployment(clients, name)
    assert "security group" in deployment.describe()
    destroy(clients, deployment, home=aws_env)
    assert find_deployment(clients, name).empty()
    assert not find_instances(clients.ec2, name, DESTROYABLE_STATES)
    state = clients.ec2.describe_instances(InstanceIds=[result.host.instance_id])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"


def test_al2023_image_comes_from_ssm(clients: Clients) -> None:
    image = resolve_image(
        clients.ec2,
        clients.ssm,
        os_name="al2023",
        instance_type="t3.micro",
        ami=None,
        region=clients.region,
    )
    assert image["Name"].startswith("al2023-ami-")
    assert image["Architecture"] == "x86_64"
    arm = resolve_image(
        clients.ec2,
        clients.ssm,
        os_name="al2023",
        instance_type="t4g.micro",
        ami=None,
        region=clients.region,
    )
    assert arm["Architecture"] == "arm64"


@pytest.mark.parametrize(("os_name", "release"), [("debian13", "13"), ("debian12", "12")])
def test_debian_lookup_picks_the_newest_image(clients: Clients, os_name: str, release: str) -> None:
    """moto holds no Debian images: stub the calls the way real AWS answers them."""
    images = [
        {"ImageId": "ami-old", "CreationDate": "2024-01-01T00:00:00.000Z"},
        {"ImageId": "ami-new", "CreationDate": "2025-06-01T00:00:00.000Z"},
    ]
    described = {"ImageId": "ami-new", "Architecture": "arm64", "RootDeviceName": "/dev/xvda"}
    with Stubber(clients.ec2) as stub:
        request = debian_images_request("arm64", release)
        stub.add_response("describe_images", {"Images": images}, request)
        stub.add_response("describe_images", {"Images": [described]}, {"ImageIds": ["ami-new"]})
        image = resolve_image(
            clients.ec2,
            clients.ssm,
            os_name=os_name,
            instance_type="t4g.small",
            ami=None,
            region=clients.region,
        )
    assert image == described


def test_no_debian_image_says_pass_ami(clients: Clients) -> None:
    with Stubber(clients.ec2) as stub:
        stub.add_response("describe_images", {"Images": []}, debian_images_request("x86_64", "12"))
        with pytest.raises(CloudError, match=r"no Debian 12 x86_64 image .* pass --ami"):
            resolve_image(
                clients.ec2,
                clients.ssm,
                os_name="debian12",
                instance_type="t3.micro",
                ami=None,
                region=clients.region,
            )


def test_ami_of_the_wrong_architecture(clients: Clients) -> None:
    with pytest.raises(CloudError, match="runs arm64"):
        resolve_image(
            clients.ec2,
            clients.ssm,
            os_name="debian12",
            instance_type="t4g.micro",
            ami=moto_ami(clients),
            region=clients.region,
        )
