"""`molecule test` of the redis role on the local EC2-like systemd image (slow)."""

from __future__ import annotations

import pytest

from tests.ansible.test_molecule import molecule_test

pytestmark = [pytest.mark.e2e, pytest.mark.molecule]


@pytest.mark.timeout(900)
def test_redis_role(host_image: str) -> None:
    molecule_test("redis", PYNET_HOST_IMAGE=host_image)
