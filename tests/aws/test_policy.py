"""The IAM policies the docs give are the calls the tasks really make.

Every AWS call of the real tasks (run in-process against moto, through the clients they make
themselves) is recorded with a botocore `before-call` hook on every client created, and must be
granted by the documented policy: iam/operator-policy.json for the operator's tasks,
iam/deploy-role-policy.json for what the CI deploy job runs. The other way round, an action the
operator policy grants that no run needs must be one of the few granted for a reason the runs
cannot show (tags and roles AWS checks implicitly). docs/aws.md shows the operator policy: it must
be the file, word for word.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from invoke.context import Context

from pynet import ci
from pynet.aws.errors import service_of
from pynet.aws.session import Clients, connect
from pynet.deploy.hosts import targets
from pynet.deploy.instance_connect import InstanceConnect
from pynet.tasks import access, cloud, cluster
from tests.aws.helpers import SSH, moto_ami, public_key

REPO = Path(__file__).resolve().parents[2]
OPERATOR_POLICY = REPO / "iam" / "operator-policy.json"
DEPLOY_POLICY = REPO / "iam" / "deploy-role-policy.json"

#: IAM prefixes that differ from the botocore signing name.
_PREFIX = {"monitoring": "cloudwatch"}

#: Calls IAM never refuses: no policy needs to grant them.
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}

#: Actions the operator policy grants although no API call names them: AWS checks them on the
#: side of another call, so a recording cannot see them.
IMPLICIT = {
    "ec2:CreateTags": "TagSpecifications of RunInstances, CreateSecurityGroup, key pairs, EIP",
    "cloudwatch:TagResource": "Tags of PutMetricAlarm",
    "logs:TagResource": "tags of CreateLogGroup",
    "logs:TagLogGroup": "tags of CreateLogGroup (the older API name)",
    "iam:TagRole": "Tags of CreateRole",
    "iam:TagInstanceProfile": "Tags of CreateInstanceProfile",
    "iam:PassRole": "IamInstanceProfile of RunInstances and AssociateIamInstanceProfile",
    "iam:CreateServiceLinkedRole": "the first alarm with an EC2 action makes AWS's own role",
    "elasticloadbalancing:AddTags": "Tags of CreateLoadBalancer and CreateTargetGroup",
}


def actions(path: Path) -> set[str]:
    """Every action an Allow statement of the policy at PATH grants (wildcards kept)."""
    granted = set()
    for statement in json.loads(path.read_text())["Statement"]:
        assert statement["Effect"] == "Allow"
        named = statement["Action"]
        granted |= {named} if isinstance(named, str) else set(named)
    return granted


def granted_by(action: str, granted: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), g.lower()) for g in granted)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, clients: Clients) -> set[str]:
    """IAM actions of every call made by any client created from now on (in-process moto)."""
    calls: set[str] = set()
    create_client = botocore.session.Session.create_client

    def record(model: Any, **_: Any) -> None:
        signing = model.service_model.signing_name
        calls.add(f"{_PREFIX.get(signing, signing)}:{model.name}")

    def recording_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = create_client(self, *args, **kwargs)
        client.meta.events.register("before-call", record)
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", recording_client)
    return calls


def _run(task: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    task(Context(), *args, **kwargs)


def _push_keys(inventory: str) -> None:
    """What `fab deploy --instance-connect` asks of AWS before it logs in to each host."""
    pushing = InstanceConnect(connect)
    for target in targets(Context(), inventory):
        pushing.prepare(target)


def test_every_call_of_the_operators_tasks_is_in_the_policy(
    recorded: set[str], clients: Clients, name: str, aws_env: Path, tmp_path: Path
) -> None:
    ami = moto_ami(clients)
    inventory = str(tmp_path / "hosts.yml")
    # Launch (AWS makes the key pair), stop, relaunch: started again, logging profile attached.
    _run(cloud.launch, name, ssh_cidr=SSH, ami=ami, eip=True, inventory=inventory)
    [host] = [h for h in cloud.ec2.list_hosts(clients) if h.name == name]
    clients.ec2.stop_instances(InstanceIds=[host.instance_id])
    _run(cloud.launch, name, ssh_cidr=SSH, ami=ami, cloudwatch_logs=True, inventory=inventory)
    _push_keys(inventory)  # fab deploy --instance-connect
    _run(cloud.hosts)
    _run(access.allow_ssh, name, ssh_cidr="198.51.100.4/32", ssh_label="bob")
    _run(access.allow_ssh, name, ssh_label="bob", remove=True)
    _run(cloud.destroy, name, yes=True, inventory=inventory)
    # A cluster with the operator's own key and the Amazon Linux image looked up in SSM.
    (aws_env / ".ssh" / "id_ed25519.pub").write_bytes(public_key() + b"\n")
    group = f"c{name[-6:]}"
    _run(cluster.launch_cluster, group, count=1, os="al2023", ssh_cidr=SSH, inventory=inventory)
    _run(cluster.destroy_cluster, group, yes=True, inventory=inventory)

    granted = actions(OPERATOR_POLICY)
    missing = {a for a in recorded - NEEDS_NO_PERMISSION if not granted_by(a, granted)}
    assert not missing, f"the tasks call these, the policy does not grant them: {missing}"
    # A denial names the action to grant (pynet.aws.errors): it must be the one IAM checks.
    named = {f"{service_of(a.split(':')[1])}:{a.split(':')[1]}" for a in recorded}
    assert named == recorded, f"a denial would name {named - recorded}"
    for needed in (
        "elasticloadbalancing:CreateLoadBalancer",
        "ec2:ModifyInstanceAttribute",
        "ec2-instance-connect:SendSSHPublicKey",
    ):
        assert needed in recorded  # the recording sees the cluster's calls
    unused = {g for g in granted if not any(fnmatch.fnmatchcase(a, g) for a in recorded)}
    assert unused <= set(IMPLICIT), (
        f"granted, never called, no reason given: {unused - set(IMPLICIT)}"
    )


def test_every_call_of_the_deploy_job_is_in_the_deploy_role_policy(
    recorded: set[str],
    clients: Clients,
    name: str,
    aws_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What .github/workflows/deploy.yml runs with the role's credentials."""
    inventory = tmp_path / "hosts.yml"
    _run(cloud.launch, name, ssh_cidr=SSH, ami=moto_ami(clients), inventory=str(inventory))
    pinned = (tmp_path / "known_hosts").read_text().split(None, 1)[1]
    [host] = cloud.ec2.list_hosts(clients)[-1:]
    recorded.clear()
    monkeypatch.setenv("PYNET_HOST", str(host.public_ip))
    (tmp_path / "known_hosts").write_text(f"{host.public_ip} {pinned}")
    _run(access.allow_ssh, name, ssh_cidr="192.0.2.50/32", ssh_label="github-actions")
    assert ci.main([name]) == 0
    _push_keys(str(inventory))  # fab deploy --instance-connect, from what pynet.ci wrote
    _run(access.allow_ssh, name, ssh_label="github-actions", remove=True)
    granted = actions(DEPLOY_POLICY)
    missing = {a for a in recorded - NEEDS_NO_PERMISSION if not granted_by(a, granted)}
    assert not missing, f"the deploy job calls these, its role may not: {missing}"
    assert recorded - NEEDS_NO_PERMISSION == granted  # and nothing more is granted


def test_the_docs_show_the_operator_policy_file() -> None:
    text = (REPO / "docs" / "aws.md").read_text(encoding="utf-8")
    section = text[text.index("## IAM permissions") :]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "docs/aws.md shows no policy under ## IAM permissions"
    assert json.loads(block[1]) == json.loads(OPERATOR_POLICY.read_text())
