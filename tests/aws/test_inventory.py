"""inventory/hosts.yml: written by `fab launch`, read by Ansible and the deploy tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pynet import inventory
from pynet.inventory import Host
from tests.aws.helpers import VENV_BIN, run

EC2 = Host("demo", "54.1.2.3", "admin", 22, "/home/me/.ssh/id_ed25519")
LOCAL = Host("rehearsal", "127.0.0.1", "admin", 2222, None)


def test_path_override_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYNET_INVENTORY")
    assert inventory.inventory_path() == inventory.DEFAULT_PATH
    assert inventory.DEFAULT_PATH.parts[-2:] == ("inventory", "hosts.yml")
    monkeypatch.setenv("PYNET_INVENTORY", str(tmp_path / "env.yml"))
    assert inventory.inventory_path() == tmp_path / "env.yml"
    assert inventory.inventory_path(tmp_path / "opt.yml") == tmp_path / "opt.yml"


def test_round_trip_and_upsert(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    assert inventory.read_hosts(path) == []
    inventory.write_hosts([EC2], path)
    assert inventory.read_hosts(path) == [EC2]
    moved = Host("demo", "54.9.9.9", "admin", 22, EC2.key_file)
    inventory.upsert_host(LOCAL, path)
    inventory.upsert_host(moved, path)
    assert sorted(inventory.read_hosts(path), key=lambda h: h.name) == [moved, LOCAL]
    assert inventory.remove_host("demo", path)
    assert not inventory.remove_host("demo", path)
    assert inventory.read_hosts(path) == [LOCAL]


def test_env_path_is_used_by_default(tmp_path: Path) -> None:
    inventory.write_hosts([LOCAL])
    assert Path(os.environ["PYNET_INVENTORY"]).exists()
    assert inventory.read_hosts() == [LOCAL]


def test_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("all: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        inventory.read_hosts(path)


def test_ansible_reads_the_file(tmp_path: Path) -> None:
    path = inventory.write_hosts([EC2, LOCAL], tmp_path / "hosts.yml")
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible")}
    done = run([str(VENV_BIN / "ansible-inventory"), "-i", str(path), "--list"], env)
    assert done.code == 0, done.err
    data = json.loads(done.out)
    assert sorted(data["chat"]["hosts"]) == ["demo", "rehearsal"]
    assert data["_meta"]["hostvars"]["demo"] == {
        "ansible_host": "54.1.2.3",
        "ansible_port": 22,
        "ansible_user": "admin",
        "ansible_ssh_private_key_file": "/home/me/.ssh/id_ed25519",
    }
    assert data["_meta"]["hostvars"]["rehearsal"]["ansible_port"] == 2222
