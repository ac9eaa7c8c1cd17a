"""`fab launch` refuses bad input before it creates anything: checked against moto_server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from pynet.aws.ec2 import find_deployment
from pynet.aws.session import Clients
from pynet.tasks import cloud
from tests.aws.helpers import REGION, SSH, Run, fab_many, fail_call, moto_ami


def ec2_client(env: dict[str, str]) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=env["AWS_ENDPOINT_URL"])


def assert_nothing_created(env: dict[str, str]) -> None:
    """No instance, no security group of ours, no key pair: the account is as moto reset it."""
    ec2 = ec2_client(env)
    reservations = ec2.describe_instances()["Reservations"]
    assert [i for r in reservations for i in r["Instances"]] == []
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups if g["GroupName"] != "default"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []


def one_line(done: Run) -> str:
    assert done.code == 1, (done.out, done.err)
    assert "Traceback" not in done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    return lines[0]


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("0.0.0.0/1", "refusing to open SSH to 0.0.0.0/1 (wider than /16)"),
        ("10.0.0.0/8", "--allow-ssh-from-anywhere"),
        ("::/0", "the whole internet"),
        ("2001:db8::/32", "wider than /48"),
        ("10.0.0.5/8", "host bits are set; write 10.0.0.5/32"),
    ],
)
def test_wide_or_mistyped_ssh_cidr_creates_nothing(
    cli_env: dict[str, str], cidr: str, expected: str
) -> None:
    [done] = fab_many([("launch", "--name", "wide", "--ssh-cidr", cidr)], cli_env)
    assert expected in one_line(done)
    assert_nothing_created(cli_env)


def test_launch_checks_the_inventory_before_creating_anything(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A YAML list, a path under a file, a file that cannot be replaced: all fail before any
    AWS call creates something (as root, permissions stop nothing, so the blocks are real)."""
    listed = tmp_path / "list.yml"
    listed.write_text("- a\n- list\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    stuck = tmp_path / "stuck" / "hosts.yml"
    (tmp_path / "stuck" / "hosts.yml.partial").mkdir(parents=True)  # where the write goes first
    launch = ("launch", "--name", "inv", "--ssh-cidr", "203.0.113.7/32")
    results = fab_many(
        [
            (*launch, "--inventory", str(listed)),
            (*launch, "--inventory", str(blocker / "hosts.yml")),
            (*launch, "--inventory", str(stuck)),
        ],
        cli_env,
    )
    assert "is not an Ansible YAML inventory: the file is a list" in one_line(results[0])
    assert f"cannot read the inventory {blocker / 'hosts.yml'}: Not a directory" in one_line(
        results[1]
    )
    assert f"cannot write the inventory {stuck}: Is a directory" in one_line(results[2])
    assert listed.read_text() == "- a\n- list\n"  # left as it was
    assert_nothing_created(cli_env)


@pytest.fixture
def hooked(clients: Clients, monkeypatch: pytest.MonkeyPatch) -> Clients:
    """The tasks use these (hookable, in-process moto) clients instead of connecting."""
    monkeypatch.setattr(cloud, "connect", lambda region=None: clients)
    return clients


def test_failed_launch_names_what_it_left_and_how_to_remove_it(hooked: Clients, name: str) -> None:
    fail_call(hooked.ec2, "RunInstances", "InsufficientInstanceCapacity")
    with pytest.raises(Exit) as caught:
        cloud.launch(Context(), name, ssh_cidr=SSH, ami=moto_ami(hooked))
    message = str(caught.value.message)
    assert "\n" not in message
    group = find_deployment(hooked, name).security_groups[0]["GroupId"]
    assert f"left behind: security group {group}, key pair pynet-{name}" in message
    assert f"`fab destroy --name {name}` to remove them" in message


def test_failure_before_anything_exists_says_so(hooked: Clients, name: str) -> None:
    with pytest.raises(Exit) as caught:
        cloud.launch(Context(), name, ssh_cidr=SSH, ami="ami-0000000000deadbee")
    assert str(caught.value.message).endswith("; nothing was created")


def test_relaunch_names_the_options_that_did_not_apply(
    hooked: Clients, name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ami = moto_ami(hooked)
    cloud.launch(Context(), name, ssh_cidr=SSH, ami=ami, disk_gib=20)
    first = capsys.readouterr().out
    assert "did not apply" not in first
    assert "next: ansible-playbook" in first
    cloud.launch(Context(), name, ssh_cidr=SSH, ami=ami, disk_gib=20)  # same options: quiet
    assert "did not apply" not in capsys.readouterr().out
    other = tmp_path / "other.yml"
    cloud.launch(
        Context(),
        name,
        ssh_cidr=SSH,
        ami=ami,
        instance_type="t3.small",
        os="al2023",
        disk_gib=30,
        inventory=str(other),
    )
    out = capsys.readouterr().out
    [note] = [line for line in out.splitlines() if line.startswith("note:")]
    assert "--instance-type t3.small (it is t3.micro)" in note
    assert "--os al2023 (it runs debian13)" in note
    assert "--disk-gib 30 (it has 20 GiB)" in note
    assert f"`fab destroy --name {name}`" in note
    # the next step names the inventory the release tasks must read
    assert f"then fab deploy --inventory {other}" in out


@pytest.mark.parametrize(
    ("instance_type", "expected"),
    [
        ("t3.gigantic", "unknown --instance-type 't3.gigantic' in eu-central-1"),
        ("t4g.micro", "is x86_64 but t4g.micro runs arm64"),  # the --ami is an x86_64 image
    ],
)
def test_instance_type_is_checked_before_anything_is_created(
    hooked: Clients, name: str, instance_type: str, expected: str
) -> None:
    with pytest.raises(Exit) as caught:
        cloud.launch(
            Context(), name, ssh_cidr=SSH, ami=moto_ami(hooked), instance_type=instance_type
        )
    message = str(caught.value.message)
    assert expected in message
    assert message.endswith("; nothing was created")
    assert find_deployment(hooked, name).empty()
