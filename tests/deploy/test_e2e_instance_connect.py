"""`fab deploy --instance-connect`'s login, end to end: boto3 pushes the run's key (moto
in-process), the key reaches the host's metadata (a stand-in on 169.254.169.254 inside the host
container, fed by a hook on that push, as AWS feeds the real one), and the host's sshd, set up
by the hardening role, lets the deploy's own SSH connection in with that key and no other."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from invoke.context import Context
from moto import mock_aws
from paramiko.ssh_exception import AuthenticationException

from pynet import inventory
from pynet.aws.instance_connect import instance_vars
from pynet.aws.session import Clients, clients_for
from pynet.deploy.hosts import Target, targets
from pynet.deploy.instance_connect import InstanceConnect
from pynet.local.host import Host
from pynet.local.provision import inventory_entry
from tests.ansible.ansible_helpers import ROLES, run, tool
from tests.kit import wait_until

pytestmark = pytest.mark.e2e

REGION = "eu-central-1"
INSTANCE = "i-0e2e0instance0001"
STAND_IN = ROLES / "hardening" / "molecule" / "default" / "imds_stand_in.py"
PLAY = """- hosts: chat
  become: true
  roles: [hardening]
"""


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, ssh_keypair: tuple[Path, Path]
) -> Iterator[Host]:
    """A Debian 13 host with the hardening role applied and a metadata stand-in on
    169.254.169.254, an address of its own loopback interface (its image makes that address
    unreachable otherwise)."""
    from pynet.local.host import start_host, stop_host

    work = tmp_path_factory.mktemp("eic")
    name = "pynet-eic-e2e"
    local = start_host(name, ssh_keypair[1], suite="trixie")
    try:
        hosts = inventory.write_hosts([inventory_entry(local)], work / "hosts.yml")
        (work / "play.yml").write_text(PLAY)
        ran = run(
            [tool("ansible-playbook"), "-i", str(hosts), str(work / "play.yml")],
            ANSIBLE_ROLES_PATH=str(ROLES),
        )
        assert ran.returncode == 0, ran.stdout[-4000:]
        assert "unreachable" in local.exec("ip", "route", "show", "169.254.169.254").stdout
        subprocess.run(
            ["docker", "cp", str(STAND_IN), f"{name}:/var/tmp/imds_stand_in.py"], check=True
        )
        local.exec(
            "sh",
            "-c",
            "set -e; ip addr replace 169.254.169.254/32 dev lo; install -d /var/tmp/imds/keys; "
            f"echo {INSTANCE} > /var/tmp/imds/instance-id; "
            "systemd-run --unit pynet-imds-stand-in /usr/bin/python3 /var/tmp/imds_stand_in.py "
            "169.254.169.254 80 /var/tmp/imds",
        )
        wait_until(
            lambda: local.exec("nc", "-z", "169.254.169.254", "80", check=False).returncode == 0,
            10,
            "the metadata stand-in",
        )
        yield local
    finally:
        stop_host(name)


def deliver(local: Host, reached: list[str]) -> Callable[..., None]:
    """What AWS does after SendSSHPublicKey: the key appears in the instance's metadata, for
    that user, for 60 s (the stand-in's file, written through the container)."""

    def hook(params: dict[str, Any], **_: Any) -> None:
        body = json.loads(params["body"])
        expires = int(time.time()) + 60
        text = (
            f"#Timestamp={expires}\n#Instance={body['InstanceId']}\n#Caller=test\n#Request=1\n"
            f"{body['SSHPublicKey']}\nc2lnbmF0dXJl\n"
        )
        path = f"/var/tmp/imds/keys/{body['InstanceOSUser']}"
        local.exec("sh", "-c", f"cat > {path} <<'EOF'\n{text}EOF")
        reached.append(body["SSHPublicKey"])

    return hook


def _target(local: Host, tmp_path: Path) -> Target:
    entry = inventory_entry(local)
    entry = inventory.Host(
        name=entry.name,
        address=entry.address,
        user=entry.user,
        port=entry.port,
        key_file=entry.key_file,  # the harness's key: --instance-connect must not use it
        known_hosts=entry.known_hosts,
        extra=instance_vars(INSTANCE, REGION),
    )
    [target] = targets(Context(), str(inventory.write_hosts([entry], tmp_path / "hosts.yml")))
    return target


@pytest.fixture
def aws() -> Iterator[Clients]:
    with mock_aws():
        yield clients_for(boto3.Session(), REGION)


def test_the_deploy_logs_in_with_the_key_it_pushed(
    host: Host, aws: Clients, tmp_path: Path
) -> None:
    from pynet.tasks.release import _reach

    reached: list[str] = []
    aws.instance_connect.meta.events.register(
        "before-call.ec2-instance-connect.SendSSHPublicKey", deliver(host, reached)
    )
    target = _target(host, tmp_path)
    pushing = InstanceConnect(lambda region: aws)
    pushing.attach(target)  # what `_hosts(..., instance_connect=True)` does to every host
    _reach([target])  # what fab deploy --instance-connect does before it builds
    try:
        assert target.conn.run("id -un", hide=True, in_stream=False).stdout.strip() == "admin"
    finally:
        target.conn.close()
    assert reached == [pushing.key.public]
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", "-"],
        input=pushing.key.public,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    journal = host.exec("journalctl", "-u", "ssh", "--no-pager", "-o", "cat").stdout
    assert "Accepted publickey for admin from" in journal
    assert fingerprint in journal  # sshd says which key: the pushed one


def test_a_key_that_was_not_pushed_is_refused(host: Host, tmp_path: Path) -> None:
    """A run key never pushed: sshd refuses it, so the login above came from the push, not
    from any file on the host."""
    host.exec("rm", "-f", "/var/tmp/imds/keys/admin")
    target = _target(host, tmp_path)
    never_pushed = InstanceConnect(lambda region: pytest.fail("no push in this test"))
    target.conn.connect_kwargs.update(
        pkey=never_pushed.pkey, key_filename=[], look_for_keys=False, allow_agent=False
    )
    with pytest.raises(AuthenticationException):
        target.conn.open()


def test_a_task_logs_in_with_the_key_pushed_as_its_connection_opens(
    host: Host, aws: Clients, tmp_path: Path
) -> None:
    """`fab status --instance-connect` and the other host tasks: the push happens when the
    task's first command opens the connection, not before."""
    reached: list[str] = []
    aws.instance_connect.meta.events.register(
        "before-call.ec2-instance-connect.SendSSHPublicKey", deliver(host, reached)
    )
    target = _target(host, tmp_path)
    pushing = InstanceConnect(lambda region: aws)
    pushing.attach(target)
    assert reached == []  # nothing pushed until a command needs the connection
    try:
        assert target.conn.run("id -un", hide=True, in_stream=False).stdout.strip() == "admin"
        target.conn.run("true", hide=True, in_stream=False)  # the open connection: no new push
    finally:
        target.conn.close()
    assert reached == [pushing.key.public]
