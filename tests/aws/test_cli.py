"""The real commands (`fab launch/hosts/destroy`, `ansible-inventory`) against moto_server.

moto_server runs on 127.0.0.1 with Debian images loaded (see conftest); AWS_ENDPOINT_URL
points boto3 and the amazon.aws inventory at it. Addresses moto hands out are never contacted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pynet import inventory
from tests.aws.helpers import (
    NEWEST_DEBIAN_AMD64,
    REGION,
    VENV_BIN,
    ec2_client,
    fab,
    fab_many,
    instances,
    one_line_error,
    public_key,
    run_many,
)


def test_launch_twice_hosts_inventory_destroy(cli_env: dict[str, str], tmp_path: Path) -> None:
    first = fab("launch", "--name", "demo", "--ssh-cidr", "203.0.113.7/32", env=cli_env)
    assert first.code == 0, first.err
    assert "demo: launched" in first.out
    assert "ssh user:  admin" in first.out
    assert "next: ansible-playbook" in first.out
    assert "playbooks/site.yml" in first.out
    [instance] = instances(cli_env, "demo")
    assert instance["ImageId"] == NEWEST_DEBIAN_AMD64  # the newest Debian 13 amd64 image

    again = fab("launch", "--name", "demo", "--ssh-cidr", "203.0.113.7/32", env=cli_env)
    assert again.code == 0, again.err
    assert "already there" in again.out
    assert [i["InstanceId"] for i in instances(cli_env, "demo")] == [instance["InstanceId"]]

    [host] = inventory.read_hosts(cli_env["PYNET_INVENTORY"])
    assert (host.name, host.address, host.user, host.port) == (
        "demo",
        instance["PublicIpAddress"],
        "admin",
        22,
    )
    # No key in the temp HOME: AWS made one and we saved it 0600.
    pem = Path(cli_env["HOME"]) / ".ssh" / "pynet-demo.pem"
    assert host.key_file == str(pem)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600

    # Reads that do not change anything run side by side.
    listed, graph, refused = run_many(
        [
            [str(VENV_BIN / "fab"), "hosts"],
            [str(VENV_BIN / "ansible-inventory"), "-i", "inventory/aws_ec2.yml", "--graph"],
            [str(VENV_BIN / "fab"), "destroy", "--name", "demo"],  # stdin is not a terminal
        ],
        {**cli_env, "PYNET_DEPLOYMENT": "demo"},  # the dynamic inventory's scope
    )
    assert listed.code == 0, listed.err
    assert "demo" in listed.out
    assert instance["InstanceId"] in listed.out
    assert "running" in listed.out

    assert graph.code == 0, graph.err
    assert "@chat:" in graph.out
    assert instance["PublicIpAddress"] in graph.out.split("@chat:")[1]

    assert "pass --yes" in one_line_error(refused)
    assert len(instances(cli_env, "demo")) == 1

    gone = fab("destroy", "--name", "demo", "--yes", env=cli_env)
    assert gone.code == 0, gone.err
    assert "demo: destroyed" in gone.out
    assert instances(cli_env, "demo") == []
    assert inventory.read_hosts(cli_env["PYNET_INVENTORY"]) == []
    assert not pem.exists()
    ec2 = ec2_client(cli_env)
    tagged = [{"Name": "tag:pynet:deployment", "Values": ["demo"]}]
    assert ec2.describe_security_groups(Filters=tagged)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=tagged)["KeyPairs"] == []

    noop = fab("destroy", "--name", "demo", "--yes", env=cli_env)
    assert noop.code == 0, noop.err
    assert "nothing to destroy" in noop.out


def test_launch_al2023_with_detected_ip_and_own_key(
    cli_env: dict[str, str], checkip_url: str
) -> None:
    ssh = Path(cli_env["HOME"]) / ".ssh"
    ssh.mkdir()
    (ssh / "id_ed25519.pub").write_bytes(public_key() + b" me@laptop\n")
    (ssh / "id_ed25519").write_text("private\n")
    env = {**cli_env, "PYNET_CHECKIP_URL": checkip_url}
    done = fab("launch", "--name", "al", "--os", "al2023", env=env)
    assert done.code == 0, done.err
    assert "ssh from 203.0.113.77/32" in done.out
    assert "ssh user:  ec2-user" in done.out
    [host] = inventory.read_hosts(env["PYNET_INVENTORY"])
    assert host.user == "ec2-user"
    assert host.key_file == str(ssh / "id_ed25519")
    [instance] = instances(env, "al")
    assert {"Key": "pynet:ssh-user", "Value": "ec2-user"} in instance["Tags"]


def test_cli_failures_are_one_line(cli_env: dict[str, str]) -> None:
    """Failures moto produces, plus input errors; the rest run in-process (test_failures)."""
    launch = ("launch", "--name", "bad", "--ssh-cidr", "203.0.113.7")
    results = fab_many(
        [
            (*launch, "--ami", "ami-0000000000deadbee"),
            ("launch", "--name", "bad"),  # PYNET_CHECKIP_URL points at a closed port
            (*launch, "--region", "mars-north-1"),
            ("launch", "--name", "bad", "--ssh-cidr", "0.0.0.0/0"),
        ],
        cli_env,
    )
    messages = [one_line_error(done) for done in results]
    assert "AMI not found in eu-central-1" in messages[0]
    assert "cannot detect your public IP" in messages[1]
    assert "--ssh-cidr" in messages[1]
    assert "unknown AWS region 'mars-north-1'" in messages[2]
    assert "--allow-ssh-from-anywhere" in messages[3]
    assert instances(cli_env, "bad") == []


def test_missing_credentials_and_region(tmp_path: Path) -> None:
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYNET_"))}
    env.update(
        HOME=str(empty_home),
        AWS_EC2_METADATA_DISABLED="true",
        PYNET_INVENTORY=str(tmp_path / "hosts.yml"),
    )
    results = fab_many(
        [
            ("launch", "--name", "x", "--region", REGION, "--ssh-cidr", "203.0.113.7"),
            ("destroy", "--name", "x", "--region", REGION, "--yes"),
            ("hosts",),
        ],
        env,
    )
    assert "no AWS credentials found" in one_line_error(results[0])
    assert "no AWS credentials found" in one_line_error(results[1])
    assert "no AWS region: pass --region" in one_line_error(results[2])
    assert not (tmp_path / "hosts.yml").exists()
