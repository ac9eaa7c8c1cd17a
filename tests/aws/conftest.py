"""Fixtures for the AWS tests: fake credentials, moto in-process and as a server, local HTTP.

Everything talks to 127.0.0.1 only; HOME and the inventory point into temp dirs so no test
touches the real ~/.ssh or inventory/hosts.yml.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from pynet.aws.requests import DEBIAN_OWNER
from pynet.aws.session import Clients, clients_for
from pynet.local.aws import ami_record, write_amis
from pynet.local.aws import moto_server as local_moto_server
from pynet.local.host import free_port
from tests.aws.helpers import REGION

#: Debian images as the Debian account publishes them, plus decoys the lookup must skip.
DEBIAN_IMAGES = [
    ("ami-0deb13old000000a", "debian-13-amd64-20250815-2200", DEBIAN_OWNER, "x86_64", "2025-08-15"),
    ("ami-0deb13new000000a", "debian-13-amd64-20251201-1500", DEBIAN_OWNER, "x86_64", "2025-12-01"),
    ("ami-0deb13arm000000a", "debian-13-arm64-20251201-1500", DEBIAN_OWNER, "arm64", "2025-12-01"),
    ("ami-0deb12old000000a", "debian-12-amd64-20240101-1600", DEBIAN_OWNER, "x86_64", "2024-01-01"),
    ("ami-0deb12new000000a", "debian-12-amd64-20250601-2100", DEBIAN_OWNER, "x86_64", "2025-06-01"),
    ("ami-0deb12arm000000a", "debian-12-arm64-20250601-2100", DEBIAN_OWNER, "arm64", "2025-06-01"),
    (
        "ami-0deb12bpo000000a",
        "debian-12-backports-amd64-20250701-1",
        DEBIAN_OWNER,
        "x86_64",
        "2025-07-01",
    ),
    (
        "ami-0deb12fake00000a",
        "debian-12-amd64-20260101-0000",
        "999988887777",
        "x86_64",
        "2026-01-01",
    ),
]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake credentials, a region, no IMDS, and HOME/inventory in a temp dir."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "PYNET_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("PYNET_INVENTORY", str(tmp_path / "hosts.yml"))
    monkeypatch.setenv("PYNET_CHECKIP_URL", "http://127.0.0.1:9/unused")
    return home


@pytest.fixture(scope="module")
def _moto() -> Iterator[None]:
    """One in-process moto per module (resetting it per test costs about a second; a session
    -wide one would leak moto's fake credentials into other teams' tests)."""
    with mock_aws():
        yield


@pytest.fixture
def clients(_moto: None) -> Clients:
    """Every client `fab launch` uses, against moto in-process (each test its own deployment)."""
    return clients_for(boto3.Session(), REGION)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A deployment name of this test's own, so tests sharing one moto never meet."""
    return f"t{abs(hash(request.node.nodeid)) % 10**8}"


@pytest.fixture(scope="session")
def moto_amis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AMI list for moto_server: Debian images, decoys, and the AL2023 image SSM names."""
    with mock_aws():
        ssm = boto3.client("ssm", region_name=REGION)
        ec2 = boto3.client("ec2", region_name=REGION)
        name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
        al2023_id = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        al2023 = ec2.describe_images(ImageIds=[al2023_id])["Images"][0]
    al2023_record = ami_record(al2023_id, al2023["Name"], al2023["OwnerId"], "x86_64", "2025-01-01")
    path = tmp_path_factory.mktemp("moto") / "amis.json"
    return write_amis(path, DEBIAN_IMAGES, [al2023_record])


@pytest.fixture(scope="session")
def moto_server(moto_amis: Path) -> Iterator[str]:
    """moto_server on 127.0.0.1 (a subprocess: MOTO_AMIS_PATH is read when moto is imported)."""
    with local_moto_server(moto_amis) as url:
        yield url


@pytest.fixture
def moto_url(moto_server: str) -> str:
    """The moto server, reset so each test starts from an empty account."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
    return moto_server


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    body = b"203.0.113.77\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def checkip_url() -> Iterator[str]:
    """A local stand-in for checkip.amazonaws.com answering 203.0.113.77."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cli_env(moto_url: str, aws_env: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for `fab` subprocesses: moto endpoint, fake credentials, temp HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYNET_"))}
    env.update(
        HOME=str(aws_env),
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        PYNET_INVENTORY=str(tmp_path / "hosts.yml"),
        PYNET_CHECKIP_URL=f"http://127.0.0.1:{free_port()}/",  # refused unless a test sets it
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
    )
    return env
