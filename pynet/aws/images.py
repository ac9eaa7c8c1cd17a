"""Pick the machine image at run time, the way AWS serves the latest one, never a pinned id."""

from __future__ import annotations

from typing import Any

from pynet.aws.errors import CloudError, explained
from pynet.aws.requests import (
    AL2023_PARAMETER,
    DEBIAN_RELEASES,
    SSH_USERS,
    architecture,
    debian_images_request,
    newest_image,
)


def check_os(os_name: str) -> str:
    """Refuse an OS we have no image lookup and SSH user for."""
    if os_name not in SSH_USERS:
        raise CloudError(f"unknown --os {os_name!r}: choose one of {', '.join(SSH_USERS)}")
    return os_name


def resolve_image(
    ec2: Any, ssm: Any, *, os_name: str, instance_type: str, ami: str | None, region: str
) -> dict[str, Any]:
    """The image to launch: `ami` if given, else the newest image of `os_name` for the CPU."""
    arch = architecture(instance_type)
    if ami:
        image_id = ami
    elif os_name == "al2023":
        with explained("reading the latest Amazon Linux 2023 AMI id from SSM", region):
            parameter = ssm.get_parameter(Name=AL2023_PARAMETER.format(arch=arch))
        image_id = parameter["Parameter"]["Value"]
    else:
        release = DEBIAN_RELEASES[os_name]
        with explained(f"looking up the latest Debian {release} image", region):
            request = debian_images_request(arch, release)
            found = newest_image(ec2.describe_images(**request)["Images"])
        if found is None:
            raise CloudError(
                f"no Debian {release} {arch} image from the Debian account in {region}: pass --ami"
            )
        image_id = found["ImageId"]
    with explained(f"describing AMI {image_id}", region):
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    if not images:
        raise CloudError(f"AMI {image_id} not found in {region} (AMI ids differ per region)")
    image = images[0]
    if image.get("Architecture", arch) != arch:
        raise CloudError(
            f"AMI {image_id} is {image['Architecture']} but {instance_type} runs {arch}: "
            "pick a matching --ami or --instance-type"
        )
    return image
