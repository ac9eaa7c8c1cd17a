"""`python -m pynet.ci`: the deploy workflow's inventory, checked against the tagged instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from pynet import ci, inventory
from pynet.aws.ec2 import LaunchSpec, launch
from pynet.aws.errors import CloudError
from pynet.aws.keys import LocalKey
from pynet.aws.session import Clients
from pynet.hostkeys import HostKeyPair
from tests.aws.helpers import public_key


def _launched(clients: Clients, name: str, home: Path) -> tuple[str, str]:
    ami = clients.ssm.get_parameter(
        Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )["Parameter"]["Value"]
    spec = LaunchSpec(name=name, ssh_cidr="203.0.113.7/32", ami=ami, recovery=False)
    host = launch(clients, spec, LocalKey(public_key(), None), home=home, poll=0.01).host
    assert host.public_ip
    return host.public_ip, host.host_key


def test_check_accepts_the_tagged_host_and_its_launch_key(
    clients: Clients, aws_env: Path, name: str
) -> None:
    address, key = _launched(clients, name, aws_env)
    host, region = ci.check(name, address, key)
    assert (host.public_ip, region) == (address, clients.region)
    with pytest.raises(
        CloudError, match=rf"PYNET_HOST 198\.51\.100\.9 is not the address of {name}"
    ):
        ci.check(name, "198.51.100.9", key)
    with pytest.raises(CloudError, match=r"not the key .* was launched with"):
        ci.check(name, address, HostKeyPair.generate().public)
    with pytest.raises(CloudError, match=r"no running instance tagged pynet:deployment=nobody"):
        ci.check("nobody", address, key)


def test_main_writes_the_pinned_inventory(
    clients: Clients, aws_env: Path, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, key = _launched(clients, name, aws_env)
    known = tmp_path / "known_hosts"  # beside PYNET_INVENTORY (tmp_path / hosts.yml)
    known.write_text(f"{address} {key}\n")
    monkeypatch.setenv("PYNET_HOST", address)
    assert ci.main([name]) == 0
    [host] = inventory.read_hosts()
    assert (host.name, host.address, host.user) == (name, address, "admin")
    assert host.known_hosts == str(known.resolve())
    # No stored key: fab deploy --instance-connect pushes one for 60 s to this instance.
    assert host.key_file is None
    assert host.extra == {
        "pynet_instance_id": ci.check(name, address, key)[0].instance_id,
        "pynet_region": "eu-central-1",
    }

    known.write_text("198.51.100.9 " + key + "\n")
    assert ci.main([name]) == 1
