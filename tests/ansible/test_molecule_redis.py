"""`molecule test` of the redis role on the local EC2-like host, Debian 12 and 13 (slow)."""

from __future__ import annotations

import pytest

from tests.ansible.ansible_helpers import molecule_test

pytestmark = [pytest.mark.e2e, pytest.mark.molecule]


@pytest.mark.timeout(1500)
def test_redis_role(host_images: dict[str, str]) -> None:
    molecule_test("redis", host_images)
