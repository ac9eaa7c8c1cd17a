"""Pure request builders: every parameter we send to EC2 is made here and tested as a dict.

Nothing in this module talks to AWS. The tags are the contract that makes launch and destroy
idempotent: every resource we create carries them from birth (TagSpecifications), so a launch that
fails half-way leaves only things the next launch or destroy finds again by tag.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, NamedTuple

from chat import PORT
from pynet.aws.errors import CloudError

APP_TAG = "pynet:app"
APP = "pynet"
DEPLOYMENT_TAG = "pynet:deployment"
SSH_USER_TAG = "pynet:ssh-user"
OS_TAG = "pynet:os"  # the --os it was launched with (debian12 and debian13 share a user)
KEY_ORIGIN_TAG = "pynet:key-origin"  # "created" (we hold the private key) or "imported"

CHAT_PORT = PORT
SSH_PORT = 22

#: States in which an instance still counts as "the host" of a deployment (launch reuses it).
LIVE_STATES = ("pending", "running", "stopping", "stopped")
#: States destroy must still act on or wait for.
DESTROYABLE_STATES = (*LIVE_STATES, "shutting-down")

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


def check_name(name: str) -> str:
    """Refuse deployment names that would make awkward tags, group names or file names."""
    if not name:
        raise CloudError("--name is required (e.g. --name demo)")
    if not _NAME.match(name):
        raise CloudError(
            f"bad deployment name {name!r}: use 1-32 lowercase letters, digits and inner dashes"
        )
    return name


def resource_name(name: str) -> str:
    """The Name tag, security group name and key pair name of a deployment."""
    return f"pynet-{name}"


def tags(name: str, **extra: str) -> list[dict[str, str]]:
    """The tags every resource of deployment `name` carries (plus resource-specific ones)."""
    pairs = {"Name": resource_name(name), APP_TAG: APP, DEPLOYMENT_TAG: name, **extra}
    return [{"Key": key, "Value": value} for key, value in pairs.items()]


def tag_specifications(name: str, *resource_types: str, **extra: str) -> list[dict[str, Any]]:
    """TagSpecifications that tag resources at creation, so nothing exists untagged."""
    return [{"ResourceType": kind, "Tags": tags(name, **extra)} for kind in resource_types]


def tag_value(resource: dict[str, Any], key: str, default: str = "") -> str:
    """Read one tag from a described resource."""
    for tag in resource.get("Tags") or []:
        if tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return default


def deployment_filters(name: str | None = None) -> list[dict[str, Any]]:
    """Describe* filters for our resources: all of them, or those of one deployment."""
    filters: list[dict[str, Any]] = [{"Name": f"tag:{APP_TAG}", "Values": [APP]}]
    if name is not None:
        filters.append({"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [name]})
    return filters


def instance_filters(name: str | None, states: tuple[str, ...]) -> list[dict[str, Any]]:
    """DescribeInstances filters: our tags plus the instance states we care about."""
    return [
        *deployment_filters(name),
        {"Name": "instance-state-name", "Values": list(states)},
    ]


# --- SSH source and security group rules -----------------------------------------------------


#: The widest SSH source accepted without --allow-ssh-from-anywhere: an IPv4 /16 (65,536
#: addresses, a large campus or company) and an IPv6 /48 (the usual allocation to one site).
#: Anything wider is an ISP's or a cloud region's worth of strangers.
WIDEST_SSH_PREFIX = {4: 16, 6: 48}


def ssh_cidr(value: str, *, allow_anywhere: bool = False) -> str:
    """Normalise the SSH source; refuse typos and networks wider than one site unless overridden."""
    text = value.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CloudError(
            f"bad --ssh-cidr {value!r}: give an address or CIDR like 203.0.113.7/32"
        ) from None
    address = ipaddress.ip_interface(text).ip
    if network.network_address != address:
        raise CloudError(
            f"bad --ssh-cidr {value!r}: host bits are set; write {address}/{network.max_prefixlen} "
            f"for that one address or {network} for the whole network"
        )
    widest = WIDEST_SSH_PREFIX[network.version]
    if network.prefixlen < widest and not allow_anywhere:
        what = "the whole internet" if network.prefixlen == 0 else f"wider than /{widest}"
        raise CloudError(
            f"refusing to open SSH to {network} ({what}): pass --ssh-cidr YOUR.IP/32, "
            "or --allow-ssh-from-anywhere if you really mean it"
        )
    return str(network)


def host_cidr(address: str) -> str:
    """An address as a single-host CIDR (/32 or /128)."""
    ip = ipaddress.ip_address(address.strip())
    return f"{ip}/{ip.max_prefixlen}"


class Rule(NamedTuple):
    """One inbound rule, flattened so rule sets can be compared."""

    protocol: str
    from_port: int
    to_port: int
    cidr: str


def chat_rules() -> set[Rule]:
    """The chat port from everywhere (IPv4 and IPv6): every group of a chat host has exactly these
    rules besides its SSH rules, which belong to the operators (`ssh_permission`)."""
    return {
        Rule("tcp", CHAT_PORT, CHAT_PORT, "0.0.0.0/0"),
        Rule("tcp", CHAT_PORT, CHAT_PORT, "::/0"),
    }


def is_ssh(rule: Rule) -> bool:
    """An SSH rule: an operator's (labelled) source, kept when another operator changes theirs."""
    return rule.protocol == "tcp" and rule.from_port == SSH_PORT == rule.to_port


def rules_of(permissions: list[dict[str, Any]]) -> set[Rule]:
    """Flatten described IpPermissions into rules (group and prefix-list sources count too)."""
    rules: set[Rule] = set()
    for perm in permissions:
        protocol = str(perm.get("IpProtocol", "-1"))
        low, high = int(perm.get("FromPort", -1)), int(perm.get("ToPort", -1))
        sources = [r["CidrIp"] for r in perm.get("IpRanges", [])]
        sources += [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
        sources += [f"group:{p['GroupId']}" for p in perm.get("UserIdGroupPairs", [])]
        sources += [f"prefix:{p['PrefixListId']}" for p in perm.get("PrefixListIds", [])]
        rules.update(Rule(protocol, low, high, source) for source in sources)
    return rules


def permissions(rules: set[Rule]) -> list[dict[str, Any]]:
    """IpPermissions for authorize/revoke calls, one entry per rule, in a stable order."""
    result = []
    for rule in sorted(rules):
        perm: dict[str, Any] = {
            "IpProtocol": rule.protocol,
            "FromPort": rule.from_port,
            "ToPort": rule.to_port,
        }
        if rule.cidr.startswith("group:"):
            perm["UserIdGroupPairs"] = [{"GroupId": rule.cidr.removeprefix("group:")}]
        elif rule.cidr.startswith("prefix:"):
            perm["PrefixListIds"] = [{"PrefixListId": rule.cidr.removeprefix("prefix:")}]
        elif ":" in rule.cidr:
            perm["Ipv6Ranges"] = [{"CidrIpv6": rule.cidr, "Description": "chat clients"}]
        else:
            perm["IpRanges"] = [{"CidrIp": rule.cidr, "Description": "chat clients"}]
        result.append(perm)
    return result


# --- SSH sources: one rule per operator, named in its description ---------------------------

#: An SSH rule's description: this prefix and the label of whoever it lets in ("pynet ssh: ada").
SSH_LABEL_PREFIX = "pynet ssh: "
#: What AWS accepts in a rule description (and so in a label), at most 64 characters here.
_LABEL = re.compile(r"^[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{1,64}$")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._\-@+=]")


class SshSource(NamedTuple):
    """One SSH rule: its source and whose it is ("" for a rule pynet did not label)."""

    cidr: str
    label: str

    def __str__(self) -> str:
        return f"{self.cidr} ({self.label or 'unlabelled'})"


def check_label(label: str) -> str:
    """A label for an SSH rule: 1 to 64 characters AWS accepts in a description."""
    text = label.strip()
    if not _LABEL.fullmatch(text):
        raise CloudError(
            f"bad --ssh-label {label!r}: use 1 to 64 letters, digits, spaces and ._-:/@+= "
            "(e.g. your name, or github-actions)"
        )
    return text


def label_of_identity(arn: str) -> str:
    """The default label: the caller's name in its ARN (an IAM user's name, a role session's
    name, as for SSO users their login), with characters a description refuses replaced."""
    name = arn.rsplit("/", 1)[-1] if "/" in arn else arn.rsplit(":", 1)[-1]
    return _LABEL_UNSAFE.sub("-", name)[:64] or "operator"


def ssh_sources(permissions: list[dict[str, Any]]) -> list[SshSource]:
    """The SSH rules of a described group, with the label their description carries."""
    found = []
    for perm in permissions:
        rule = Rule(
            str(perm.get("IpProtocol")), perm.get("FromPort", -1), perm.get("ToPort", -1), ""
        )
        if not is_ssh(rule):
            continue
        ranges = [(r["CidrIp"], r) for r in perm.get("IpRanges", [])]
        ranges += [(r["CidrIpv6"], r) for r in perm.get("Ipv6Ranges", [])]
        for cidr, item in ranges:
            description = str(item.get("Description", ""))
            label = description.removeprefix(SSH_LABEL_PREFIX)
            found.append(SshSource(cidr, label if label != description else ""))
    return sorted(found)


def ssh_permission(source: SshSource) -> dict[str, Any]:
    """IpPermissions entry that lets SOURCE in on port 22, its label in the description."""
    item: dict[str, str] = {"Description": f"{SSH_LABEL_PREFIX}{source.label}"}
    if ":" in source.cidr:
        key, item["CidrIpv6"] = "Ipv6Ranges", source.cidr
    else:
        key, item["CidrIp"] = "IpRanges", source.cidr
    return {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT, key: [item]}


def create_security_group_request(name: str, vpc_id: str) -> dict[str, Any]:
    """CreateSecurityGroup parameters (tagged at creation)."""
    return {
        "GroupName": resource_name(name),
        "Description": f"pynet chat host {name}: ssh from the operator, chat port {CHAT_PORT}",
        "VpcId": vpc_id,
        "TagSpecifications": tag_specifications(name, "security-group"),
    }


# --- key pairs --------------------------------------------------------------------------------


def import_key_pair_request(name: str, public_key: bytes) -> dict[str, Any]:
    """ImportKeyPair parameters for the operator's own public key."""
    return {
        "KeyName": resource_name(name),
        "PublicKeyMaterial": public_key,
        "TagSpecifications": tag_specifications(name, "key-pair", **{KEY_ORIGIN_TAG: "imported"}),
    }


def create_key_pair_request(name: str) -> dict[str, Any]:
    """CreateKeyPair parameters when the operator has no key: AWS makes one, we keep the secret."""
    return {
        "KeyName": resource_name(name),
        "KeyType": "ed25519",
        "KeyFormat": "pem",
        "TagSpecifications": tag_specifications(name, "key-pair", **{KEY_ORIGIN_TAG: "created"}),
    }


# --- images -----------------------------------------------------------------------------------

DEBIAN_OWNER = "136693071363"  # the Debian cloud team's AWS account
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
#: Every --os: its SSH user. The first is the default (Debian 13: stable since August 2025).
SSH_USERS = {"debian13": "admin", "debian12": "admin", "al2023": "ec2-user"}
DEFAULT_OS = next(iter(SSH_USERS))
#: The Debian release of each Debian --os, as the Debian cloud team names its images.
DEBIAN_RELEASES = {"debian13": "13", "debian12": "12"}

_GRAVITON = re.compile(r"^(a1|[a-z]+\d+g[a-z-]*)$")


def architecture(instance_type: str) -> str:
    """The CPU architecture of an instance type: Graviton families (t4g, m7g, ...) are arm64."""
    family = instance_type.split(".", 1)[0]
    return "arm64" if _GRAVITON.match(family) else "x86_64"


def launched_os(instance: dict[str, Any]) -> str:
    """The --os an instance was launched with: its tag, else (launched before the tag, when
    `admin` meant Debian 12) what its SSH user says; "" when neither tells."""
    legacy = {"admin": "debian12", "ec2-user": "al2023"}
    return tag_value(instance, OS_TAG) or legacy.get(tag_value(instance, SSH_USER_TAG), "")


def debian_images_request(arch: str, release: str) -> dict[str, Any]:
    """DescribeImages parameters for official Debian RELEASE ("12", "13") images of one CPU."""
    debian_arch = {"x86_64": "amd64", "arm64": "arm64"}[arch]
    return {
        "Owners": [DEBIAN_OWNER],
        "Filters": [
            {"Name": "name", "Values": [f"debian-{release}-{debian_arch}-*"]},
            {"Name": "architecture", "Values": [arch]},
            {"Name": "state", "Values": ["available"]},
        ],
    }


def newest_image(images: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The image with the latest CreationDate (ISO 8601 strings sort in time order)."""
    return max(images, key=lambda image: image.get("CreationDate", ""), default=None)


def root_volume_size(image: dict[str, Any], wanted_gib: int) -> int:
    """The root volume size: what we want, but never smaller than the image's snapshot."""
    root = image.get("RootDeviceName")
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == root and "VolumeSize" in mapping.get("Ebs", {}):
            return max(wanted_gib, int(mapping["Ebs"]["VolumeSize"]))
    return wanted_gib


# --- the instance -----------------------------------------------------------------------------


def run_instances_request(
    name: str,
    *,
    image: dict[str, Any],
    instance_type: str,
    key_name: str,
    group_id: str,
    ssh_user: str,
    disk_gib: int,
    os_name: str = "",
) -> dict[str, Any]:
    """RunInstances parameters: IMDSv2 only, encrypted gp3 root, everything tagged at birth."""
    instance_tags = {SSH_USER_TAG: ssh_user, **({OS_TAG: os_name} if os_name else {})}
    request: dict[str, Any] = {
        "ImageId": image["ImageId"],
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": key_name,
        "SecurityGroupIds": [group_id],
        # Tokens required (IMDSv2); hop limit 1 keeps containers on the host away from the
        # instance's credentials.
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": image.get("RootDeviceName", "/dev/xvda"),
                "Ebs": {
                    "VolumeType": "gp3",
                    "VolumeSize": root_volume_size(image, disk_gib),
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [
            *tag_specifications(name, "instance", **instance_tags),
            *tag_specifications(name, "volume", "network-interface"),
        ],
    }
    if instance_type.startswith(("t2.", "t3.", "t3a.", "t4g.")):
        # Burstable types default to "unlimited" credits on t3/t4g: no surprise bills.
        request["CreditSpecification"] = {"CpuCredits": "standard"}
    return request


def waiter_config(timeout: float, delay: float = 5.0) -> dict[str, Any]:
    """WaiterConfig that gives up after about `timeout` seconds."""
    delay = max(0.1, min(delay, timeout))
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(timeout / delay))}
