"""Each role's README documents exactly the variables of its defaults/main.yml."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.ansible.ansible_helpers import ROLES

ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "defaults" / "main.yml").exists())


def test_there_are_roles() -> None:
    assert set(ROLE_NAMES) >= {"chat", "docker", "hardening"}


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_readme_documents_exactly_the_defaults(role: str) -> None:
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    readme = (ROLES / role / "README.md").read_text()
    # A variable is documented where the README names it in code: `name` or `name: value`.
    documented = set(re.findall(rf"`({role}_[a-z0-9_]+)(?:`|:)", readme))
    assert all(name.startswith(f"{role}_") for name in defaults), "defaults need the role prefix"
    assert sorted(set(defaults) - documented) == [], "in defaults/main.yml but not in README.md"
    assert sorted(documented - set(defaults)) == [], "in README.md but not in defaults/main.yml"
