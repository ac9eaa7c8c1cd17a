"""What `fab launch` adds to RunInstances, and how it keeps two launches to one instance.

Two launches of one name started at the same instant both find no instance and both call
RunInstances. With the same ClientToken, EC2 runs the request once and answers both with the one
instance. The token is derived from the deployment name and a nonce: the security group's
`pynet:launch-nonce` tag, else its id. Both launches share the group, hence the token; a
destroy deletes the group, so a later launch gets a new one. If EC2 answers with an instance
that has since terminated (the token was used before and the instance was removed by hand), the
nonce tag is replaced and the launch retried once.

The other launch generated its own host key, so its request differs and EC2 refuses it with
IdempotentParameterMismatch: that launch adopts the instance that exists (and its host key,
from the instance's `pynet:ssh-host-key` tag).
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from typing import Any

from pynet.aws.errors import explained
from pynet.aws.userdata import HOST_KEY_TAG

NONCE_TAG = "pynet:launch-nonce"
GONE_STATES = ("shutting-down", "terminated")


def client_token(name: str, nonce: str) -> str:
    """A RunInstances ClientToken (at most 64 ASCII characters) for one deployment and nonce."""
    return hashlib.sha256(f"pynet/{name}/{nonce}".encode()).hexdigest()


def with_launch_extras(
    request: dict[str, Any],
    *,
    user_data: str,
    host_public_key: str,
    client_token: str,
    instance_profile_arn: str | None = None,
) -> dict[str, Any]:
    """A copy of a RunInstances request with user data, token, host key tag and profile."""
    extended = copy.deepcopy(request)
    extended["UserData"] = user_data
    extended["ClientToken"] = client_token
    if instance_profile_arn:
        extended["IamInstanceProfile"] = {"Arn": instance_profile_arn}
    for spec in extended.get("TagSpecifications", []):
        if spec["ResourceType"] == "instance":
            spec["Tags"].append({"Key": HOST_KEY_TAG, "Value": host_public_key})
    return extended


def launch_nonce(ec2: Any, group_id: str, region: str = "") -> str:
    """The nonce of the deployment's current launch: the group's tag, else the group id."""
    with explained(f"describing security group {group_id}", region):
        group = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    for tag in group.get("Tags") or []:
        if tag["Key"] == NONCE_TAG:
            return str(tag["Value"])
    return group_id


def rotate_nonce(ec2: Any, group_id: str, region: str = "") -> str:
    """A new nonce, when the old token already belongs to a terminated instance."""
    nonce = secrets.token_hex(8)
    with explained(f"tagging security group {group_id}", region):
        ec2.create_tags(Resources=[group_id], Tags=[{"Key": NONCE_TAG, "Value": nonce}])
    return nonce
