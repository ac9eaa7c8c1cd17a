"""The GitHub workflows and the deploy role's IAM policies keep the promises of docs/ci.md.

Workflows cannot run here, so they are linted offline (zizmor, the workflow JSON schema) and the
points that make the deploy safe are asserted one by one, so none of them can drift.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOWS = REPO / ".github" / "workflows"
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    return {("on" if key is True else key): value for key, value in data.items()}


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_zizmor_offline_finds_nothing() -> None:
    proc = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", str(WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_match_the_github_schema() -> None:
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, sorted(WORKFLOWS.glob("*.yml"))),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["tests.yml", "deploy.yml"])
def test_every_action_is_pinned_to_a_commit_and_says_its_version(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    for line in text.splitlines():
        match = re.match(r"^\s*(?:- )?uses: (\S+)(.*)$", line)
        if not match or match[1].startswith("./"):
            continue
        assert SHA_PIN.match(match[1]), line
        assert re.search(r"#\s*v\d+\.\d+\.\d+", match[2]), f"no version comment: {line}"


@pytest.mark.parametrize("name", ["tests.yml", "deploy.yml"])
def test_no_event_text_is_expanded_in_run(name: str) -> None:
    for step in steps(load(name)):
        if "run" in step:
            assert "${{" not in step["run"], step["run"]
        for value in (step.get("env") or {}).values():
            assert "github.event" not in str(value)
            assert "github.head_ref" not in str(value)


def test_tests_run_on_pull_requests_and_pushes() -> None:
    workflow = load("tests.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(workflow["on"])
    assert workflow["permissions"] == {"contents": "read"}
    assert [s["run"] for s in steps(workflow) if "run" in s] == ['sudo env "PATH=$PATH" .ci/run']
    for step in steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


def test_deploy_runs_after_the_tests_on_main_one_at_a_time_with_oidc() -> None:
    workflow = load("deploy.yml")
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    assert jobs["tests"]["uses"] == "./.github/workflows/tests.yml"
    deploy = jobs["deploy"]
    assert deploy["needs"] == "tests"
    assert deploy["environment"] == "production"
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert deploy["permissions"] == {"contents": "read", "id-token": "write"}
    [aws] = [s for s in deploy["steps"] if "configure-aws-credentials" in s.get("uses", "")]
    assert aws["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    assert not {"aws-access-key-id", "aws-secret-access-key"} & set(aws["with"])
    # The host key comes pinned from the environment; the deploy goes through the pinned file.
    runs = "\n".join(s.get("run", "") for s in deploy["steps"])
    assert "printf '%s\\n' \"$PYNET_KNOWN_HOSTS\" > inventory/known_hosts" in runs
    assert "python -m pynet.ci production" in runs
    assert "StrictHostKeyChecking=no" not in runs
    # The runner lets itself in after the checks, and always takes itself out again.
    commands = [s["run"] for s in deploy["steps"] if "run" in s]
    allow = "fab allow-ssh --name production --ssh-label github-actions"
    assert commands[-3:] == [allow, "fab deploy --instance-connect", f"{allow} --remove"]
    # No long-lived SSH key: the job holds no secret at all (the login key lives 60 s).
    assert "secrets." not in (REPO / ".github" / "workflows" / "deploy.yml").read_text()
    assert deploy["steps"][-1]["if"] == "always()"
    assert "python -m pynet.ci production" in commands[-4]


def test_the_deploy_job_installs_only_its_hashed_lock() -> None:
    """Every requirement pinned and hashed, at the version the tests ran (requirements-dev.lock)."""
    deploy = load("deploy.yml")["jobs"]["deploy"]
    installs = [s["run"] for s in deploy["steps"] if "pip install" in s.get("run", "")]
    assert installs == [
        "python -m pip install --quiet --require-hashes --no-deps -r requirements-deploy.lock"
    ]
    tested = dict(
        line.split("==")
        for line in (REPO / "requirements-dev.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    tested = {name.lower(): version for name, version in tested.items()}
    text = (REPO / "requirements-deploy.lock").read_text()
    pins = re.findall(
        r"^([A-Za-z0-9_.-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)", text, re.M
    )
    assert len(pins) == len(re.findall(r"^[A-Za-z]", text, re.M)), "a requirement without hash"
    assert {name.lower() for name, _, _ in pins} >= {
        "boto3",
        "fabric",
        "paramiko",
        "pyyaml",
        "rich",
    }
    for name, version, _ in pins:
        assert tested.get(name.lower()) == version, f"{name}=={version} is not what the tests ran"


def test_trust_policy_is_pinned_to_the_repository_and_environment() -> None:
    policy = json.loads((REPO / "iam" / "deploy-trust-policy.json").read_text())
    [statement] = policy["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"]["Federated"].endswith(
        ":oidc-provider/token.actions.githubusercontent.com"
    )
    assert set(statement["Condition"]) == {"StringEquals"}  # exact: no StringLike wildcards
    condition = statement["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    subject = condition["token.actions.githubusercontent.com:sub"]
    assert re.fullmatch(r"repo:[^:*]+/[^:*]+:environment:production", subject)


def test_deploy_role_may_only_look_and_open_ssh_on_the_production_group() -> None:
    """Beyond looking up, the role may change the rules of production's security group only
    (the group's tags), and push a 60-second key for admin to production's instance only;
    tests/aws/test_policy.py checks these are the calls the job makes."""
    policy = json.loads((REPO / "iam" / "deploy-role-policy.json").read_text())
    look, change, push = policy["Statement"]
    assert sorted(look["Action"]) == ["ec2:DescribeInstances", "ec2:DescribeSecurityGroups"]
    assert sorted(change["Action"]) == [
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
    ]
    assert re.fullmatch(r"arn:aws:ec2:[a-z0-9-]+:\d{12}:security-group/\*", change["Resource"])
    assert change["Condition"]["StringEquals"]["aws:ResourceTag/pynet:deployment"] == "production"
    assert change["Condition"]["StringEquals"]["aws:ResourceTag/pynet:app"] == "pynet"
    assert push["Action"] == "ec2-instance-connect:SendSSHPublicKey"
    assert re.fullmatch(r"arn:aws:ec2:[a-z0-9-]+:\d{12}:instance/\*", push["Resource"])
    assert push["Condition"]["StringEquals"] | {"aws:RequestedRegion": ""} == {
        "aws:RequestedRegion": "",
        "aws:ResourceTag/pynet:app": "pynet",
        "aws:ResourceTag/pynet:deployment": "production",
        "ec2:osuser": "admin",
    }
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "aws:RequestedRegion" in statement["Condition"]["StringEquals"]


#: Imported when installed, not needed: botocore falls back to its own CA bundle without it.
OPTIONAL = {"certifi"}


def _normal(name: str) -> str:
    """A name as pip compares them (PEP 503): prometheus_client is prometheus-client."""
    return re.sub(r"[-_.]+", "-", name).lower()


IMPORTS = """
import importlib.metadata, json, sys
before = set(sys.modules)  # the interpreter's own start-up (site hooks) is not the job's
import fabfile, fabric.main, pynet.ci  # what the deploy job runs: Fabric's fab and pynet.ci
import importlib, pynet.aws.session  # and what its AWS calls import when they first run
for name in pynet.aws.session.LAZY_IMPORTS:
    importlib.import_module(name)
found = importlib.metadata.packages_distributions()
tops = {name.split(".")[0] for name in set(sys.modules) - before}
print(json.dumps(sorted({d for top in tops for d in found.get(top, [])})))
"""


def test_the_deploy_lock_holds_everything_the_deploy_job_imports() -> None:
    """Loading the tasks and pynet.ci imports no distribution the hashed lock lacks (a task
    module importing, say, redis would break the deploy job, not the tests)."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = {_normal(name) for name in json.loads(proc.stdout)} - {"pynet"} - OPTIONAL
    text = (REPO / "requirements-deploy.lock").read_text()
    locked = {_normal(name) for name in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.M)}
    assert imported <= locked, f"the deploy job would lack {imported - locked}"
    assert {"boto3", "fabric", "paramiko", "pyyaml", "rich"} <= imported
