"""The chat unit's sandbox, scored offline: the role's unit and drop-in rendered as the role does.

`systemd-analyze security --offline=true` reads the files without booting anything; the role's
Molecule verify and tests/ansible/test_site_e2e.py score the unit on a provisioned host too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ansible.ansible_helpers import CHAT, render, role_vars

MAX_EXPOSURE = 2.0
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def unit_template() -> str:
    """The role's one unit template (`pynet-chat.service.j2` or `pynet-chat@.service.j2`)."""
    (template,) = (CHAT / "templates").glob("*.service.j2")
    return template.name


def unit_name(service: str) -> str:
    """A template unit (`name@.service`) is scored as one of its instances."""
    return service.replace("@.", "@sandbox-test.")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root directory holding the rendered unit and its drop-in where the role puts them."""
    values = role_vars()
    root = tmp_path_factory.mktemp("root")
    units = root / "etc" / "systemd" / "system"
    dropins = units / f"{values['chat_service']}.d"
    dropins.mkdir(parents=True)
    (units / values["chat_service"]).write_text(render(unit_template(), values))
    (dropins / "sandbox.conf").write_text(render("sandbox.conf.j2", values))
    return root


def analyze(root: Path, unit: str) -> tuple[float, str]:
    # scripts/system-deps.sh installs it (Debian's systemd package).
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = proc.stdout + proc.stderr
    match = EXPOSURE.search(report)
    assert match, report
    return float(match[1]), report


def test_the_unit_scores_at_most_2(root: Path) -> None:
    score, report = analyze(root, unit_name(role_vars()["chat_service"]))
    print(f"systemd-analyze security --offline: {score}")
    assert score <= MAX_EXPOSURE, report


def test_without_the_drop_in_the_unit_is_exposed(root: Path, tmp_path: Path) -> None:
    """The score comes from the drop-in: the bare unit is what the issue measured (9.6)."""
    bare = tmp_path / "root"
    shutil.copytree(root, bare)
    for dropin in (bare / "etc" / "systemd" / "system").glob("*.d"):
        shutil.rmtree(dropin)
    score, report = analyze(bare, unit_name(role_vars()["chat_service"]))
    assert score > 5.0, report


def test_the_drop_in_keeps_what_the_docker_client_needs() -> None:
    """The docker socket (AF_UNIX), chat.env readable, no write access needed anywhere."""
    conf = render("sandbox.conf.j2", role_vars())
    settings = dict(
        line.split("=", 1) for line in conf.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["RestrictAddressFamilies"] == "AF_UNIX"
    assert settings["ProtectSystem"] == "strict"  # read-only /etc still reads chat.env
    assert "InaccessiblePaths" not in settings
    assert "User" not in settings  # root by ownership of /run/docker.sock and chat.env
