"""Our one error type, and the translation of AWS failures into sentences a person can act on.

Callers (the Fabric tasks) catch `CloudError` and print its message as one line: no traceback for
failures that are about the operator's account, input or luck rather than a bug in our code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, WaiterError

DOCS = "docs/aws.md"

_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
_BAD_CREDENTIALS = {
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
}
_LIMITS = {"InstanceLimitExceeded", "VcpuLimitExceeded", "ResourceLimitExceeded"}
_CAPACITY = {"InsufficientInstanceCapacity", "InsufficientCapacity"}
_NO_AMI = {"InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"}


#: Operations of services other than EC2 that pynet calls, for the IAM action a denial names.
_SERVICES = {
    "cloudwatch": {"PutMetricAlarm", "DescribeAlarms", "DeleteAlarms"},
    "logs": {"CreateLogGroup", "PutRetentionPolicy", "DescribeLogGroups", "DeleteLogGroup"},
    "iam": {
        "GetRole",
        "CreateRole",
        "PutRolePolicy",
        "DeleteRolePolicy",
        "DeleteRole",
        "GetInstanceProfile",
        "CreateInstanceProfile",
        "AddRoleToInstanceProfile",
        "RemoveRoleFromInstanceProfile",
        "DeleteInstanceProfile",
    },
    "ssm": {"GetParameter"},
    # The cluster's load balancer (elbv2); pynet calls no EC2 operation of these names.
    "elasticloadbalancing": {
        "DescribeLoadBalancers",
        "CreateLoadBalancer",
        "DeleteLoadBalancer",
        "DescribeTargetGroups",
        "CreateTargetGroup",
        "DeleteTargetGroup",
        "DescribeListeners",
        "CreateListener",
        "RegisterTargets",
        "DescribeTags",
    },
    "sts": {"GetCallerIdentity"},
    "ec2-instance-connect": {"SendSSHPublicKey"},
}


def service_of(operation: str) -> str:
    """The IAM service prefix of an operation we call (ec2 unless listed above)."""
    return next((name for name, ops in _SERVICES.items() if operation in ops), "ec2")


class CloudError(Exception):
    """A failure the operator can act on; `str()` is one line that says what to do."""


def code_of(err: ClientError) -> str:
    """The AWS error code of a ClientError ('' when AWS sent none)."""
    return str(err.response.get("Error", {}).get("Code", ""))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def explain(
    err: Exception, doing: str, region: str = "", known: dict[str, str] | None = None
) -> CloudError:
    """Turn a botocore failure while `doing` something into a CloudError with a next step.

    `known` maps error codes the caller expects to the sentence to say instead.
    """
    where = f" in {region}" if region else ""
    if isinstance(err, ClientError):
        code = code_of(err)
        if known and code in known:
            return CloudError(known[code])
        action = (
            f"{service_of(err.operation_name)}:{err.operation_name}"
            if err.operation_name
            else "the action"
        )
        if code in _DENIED:
            return CloudError(
                f"permission denied while {doing}: your AWS identity may not call {action} "
                f"({code}); grant the IAM policy in {DOCS}"
            )
        if code in _BAD_CREDENTIALS:
            return CloudError(
                f"AWS rejected the credentials while {doing} ({code}): check AWS_PROFILE or the "
                "access keys, or refresh an expired session"
            )
        if code in _LIMITS:
            return CloudError(
                f"instance limit reached{where} while {doing} ({code}): terminate unused instances "
                "(`fab hosts` lists ours) or request a higher quota in Service Quotas"
            )
        if code in _CAPACITY:
            return CloudError(
                f"AWS has no capacity for this instance type{where} right now ({code}): retry "
                "later, or pick another --instance-type or --region"
            )
        if code in _NO_AMI:
            return CloudError(
                f"AMI not found{where} while {doing} ({code}): AMI ids differ per region; check "
                "--ami or leave it out to use the latest image of --os"
            )
        message = _one_line(err.response.get("Error", {}).get("Message", ""))
        return CloudError(f"AWS error while {doing}{where}: {code}: {message}")
    if isinstance(err, NoCredentialsError):
        return no_credentials()
    if isinstance(err, WaiterError):
        return CloudError(f"gave up waiting while {doing}: {_one_line(str(err))}")
    return CloudError(f"cannot talk to AWS while {doing}{where}: {_one_line(str(err))}")


def no_credentials() -> CloudError:
    """The error for 'no credentials anywhere boto3 looks'."""
    return CloudError(
        "no AWS credentials found: set AWS_PROFILE (after `aws configure` or `aws sso login`) or "
        f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; see {DOCS}"
    )


@contextmanager
def explained(doing: str, region: str = "", known: dict[str, str] | None = None) -> Iterator[None]:
    """Re-raise botocore failures inside the block as CloudError saying what we were doing."""
    try:
        yield
    except (ClientError, BotoCoreError) as err:
        raise explain(err, doing, region, known) from err
