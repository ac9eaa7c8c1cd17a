"""Which hosts the release tasks act on, and where their chat port is reached from here."""

from __future__ import annotations

from pathlib import Path

import pytest
from fabric import Config
from invoke.context import Context

from pynet import inventory
from pynet.deploy.hosts import NoHosts, targets


def test_inventory_hosts_carry_ssh_and_chat_ports(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PYNET_APP_PORT", raising=False)
    path = tmp_path / "hosts.yml"
    inventory.write_hosts(
        [
            inventory.Host(
                "local", "127.0.0.1", "admin", port=2222, key_file="/k", chat_port=15050
            ),
            inventory.Host("aws", "198.51.100.7", "admin"),
        ],
        path,
    )
    local, aws = targets(Context(Config()), str(path))
    assert (local.conn.host, local.conn.port, local.public_port()) == ("127.0.0.1", 2222, 15050)
    assert local.conn.connect_kwargs["key_filename"] == ["/k"]
    assert (aws.conn.port, aws.public_port()) == (22, 5050)
    assert aws.public_port(override=6000) == 6000
    monkeypatch.setenv("PYNET_APP_PORT", "7000")
    assert aws.public_port() == 7000


def test_no_inventory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NoHosts, match="fab launch"):
        targets(Context(Config()), str(tmp_path / "missing.yml"))
