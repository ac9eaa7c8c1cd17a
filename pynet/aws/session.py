"""Where boto3 clients come from: region and credentials are checked before any call is made.

Checking first turns boto3's late, technical failures (NoRegionError deep in a call, a DNS error
for a mistyped region) into one sentence that names the flag or variable to set.
boto3 honours AWS_ENDPOINT_URL, which is how the tests point everything at moto.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError

from pynet.aws.errors import CloudError, no_credentials

if TYPE_CHECKING:
    import boto3
    from botocore.config import Config

#: Imported only when a command first needs AWS (`_config`, `connect`, tasks.cluster); the
#: deploy job's lock must hold them all the same (tests/test_workflows.py imports them too).
LAZY_IMPORTS = ("boto3", "botocore.config")


@cache
def _config() -> Config:
    """Imported when a command first needs AWS: boto3 and botocore's config take 0.3-0.8 s to
    import, which every `fab` command (`fab deploy` on each save) would pay otherwise."""
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="pynet",
    )


@dataclass(frozen=True)
class Clients:
    """The clients one command needs, all for one region."""

    region: str
    ec2: Any
    ssm: Any
    cloudwatch: Any = None  # recovery alarms
    logs: Any = None  # CloudWatch Logs (--cloudwatch-logs)
    iam: Any = None  # the host's instance profile (--cloudwatch-logs)
    sts: Any = None  # the account id for ARNs
    instance_connect: Any = None  # a 60-second SSH key (fab deploy --instance-connect)


#: Each client's attribute in Clients and its botocore service name.
SERVICES = {
    "ec2": "ec2",
    "ssm": "ssm",
    "cloudwatch": "cloudwatch",
    "logs": "logs",
    "iam": "iam",
    "sts": "sts",
    "instance_connect": "ec2-instance-connect",
}


def clients_for(session: boto3.Session, region: str) -> Clients:
    """Every client a command may need, from SESSION, for REGION (the one place they are
    made: `connect` and the tests alike)."""
    return Clients(
        region=region,
        **{
            name: session.client(service, region_name=region, config=_config())
            for name, service in SERVICES.items()
        },
    )


def known_regions(session: boto3.Session) -> set[str]:
    """Every region botocore knows for EC2, in every partition (aws, aws-cn, aws-us-gov, ...)."""
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return regions


def connect(region: str | None = None, profile: str | None = None) -> Clients:
    """Clients for `region` (else AWS_REGION / AWS_DEFAULT_REGION / the profile's region).

    boto3 itself reads only AWS_DEFAULT_REGION; AWS_REGION is what the AWS CLI v2, the other
    SDKs and Ansible's amazon.aws read, so we honour it too.
    """
    import boto3

    region = region or os.environ.get("AWS_REGION") or None
    try:
        session = boto3.Session(region_name=region, profile_name=profile or None)
        chosen = session.region_name
        if not chosen:
            raise CloudError(
                "no AWS region: pass --region (e.g. --region eu-central-1) or set AWS_REGION"
            )
        if chosen not in known_regions(session):
            raise CloudError(
                f"unknown AWS region {chosen!r}: check the spelling (e.g. eu-central-1, us-east-1)"
            )
        if session.get_credentials() is None:
            raise no_credentials()
        return clients_for(session, chosen)
    except BotoCoreError as err:  # e.g. ProfileNotFound, a broken ~/.aws/config
        raise CloudError(f"cannot set up AWS access: {err}") from err
