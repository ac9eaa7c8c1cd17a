"""`--eip`: an Elastic IP, so the host keeps its address across a stop and start.

Tagged at allocation like everything else, found again by tag (a relaunch reuses it), and
released by destroy. The inventory and the pinned known_hosts entry use it.
"""

from __future__ import annotations

from typing import Any

from pynet.aws.errors import explained
from pynet.aws.requests import deployment_filters, tag_specifications


def allocate_request(name: str) -> dict[str, Any]:
    """AllocateAddress parameters: a VPC address, tagged at birth."""
    return {"Domain": "vpc", "TagSpecifications": tag_specifications(name, "elastic-ip")}


def find_addresses(ec2: Any, name: str, region: str = "") -> list[dict[str, Any]]:
    """The deployment's Elastic IPs."""
    with explained("listing Elastic IPs", region):
        return ec2.describe_addresses(Filters=deployment_filters(name))["Addresses"]


def ensure_address(ec2: Any, name: str, instance_id: str, region: str = "") -> dict[str, Any]:
    """The deployment's Elastic IP, allocated if missing and associated with the instance."""
    found = find_addresses(ec2, name, region)
    if found:
        address = found[0]
    else:
        with explained("allocating an Elastic IP", region):
            address = ec2.allocate_address(**allocate_request(name))
    if address.get("InstanceId") != instance_id:
        with explained(f"associating {address['PublicIp']} with {instance_id}", region):
            ec2.associate_address(
                AllocationId=address["AllocationId"],
                InstanceId=instance_id,
                AllowReassociation=True,
            )
    return {**address, "InstanceId": instance_id}


def release_addresses(ec2: Any, addresses: list[dict[str, Any]], region: str = "") -> None:
    """Disassociate (if still attached) and release; the address is gone for good."""
    for address in addresses:
        if address.get("AssociationId"):
            with explained(f"disassociating {address['PublicIp']}", region):
                ec2.disassociate_address(AssociationId=address["AssociationId"])
        with explained(f"releasing Elastic IP {address['PublicIp']}", region):
            ec2.release_address(AllocationId=address["AllocationId"])
