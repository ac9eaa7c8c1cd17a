"""AWS without AWS: `moto_server` on 127.0.0.1, holding the images a real region lists.

moto ships Amazon Linux images but no Debian ones, and it reads its image list once, when it is
imported; so the server runs as a subprocess with MOTO_AMIS_PATH pointing at a list that also has
Debian 13 and 12 images published by Debian's account, and `fab launch` finds its default image
exactly as it does on AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from pynet.aws.requests import DEBIAN_OWNER
from pynet.local.host import free_port
from pynet.wait import WaitTimeout, wait_until

MOTO_SERVER = Path(sys.executable).parent / "moto_server"

#: (id, name, owner, architecture, creation date): Debian 13 and 12 images as Debian publishes them.
DEBIAN_IMAGES: tuple[tuple[str, str, str, str, str], ...] = (
    ("ami-0deb13amd64local", "debian-13-amd64-20260101-2350", DEBIAN_OWNER, "x86_64", "2026-01-01"),
    ("ami-0deb13arm64local", "debian-13-arm64-20260101-2350", DEBIAN_OWNER, "arm64", "2026-01-01"),
    ("ami-0deb12amd64local", "debian-12-amd64-20260101-2350", DEBIAN_OWNER, "x86_64", "2026-01-01"),
    ("ami-0deb12arm64local", "debian-12-arm64-20260101-2350", DEBIAN_OWNER, "arm64", "2026-01-01"),
)


def ami_record(ami_id: str, name: str, owner: str, arch: str, date: str) -> dict[str, object]:
    """One entry of moto's image list (the format of MOTO_AMIS_PATH)."""
    return {
        "ami_id": ami_id,
        "name": name,
        "description": name,
        "owner_id": owner,
        "public": True,
        "virtualization_type": "hvm",
        "architecture": arch,
        "state": "available",
        "platform": None,
        "image_type": "machine",
        "hypervisor": "xen",
        "root_device_name": "/dev/xvda",
        "root_device_type": "ebs",
        "sriov": "simple",
        "creation_date": f"{date}T12:00:00.000Z",
    }


def write_amis(
    path: Path,
    images: Sequence[tuple[str, str, str, str, str]] = DEBIAN_IMAGES,
    extra: Sequence[dict[str, object]] = (),
) -> Path:
    path.write_text(json.dumps([ami_record(*image) for image in images] + list(extra)))
    return path


@contextlib.contextmanager
def moto_server(amis: Path, log: Path | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run moto_server on 127.0.0.1 (never every interface) and yield its endpoint URL."""
    port = free_port()
    out = log.open("ab") if log else None
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MOTO_AMIS_PATH": str(amis)},
        stdout=out or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto_server exited ({process.returncode}) before answering on {url}"
            )
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()  # noqa: S310
        except OSError:
            return False
        return True

    try:
        try:
            wait_until(answers, timeout, f"moto_server answering on {url}", interval=0.1)
        except WaitTimeout as error:
            raise RuntimeError(f"moto_server did not start: {error}") from None
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if out:
            out.close()
