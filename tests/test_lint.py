"""Lint is clean: every check of scripts/lint.py, the one list `make lint` and pre-commit run."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest
import yaml

from tests.ansible.ansible_helpers import REPO


def _load_lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lint", REPO / "scripts" / "lint.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lint = _load_lint()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(lint.CHECKS))
def test_check_passes(name: str) -> None:
    proc = lint.run(name)
    report = proc.stdout + proc.stderr  # ansible-lint's verdict goes to stderr
    assert proc.returncode == 0, report
    if name == "ansible-lint":
        assert "Profile 'production' was required, and it passed" in report, report


def test_make_lint_runs_the_same_list() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "no lint target in the Makefile"
    assert recipe[1].strip() == "$(BIN)/python scripts/lint.py"


def test_pre_commit_runs_the_same_list() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [hook["id"] for hook in hooks] == list(lint.CHECKS)
    for hook in hooks:
        assert hook["entry"] == f".venv/bin/python scripts/lint.py {hook['id']}"
        assert hook["language"] == "system"
        assert hook["pass_filenames"] is False
