"""Where the chat's logs are: the journal (default), and CloudWatch Logs with `--cloudwatch-logs`.

`fab logs` shows the unit's journal. When the container logs through Docker's `awslogs` driver
(the chat role's `chat_log_driver: awslogs`), it also says which log group and region hold
them and the command that reads them, since reading CloudWatch needs AWS credentials the host
does not hand out. The answer comes from the running containers themselves (`docker inspect`),
so it is right for `-H` hosts too.
"""

from __future__ import annotations

from pynet.deploy.commands import Argv, sudo
from pynet.deploy.remote import Remote

NAME_FILTER = "name=pynet-chat"  # every release's container (pynet-chat, pynet-chat-VERSION)
_OPT = '{{index .HostConfig.LogConfig.Config "%s"}}'
LOG_FORMAT = " ".join(
    ("{{.Name}}", "{{.HostConfig.LogConfig.Type}}", _OPT % "awslogs-group", _OPT % "awslogs-region")
)


def containers() -> Argv:
    return sudo(["docker", "ps", "--quiet", "--filter", NAME_FILTER])


def log_configs(ids: list[str]) -> Argv:
    return sudo(["docker", "inspect", "--format", LOG_FORMAT, *ids])


def describe(inspected: str) -> str | None:
    """One line saying where logs go that the journal does not show, or None if it shows all."""
    notes = []
    for line in inspected.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[1] == "journald":
            continue
        name, driver = fields[0].lstrip("/"), fields[1]
        if driver == "awslogs" and len(fields) == 4 and "<no value>" not in fields[2:]:
            group, region = fields[2], fields[3]
            notes.append(
                f"{name} logs to CloudWatch Logs, group {group} in {region}: "
                f"`aws logs tail {group} --follow --region {region}`"
            )
        else:
            notes.append(f"{name} logs through Docker's {driver} driver: `docker logs {name}`")
    return "; ".join(notes) or None


def elsewhere(remote: Remote) -> str | None:
    """Ask the host where its chat containers log (None: the journal has everything)."""
    ids = remote.output(containers(), check=False).split()
    if not ids or remote.dry_run:
        return None
    return describe(remote.output(log_configs(ids), check=False))
