"""Instance recovery: two CloudWatch alarms that let EC2 repair the host without anyone awake.

`StatusCheckFailed_System` (the hardware or network under the instance failed) triggers the
`recover` action: the same instance, id, private and Elastic IPs and EBS volumes, on healthy
hardware. `StatusCheckFailed_Instance` (the OS stopped answering) triggers `reboot`. Recovery
does not work for instance types with instance-store volumes (their data cannot move), so
launch refuses those unless told to go without recovery.

The request builders are pure and tested as dicts; AWS (and moto) only store the alarms.
"""

from __future__ import annotations

from typing import Any

from pynet.aws.errors import CloudError, explained
from pynet.aws.requests import tags

#: (metric, EC2 action, alarm name suffix). Two failed one-minute checks in a row trigger it.
ALARMS = (
    ("StatusCheckFailed_System", "recover", "recover"),
    ("StatusCheckFailed_Instance", "reboot", "reboot"),
)
PERIOD = 60
EVALUATION_PERIODS = 2


def partition(region: str) -> str:
    """The ARN partition of a region: aws, aws-cn (China) or aws-us-gov (GovCloud)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def automate_arn(region: str, action: str) -> str:
    """The alarm action that makes EC2 recover or reboot the instance, in the alarm's region."""
    return f"arn:{partition(region)}:automate:{region}:ec2:{action}"


def alarm_name(name: str, suffix: str) -> str:
    return f"pynet-{name}-{suffix}"


def alarm_names(name: str) -> list[str]:
    """Exact names (never a prefix: deployment `a` must not match deployment `a-b`)."""
    return [alarm_name(name, suffix) for _, _, suffix in ALARMS]


def alarm_requests(
    name: str, instance_id: str, region: str, topic_arn: str | None = None
) -> list[dict[str, Any]]:
    """PutMetricAlarm parameters for both alarms (PutMetricAlarm replaces an alarm of the name)."""
    requests = []
    for metric, action, suffix in ALARMS:
        actions = [automate_arn(region, action)] + ([topic_arn] if topic_arn else [])
        requests.append(
            {
                "AlarmName": alarm_name(name, suffix),
                "AlarmDescription": f"pynet {name}: {action} {instance_id} when {metric} fails",
                "Namespace": "AWS/EC2",
                "MetricName": metric,
                "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                "Statistic": "Maximum",
                "Period": PERIOD,
                "EvaluationPeriods": EVALUATION_PERIODS,
                "Threshold": 1.0,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "Unit": "Count",
                # No data is not a failure: a stopped instance reports nothing.
                "TreatMissingData": "missing",
                "AlarmActions": actions,
                "Tags": tags(name),
            }
        )
    return requests


def check_topic(topic_arn: str | None, region: str) -> str | None:
    """An SNS topic for notifications must be an SNS ARN in the alarms' region."""
    if not topic_arn:
        return None
    parts = topic_arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", partition(region), "sns"] or parts[3] != region:
        raise CloudError(
            f"bad --alarm-topic {topic_arn!r}: expected an SNS topic ARN in {region}, like "
            f"arn:{partition(region)}:sns:{region}:123456789012:pynet-alerts"
        )
    return topic_arn


def check_recoverable(ec2: Any, instance_type: str, region: str) -> None:
    """Refuse types EC2 cannot recover (instance-store volumes, or no auto-recovery support)."""
    with explained(f"describing instance type {instance_type}", region):
        found = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    info = found[0] if found else {}
    if info.get("InstanceStorageSupported") or info.get("AutoRecoverySupported") is False:
        why = (
            "has instance-store volumes"
            if info.get("InstanceStorageSupported")
            else "does not support automatic recovery"
        )
        raise CloudError(
            f"{instance_type} {why}, so EC2 cannot recover the host on new hardware (and "
            "instance-store data is lost when it moves): pick an EBS-only type such as t3.small "
            "or m6i.large, or pass --no-recovery to launch it without the recovery alarms"
        )


def ensure_alarms(
    cloudwatch: Any, name: str, instance_id: str, region: str, topic_arn: str | None = None
) -> list[str]:
    """Create (or update to the current instance) both alarms; returns their names."""
    for request in alarm_requests(name, instance_id, region, topic_arn):
        with explained(f"creating the CloudWatch alarm {request['AlarmName']}", region):
            cloudwatch.put_metric_alarm(**request)
    return alarm_names(name)


def find_alarms(cloudwatch: Any, name: str, region: str = "") -> list[str]:
    """The names of the deployment's alarms that exist (recovery and no-connections)."""
    names = [*alarm_names(name), alarm_name(name, IDLE_SUFFIX)]
    with explained("listing CloudWatch alarms", region):
        found = cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
    return [alarm["AlarmName"] for alarm in found]


def delete_alarms(cloudwatch: Any, names: list[str], region: str = "") -> None:
    if names:
        with explained(f"deleting CloudWatch alarms {', '.join(names)}", region):
            cloudwatch.delete_alarms(AlarmNames=names)


# --- the service's own alarm (--connections-alarm) ------------------------------------------

#: What the chat server's embedded-metric lines are filed under (chat/metrics.py, EMF_*).
SERVICE_NAMESPACE = "PyNet"
SERVICE_DIMENSION = "Deployment"
IDLE_SUFFIX = "no-connections"


def idle_alarm_request(name: str, minutes: int, topic_arn: str | None = None) -> dict[str, Any]:
    """PutMetricAlarm parameters: fewer than one connection accepted, summed over every host of
    the deployment, in each of MINUTES one-minute periods. The figure only exists when the
    servers print it (`--cloudwatch-logs` sets `PYNET_METRICS_CLOUDWATCH`), so missing data
    counts as breaching: a host that stopped serving also stops reporting."""
    if minutes < 1:
        raise CloudError(f"bad --connections-alarm {minutes}: expected minutes >= 1")
    return {
        "AlarmName": alarm_name(name, IDLE_SUFFIX),
        "AlarmDescription": (
            f"pynet {name}: no chat connection accepted for {minutes} minutes (docs/operating.md)"
        ),
        "Namespace": SERVICE_NAMESPACE,
        "MetricName": "ConnectionsAccepted",
        "Dimensions": [{"Name": SERVICE_DIMENSION, "Value": name}],
        "Statistic": "Sum",
        "Period": PERIOD,
        "EvaluationPeriods": minutes,
        "Threshold": 1.0,
        "ComparisonOperator": "LessThanThreshold",
        "Unit": "Count",
        "TreatMissingData": "breaching",
        "AlarmActions": [topic_arn] if topic_arn else [],
        "Tags": tags(name),
    }


def ensure_idle_alarm(
    cloudwatch: Any, name: str, minutes: int, region: str, topic_arn: str | None = None
) -> str:
    """Create (or update) the no-connections alarm; returns its name."""
    request = idle_alarm_request(name, minutes, topic_arn)
    with explained(f"creating the CloudWatch alarm {request['AlarmName']}", region):
        cloudwatch.put_metric_alarm(**request)
    return str(request["AlarmName"])
