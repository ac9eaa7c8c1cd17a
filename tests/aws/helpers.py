"""Shared helpers for the AWS tests: run the real commands from the repo root."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pynet.aws.session import Clients

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
REGION = "eu-central-1"
NEWEST_DEBIAN_AMD64 = "ami-0deb13new000000a"  # Debian 13: the default --os
NEWEST_DEBIAN12_AMD64 = "ami-0deb12new000000a"
SSH = "203.0.113.7/32"
PUBLIC_KEY = (
    b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxT4g5xYjRu5K1xAy1VN7Q7JmZkF5QeG0U3Kp5xk9bZ test"
)


@dataclass
class Run:
    """A finished subprocess."""

    code: int
    out: str
    err: str


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> Run:
    """Run a command from the repo root with stdin closed (like CI, unlike a terminal)."""
    done = subprocess.run(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def fab(*args: str, env: dict[str, str]) -> Run:
    """Run `.venv/bin/fab ARGS`."""
    return run([str(VENV_BIN / "fab"), *args], env)


def run_many(commands: list[list[str]], env: dict[str, str]) -> list[Run]:
    """Run independent commands side by side (each fab start-up costs about a second)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: run(args, env), commands))


def fab_many(commands: list[tuple[str, ...]], env: dict[str, str]) -> list[Run]:
    """Run independent `fab` commands side by side."""
    return run_many([[str(VENV_BIN / "fab"), *args] for args in commands], env)


def public_key() -> bytes:
    """A fresh, valid OpenSSH ed25519 public key (moto checks the format on import)."""
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)


def fail_call(client: Any, operation: str, code: str, *, times: int | None = None) -> list[str]:
    """Make `client` raise ClientError `code` on `operation` (all calls, or the first `times`).

    For failures moto cannot produce (UnauthorizedOperation, limits, DependencyViolation...).
    Returns a list that records each interception.
    """
    seen: list[str] = []

    def handler(**_: Any) -> None:
        if times is None or len(seen) < times:
            seen.append(operation)
            raise ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)

    client.meta.events.register(f"before-call.ec2.{operation}", handler)
    return seen


def answer_call(
    client: Any, operation: str, response: dict[str, Any], *, after: str | None = None
) -> None:
    """Make `client` answer `operation` with `response` instead of moto (once `after` ran)."""
    armed = [after is None]

    def arm(**_: Any) -> None:
        armed[0] = True

    def handler(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not armed[0]:
            return None
        return AWSResponse("http://127.0.0.1/", 200, {}, None), response

    if after is not None:
        client.meta.events.register(f"after-call.ec2.{after}", arm)
    client.meta.events.register(f"before-call.ec2.{operation}", handler)


def moto_ami(clients: Clients) -> str:
    """An x86_64 image moto has (moto has no Debian images: the CLI tests load some)."""
    name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    return clients.ssm.get_parameter(Name=name)["Parameter"]["Value"]


def ec2_client(env: dict[str, str]) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=env["AWS_ENDPOINT_URL"])


def instances(env: dict[str, str], name: str) -> list[dict]:
    reservations = ec2_client(env).describe_instances(
        Filters=[
            {"Name": "tag:pynet:deployment", "Values": [name]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def one_line_error(done: Run) -> str:
    assert done.code == 1, (done.out, done.err)
    assert "Traceback" not in done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    return lines[0]
