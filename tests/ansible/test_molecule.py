"""`molecule test` of each role on the local EC2-like systemd image, on Debian 12 and 13 at once.

The shared base config (.config/molecule/config.yml) gives every scenario two platforms,
pynet-molecule-bookworm and pynet-molecule-trixie, converged side by side (slow: about
two to three minutes a role).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ansible.ansible_helpers import REPO, ROLES, run, tool
from tests.ansible.conftest import molecule_images

pytestmark = [pytest.mark.e2e, pytest.mark.molecule]

BASE_CONFIG = REPO / ".config" / "molecule" / "config.yml"


def molecule_test(role: str, host_images: dict[str, str], **env: str) -> None:
    """`molecule test` of ROLE's default scenario, with the shared base config named explicitly."""
    argv = [tool("molecule"), "--base-config", str(BASE_CONFIG), "test"]
    proc = run(argv, cwd=ROLES / role, timeout=1500, **molecule_images(host_images), **env)
    print(f"molecule test ({role}, {', '.join(host_images)}): {proc.duration:.0f} s")
    assert proc.returncode == 0, proc.stdout[-8000:]
    for suite in host_images:  # both platforms went through converge and verify
        assert f"pynet-molecule-{suite}" in proc.stdout, proc.stdout[-8000:]


@pytest.mark.timeout(1500)
def test_docker_role(host_images: dict[str, str]) -> None:
    molecule_test("docker", host_images)


@pytest.mark.timeout(1500)
def test_hardening_role(host_images: dict[str, str]) -> None:
    molecule_test("hardening", host_images)


@pytest.mark.timeout(1500)
def test_chat_role(host_images: dict[str, str], chat_image_archive: Path) -> None:
    molecule_test("chat", host_images, PYNET_CHAT_IMAGE_ARCHIVE=str(chat_image_archive))
