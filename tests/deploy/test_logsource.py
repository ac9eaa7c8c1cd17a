"""`fab logs` says where logs go that the journal does not show, from `docker inspect` output."""

from __future__ import annotations

from pynet.deploy import logsource
from pynet.deploy.commands import render


def test_journald_needs_no_note() -> None:
    assert logsource.describe("/pynet-chat-v1 journald <no value> <no value>\n") is None
    assert logsource.describe("") is None


def test_awslogs_names_group_region_and_the_command() -> None:
    note = logsource.describe("/pynet-chat-v2 awslogs /pynet/demo eu-central-1\n")
    assert note == (
        "pynet-chat-v2 logs to CloudWatch Logs, group /pynet/demo in eu-central-1: "
        "`aws logs tail /pynet/demo --follow --region eu-central-1`"
    )


def test_another_driver_points_at_docker_logs() -> None:
    note = logsource.describe("/pynet-chat local <no value> <no value>\n")
    assert note == "pynet-chat logs through Docker's local driver: `docker logs pynet-chat`"


def test_commands_are_data() -> None:
    assert render(logsource.containers()) == "sudo -n docker ps --quiet --filter name=pynet-chat"
    line = render(logsource.log_configs(["abc"]))
    assert line.startswith("sudo -n docker inspect --format ")
    assert line.endswith(" abc")
    assert "awslogs-group" in line
