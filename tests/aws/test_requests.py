"""The request builders are pure: test them as plain data."""

from __future__ import annotations

import pytest

from pynet.aws.errors import CloudError
from pynet.aws.requests import (
    DEBIAN_RELEASES,
    DEFAULT_OS,
    OS_TAG,
    SSH_USER_TAG,
    SSH_USERS,
    Rule,
    SshSource,
    architecture,
    chat_rules,
    check_label,
    check_name,
    create_key_pair_request,
    create_security_group_request,
    debian_images_request,
    host_cidr,
    import_key_pair_request,
    instance_filters,
    is_ssh,
    label_of_identity,
    launched_os,
    newest_image,
    permissions,
    root_volume_size,
    rules_of,
    run_instances_request,
    ssh_cidr,
    ssh_permission,
    ssh_sources,
    tag_value,
    tags,
    waiter_config,
)

IMAGE = {
    "ImageId": "ami-1",
    "RootDeviceName": "/dev/xvda",
    "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
}


def test_tags_name_app_and_deployment() -> None:
    assert tags("demo") == [
        {"Key": "Name", "Value": "pynet-demo"},
        {"Key": "pynet:app", "Value": "pynet"},
        {"Key": "pynet:deployment", "Value": "demo"},
    ]


@pytest.mark.parametrize("name", ["demo", "a", "prod-2", "x" * 32])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["Demo", "-x", "x-", "a_b", "x" * 33, "a b", "../x"])
def test_bad_names(name: str) -> None:
    with pytest.raises(CloudError, match="bad deployment name"):
        check_name(name)


def test_name_is_required() -> None:
    with pytest.raises(CloudError, match="--name is required"):
        check_name("")


def test_run_instances_request() -> None:
    request = run_instances_request(
        "demo",
        image=IMAGE,
        instance_type="t3.micro",
        key_name="pynet-demo",
        group_id="sg-1",
        ssh_user="admin",
        disk_gib=16,
        os_name="debian13",
    )
    assert request["MetadataOptions"] == {
        "HttpTokens": "required",
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": 1,
    }
    assert request["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/xvda",
            "Ebs": {
                "VolumeType": "gp3",
                "VolumeSize": 16,
                "Encrypted": True,
                "DeleteOnTermination": True,
            },
        }
    ]
    assert (request["MinCount"], request["MaxCount"]) == (1, 1)
    assert request["SecurityGroupIds"] == ["sg-1"]
    assert request["KeyName"] == "pynet-demo"
    assert request["CreditSpecification"] == {"CpuCredits": "standard"}
    specs = {spec["ResourceType"]: spec["Tags"] for spec in request["TagSpecifications"]}
    assert set(specs) == {"instance", "volume", "network-interface"}
    for resource_tags in specs.values():
        assert {"Key": "pynet:deployment", "Value": "demo"} in resource_tags
        assert {"Key": "pynet:app", "Value": "pynet"} in resource_tags
        assert {"Key": "Name", "Value": "pynet-demo"} in resource_tags
    assert {"Key": "pynet:ssh-user", "Value": "admin"} in specs["instance"]
    assert {"Key": "pynet:os", "Value": "debian13"} in specs["instance"]
    assert "ClientToken" not in request  # botocore fills a fresh one; moto ignores it anyway


def test_no_credit_spec_for_non_burstable() -> None:
    request = run_instances_request(
        "d",
        image=IMAGE,
        instance_type="m7g.large",
        key_name="k",
        group_id="g",
        ssh_user="admin",
        disk_gib=16,
    )
    assert "CreditSpecification" not in request


def test_root_volume_never_smaller_than_image() -> None:
    big = {**IMAGE, "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 30}}]}
    assert root_volume_size(big, 16) == 30
    assert root_volume_size(IMAGE, 16) == 16
    assert root_volume_size({"ImageId": "x"}, 12) == 12


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("t3.micro", "x86_64"),
        ("t4g.small", "arm64"),
        ("m7g.large", "arm64"),
        ("c6gn.xlarge", "arm64"),
        ("m6gd.large", "arm64"),
        ("im4gn.large", "arm64"),
        ("a1.medium", "arm64"),
        ("g5g.xlarge", "arm64"),
        ("g4dn.xlarge", "x86_64"),
        ("m7i-flex.large", "x86_64"),
        ("c7a.large", "x86_64"),
    ],
)
def test_architecture(instance_type: str, arch: str) -> None:
    assert architecture(instance_type) == arch


def test_debian_images_request() -> None:
    assert debian_images_request("arm64", "13") == {
        "Owners": ["136693071363"],
        "Filters": [
            {"Name": "name", "Values": ["debian-13-arm64-*"]},
            {"Name": "architecture", "Values": ["arm64"]},
            {"Name": "state", "Values": ["available"]},
        ],
    }
    assert debian_images_request("x86_64", "12")["Filters"][0]["Values"] == ["debian-12-amd64-*"]


def test_debian_13_is_the_default_os_and_every_debian_os_has_a_release() -> None:
    assert DEFAULT_OS == "debian13"
    assert SSH_USERS[DEFAULT_OS] == "admin"
    assert {name for name in SSH_USERS if name.startswith("debian")} == set(DEBIAN_RELEASES)


def test_the_launched_os_comes_from_its_tag_or_from_before_the_tag() -> None:
    def instance(**tags: str) -> dict[str, object]:
        return {"Tags": [{"Key": key, "Value": value} for key, value in tags.items()]}

    assert launched_os(instance(**{OS_TAG: "debian13", SSH_USER_TAG: "admin"})) == "debian13"
    assert launched_os(instance(**{OS_TAG: "debian12", SSH_USER_TAG: "admin"})) == "debian12"
    assert launched_os(instance(**{SSH_USER_TAG: "admin"})) == "debian12"  # launched before the tag
    assert launched_os(instance(**{SSH_USER_TAG: "ec2-user"})) == "al2023"
    assert launched_os(instance()) == ""


def test_newest_image() -> None:
    images = [
        {"ImageId": "a", "CreationDate": "2024-05-01T00:00:00.000Z"},
        {"ImageId": "b", "CreationDate": "2025-01-02T00:00:00.000Z"},
        {"ImageId": "c", "CreationDate": "2024-12-31T23:59:59.000Z"},
    ]
    assert newest_image(images) == images[1]
    assert newest_image([]) is None


def test_ssh_cidr_normalises_and_refuses_the_world() -> None:
    assert ssh_cidr("203.0.113.7") == "203.0.113.7/32"
    assert ssh_cidr(" 198.51.100.0/24 ") == "198.51.100.0/24"
    assert ssh_cidr("2001:db8::1") == "2001:db8::1/128"
    assert ssh_cidr("10.1.0.0/16") == "10.1.0.0/16"  # the widest accepted without the override
    assert ssh_cidr("2001:db8:1::/48") == "2001:db8:1::/48"
    for world in ("0.0.0.0/0", "::/0", "0.0.0.0/1", "10.0.0.0/15", "2001:db8::/47"):
        with pytest.raises(CloudError, match="--allow-ssh-from-anywhere"):
            ssh_cidr(world)
        assert ssh_cidr(world, allow_anywhere=True) == world


def test_ssh_cidr_refuses_host_bits_even_with_the_override() -> None:
    """`10.0.0.5/8` used to become 10.0.0.0/8 silently: a typo for /32 opened a whole network."""
    with pytest.raises(
        CloudError, match=r"host bits are set; write 10\.0\.0\.5/32 .* 10\.0\.0\.0/8"
    ):
        ssh_cidr("10.0.0.5/8", allow_anywhere=True)
    with pytest.raises(CloudError, match="host bits"):
        ssh_cidr("198.51.100.9/24")
    with pytest.raises(CloudError, match="host bits"):
        ssh_cidr("2001:db8::1/64")
    with pytest.raises(CloudError, match="bad --ssh-cidr"):
        ssh_cidr("my-laptop")


def test_host_cidr() -> None:
    assert host_cidr("203.0.113.7\n") == "203.0.113.7/32"
    assert host_cidr("2001:db8::5") == "2001:db8::5/128"
    with pytest.raises(ValueError, match="does not appear"):
        host_cidr("<html>")


def test_chat_rules_are_the_chat_port_from_all() -> None:
    assert chat_rules() == {
        Rule("tcp", 5050, 5050, "0.0.0.0/0"),
        Rule("tcp", 5050, 5050, "::/0"),
    }
    assert not any(is_ssh(rule) for rule in chat_rules())
    assert is_ssh(Rule("tcp", 22, 22, "203.0.113.7/32"))


def test_permissions_round_trip_through_rules() -> None:
    rules = chat_rules() | {Rule("tcp", 80, 80, "group:sg-9")}
    perms = permissions(rules)
    assert perms[0] == {
        "IpProtocol": "tcp",
        "FromPort": 80,
        "ToPort": 80,
        "UserIdGroupPairs": [{"GroupId": "sg-9"}],
    }
    assert {"CidrIpv6": "::/0", "Description": "chat clients"} in [
        r for p in perms for r in p.get("Ipv6Ranges", [])
    ]
    assert rules_of(perms) == rules


def test_ssh_rules_carry_their_owner_in_the_description() -> None:
    v4, v6 = SshSource("203.0.113.7/32", "ada"), SshSource("2001:db8::5/128", "github-actions")
    assert ssh_permission(v4) == {
        "IpProtocol": "tcp",
        "FromPort": 22,
        "ToPort": 22,
        "IpRanges": [{"CidrIp": "203.0.113.7/32", "Description": "pynet ssh: ada"}],
    }
    assert ssh_permission(v6)["Ipv6Ranges"] == [
        {"CidrIpv6": "2001:db8::5/128", "Description": "pynet ssh: github-actions"}
    ]
    legacy = {
        "IpProtocol": "tcp",
        "FromPort": 22,
        "ToPort": 22,
        "IpRanges": [{"CidrIp": "192.0.2.1/32", "Description": "ssh from the operator"}],
    }
    chat = permissions(chat_rules())
    assert ssh_sources([ssh_permission(v4), ssh_permission(v6), legacy, *chat]) == [
        SshSource("192.0.2.1/32", ""),
        v6,
        v4,
    ]
    assert str(SshSource("192.0.2.1/32", "")) == "192.0.2.1/32 (unlabelled)"


@pytest.mark.parametrize(
    ("arn", "label"),
    [
        ("arn:aws:iam::123456789012:user/ada", "ada"),
        ("arn:aws:sts::123456789012:assumed-role/Admin/ada@example.com", "ada@example.com"),
        ("arn:aws:sts::123456789012:assumed-role/Deploy/pynet deploy!", "pynet-deploy-"),
        ("arn:aws:iam::123456789012:root", "root"),
    ],
)
def test_the_default_label_is_the_name_in_the_callers_identity(arn: str, label: str) -> None:
    assert label_of_identity(arn) == label
    assert check_label(label) == label


@pytest.mark.parametrize("bad", ["", "   ", "x" * 65, "tab\there", "\u00e9milie", "a\nb"])
def test_a_label_aws_would_refuse_is_refused_first(bad: str) -> None:
    with pytest.raises(CloudError, match="bad --ssh-label"):
        check_label(bad)


def test_security_group_and_key_requests_are_tagged() -> None:
    group = create_security_group_request("demo", "vpc-1")
    assert group["GroupName"] == "pynet-demo"
    assert group["VpcId"] == "vpc-1"
    assert group["TagSpecifications"][0]["ResourceType"] == "security-group"
    imported = import_key_pair_request("demo", b"ssh-ed25519 AAAA")
    assert imported["KeyName"] == "pynet-demo"
    assert {"Key": "pynet:key-origin", "Value": "imported"} in imported["TagSpecifications"][0][
        "Tags"
    ]
    created = create_key_pair_request("demo")
    assert created["KeyType"] == "ed25519"
    assert {"Key": "pynet:key-origin", "Value": "created"} in created["TagSpecifications"][0][
        "Tags"
    ]


def test_instance_filters() -> None:
    assert instance_filters("demo", ("running",)) == [
        {"Name": "tag:pynet:app", "Values": ["pynet"]},
        {"Name": "tag:pynet:deployment", "Values": ["demo"]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]
    assert len(instance_filters(None, ("running",))) == 2


def test_tag_value() -> None:
    assert tag_value({"Tags": [{"Key": "a", "Value": "b"}]}, "a") == "b"
    assert tag_value({}, "a", "dflt") == "dflt"


def test_waiter_config() -> None:
    assert waiter_config(600, 5) == {"Delay": 5, "MaxAttempts": 120}
    assert waiter_config(1, 5) == {"Delay": 1, "MaxAttempts": 1}
    assert waiter_config(1, 0.25) == {"Delay": 0.25, "MaxAttempts": 4}
