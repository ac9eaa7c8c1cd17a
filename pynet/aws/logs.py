"""`--cloudwatch-logs`: the chat container's output in CloudWatch Logs, with least privilege.

Launch creates the log group `/pynet/NAME` (with a retention, so logs do not pile up for ever)
and an instance profile whose role may only create streams in and write to that one group.
Docker's `awslogs` driver on the host uses it through the instance metadata service; the chat
role's `chat_log_driver: awslogs` switches the container to it (roles/chat/README.md).
Destroy deletes the profile, the role and the group.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from pynet.aws.errors import CloudError, code_of, explained
from pynet.aws.recovery import partition
from pynet.aws.requests import resource_name, tags

#: Retention values CloudWatch Logs accepts (days).
RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192)
IAM_PATH = "/pynet/"


def log_group_name(name: str) -> str:
    return f"/pynet/{name}"


def role_name(name: str) -> str:
    """The IAM role and instance profile of the host (one name for both)."""
    return f"{resource_name(name)}-host"


def policy_name(name: str) -> str:
    return f"{resource_name(name)}-logs"


def log_group_arn(region: str, account: str, group: str) -> str:
    return f"arn:{partition(region)}:logs:{region}:{account}:log-group:{group}"


def check_retention(days: int) -> int:
    if days not in RETENTION_DAYS:
        allowed = ", ".join(str(d) for d in RETENTION_DAYS)
        raise CloudError(f"bad --log-retention-days {days}: CloudWatch Logs accepts {allowed}")
    return days


def log_group_request(name: str) -> dict[str, Any]:
    """CreateLogGroup parameters (tagged at creation)."""
    return {
        "logGroupName": log_group_name(name),
        "tags": {tag["Key"]: tag["Value"] for tag in tags(name)},
    }


def assume_role_policy(region: str) -> dict[str, Any]:
    """Only EC2 instances may take the role."""
    service = "ec2.amazonaws.com.cn" if partition(region) == "aws-cn" else "ec2.amazonaws.com"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def logs_policy(group_arn: str) -> dict[str, Any]:
    """What Docker's awslogs driver needs, on this one group only: new streams and events."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ChatContainerLogsOnly",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [group_arn, f"{group_arn}:log-stream:*"],
            }
        ],
    }


def role_request(name: str, region: str) -> dict[str, Any]:
    return {
        "RoleName": role_name(name),
        "Path": IAM_PATH,
        "AssumeRolePolicyDocument": json.dumps(assume_role_policy(region)),
        "Description": f"pynet {name}: the chat host writes its container logs",
        "Tags": tags(name),
    }


def _exists(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as err:
        if code_of(err) in ("NoSuchEntity", "ResourceNotFoundException"):
            return False
        raise
    return True


def ensure_log_group(logs: Any, name: str, retention_days: int, region: str) -> str:
    group = log_group_name(name)
    with explained(f"creating the log group {group}", region):
        try:
            logs.create_log_group(**log_group_request(name))
        except ClientError as err:
            if code_of(err) != "ResourceAlreadyExistsException":
                raise
        logs.put_retention_policy(logGroupName=group, retentionInDays=retention_days)
    return group


def ensure_instance_profile(iam: Any, sts: Any, name: str, region: str) -> str:
    """The host's instance profile (role + policy limited to its log group); returns its ARN."""
    role, profile = role_name(name), role_name(name)
    with explained("looking up the AWS account", region):
        account = sts.get_caller_identity()["Account"]
    group_arn = log_group_arn(region, account, log_group_name(name))
    with explained(f"creating the IAM role {role}", region):
        if not _exists(iam.get_role, RoleName=role):
            iam.create_role(**role_request(name, region))
        iam.put_role_policy(
            RoleName=role,
            PolicyName=policy_name(name),
            PolicyDocument=json.dumps(logs_policy(group_arn)),
        )
    with explained(f"creating the instance profile {profile}", region):
        if not _exists(iam.get_instance_profile, InstanceProfileName=profile):
            iam.create_instance_profile(InstanceProfileName=profile, Path=IAM_PATH, Tags=tags(name))
        found = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]
        if role not in [r["RoleName"] for r in found.get("Roles", [])]:
            iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
    return str(found["Arn"])


def find_logging(iam: Any, logs: Any, name: str, region: str = "") -> list[str]:
    """What of the deployment's logging exists: 'log group', 'instance profile', 'role'."""
    found = []
    with explained("looking for the deployment's log group and IAM role", region):
        groups = logs.describe_log_groups(logGroupNamePrefix=log_group_name(name))["logGroups"]
        if any(g["logGroupName"] == log_group_name(name) for g in groups):
            found.append(f"log group {log_group_name(name)}")
        if _exists(iam.get_instance_profile, InstanceProfileName=role_name(name)):
            found.append(f"instance profile {role_name(name)}")
        if _exists(iam.get_role, RoleName=role_name(name)):
            found.append(f"IAM role {role_name(name)}")
    return found


def delete_logging(iam: Any, logs: Any, name: str, region: str = "") -> None:
    """Delete the profile, the role (and its policy) and the log group; missing parts are fine."""
    role = profile = role_name(name)
    gone = ("NoSuchEntity", "ResourceNotFoundException")
    with explained(f"deleting the instance profile and role {role}", region):
        for call, kwargs in (
            (
                iam.remove_role_from_instance_profile,
                {"InstanceProfileName": profile, "RoleName": role},
            ),
            (iam.delete_instance_profile, {"InstanceProfileName": profile}),
            (iam.delete_role_policy, {"RoleName": role, "PolicyName": policy_name(name)}),
            (iam.delete_role, {"RoleName": role}),
            (logs.delete_log_group, {"logGroupName": log_group_name(name)}),
        ):
            try:
                call(**kwargs)
            except ClientError as err:
                if code_of(err) not in gone:
                    raise
