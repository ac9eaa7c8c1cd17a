"""`molecule test` of each role on the local EC2-like systemd image, on Debian 12 and 13 at once.

The shared base config (.config/molecule/config.yml) gives every scenario two platforms,
pynet-molecule-bookworm and pynet-molecule-trixie, converged side by side (slow: about
two to three minutes a role).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ansible.ansible_helpers import molecule_test

pytestmark = [pytest.mark.e2e, pytest.mark.molecule]


@pytest.mark.timeout(1500)
def test_docker_role(host_images: dict[str, str]) -> None:
    molecule_test("docker", host_images)


@pytest.mark.timeout(1500)
def test_hardening_role(host_images: dict[str, str]) -> None:
    molecule_test("hardening", host_images)


@pytest.mark.timeout(1500)
def test_chat_role(host_images: dict[str, str], chat_image_archive: Path) -> None:
    molecule_test("chat", host_images, PYNET_CHAT_IMAGE_ARCHIVE=str(chat_image_archive))
