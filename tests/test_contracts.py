"""One source per contract: a name or number spelled in two places has a test holding them together.

- The chat role's fixed names (roles/chat/vars/main.yml) against what `fab deploy` runs
  (pynet/deploy/commands.py): docs/design.md, "Contract between the chat role and fab deploy".
- The chat port: one constant, `chat.PORT`; the Dockerfile and the role spell it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import chat
from chat import config
from pynet import inventory
from pynet.aws import requests
from pynet.deploy import commands
from pynet.local import host

REPO = Path(__file__).resolve().parents[1]
ROLE = REPO / "roles" / "chat"

#: role variable -> (constant of pynet/deploy/commands.py, how the role's value reads there).
SHARED: dict[str, tuple[str, str]] = {
    "chat_image_repository": ("IMAGE", "{}"),
    "chat_image_current": ("CURRENT", "{}"),
    "chat_unit_prefix": ("UNIT_PREFIX", "{}"),
    "chat_container_prefix": ("CONTAINER_PREFIX", "{}"),
    "chat_deploy_dir": ("STATE_DIR", "{}"),
    "chat_handover_dir": ("HANDOVER_DIR", "{}"),
    "chat_service": ("UNIT_PREFIX", "{}.service"),  # the template unit pynet-chat@.service
}
#: The role's fixed names that the deploy commands do not use, and why they are fixed anyway.
ROLE_ONLY = {
    "chat_history_volume": "the container's volume: survives releases, never named by a deploy",
    "chat_history_dir": "where that volume is mounted inside the container",
    "chat_env_file": "the settings file every release reads (--env-file)",
    "chat_handed_over_exit": "the exit status of a release that handed over (the unit's business)",
    "chat_docker_log_args": "derived from the chat_log_driver default",
    "chat_container_script": "the units' main process (a release's container), the role's own",
    "chat_metadata_unit": "the unit every release requires: the metadata service blocked",
    "chat_metadata_script": "the rules that block the metadata service, run by that unit",
}


def role_vars() -> dict[str, Any]:
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text()) or {}


def test_every_fixed_name_of_the_role_is_accounted_for() -> None:
    """A new fixed name is either shared with the deploy commands (and compared) or role-only."""
    unknown = sorted(set(role_vars()) - set(SHARED) - set(ROLE_ONLY))
    assert unknown == [], "add them to SHARED (with the commands.py constant) or ROLE_ONLY"
    stale = sorted((set(SHARED) | set(ROLE_ONLY)) - set(role_vars()))
    assert stale == [], "no longer in roles/chat/vars/main.yml: remove them here"


@pytest.mark.parametrize("variable", sorted(SHARED))
def test_the_role_and_the_deploy_commands_agree(variable: str) -> None:
    constant, shape = SHARED[variable]
    assert hasattr(commands, constant), f"pynet/deploy/commands.py has no {constant} any more"
    expected = shape.format(getattr(commands, constant))
    assert role_vars()[variable] == expected, (
        f"roles/chat/vars/main.yml {variable}={role_vars()[variable]!r} but "
        f"pynet/deploy/commands.py {constant} gives {expected!r}"
    )


def test_the_chat_port_is_one_constant() -> None:
    assert config.Settings().port == chat.PORT
    for module, name in (
        (commands, "APP_PORT"),
        (inventory, "CHAT_PORT"),
        (requests, "CHAT_PORT"),
        (host, "CHAT_PORT"),
    ):
        assert getattr(module, name) is chat.PORT, f"{module.__name__}.{name}"


def test_the_files_that_cannot_import_it_spell_the_same_port() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^\s*PYNET_PORT={chat.PORT}\b", dockerfile, re.MULTILINE)
    assert re.search(rf"^EXPOSE {chat.PORT}$", dockerfile, re.MULTILINE)
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["chat_port"] == chat.PORT
    verify = (ROLE / "molecule" / "default" / "verify.yml").read_text()
    assert set(re.findall(r'"(\d{4,5})"', verify)) == {str(chat.PORT)}


def test_the_image_label_names_the_handover_version_the_code_speaks() -> None:
    """`fab deploy` reads the label to know whether the new release can take over at all."""
    from chat import handover

    dockerfile = (REPO / "Dockerfile").read_text()
    labels = re.findall(r'^LABEL io\.pynet\.handover="(\d+)"$', dockerfile, re.MULTILINE)
    assert labels == [str(handover.VERSION)]


def test_the_docs_give_the_fan_out_step_the_server_uses() -> None:
    """bench/README.md and docs/design.md explain figures measured with this step size."""
    from chat import fanout

    step = f"{fanout.FANOUT_STEP:,}"
    bench = (REPO / "bench" / "README.md").read_text()
    assert re.findall(r"`FANOUT_STEP` \(([\d,]+)\)", bench) == [step]
    assert re.findall(r"\*\*([\d,]+) \(chosen\)\*\*", bench) == [step]
    design = (REPO / "docs" / "design.md").read_text()
    assert re.findall(r"a fan-out to more than ([\d,]+) clients", design) == [step]
