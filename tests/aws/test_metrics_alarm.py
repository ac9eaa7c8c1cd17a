"""The service's figures in CloudWatch: the no-connections alarm (`--connections-alarm`) against
moto, and the contract between the alarm and the embedded-metric lines chat/metrics.py prints."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from chat.metrics import EMF_NAMESPACE, EmfReporter, Metrics
from pynet import inventory
from pynet.aws import recovery
from pynet.aws.ec2 import LaunchSpec, destroy, find_deployment, launch
from pynet.aws.errors import CloudError
from pynet.aws.keys import LocalKey
from pynet.aws.session import Clients
from tests.aws.helpers import REGION, fab, public_key


def _ami(clients: Clients) -> str:
    name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    return str(clients.ssm.get_parameter(Name=name)["Parameter"]["Value"])


def _launch(clients: Clients, spec: LaunchSpec, home: Path) -> Any:
    return launch(clients, spec, LocalKey(public_key(), None), home=home, poll=0.01)


def test_the_alarm_request() -> None:
    topic = f"arn:aws:sns:{REGION}:123456789012:alerts"
    request = recovery.idle_alarm_request("demo", 15, topic)
    assert request["AlarmName"] == "pynet-demo-no-connections"
    assert (
        request.items()
        >= {
            "Namespace": "PyNet",
            "MetricName": "ConnectionsAccepted",
            "Dimensions": [{"Name": "Deployment", "Value": "demo"}],
            "Statistic": "Sum",
            "Period": 60,
            "EvaluationPeriods": 15,
            "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",
            "AlarmActions": [topic],
        }.items()
    )
    with pytest.raises(CloudError, match="bad --connections-alarm 0"):
        recovery.idle_alarm_request("demo", 0)


def test_the_alarm_watches_a_metric_the_server_prints() -> None:
    """The alarm's namespace, metric and dimension are the ones of the server's EMF lines (a
    renamed figure on either side would leave the alarm watching nothing, always breaching)."""
    request = recovery.idle_alarm_request("prod", 5)
    out = io.StringIO()
    EmfReporter(Metrics(), "prod", out=out).emit()
    line = json.loads(out.getvalue())
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert request["Namespace"] == directive["Namespace"] == EMF_NAMESPACE
    assert request["MetricName"] in {m["Name"] for m in directive["Metrics"]}
    assert [[d["Name"] for d in request["Dimensions"]]] == directive["Dimensions"]
    assert line[request["Dimensions"][0]["Name"]] == request["Dimensions"][0]["Value"]
    assert request["Unit"] == next(
        m["Unit"] for m in directive["Metrics"] if m["Name"] == request["MetricName"]
    )


def test_launch_adds_the_alarm_and_destroy_removes_it(
    clients: Clients, aws_env: Path, name: str
) -> None:
    spec = LaunchSpec(
        name=name,
        ssh_cidr="203.0.113.7/32",
        ami=_ami(clients),
        cloudwatch_logs=True,
        connections_alarm=10,
    )
    said: list[str] = []
    result = launch(
        clients, spec, LocalKey(public_key(), None), home=aws_env, poll=0.01, say=said.append
    )
    assert result.created
    [alarm] = clients.cloudwatch.describe_alarms(
        AlarmNames=[recovery.alarm_name(name, recovery.IDLE_SUFFIX)]
    )["MetricAlarms"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("PyNet", "ConnectionsAccepted")
    assert alarm["Dimensions"] == [{"Name": "Deployment", "Value": name}]
    assert (alarm["EvaluationPeriods"], alarm["ComparisonOperator"]) == (10, "LessThanThreshold")
    assert f"alarm pynet-{name}-no-connections: no connection accepted for 10 minutes" in said
    assert len(recovery.find_alarms(clients.cloudwatch, name, REGION)) == 3  # with recovery's

    # The server's lines go to the log group the awslogs driver writes (moto stores them).
    out = io.StringIO()
    metrics = Metrics("v1")
    metrics.accepted = 3
    EmfReporter(metrics, name, out=out).emit()
    group = result.log_group
    clients.logs.create_log_stream(logGroupName=group, logStreamName="pynet-chat-v1")
    clients.logs.put_log_events(
        logGroupName=group,
        logStreamName="pynet-chat-v1",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": out.getvalue().strip()}],
    )
    [event] = clients.logs.get_log_events(logGroupName=group, logStreamName="pynet-chat-v1")[
        "events"
    ]
    assert json.loads(event["message"])["ConnectionsAccepted"] == 3

    destroy(clients, find_deployment(clients, name), home=aws_env, poll=0.01)
    assert recovery.find_alarms(clients.cloudwatch, name, REGION) == []


def test_no_alarm_unless_asked(clients: Clients, aws_env: Path, name: str) -> None:
    spec = LaunchSpec(name=name, ssh_cidr="203.0.113.7/32", ami=_ami(clients), cloudwatch_logs=True)
    _launch(clients, spec, aws_env)
    names = recovery.find_alarms(clients.cloudwatch, name, REGION)
    assert recovery.alarm_name(name, recovery.IDLE_SUFFIX) not in names


def test_cli_alarm_needs_cloudwatch_logs(cli_env: dict[str, str]) -> None:
    done = fab(
        "launch", "--name", "ops", "--ssh-cidr", "203.0.113.7/32", "--connections-alarm", "5",
        env=cli_env,
    )  # fmt: skip
    assert done.code == 1
    assert done.err.strip().splitlines() == [
        "error: --connections-alarm 5 needs --cloudwatch-logs: the figure reaches CloudWatch "
        "through the chat's log stream"
    ]


def test_cli_launch_with_the_alarm(cli_env: dict[str, str]) -> None:
    done = fab(
        "launch", "--name", "ops", "--ssh-cidr", "203.0.113.7/32", "--cloudwatch-logs",
        "--connections-alarm", "30", env=cli_env,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert "alarm pynet-ops-no-connections: no connection accepted for 30 minutes" in done.out
    [host] = inventory.read_hosts(cli_env["PYNET_INVENTORY"])
    assert host.extra["chat_env"] == {"PYNET_METRICS_CLOUDWATCH": "ops"}
