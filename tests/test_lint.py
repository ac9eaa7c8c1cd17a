"""The code is lint clean: ruff for Python, yamllint and ansible-lint (production) for Ansible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
        check=False,
    )


def test_ruff_is_clean() -> None:
    proc = run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_applied() -> None:
    proc = run("ruff", "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_is_clean() -> None:
    proc = run("yamllint", "--strict", ".")
    assert proc.returncode == 0, proc.stdout


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile_is_clean() -> None:
    # Lint against no real hosts: the inventory file may not exist on a fresh clone.
    proc = run(
        "ansible-lint",
        "--offline",
        "roles",
        "playbooks",
        ANSIBLE_INVENTORY="localhost,",
        NO_COLOR="1",
    )
    report = proc.stdout + proc.stderr  # the verdict goes to stderr
    assert proc.returncode == 0, report
    assert "Profile 'production' was required, and it passed" in report, report
