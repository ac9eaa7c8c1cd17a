"""`molecule test` of each role, on the local EC2-like systemd image (slow: about 90-120 s each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ansible.ansible_helpers import ROLES, run, tool

pytestmark = [pytest.mark.e2e, pytest.mark.molecule]


def molecule_test(role: str, **env: str) -> None:
    proc = run([tool("molecule"), "test"], cwd=ROLES / role, timeout=900, **env)
    print(f"molecule test ({role}): {proc.duration:.0f} s")
    assert proc.returncode == 0, proc.stdout[-8000:]


@pytest.mark.timeout(900)
def test_docker_role(host_image: str) -> None:
    molecule_test("docker", PYNET_HOST_IMAGE=host_image)


@pytest.mark.timeout(900)
def test_hardening_role(host_image: str) -> None:
    molecule_test("hardening", PYNET_HOST_IMAGE=host_image)


@pytest.mark.timeout(900)
def test_chat_role(host_image: str, chat_image_archive: Path) -> None:
    molecule_test(
        "chat", PYNET_HOST_IMAGE=host_image, PYNET_CHAT_IMAGE_ARCHIVE=str(chat_image_archive)
    )
