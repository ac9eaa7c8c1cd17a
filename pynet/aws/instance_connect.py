"""EC2 Instance Connect: an SSH key made for one run and pushed to the instance for 60 seconds.

`fab deploy --instance-connect` (what the CI deploy job runs) holds no long-lived key that is as
strong as `admin` on the host: it makes a fresh ed25519 key pair in memory, asks AWS to put the
public half in the instance's metadata (`ec2-instance-connect:SendSSHPublicKey`, which AWS keeps
there for 60 seconds), and connects with it at once. The host's sshd reads that key through its
`AuthorizedKeysCommand` (roles/hardening, "EC2 Instance Connect"). An SSH session outlives the
key: only the login needs it. IAM decides who may push a key, to which instance and as which
user (iam/deploy-role-policy.json: the production instance, user admin).

The inventory carries what a push needs (`pynet_instance_id`, `pynet_region`): `fab launch`,
`fab launch-cluster` and `python -m pynet.ci` write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pynet.aws.errors import CloudError, explained

#: Seconds AWS keeps a pushed key in the instance metadata (fixed by AWS).
VALID_FOR = 60
#: Inventory variables naming a host's instance and region (written at launch and by pynet.ci).
INSTANCE_ID_VAR = "pynet_instance_id"
REGION_VAR = "pynet_region"
#: The comment of the key in the instance's metadata and the host's auth log.
KEY_COMMENT = "pynet-instance-connect"


@dataclass(frozen=True)
class RunKey:
    """A key pair that lives in this process only: never written to disk, never reused."""

    private_openssh: str  # the private key in OpenSSH's format, for paramiko
    public: str  # "ssh-ed25519 AAAA... pynet-instance-connect"

    @classmethod
    def generate(cls) -> RunKey:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(private, f"{public.decode()} {KEY_COMMENT}")


def instance_vars(instance_id: str, region: str) -> dict[str, str]:
    """The inventory variables a push to this host needs."""
    return {INSTANCE_ID_VAR: instance_id, REGION_VAR: region}


def push_request(instance_id: str, user: str, public_key: str) -> dict[str, str]:
    """The SendSSHPublicKey parameters: PUBLIC_KEY may log in as USER on INSTANCE_ID for 60 s."""
    return {"InstanceId": instance_id, "InstanceOSUser": user, "SSHPublicKey": public_key}


def push(client: Any, instance_id: str, user: str, public_key: str, region: str = "") -> None:
    """Put PUBLIC_KEY in INSTANCE_ID's metadata for USER (CLIENT: ec2-instance-connect)."""
    known = {
        "EC2InstanceNotFoundException": f"no instance {instance_id} in {region}: the inventory's "
        f"{INSTANCE_ID_VAR} is stale (launch again, or rerun python -m pynet.ci)",
        "EC2InstanceStateInvalidException": f"{instance_id} is not running: start it first",
    }
    with explained(f"pushing a 60-second SSH key for {user} to {instance_id}", region, known):
        answer = client.send_ssh_public_key(**push_request(instance_id, user, public_key))
    if not answer.get("Success"):
        raise CloudError(f"AWS did not accept the SSH key for {instance_id} (Success: false)")
