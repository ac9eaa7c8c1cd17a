"""The instance's cloud-init user data: the SSH host key made by `fab launch`, nothing else.

cloud-init installs the keys given under `ssh_keys:` instead of generating its own, so the key
is known (and pinned in known_hosts) before the first connection. `ssh_genkeytypes: []` keeps
cloud-init from adding RSA/ECDSA keys that nobody pinned. The user data is readable on the
instance (IMDS) and by IAM principals allowed ec2:DescribeInstanceAttribute: see docs/aws.md.
"""

from __future__ import annotations

from typing import Any

import yaml

from pynet.hostkeys import HostKeyPair

HOST_KEY_TAG = "pynet:ssh-host-key"  # the public half, so any operator machine can pin it


def cloud_config(host_key: HostKeyPair) -> dict[str, Any]:
    """The cloud-config document as data (tested as a dict)."""
    return {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private,
            "ed25519_public": host_key.public,
        },
    }


def user_data(host_key: HostKeyPair) -> str:
    """RunInstances UserData (boto3 base64-encodes it)."""
    return "#cloud-config\n" + yaml.safe_dump(cloud_config(host_key), sort_keys=False)


def parse_user_data(text: str) -> dict[str, Any]:
    """Read a cloud-config back (the local rehearsal hands its keys to the stand-in host)."""
    if not text.startswith("#cloud-config"):
        return {}
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def host_key_of(text: str) -> HostKeyPair | None:
    """The host key pair a cloud-config hands over (what cloud-init installs), if any."""
    keys = parse_user_data(text).get("ssh_keys") or {}
    if "ed25519_private" in keys and "ed25519_public" in keys:
        return HostKeyPair(public=keys["ed25519_public"], private=keys["ed25519_private"])
    return None
