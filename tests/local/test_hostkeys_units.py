"""Host key pinning as data: key pairs, known_hosts entries, the inventory's SSH options."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest
import yaml

from pynet import hostkeys, inventory
from pynet.aws.userdata import cloud_config, parse_user_data, user_data
from pynet.deploy import trust
from pynet.local.host import _host_key_tar


def test_generated_pair_is_ed25519_and_never_shows_its_private_half() -> None:
    pair = hostkeys.HostKeyPair.generate()
    assert pair.public.startswith("ssh-ed25519 ")
    assert pair.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pair.private not in repr(pair)
    assert "PRIVATE" not in repr(pair)
    # The halves belong together: paramiko derives the same public key from the private one.
    from io import StringIO

    loaded = paramiko.Ed25519Key.from_private_key(StringIO(pair.private))
    assert f"{loaded.get_name()} {loaded.get_base64()}" == pair.public


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pair = hostkeys.HostKeyPair.generate()
    (tmp_path / "k.pub").write_text(pair.public + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[1] == hostkeys.fingerprint(pair.public)


def test_pin_replaces_only_its_own_entries(tmp_path: Path) -> None:
    file = tmp_path / "known_hosts"
    one, two = hostkeys.HostKeyPair.generate(), hostkeys.HostKeyPair.generate()
    other = hostkeys.HostKeyPair.generate().public
    file.write_text(f"example.org {other}\n")
    hostkeys.pin(file, "demo", "198.51.100.7", 22, one.public)
    hostkeys.pin(file, "web", "127.0.0.1", 2222, two.public)
    hostkeys.pin(file, "demo", "198.51.100.8", 22, two.public)  # relaunched: new address, key
    assert file.read_text().splitlines() == [
        f"example.org {other}",
        f"[127.0.0.1]:2222 {two.public} pynet:web",
        f"198.51.100.8 {two.public} pynet:demo",
    ]
    assert hostkeys.pinned_key(file, "demo") == two.public
    assert hostkeys.unpin(file, "demo") is True
    assert hostkeys.unpin(file, "demo") is False
    assert hostkeys.pinned_key(file, "demo") is None
    # paramiko reads the file as OpenSSH does (the pynet: comment is ignored).
    known = paramiko.HostKeys(str(file)).lookup("[127.0.0.1]:2222")
    assert known is not None
    assert known["ssh-ed25519"].get_base64() == two.public.split()[1]


def test_an_address_taken_over_by_another_deployment_loses_its_old_pin(tmp_path: Path) -> None:
    file = tmp_path / "known_hosts"
    old, new = hostkeys.HostKeyPair.generate(), hostkeys.HostKeyPair.generate()
    hostkeys.pin(file, "a", "127.0.0.1", 2222, old.public)
    hostkeys.pin(file, "b", "127.0.0.1", 2222, new.public)
    assert file.read_text().splitlines() == [f"[127.0.0.1]:2222 {new.public} pynet:b"]


def test_inventory_entry_checks_strictly_against_the_pinned_file(tmp_path: Path) -> None:
    pins = tmp_path / "dir with space" / "known_hosts"
    host = inventory.Host("demo", "198.51.100.7", "admin", known_hosts=str(pins))
    path = inventory.write_hosts([host], tmp_path / "hosts.yml")
    variables = yaml.safe_load(path.read_text())["all"]["children"]["chat"]["hosts"]["demo"]
    assert variables["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile='{pins}' -o StrictHostKeyChecking=yes "
        "-o HostKeyAlgorithms=ssh-ed25519"
    )
    assert inventory.read_hosts(path) == [host]


def test_ansible_cfg_never_switches_host_key_checking_off() -> None:
    text = (Path(__file__).resolve().parents[2] / "ansible.cfg").read_text()
    assert "host_key_checking = True" in text
    assert "StrictHostKeyChecking=yes" in text
    assert "StrictHostKeyChecking=no" not in text
    assert "/dev/null" not in text


def test_user_files_follow_ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert trust.user_files(None) == [
        tmp_path / ".ssh" / "known_hosts",
        Path(trust.GLOBAL_KNOWN_HOSTS),
    ]
    config = paramiko.SSHConfig.from_text("Host *\n  UserKnownHostsFile ~/a /b\n").lookup("h")
    assert trust.user_files(config)[:2] == [tmp_path / "a", Path("/b")]


def test_cloud_config_hands_over_only_the_made_key() -> None:
    pair = hostkeys.HostKeyPair.generate()
    assert cloud_config(pair) == {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": pair.private, "ed25519_public": pair.public},
    }
    text = user_data(pair)
    assert text.startswith("#cloud-config\n")
    assert parse_user_data(text) == cloud_config(pair)
    assert parse_user_data("#!/bin/sh\necho hi\n") == {}


def test_local_host_key_archive_is_root_owned_and_private() -> None:
    import io
    import tarfile

    pair = hostkeys.HostKeyPair.generate()
    with tarfile.open(fileobj=io.BytesIO(_host_key_tar(pair))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["ssh_host_ed25519_key"].mode == 0o600
        assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
        conf = tar.extractfile("sshd_config.d/20-pynet-hostkey.conf")
        assert conf is not None
        assert conf.read() == b"HostKey /etc/ssh/ssh_host_ed25519_key\n"
