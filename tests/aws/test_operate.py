"""Recovery alarms, Elastic IP, CloudWatch Logs, the host key hand-over and one-instance launches.

Builders are checked as data; the rest against moto in-process. moto stores alarms but never
fires their actions, and ignores ClientToken: these tests check what is set up and torn down,
and drive the token paths by making RunInstances answer as EC2 would.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from pynet import hostkeys, inventory
from pynet.aws import address, instance, logs, recovery
from pynet.aws.ec2 import LaunchSpec, destroy, find_deployment, find_instances, launch
from pynet.aws.errors import CloudError
from pynet.aws.keys import LocalKey
from pynet.aws.requests import LIVE_STATES, run_instances_request
from pynet.aws.session import Clients
from pynet.aws.userdata import HOST_KEY_TAG, parse_user_data
from tests.aws.helpers import REGION, fab, fail_call, public_key

# --- builders as data -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "prefix"),
    [
        ("eu-central-1", "arn:aws:automate:eu-central-1:ec2:"),
        ("cn-north-1", "arn:aws-cn:automate:cn-north-1:ec2:"),
        ("us-gov-west-1", "arn:aws-us-gov:automate:us-gov-west-1:ec2:"),
    ],
)
def test_alarm_requests(region: str, prefix: str) -> None:
    system, status = recovery.alarm_requests("demo", "i-0abc", region)
    common = {
        "Namespace": "AWS/EC2",
        "Dimensions": [{"Name": "InstanceId", "Value": "i-0abc"}],
        "Statistic": "Maximum",
        "Period": 60,
        "EvaluationPeriods": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
    }
    assert system.items() >= {**common, "MetricName": "StatusCheckFailed_System"}.items()
    assert status.items() >= {**common, "MetricName": "StatusCheckFailed_Instance"}.items()
    assert system["AlarmActions"] == [prefix + "recover"]
    assert status["AlarmActions"] == [prefix + "reboot"]
    assert system["AlarmName"] == "pynet-demo-recover"
    assert {"Key": "pynet:deployment", "Value": "demo"} in system["Tags"]


def test_alarm_topic_is_added_and_checked() -> None:
    topic = f"arn:aws:sns:{REGION}:123456789012:alerts"
    for request in recovery.alarm_requests(
        "demo", "i-1", REGION, recovery.check_topic(topic, REGION)
    ):
        assert request["AlarmActions"][1:] == [topic]
    with pytest.raises(CloudError, match=r"bad --alarm-topic .*SNS topic ARN in eu-central-1"):
        recovery.check_topic("arn:aws:sns:us-east-1:123456789012:alerts", REGION)
    with pytest.raises(CloudError, match=r"bad --alarm-topic"):
        recovery.check_topic("alerts", REGION)


def test_logs_policy_allows_only_the_group() -> None:
    group = logs.log_group_arn(REGION, "123456789012", "/pynet/demo")
    assert group == "arn:aws:logs:eu-central-1:123456789012:log-group:/pynet/demo"
    [statement] = logs.logs_policy(group)["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"] == [group, f"{group}:log-stream:*"]
    [trust] = logs.assume_role_policy(REGION)["Statement"]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    with pytest.raises(CloudError, match=r"bad --log-retention-days 10: CloudWatch Logs accepts"):
        logs.check_retention(10)


def test_launch_extras_and_client_token() -> None:
    image = {"ImageId": "ami-1", "RootDeviceName": "/dev/xvda"}
    base = run_instances_request(
        "demo",
        image=image,
        instance_type="t3.micro",
        key_name="k",
        group_id="sg-1",
        ssh_user="admin",
        disk_gib=8,
    )
    token = instance.client_token("demo", "sg-1")
    assert token == instance.client_token("demo", "sg-1")  # both racing launches agree
    assert token != instance.client_token("demo", "sg-2")  # a relaunch after destroy does not
    assert token != instance.client_token("other", "sg-1")
    assert len(token) <= 64
    extended = instance.with_launch_extras(
        base,
        user_data="#cloud-config\n",
        host_public_key="ssh-ed25519 AAAA",
        client_token=token,
        instance_profile_arn="arn:aws:iam::1:instance-profile/p",
    )
    assert extended["ClientToken"] == token
    assert extended["UserData"] == "#cloud-config\n"
    assert extended["IamInstanceProfile"] == {"Arn": "arn:aws:iam::1:instance-profile/p"}
    [tags] = [s["Tags"] for s in extended["TagSpecifications"] if s["ResourceType"] == "instance"]
    assert {"Key": HOST_KEY_TAG, "Value": "ssh-ed25519 AAAA"} in tags
    assert "ClientToken" not in base  # the base request is not changed
    assert address.allocate_request("demo")["TagSpecifications"][0]["ResourceType"] == "elastic-ip"


# --- against moto -----------------------------------------------------------------------------


def _ami(clients: Clients) -> str:
    name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    return clients.ssm.get_parameter(Name=name)["Parameter"]["Value"]


def _spec(clients: Clients, name: str, **kw: Any) -> LaunchSpec:
    return LaunchSpec(name=name, ssh_cidr="203.0.113.7/32", ami=_ami(clients), **kw)


def _launch(clients: Clients, spec: LaunchSpec, home: Path) -> Any:
    return launch(clients, spec, LocalKey(public_key(), None), home=home, poll=0.01)


def _described(clients: Clients, instance_id: str) -> dict[str, Any]:
    reply = clients.ec2.describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]


def test_launch_sets_up_recovery_eip_logs_and_destroy_removes_them(
    clients: Clients, aws_env: Path, name: str
) -> None:
    topic = f"arn:aws:sns:{REGION}:123456789012:alerts"
    spec = _spec(clients, name, eip=True, cloudwatch_logs=True, alarm_topic=topic)
    result = _launch(clients, spec, aws_env)
    host = result.host
    assert result.created

    # The host key: the tag holds the public half of the key cloud-init installs.
    raw = clients.ec2.describe_instance_attribute(InstanceId=host.instance_id, Attribute="userData")
    config = parse_user_data(base64.b64decode(raw["UserData"]["Value"]).decode())
    assert config["ssh_keys"]["ed25519_public"] == host.host_key
    assert config["ssh_genkeytypes"] == []
    assert host.host_key.startswith("ssh-ed25519 ")

    # Alarms: metric, dimensions, threshold and region-correct actions.
    alarms = clients.cloudwatch.describe_alarms(AlarmNames=recovery.alarm_names(name))
    by_metric = {a["MetricName"]: a for a in alarms["MetricAlarms"]}
    assert set(by_metric) == {"StatusCheckFailed_System", "StatusCheckFailed_Instance"}
    for metric, action in (
        ("StatusCheckFailed_System", "recover"),
        ("StatusCheckFailed_Instance", "reboot"),
    ):
        alarm = by_metric[metric]
        assert alarm["Dimensions"] == [{"Name": "InstanceId", "Value": host.instance_id}]
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (
            1.0,
            "GreaterThanOrEqualToThreshold",
        )
        assert (alarm["Period"], alarm["EvaluationPeriods"]) == (60, 2)
        assert alarm["AlarmActions"] == [f"arn:aws:automate:{REGION}:ec2:{action}", topic]

    # The Elastic IP: tagged, associated, and the address the operator is given.
    [eip] = address.find_addresses(clients.ec2, name, REGION)
    assert eip["InstanceId"] == host.instance_id
    assert host.public_ip == eip["PublicIp"]

    # Logs: the group with its retention, a profile whose role may write only to it.
    [group] = clients.logs.describe_log_groups(logGroupNamePrefix=f"/pynet/{name}")["logGroups"]
    assert (group["logGroupName"], group["retentionInDays"]) == (f"/pynet/{name}", 30)
    assert result.log_group == f"/pynet/{name}"
    profile = clients.iam.get_instance_profile(InstanceProfileName=logs.role_name(name))
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [logs.role_name(name)]
    assert (
        _described(clients, host.instance_id)["IamInstanceProfile"]["Arn"]
        == (profile["InstanceProfile"]["Arn"])
    )
    document = clients.iam.get_role_policy(
        RoleName=logs.role_name(name), PolicyName=logs.policy_name(name)
    )["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    group_arn = group["arn"].removesuffix(":*")
    assert document == logs.logs_policy(group_arn)

    # A second launch reuses all of it.
    again = _launch(clients, spec, aws_env)
    assert not again.created
    assert again.host.public_ip == eip["PublicIp"]
    assert len(address.find_addresses(clients.ec2, name, REGION)) == 1
    assert len(recovery.find_alarms(clients.cloudwatch, name, REGION)) == 2

    deployment = find_deployment(clients, name)
    described = deployment.describe()
    for part in (
        "alarm pynet-",
        "Elastic IP ",
        "log group /pynet/",
        "instance profile ",
        "IAM role",
    ):
        assert part in described
    destroy(clients, deployment, home=aws_env, poll=0.01)
    assert find_deployment(clients, name).empty()
    assert recovery.find_alarms(clients.cloudwatch, name, REGION) == []
    assert address.find_addresses(clients.ec2, name, REGION) == []
    assert logs.find_logging(clients.iam, clients.logs, name, REGION) == []


def test_instance_store_types_are_refused_before_anything_exists(
    clients: Clients, aws_env: Path, name: str
) -> None:
    spec = LaunchSpec(
        name=name, ssh_cidr="203.0.113.7/32", ami=_ami(clients), instance_type="m5d.large"
    )
    with pytest.raises(CloudError, match=r"m5d\.large has instance-store volumes.*--no-recovery"):
        _launch(clients, spec, aws_env)
    assert find_deployment(clients, name).empty()


def test_no_recovery_means_no_alarms(clients: Clients, aws_env: Path, name: str) -> None:
    spec = LaunchSpec(
        name=name,
        ssh_cidr="203.0.113.7/32",
        ami=_ami(clients),
        instance_type="m5d.large",
        recovery=False,
    )
    result = _launch(clients, spec, aws_env)
    assert result.created
    assert recovery.find_alarms(clients.cloudwatch, name, REGION) == []


def _tokens(clients: Clients) -> list[str]:
    seen: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params["ClientToken"])

    clients.ec2.meta.events.register("provide-client-params.ec2.RunInstances", record)
    return seen


def test_a_launch_that_loses_the_race_adopts_the_winner(
    clients: Clients, aws_env: Path, name: str
) -> None:
    first = _launch(clients, _spec(clients, name), aws_env)
    # The second launch started before the first instance was listed: its first look finds
    # nothing, then EC2 refuses its RunInstances (same token, other host key).
    looked: list[bool] = []

    def nothing_yet(**_: Any) -> Any:
        if not looked:
            looked.append(True)
            from botocore.awsrequest import AWSResponse

            return AWSResponse("http://127.0.0.1/", 200, {}, None), {"Reservations": []}
        return None

    clients.ec2.meta.events.register("before-call.ec2.DescribeInstances", nothing_yet)
    tokens = _tokens(clients)
    fail_call(clients.ec2, "RunInstances", "IdempotentParameterMismatch")
    try:
        second = _launch(clients, _spec(clients, name), aws_env)
    finally:
        clients.ec2.meta.events.unregister("before-call.ec2.DescribeInstances", nothing_yet)
    assert not second.created
    assert second.host.instance_id == first.host.instance_id
    assert second.host.host_key == first.host.host_key  # pinned from the winner's tag
    [group] = find_deployment(clients, name).security_groups
    assert tokens == [instance.client_token(name, group["GroupId"])]
    assert len(find_instances(clients.ec2, name, LIVE_STATES, REGION)) == 1


def test_a_token_of_a_terminated_instance_is_replaced(
    clients: Clients, aws_env: Path, name: str
) -> None:
    answers: list[str] = []

    def terminated_once(parsed: dict[str, Any], **_: Any) -> None:
        if not answers:
            answers.append(parsed["Instances"][0]["InstanceId"])
            parsed["Instances"][0]["State"] = {"Code": 48, "Name": "terminated"}

    clients.ec2.meta.events.register("after-call.ec2.RunInstances", terminated_once)
    tokens = _tokens(clients)
    try:
        result = _launch(clients, _spec(clients, name), aws_env)
    finally:
        clients.ec2.meta.events.unregister("after-call.ec2.RunInstances", terminated_once)
    [group] = find_deployment(clients, name).security_groups
    nonce = {t["Key"]: t["Value"] for t in group["Tags"]}[instance.NONCE_TAG]
    assert tokens == [
        instance.client_token(name, group["GroupId"]),
        instance.client_token(name, nonce),
    ]
    assert result.created
    assert result.host.instance_id != answers[0]


def test_cli_pins_the_host_key_and_writes_the_log_settings(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    args = ("--name", "ops", "--ssh-cidr", "203.0.113.7/32", "--eip", "--cloudwatch-logs")
    done = fab("launch", *args, "--log-retention-days", "7", env=cli_env)
    assert done.code == 0, done.err
    [host] = inventory.read_hosts(cli_env["PYNET_INVENTORY"])
    known = tmp_path / "known_hosts"  # beside the inventory
    pinned = hostkeys.pinned_key(known, "ops")
    assert pinned is not None
    assert known.read_text() == f"{host.address} {pinned} pynet:ops\n"
    assert f"host key:  {hostkeys.fingerprint(pinned)} (pinned in {known})" in done.out
    assert host.known_hosts == str(known)
    assert host.extra == {
        "chat_log_driver": "awslogs",
        "chat_awslogs_group": "/pynet/ops",
        "chat_awslogs_region": REGION,
        "chat_env": {"PYNET_METRICS_CLOUDWATCH": "ops"},  # the figures, as EMF lines
        "pynet_instance_id": host.extra["pynet_instance_id"],  # fab deploy --instance-connect
        "pynet_region": REGION,
    }
    assert str(host.extra["pynet_instance_id"]).startswith("i-")
    assert f"logs:      CloudWatch Logs /pynet/ops in {REGION}" in done.out
    assert "PRIVATE KEY" not in done.out + done.err
    eips = boto3.client("ec2", region_name=REGION, endpoint_url=cli_env["AWS_ENDPOINT_URL"])
    [eip] = eips.describe_addresses()["Addresses"]
    assert host.address == eip["PublicIp"]

    refused = fab(
        "launch",
        "--name",
        "big",
        "--ssh-cidr",
        "203.0.113.7/32",
        "--instance-type",
        "i3.large",
        env=cli_env,
    )
    assert refused.code == 1
    assert "i3.large has instance-store volumes" in refused.err
    assert "Traceback" not in refused.err

    gone = fab("destroy", "--name", "ops", "--yes", env=cli_env)
    assert gone.code == 0, gone.err
    assert "released Elastic IP" in gone.out
    assert "deleted alarms pynet-ops-recover, pynet-ops-reboot" in gone.out
    assert hostkeys.pinned_key(known, "ops") is None
    assert inventory.read_hosts(cli_env["PYNET_INVENTORY"]) == []
    assert eips.describe_addresses()["Addresses"] == []


def test_a_denied_logs_call_names_the_logs_action(
    clients: Clients, aws_env: Path, name: str
) -> None:
    from botocore.exceptions import ClientError

    def deny(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "CreateLogGroup"
        )

    clients.logs.meta.events.register("before-call.logs.CreateLogGroup", deny)
    try:
        with pytest.raises(CloudError, match=r"may not call logs:CreateLogGroup"):
            _launch(clients, _spec(clients, name, cloudwatch_logs=True), aws_env)
    finally:
        clients.logs.meta.events.unregister("before-call.logs.CreateLogGroup", deny)
