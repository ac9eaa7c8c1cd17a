"""Find the operator's public IP, so SSH is opened to that one address and nowhere else."""

from __future__ import annotations

import os
import urllib.request

from pynet.aws.errors import CloudError
from pynet.aws.requests import host_cidr, ssh_cidr

#: Where to ask; PYNET_CHECKIP_URL overrides it (tests point it at 127.0.0.1).
DEFAULT_URL = "https://checkip.amazonaws.com"


def checkip_url() -> str:
    """The address-echo service to ask."""
    return os.environ.get("PYNET_CHECKIP_URL") or DEFAULT_URL


def detect_ssh_cidr(url: str | None = None, timeout: float = 5.0) -> str:
    """The operator's public address as a /32 (or /128), or a CloudError naming --ssh-cidr."""
    url = url or checkip_url()
    if not url.startswith(("http://", "https://")):
        raise CloudError(f"PYNET_CHECKIP_URL must be an http(s) URL, not {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            body = response.read(100).decode("ascii", "replace")
        return host_cidr(body)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CloudError(
            f"cannot detect your public IP from {url} ({reason}): pass --ssh-cidr YOUR.IP/32"
        ) from err


def ssh_source(given: str | None, *, allow_anywhere: bool = False) -> str:
    """Who may SSH in: --ssh-cidr checked, else the operator's detected address."""
    return ssh_cidr(given, allow_anywhere=allow_anywhere) if given else detect_ssh_cidr()
