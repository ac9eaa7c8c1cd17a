"""Every failure ends in one actionable sentence: moto where it can, event hooks where not."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from pynet.aws import ec2 as ec2_module
from pynet.aws.ec2 import LaunchSpec, delete_security_group, find_deployment, launch
from pynet.aws.errors import CloudError
from pynet.aws.keys import LocalKey
from pynet.aws.publicip import detect_ssh_cidr
from pynet.aws.session import Clients, connect
from pynet.tasks import cloud
from tests.aws.helpers import PUBLIC_KEY, SSH, answer_call, fail_call, moto_ami

KEY = LocalKey(PUBLIC_KEY, None)


def _spec(clients: Clients, name: str) -> LaunchSpec:
    return LaunchSpec(name=name, ssh_cidr=SSH, ami=moto_ami(clients))


@pytest.mark.parametrize(
    ("operation", "code", "expected"),
    [
        (
            "RunInstances",
            "UnauthorizedOperation",
            r"permission denied .* ec2:RunInstances .*"
            r"docs/aws.md",
        ),
        ("CreateSecurityGroup", "UnauthorizedOperation", r"ec2:CreateSecurityGroup"),
        ("DescribeInstances", "AccessDenied", r"permission denied while listing instances"),
        ("RunInstances", "InstanceLimitExceeded", r"instance limit reached in eu-central-1"),
        ("RunInstances", "VcpuLimitExceeded", r"Service Quotas"),
        ("RunInstances", "InsufficientInstanceCapacity", r"no capacity .* --instance-type"),
        ("DescribeInstances", "AuthFailure", r"AWS rejected the credentials"),
        ("RunInstances", "SomethingNew", r"AWS error while launching .*: SomethingNew: fake"),
    ],
)
def test_aws_refusals_become_one_sentence(
    clients: Clients, aws_env: Path, name: str, operation: str, code: str, expected: str
) -> None:
    fail_call(clients.ec2, operation, code)
    with pytest.raises(CloudError, match=expected) as caught:
        launch(clients, _spec(clients, name), KEY, home=aws_env)
    assert "\n" not in str(caught.value)


def test_unknown_ami_is_reported_by_moto(clients: Clients, aws_env: Path, name: str) -> None:
    spec = LaunchSpec(name=name, ssh_cidr=SSH, ami="ami-0123456789abcdef0")
    with pytest.raises(CloudError, match=r"AMI not found in eu-central-1 .*InvalidAMIID.NotFound"):
        launch(clients, spec, KEY, home=aws_env)


def test_waiter_timeout(clients: Clients, aws_env: Path, name: str) -> None:
    pending = {
        "Reservations": [{"Instances": [{"InstanceId": "i-1", "State": {"Name": "pending"}}]}]
    }
    answer_call(clients.ec2, "DescribeInstances", pending, after="RunInstances")
    started = time.monotonic()
    with pytest.raises(CloudError, match=r"is not running after 1 s \(last state: pending\)"):
        launch(clients, _spec(clients, name), KEY, home=aws_env, wait_timeout=1, poll=0.2)
    assert time.monotonic() - started < 5
    # The instance is tagged from birth: the next destroy finds it.
    assert len(find_deployment(clients, name).instances) == 1


def test_waiter_denied_while_waiting(clients: Clients, aws_env: Path, name: str) -> None:
    denied = {"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}
    answer_call(clients.ec2, "DescribeInstanceStatus", denied)
    with pytest.raises(CloudError, match="permission denied while waiting"):
        launch(clients, _spec(clients, name), KEY, home=aws_env, wait_timeout=1, poll=0.2)


def test_security_group_in_use_is_retried(clients: Clients) -> None:
    group = clients.ec2.create_security_group(GroupName="sg-retry", Description="d")["GroupId"]
    seen = fail_call(clients.ec2, "DeleteSecurityGroup", "DependencyViolation", times=3)
    sleeps: list[float] = []
    delete_security_group(clients.ec2, group, sleep=sleeps.append)
    assert len(seen) == 3
    assert sleeps == [2.0, 4.0, 8.0]
    assert not clients.ec2.describe_security_groups(
        Filters=[{"Name": "group-id", "Values": [group]}]
    )["SecurityGroups"]


def test_security_group_in_use_gives_up_clearly(clients: Clients) -> None:
    group = clients.ec2.create_security_group(GroupName="sg-stuck", Description="d")["GroupId"]
    fail_call(clients.ec2, "DeleteSecurityGroup", "DependencyViolation")
    sleeps: list[float] = []
    with pytest.raises(CloudError, match=r"still in use after 5 tries: run `fab destroy` again"):
        delete_security_group(clients.ec2, group, attempts=5, sleep=sleeps.append)
    assert sleeps == [2.0, 4.0, 8.0, 16.0]


def test_no_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(CloudError, match="no AWS region: pass --region"):
        connect()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-2")
    assert connect().region == "us-east-2"
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert connect().region == "eu-west-1"
    assert connect("ap-south-1").region == "ap-south-1"


def test_unknown_region() -> None:
    with pytest.raises(CloudError, match="unknown AWS region 'eu-middle-7'"):
        connect("eu-middle-7")


def test_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CloudError, match="no AWS credentials found"):
        connect()


def test_missing_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(CloudError, match=r"cannot set up AWS access: .*nope"):
        connect()


def test_detect_ip(checkip_url: str) -> None:
    assert detect_ssh_cidr(checkip_url) == "203.0.113.77/32"


def test_detect_ip_failure_names_the_flag() -> None:
    with pytest.raises(CloudError, match=r"cannot detect your public IP .* pass --ssh-cidr"):
        detect_ssh_cidr("http://127.0.0.1:9/", timeout=2)
    with pytest.raises(CloudError, match="must be an http"):
        detect_ssh_cidr("file:///etc/passwd")


# --- the fab tasks turn all of it into one line on stderr and exit status 1 ------------------


@pytest.fixture
def hooked(clients: Clients, monkeypatch: pytest.MonkeyPatch) -> Clients:
    """Make the tasks use these (hookable) clients instead of connecting themselves."""
    monkeypatch.setattr(cloud, "connect", lambda region=None: clients)
    monkeypatch.setattr(ec2_module, "SG_FIRST_DELAY", 0.01)
    monkeypatch.setattr(ec2_module, "SG_MAX_DELAY", 0.01)
    return clients


@dataclass(frozen=True)
class Refusal:
    """What a task said when it exited 1 (Exit.message is optional; here it must be set)."""

    message: str


def _exit_of(task: Callable[..., object], *args: object, **kwargs: object) -> Refusal:
    with pytest.raises(Exit) as caught:
        task(Context(), *args, **kwargs)
    assert caught.value.code == 1
    message = caught.value.message
    assert message is not None
    assert "\n" not in message
    assert message.startswith("error: ")
    return Refusal(message)


def test_task_permission_denied(hooked: Clients, name: str) -> None:
    fail_call(hooked.ec2, "RunInstances", "UnauthorizedOperation")
    error = _exit_of(cloud.launch, name, ssh_cidr=SSH, ami=moto_ami(hooked))
    assert "ec2:RunInstances" in error.message


def test_task_destroy_group_in_use(hooked: Clients, name: str, aws_env: Path) -> None:
    launch(hooked, _spec(hooked, name), KEY, home=aws_env)
    fail_call(hooked.ec2, "DeleteSecurityGroup", "DependencyViolation")
    error = _exit_of(cloud.destroy, name, yes=True)
    assert "still in use" in error.message


def test_task_refuses_ssh_from_the_world(hooked: Clients, name: str) -> None:
    error = _exit_of(cloud.launch, name, ssh_cidr="0.0.0.0/0")
    assert "--allow-ssh-from-anywhere" in error.message


def test_task_bad_name_and_os() -> None:
    assert "bad deployment name" in _exit_of(cloud.launch, "Bad_Name").message
    assert "unknown --os 'windows'" in _exit_of(cloud.launch, "ok", os="windows").message


def test_task_broken_inventory(hooked: Clients, name: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("all: [unclosed\n")
    error = _exit_of(cloud.launch, name, ssh_cidr=SSH, ami=moto_ami(hooked), inventory=str(broken))
    assert "cannot update the inventory" in error.message


def test_task_destroy_needs_a_terminal_or_yes(hooked: Clients, name: str, aws_env: Path) -> None:
    launch(hooked, _spec(hooked, name), KEY, home=aws_env)
    error = _exit_of(cloud.destroy, name)
    assert "pass --yes" in error.message
    assert len(find_deployment(hooked, name).instances) == 1
