"""The Ansible code passes ansible-lint (production profile) and yamllint."""

from __future__ import annotations

import pytest
from ansible_helpers import run, tool


def test_yamllint_is_clean() -> None:
    proc = run([tool("yamllint"), "--strict", "."], timeout=300)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile_is_clean() -> None:
    # inventory/ holds the aws_ec2 source, which needs AWS_REGION: lint against no real hosts.
    proc = run(
        [tool("ansible-lint"), "--offline", "roles", "playbooks"],
        timeout=600,
        ANSIBLE_INVENTORY="localhost,",
    )
    assert proc.returncode == 0, proc.stdout
    assert "Profile 'production' was required, and it passed" in proc.stdout, proc.stdout
