"""inventory/hosts.yml: written by `fab launch`, read by Ansible and the deploy tasks; and the
dynamic inventory/aws_ec2.yml, which finds one deployment's hosts by tag."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pynet import inventory
from pynet.aws.requests import DEBIAN_OWNER, tag_specifications
from pynet.inventory import Host
from tests.aws.helpers import VENV_BIN, Run, ec2_client, run

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


# --- the dynamic inventory (inventory/aws_ec2.yml) against moto_server -------------------------


def _tagged_instances(env: dict[str, str], deployments: list[str]) -> dict[str, str]:
    """One running instance per deployment name, tagged as `fab launch` tags them; name -> IP."""
    ec2 = ec2_client(env)
    ami = ec2.describe_images(Owners=[DEBIAN_OWNER])["Images"][0]["ImageId"]
    addresses = {}
    for deployment in deployments:
        [instance] = ec2.run_instances(
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=tag_specifications(deployment, "instance"),
        )["Instances"]
        described = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
        addresses[deployment] = described["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    return addresses


def _groups(env: dict[str, str], deployment: str) -> tuple[Run, dict[str, list[str]]]:
    env = {**env, "PYNET_DEPLOYMENT": deployment, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"}
    done = run([str(VENV_BIN / "ansible-inventory"), "-i", "inventory/aws_ec2.yml", "--list"], env)
    if done.code:
        return done, {}
    data = json.loads(done.out)
    return done, {g: sorted(data.get(g, {}).get("hosts", [])) for g in ("chat", "redis")}


def test_the_dynamic_inventory_is_one_deployment_with_chat_and_redis_groups(
    cli_env: dict[str, str],
) -> None:
    ip = _tagged_instances(
        cli_env, ["solo", "team-chat1", "team-chat2", "team-redis", "teammate", "other-redis"]
    )
    done, groups = _groups(cli_env, "team")
    assert done.code == 0, done.err
    assert groups == {
        "chat": sorted([ip["team-chat1"], ip["team-chat2"]]),
        "redis": [ip["team-redis"]],
    }
    done, groups = _groups(cli_env, "solo")
    assert done.code == 0, done.err
    assert groups == {"chat": [ip["solo"]], "redis": []}
    # A single host whose name ends in -redis is a chat host when it is the one asked for.
    done, groups = _groups(cli_env, "other-redis")
    assert groups == {"chat": [ip["other-redis"]], "redis": []}


def test_the_dynamic_inventory_needs_a_deployment_name(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "PYNET_DEPLOYMENT"}
    env["ANSIBLE_INVENTORY_UNPARSED_FAILED"] = "true"
    done = run([str(VENV_BIN / "ansible-inventory"), "-i", "inventory/aws_ec2.yml", "--list"], env)
    assert done.code != 0
    assert "set PYNET_DEPLOYMENT to the name given to `fab launch`" in done.err
