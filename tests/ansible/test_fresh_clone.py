"""A fresh clone, plain tools: `ansible-lint` and `--syntax-check` with no flags and no environment.

Before `fab launch` writes inventory/hosts.yml, ansible.cfg still names an inventory that parses
(inventory/groups.yml), so neither tool needs ANSIBLE_INVENTORY or -i.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ansible.ansible_helpers import BIN, REPO


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a clone has (tracked, or new and not ignored): no inventory/hosts.yml."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    root = tmp_path_factory.mktemp("clone")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    assert not (root / "inventory" / "hosts.yml").exists()
    return root


def plain(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The tool as a user runs it: no ANSIBLE_* variable, the venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1")
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_syntax_check_passes(clone: Path) -> None:
    proc = plain(["ansible-playbook", "playbooks/site.yml", "--syntax-check"], clone)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(600)
def test_ansible_lint_passes(clone: Path) -> None:
    proc = plain(["ansible-lint"], clone)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "Profile 'production' was required, and it passed" in report, report
