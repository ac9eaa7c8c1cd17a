"""Fixtures of the Ansible suites: the EC2-like host image of every Debian release."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def host_images(docker_engine: None) -> dict[str, str]:
    """{suite: image} of the local EC2-like host on each Debian release (bookworm, trixie)."""
    from pynet.local.images import SUITES, ensure_host_image

    return {suite: ensure_host_image(suite) for suite in SUITES}
