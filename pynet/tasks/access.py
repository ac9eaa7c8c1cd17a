"""`fab allow-ssh`: add, remove or list who may SSH into a deployment's (or cluster's) hosts.

Each source is its own rule labelled with its owner (pynet/aws/access.py), so a teammate's
change never locks anyone else out, and the CI deploy job can let itself in for its duration
and take itself out again (docs/ci.md).
"""

from __future__ import annotations

from invoke.context import Context

from pynet.aws import access
from pynet.aws.publicip import detect_ssh_cidr
from pynet.aws.requests import SshSource, check_name, ssh_sources
from pynet.aws.requests import ssh_cidr as checked_cidr
from pynet.aws.session import connect
from pynet.tasks.common import INTERRUPTED, REGION_HELP, one_line_errors, say
from pynet.tasks.options import task

__all__ = ["allow_ssh"]


@task(
    positional=[],
    help={
        "name": "deployment or cluster name (required, no default)",
        "region": REGION_HELP,
        "ssh-cidr": "the source to add or remove (default: your public IP as /32, detected)",
        "ssh-label": "whose rule it is, in its description; adding replaces that label's "
        "earlier source (default: your AWS identity's name)",
        "allow-ssh-from-anywhere": "permit adding an --ssh-cidr wider than one site "
        "(as fab launch)",
        "remove": "remove the rule of --ssh-cidr (whoever added it), else every rule of the label",
        "list": "only list who may SSH in",
    },
)
def allow_ssh(
    c: Context,
    name: str = "",
    region: str | None = None,
    ssh_cidr: str | None = None,
    ssh_label: str | None = None,
    allow_ssh_from_anywhere: bool = False,
    remove: bool = False,
    list: bool = False,
) -> None:
    """Let an address SSH in (or, with --remove, no longer) without touching anyone else's."""
    with one_line_errors(interrupted=INTERRUPTED):
        check_name(name)
        # Removing takes any source, 0.0.0.0/0 included; adding refuses one wider than a site.
        wide = remove or allow_ssh_from_anywhere
        source = checked_cidr(ssh_cidr, allow_anywhere=wide) if ssh_cidr else None
        clients = connect(region)
        groups = access.ssh_groups(clients.ec2, name, clients.region)
        if not list:
            if remove and source and not ssh_label:
                owner = ""  # the source's rule goes, whoever's it is
            else:
                owner = access.operator_label(clients.sts, ssh_label, clients.region)
            if not remove:
                source = source or detect_ssh_cidr()
            for group in groups:
                if remove:
                    changes = access.remove(
                        clients.ec2, group, cidr=source, label=owner, region=clients.region
                    )
                else:
                    wanted = SshSource(str(source), owner)
                    changes = access.allow(clients.ec2, group, wanted, clients.region)
                say(f"{group['GroupName']}: {'; '.join(changes) or 'nothing to change'}")
            groups = access.ssh_groups(clients.ec2, name, clients.region)
        for group in groups:
            sources = ssh_sources(group.get("IpPermissions", []))
            allowed = ", ".join(map(str, sources)) or "nobody"
            print(f"{group['GroupName']} ({group['GroupId']}): ssh from {allowed}")
