"""`fab launch` refuses bad input before it creates anything: checked against moto_server."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from .helpers import REGION, Run, fab_many


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
