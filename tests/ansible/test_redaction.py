"""The Redis password that site.yml hands the chat hosts never reaches an output: not the chat
server's error line for a malformed PYNET_BACKPLANE (it goes to the journal), not the diff of a
dry run. The dry run itself is run on a host in test_host_upkeep_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jinja2
import pytest
import yaml

from chat.config import mask_password
from tests.ansible.ansible_helpers import REPO, ROLES

PASSWORD = "s3cr3t-Pa55word"

MALFORMED = [
    f"redis://pynet:{PASSWORD}@10.0.0.5:notaport/0",  # a port that is not a number
    f"redis://pynet:{PASSWORD}@10.0.0.5:6379/zero",  # a database that is not a number
    f"http://pynet:{PASSWORD}@10.0.0.5:6379/0",  # another scheme
    f"redis://{PASSWORD}@:6379/0",  # no host, password-only form
    f"redis:/pynet:{PASSWORD}@10.0.0.5:6379/0",  # one slash
    f"pynet:{PASSWORD}@10.0.0.5:6379",  # no scheme at all
]


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize("source", ["env", "flag"])
def test_a_malformed_backplane_is_refused_without_its_password(source: str, url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNET_")}
    argv = [sys.executable, "-m", "chat.server", "--port", "0"]
    if source == "env":
        env["PYNET_BACKPLANE"] = url
    else:
        argv += ["--backplane", url]
    proc = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert PASSWORD not in proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()  # still one line naming what is wrong
    assert ("PYNET_BACKPLANE" if source == "env" else "--backplane") in line
    assert mask_password(url) in line


def test_the_mask_keeps_what_helps_and_hides_every_password_form() -> None:
    assert mask_password("redis://pynet:pw@h:1/0") == "redis://pynet:***@h:1/0"
    assert mask_password("rediss://:pw@h/0") == "rediss://:***@h/0"
    assert mask_password("redis://pw@h") == "redis://***@h"
    assert mask_password("redis://u:p@ss@h:1/0") == "redis://u:***@h:1/0"  # '@' in a password
    assert mask_password("redis://h:6379/0") == "redis://h:6379/0"


def diff_shown(**values: object) -> bool:
    """The `diff:` of the role's task that writes chat.env, evaluated for VALUES."""
    tasks = yaml.safe_load((ROLES / "chat" / "tasks" / "main.yml").read_text())
    (task,) = [t for t in tasks if t.get("name") == "Write the chat settings."]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    return env.from_string(task["diff"]).render(values) == "True"


def test_the_settings_diff_is_hidden_while_they_hold_a_password() -> None:
    assert diff_shown(chat_backplane="", chat_env={})
    assert not diff_shown(chat_backplane=f"redis://pynet:{PASSWORD}@h:6379/0", chat_env={})
    assert not diff_shown(chat_backplane="", chat_env={"PYNET_BACKPLANE": "redis://h/0"})
