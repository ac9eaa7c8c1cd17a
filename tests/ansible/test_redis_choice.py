"""The redis role's choice of package on Amazon Linux 2023, run by Ansible on its own.

Molecule cannot boot Amazon Linux here, so the choice (tasks/choose-RedHat.yml: the first
flavour of vars/RedHat.yml the repositories offer at Redis 7 or later, else one line that says
why) runs with ansible-playbook on localhost, fed what `dnf repoquery` would answer: one play
per case, all in one run.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.ansible.ansible_helpers import ROLES, run, tool

FLAVOURS = yaml.safe_load((ROLES / "redis" / "vars" / "RedHat.yml").read_text())[
    "redis_rpm_flavours"
]
NAMES = ("package", "service", "cli", "server", "conf")

CHOSEN = {
    "valkey first": (["redis6 6.2.14", "redis7 7.2.4", "valkey 8.0.3"], "valkey"),
    "redis7 without valkey": (["redis6 6.2.14", "redis7 7.2.4"], "redis7"),
    "dnf's chatter ignored": (
        ["Last metadata expiration check: 0:01:02 ago.", "valkey 10.0.1"],
        "valkey",
    ),
    "spaces ignored": ([" redis7 7.0.0 "], "redis7"),
}
REFUSED = {
    "redis6 only": (["redis6 6.2.14"], "offer redis6 6.2.14, not valkey or redis7 7+"),
    "an old valkey": (["valkey 6.9.9", "redis6 6.2.14"], "offer valkey 6.9.9, redis6 6.2.14, not"),
    "nothing": ([], "offer no Redis at all, not valkey or redis7 7+"),
}

PLAY = """
- name: "Case {case}"
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Choose as the redis role does, and write down the outcome.
      block:
        - name: Run the role's choice.
          ansible.builtin.include_role:
            name: redis
            tasks_from: choose-RedHat.yml
            vars_from: RedHat.yml
            public: true
          vars:
            redis_offered: {offered}

        - name: Write down what the role would install and run.
          ansible.builtin.copy:
            dest: "{out}"
            mode: "0600"
            content: >-
              {{{{ {{'package': redis_os_package, 'service': redis_os_service, 'cli': redis_os_cli,
                  'server': redis_os_server, 'conf': redis_os_conf}} | to_json }}}}
      rescue:
        - name: Write down why it refused.
          ansible.builtin.copy:
            dest: "{out}"
            mode: "0600"
            content: "{{{{ {{'refused': ansible_failed_result.msg}} | to_json }}}}"
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Each case's outcome: what the role chose, or {'refused': its message}."""
    tmp = tmp_path_factory.mktemp("choice")
    cases = {name: offered for name, (offered, _) in {**CHOSEN, **REFUSED}.items()}
    plays = "".join(
        PLAY.format(case=name, offered=json.dumps(offered), out=tmp / f"{index}.json")
        for index, (name, offered) in enumerate(cases.items())
    )
    (tmp / "choose.yml").write_text(plays)
    ran = run(
        [tool("ansible-playbook"), "-i", "localhost,", str(tmp / "choose.yml")],
        timeout=300,
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    assert ran.returncode == 0, ran.stdout[-8000:]
    return {
        name: json.loads((tmp / f"{index}.json").read_text()) for index, name in enumerate(cases)
    }


@pytest.mark.parametrize("case", CHOSEN)
def test_the_first_flavour_at_redis_7_or_later_is_chosen(
    outcomes: dict[str, dict[str, str]], case: str
) -> None:
    package = CHOSEN[case][1]
    flavour = next(f for f in FLAVOURS if f["package"] == package)
    assert outcomes[case] == {key: flavour[key] for key in NAMES}


@pytest.mark.parametrize("case", REFUSED)
def test_no_redis_7_is_refused_in_one_line(outcomes: dict[str, dict[str, str]], case: str) -> None:
    message = outcomes[case].get("refused", "")
    assert "needs Redis 7 or later" in message, outcomes[case]
    assert REFUSED[case][1] in message
    assert "fab launch --os debian13" in message
    assert "\n" not in message
