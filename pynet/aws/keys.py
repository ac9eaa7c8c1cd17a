"""The SSH key: import the operator's public key, or have AWS make one and keep it in ~/.ssh.

Key pairs matter only when an instance is created, so when launch needs a new instance it may
replace a leftover key pair of the same deployment: that keeps the key in AWS equal to the key
on this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynet.aws.errors import CloudError, explained
from pynet.aws.requests import (
    DEPLOYMENT_TAG,
    KEY_ORIGIN_TAG,
    create_key_pair_request,
    deployment_filters,
    import_key_pair_request,
    resource_name,
    tag_value,
)

DEFAULT_PUBLIC_KEYS = ("id_ed25519.pub", "id_rsa.pub")


@dataclass(frozen=True)
class LocalKey:
    """The operator's key: a public key to import (and its private half), or none at all."""

    public_key: bytes | None
    private_key_file: Path | None


def ssh_dir(home: Path | None = None) -> Path:
    """~/.ssh (HOME is honoured, which keeps tests out of the real one)."""
    return (home or Path.home()) / ".ssh"


def created_key_file(name: str, home: Path | None = None) -> Path:
    """Where the private key of a key pair AWS made for deployment `name` is saved."""
    return ssh_dir(home) / f"{resource_name(name)}.pem"


def _read_public_key(path: Path) -> bytes:
    try:
        material = path.read_bytes().strip()
    except OSError as err:
        raise CloudError(f"cannot read public key {path}: {err.strerror}") from err
    if not material.startswith((b"ssh-", b"ecdsa-")):
        raise CloudError(f"{path} is not an OpenSSH public key (expected 'ssh-ed25519 AAAA...')")
    return material


def find_local_key(explicit: str | None = None, home: Path | None = None) -> LocalKey:
    """The public key to import: --key, else ~/.ssh/id_ed25519.pub or id_rsa.pub, else none."""
    if explicit:
        path = Path(explicit).expanduser()
        if path.suffix != ".pub" and path.with_name(path.name + ".pub").exists():
            path = path.with_name(path.name + ".pub")  # given the private key: use its .pub
        candidates = [path]
    else:
        candidates = [ssh_dir(home) / name for name in DEFAULT_PUBLIC_KEYS]
        candidates = [path for path in candidates if path.exists()]
        if not candidates:
            return LocalKey(None, None)
    path = candidates[0]
    material = _read_public_key(path)
    private = path.with_suffix("") if path.suffix == ".pub" else None
    return LocalKey(material, private if private and private.exists() else None)


def write_private_key(path: Path, material: str) -> None:
    """Save a private key readable by the owner only (0600), replacing any stale file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, material.encode() if material.endswith("\n") else (material + "\n").encode())
    finally:
        os.close(fd)
    os.replace(partial, path)


def find_key_pairs(ec2: Any, name: str | None, region: str = "") -> list[dict[str, Any]]:
    """Our key pairs, of one deployment or of all."""
    with explained("listing key pairs", region):
        return ec2.describe_key_pairs(Filters=deployment_filters(name))["KeyPairs"]


def delete_key_pair(
    ec2: Any, key_pair: dict[str, Any], home: Path | None = None, region: str = ""
) -> None:
    """Delete one of our key pairs, and the private key file if AWS made it for us."""
    with explained(f"deleting key pair {key_pair['KeyName']}", region):
        ec2.delete_key_pair(KeyName=key_pair["KeyName"])
    name = tag_value(key_pair, DEPLOYMENT_TAG)
    if tag_value(key_pair, KEY_ORIGIN_TAG) == "created" and name:
        created_key_file(name, home).unlink(missing_ok=True)


def ensure_key_pair(
    ec2: Any, name: str, local: LocalKey, home: Path | None = None, region: str = ""
) -> tuple[str, Path | None]:
    """A key pair for a new instance of `name`: (its name, the private key file to SSH with)."""
    pem = created_key_file(name, home)
    for key_pair in find_key_pairs(ec2, name, region):
        reusable = (
            local.public_key is None
            and tag_value(key_pair, KEY_ORIGIN_TAG) == "created"
            and pem.exists()
        )
        if reusable:
            return key_pair["KeyName"], pem
        delete_key_pair(ec2, key_pair, home, region)
    duplicate = {
        "InvalidKeyPair.Duplicate": f"a key pair named {resource_name(name)} exists in {region} "
        "without pynet tags: delete or rename it, or choose another --name"
    }
    if local.public_key is not None:
        with explained("importing your public key", region, duplicate):
            ec2.import_key_pair(**import_key_pair_request(name, local.public_key))
        return resource_name(name), local.private_key_file
    with explained("creating a key pair", region, duplicate):
        created = ec2.create_key_pair(**create_key_pair_request(name))
    write_private_key(pem, created["KeyMaterial"])
    return created["KeyName"], pem
