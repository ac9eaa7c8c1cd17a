"""EC2 Instance Connect on the laptop's side: a run's own key, pushed through boto3 (moto
in-process), then offered by the deploy's SSH connections instead of any key file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest
from botocore.stub import Stubber
from invoke.context import Context
from invoke.exceptions import Exit

from pynet import inventory
from pynet.aws import instance_connect as eic
from pynet.aws.errors import CloudError
from pynet.aws.session import Clients
from pynet.deploy.hosts import targets
from pynet.deploy.instance_connect import InstanceConnect
from pynet.deploy.remote import DeployError
from pynet.local.host import free_port
from pynet.tasks import release
from tests.aws.helpers import REGION

GONE = "i-0dead0000000000a"


@pytest.fixture
def pushed(clients: Clients) -> list[dict[str, Any]]:
    """The parameters of every SendSSHPublicKey call, as sent to (in-process) AWS."""
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(json.loads(params["body"]))  # the JSON protocol's body, as serialized

    clients.instance_connect.meta.events.register(
        "before-call.ec2-instance-connect.SendSSHPublicKey", record
    )
    return calls


def test_a_run_key_is_fresh_ed25519_and_loads_in_paramiko() -> None:
    first, second = eic.RunKey.generate(), eic.RunKey.generate()
    assert first.public != second.public
    kind, blob, comment = first.public.split()
    assert (kind, comment) == ("ssh-ed25519", eic.KEY_COMMENT)
    loaded = paramiko.Ed25519Key.from_private_key(io.StringIO(first.private_openssh))
    assert loaded.get_base64() == blob  # the private half is the public half's


def test_the_push_request_names_instance_user_and_key() -> None:
    assert eic.push_request("i-0abc", "admin", "ssh-ed25519 AAAA k") == {
        "InstanceId": "i-0abc",
        "InstanceOSUser": "admin",
        "SSHPublicKey": "ssh-ed25519 AAAA k",
    }
    assert eic.instance_vars("i-0abc", REGION) == {
        "pynet_instance_id": "i-0abc",
        "pynet_region": REGION,
    }


def test_push_goes_to_aws_through_boto3(clients: Clients, pushed: list[dict[str, Any]]) -> None:
    key = eic.RunKey.generate()
    eic.push(clients.instance_connect, "i-0123456789abcdef0", "admin", key.public, REGION)
    assert pushed == [eic.push_request("i-0123456789abcdef0", "admin", key.public)]


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("AccessDeniedException", r"may not call ec2-instance-connect:SendSSHPublicKey"),
        ("EC2InstanceNotFoundException", rf"no instance {GONE} in eu-central-1: .*stale"),
        ("EC2InstanceStateInvalidException", rf"{GONE} is not running"),
    ],
)
def test_a_refused_push_is_one_line_naming_what_to_do(code: str, says: str) -> None:
    client = boto3.client("ec2-instance-connect", region_name=REGION)
    with Stubber(client) as stub:
        stub.add_client_error("send_ssh_public_key", service_error_code=code, service_message="no")
        with pytest.raises(CloudError, match=says):
            eic.push(client, GONE, "admin", eic.RunKey.generate().public, REGION)


def _inventory(tmp_path: Path, port: int, **extra: str) -> Path:
    path = tmp_path / "hosts.yml"
    (tmp_path / "known_hosts").write_text("")
    host = inventory.Host(
        name="production",
        address="127.0.0.1",
        user="admin",
        port=port,
        key_file=str(tmp_path / "long-lived-key"),
        known_hosts=str(tmp_path / "known_hosts"),
        extra=dict(extra),
    )
    return inventory.write_hosts([host], path)


@pytest.fixture
def nowhere(clients: Clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(port, inventory) of an instance whose SSH port nothing listens on; the tasks' AWS
    calls go to moto."""
    port = free_port()
    path = _inventory(tmp_path, port, **eic.instance_vars("i-0cafe00000000000", REGION))
    monkeypatch.setattr(release, "connect", lambda region: clients)
    return port, str(path)


def test_prepare_pushes_then_logs_in_with_that_key_only(
    clients: Clients, pushed: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = _inventory(tmp_path, 22, **eic.instance_vars("i-0feedface0000000", REGION))
    [target] = targets(Context(), str(path))
    assert (target.instance_id, target.region) == ("i-0feedface0000000", REGION)
    regions: list[str | None] = []

    def connect(region: str | None) -> Clients:
        regions.append(region)
        return clients

    pushing = InstanceConnect(connect)
    pushing.prepare(target)
    pushing.prepare(target)  # clients are made once per region
    assert regions == [REGION]
    assert pushed[-1] == eic.push_request("i-0feedface0000000", "admin", pushing.key.public)
    kwargs = target.conn.connect_kwargs
    assert kwargs["pkey"].get_base64() == pushing.key.public.split()[1]
    assert (kwargs["key_filename"], kwargs["look_for_keys"], kwargs["allow_agent"]) == (
        [],
        False,
        False,
    )


def test_prepare_refuses_a_host_without_its_instance_id(tmp_path: Path) -> None:
    [target] = targets(Context(), str(_inventory(tmp_path, 22)))
    with pytest.raises(DeployError, match=r"needs the host's EC2 instance id \(pynet_instance_id"):
        InstanceConnect(lambda region: pytest.fail("no AWS call expected")).prepare(target)


def test_fab_deploy_instance_connect_pushes_right_before_it_connects(
    nowhere: tuple[int, str],
    pushed: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task's path: push (moto) then connect; nothing listens there, so the connect fails
    in one line after the key went out, and before anything is built."""
    port, path = nowhere
    monkeypatch.setenv("PYNET_DOCKER", "true")  # found on PATH; never run: the connect fails first
    built: list[object] = []
    monkeypatch.setattr(release.release, "build", lambda *a, **k: built.append(a))
    with pytest.raises(Exit) as failed:
        release.deploy(Context(), version="v1", inventory=path, instance_connect=True)
    assert f"admin@127.0.0.1:{port}: cannot reach the host over SSH" in str(failed.value)
    [request] = pushed
    assert request["InstanceId"] == "i-0cafe00000000000"
    assert request["InstanceOSUser"] == "admin"
    assert not built


def test_fab_deploy_instance_connect_needs_the_inventorys_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNET_DOCKER", "true")
    path = _inventory(tmp_path, free_port())
    with pytest.raises(Exit, match=r"--instance-connect needs the host's EC2 instance id"):
        release.deploy(Context(), version="v1", inventory=str(path), instance_connect=True)


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        ("rollback", {}),
        ("releases", {}),
        ("logs", {}),
        ("status", {}),
        ("top", {"once": True}),
    ],
)
def test_every_host_task_pushes_right_before_it_connects(
    task: str,
    kwargs: dict[str, Any],
    nowhere: tuple[int, str],
    pushed: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listens there: each task reports the host unreachable, after the key went out
    for its instance and user (and only when the connection was about to open)."""
    port, path = nowhere
    with pytest.raises(Exit) as failed:
        getattr(release, task)(Context(), inventory=path, instance_connect=True, **kwargs)
    said = str(failed.value) + "".join(capsys.readouterr())
    assert f"127.0.0.1:{port}" in said, said
    [request] = pushed
    assert request["InstanceId"] == "i-0cafe00000000000"
    assert request["InstanceOSUser"] == "admin"


def test_a_host_task_refuses_instance_connect_without_the_instance(tmp_path: Path) -> None:
    path = _inventory(tmp_path, free_port())
    with pytest.raises(Exit, match=r"--instance-connect needs the host's EC2 instance id"):
        release.status(Context(), inventory=str(path), instance_connect=True)


def test_doctor_pushes_no_key_to_a_host_whose_ssh_port_is_closed(
    nowhere: tuple[int, str],
    pushed: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The key goes out only when a login is about to happen: doctor stops at the port."""
    port, path = nowhere
    with pytest.raises(Exit):
        release.doctor(Context(), inventory=path, instance_connect=True)
    assert f"127.0.0.1:{port}" in capsys.readouterr().out
    assert pushed == []
