"""Who may SSH in: one inbound rule on port 22 per operator, each labelled with its owner.

A team shares its hosts, and so does the CI job that deploys to them. Each SSH source is its own
rule whose description names its owner (`pynet ssh: ada`, `pynet ssh: github-actions`): adding
one never touches another's, and adding under a label that already has a rule moves that rule (an
operator's new home address replaces the old one instead of piling up). `fab launch` adds the
caller's own; `fab allow-ssh` adds, removes and lists them (docs/aws.md).
"""

from __future__ import annotations

from typing import Any

from pynet.aws.cluster_requests import CLUSTER_TAG, ROLE_TAG, member_pattern
from pynet.aws.errors import CloudError, explained
from pynet.aws.requests import (
    APP,
    APP_TAG,
    DEPLOYMENT_TAG,
    SshSource,
    check_label,
    label_of_identity,
    ssh_permission,
    ssh_sources,
    tag_value,
)


def operator_label(sts: Any, given: str | None = None, region: str = "") -> str:
    """GIVEN (--ssh-label) checked, else the name in the caller's AWS identity (an IAM user's
    name, a role session's name; asking needs no permission)."""
    if given:
        return check_label(given)
    with explained("asking AWS who you are (sts:GetCallerIdentity)", region):
        return label_of_identity(str(sts.get_caller_identity()["Arn"]))


def _revoke(ec2: Any, group_id: str, sources: list[SshSource], region: str) -> None:
    if sources:
        with explained(f"removing SSH rules from {group_id}", region):
            ec2.revoke_security_group_ingress(
                GroupId=group_id, IpPermissions=[ssh_permission(s) for s in sources]
            )


def allow(ec2: Any, group: dict[str, Any], source: SshSource, region: str = "") -> list[str]:
    """SOURCE may SSH in; the label's other sources are removed. Returns what changed."""
    group_id, current = group["GroupId"], ssh_sources(group.get("IpPermissions", []))
    stale = [s for s in current if s.label == source.label and s.cidr != source.cidr]
    changes = [f"removed {s}" for s in stale]
    _revoke(ec2, group_id, stale, region)
    same_cidr = [s for s in current if s.cidr == source.cidr]
    if source in same_cidr:
        return changes
    # AWS keeps one rule per source: a source someone else added is relabelled, not doubled.
    _revoke(ec2, group_id, same_cidr, region)
    with explained(f"allowing SSH from {source.cidr} in {group_id}", region):
        ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[ssh_permission(source)]
        )
    return [*changes, f"added {source}"]


def remove(
    ec2: Any, group: dict[str, Any], *, cidr: str | None, label: str | None, region: str = ""
) -> list[str]:
    """Remove the SSH rules of CIDR (whoever added it), else those of LABEL. Returns what went."""
    current = ssh_sources(group.get("IpPermissions", []))
    gone = [s for s in current if (s.cidr == cidr if cidr else s.label == label)]
    _revoke(ec2, group["GroupId"], gone, region)
    return [f"removed {s}" for s in gone]


def ssh_groups(ec2: Any, name: str, region: str = "") -> list[dict[str, Any]]:
    """The security groups that let SSH into NAME's hosts: a deployment's own group, or every
    member's group and the Redis access group of a cluster of that name."""
    members = member_pattern(name)
    with explained("listing security groups", region):
        groups = ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{APP_TAG}", "Values": [APP]}]
        )["SecurityGroups"]
    found = [
        g
        for g in groups
        if (tag_value(g, DEPLOYMENT_TAG) == name and not tag_value(g, ROLE_TAG))
        or members.match(tag_value(g, DEPLOYMENT_TAG))
        or (tag_value(g, CLUSTER_TAG) == name and tag_value(g, ROLE_TAG) == "redis-access")
    ]
    if not found:
        raise CloudError(
            f"no pynet security group for {name!r} in {region}: check --name and --region "
            "(`fab hosts` lists the deployments)"
        )
    return sorted(found, key=lambda g: str(g.get("GroupName", "")))
