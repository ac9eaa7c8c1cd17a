"""The chat image in cluster mode: redis-py is in it, and two containers share one conversation.

The containers use the host's network namespace and listen on 127.0.0.1 only, next to a
redis-server the test starts on 127.0.0.1: no traffic leaves the loopback interface.
"""

from __future__ import annotations

import hashlib
import re
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pynet.local.engine import docker
from pynet.local.host import free_port
from tests.chat.fakes import LineClient, RedisServer

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "wheels"


def test_the_baked_wheels_match_the_pins_and_their_sums() -> None:
    """No Docker needed: the image gets exactly the redis-py (and hiredis, for both
    architectures) that pyproject.toml pins, and the lock file says the same."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(pin.split("==") for pin in project["project"]["optional-dependencies"]["cluster"])
    assert sorted(pins) == ["hiredis", "redis"]
    assert (WHEELS / f"redis-{pins['redis']}-py3-none-any.whl").is_file()
    for arch in ("x86_64", "aarch64"):
        assert list(WHEELS.glob(f"hiredis-{pins['hiredis']}-cp311-cp311-*_{arch}.whl")), arch
    lines = (WHEELS / "SHA256SUMS").read_text().splitlines()
    sums = {name: digest for digest, name in (line.split() for line in lines)}
    assert sorted(sums) == sorted(p.name for p in WHEELS.glob("*.whl"))
    for wheel, digest in sums.items():
        assert hashlib.sha256((WHEELS / wheel).read_bytes()).hexdigest() == digest
    lock = (REPO / "requirements-dev.lock").read_text()
    for name, version in pins.items():
        assert re.search(rf"^{name}=={re.escape(version)}$", lock, re.M), name


@pytest.mark.e2e
def test_the_image_parses_redis_replies_in_c(chat_image: str) -> None:
    """redis-py silently falls back to its Python parser when hiredis does not import."""
    out = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        chat_image,
        "-c",
        "from redis.utils import HIREDIS_AVAILABLE; print(HIREDIS_AVAILABLE)",
    )
    assert out.stdout.strip() == "True"


@pytest.fixture
def run_clustered(chat_image: str) -> Iterator[Callable[[str], int]]:
    started: list[str] = []

    def run(url: str) -> int:
        name, port = f"pynet-cluster-{uuid.uuid4().hex[:8]}", free_port()
        docker(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-e",
            "PYNET_HOST=127.0.0.1",
            "-e",
            f"PYNET_PORT={port}",
            "-e",
            f"PYNET_BACKPLANE={url}",
            chat_image,
        )
        started.append(name)
        return port

    yield run
    for name in started:
        docker("rm", "-f", name, check=False)


@pytest.mark.e2e
def test_two_containers_share_one_conversation(
    run_clustered: Callable[[str], int],
) -> None:
    redis_server = RedisServer(password="image-test-pw")
    try:
        one, two = run_clustered(redis_server.url), run_clustered(redis_server.url)
        ann = _connect(one, "ann")
        bob = _connect(two, "bob")
        ann.send("from the first container")
        assert bob.until("MSG 1 ")[-1] == "MSG 1 ann from the first container"
        bob.send("/who")
        assert bob.until("WHO")[-1] == "WHO ann bob"
    finally:
        redis_server.close()


def _connect(port: int, nick: str) -> LineClient:
    """A named client, once the container listens (it starts in about a second)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return LineClient(port, nick)
        except (OSError, AssertionError):
            assert time.monotonic() < deadline, f"nothing serves on 127.0.0.1:{port}"
            time.sleep(0.2)
