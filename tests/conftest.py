"""Fixtures shared by every suite: the Docker engine, images and EC2-like hosts of the harness."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pynet.local.host import Host

REPO = Path(__file__).resolve().parents[1]

# Never let a test reach real AWS metadata or credentials by accident.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def _chat_source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "chat").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()[:10]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    from pynet.local.engine import ensure_engine

    ensure_engine()


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private, public) ed25519 keys made for this test session."""
    from pynet.local.host import make_keypair

    return make_keypair(tmp_path_factory.mktemp("ssh") / "id_ed25519")


@pytest.fixture(scope="session")
def host_image(docker_engine: None) -> str:
    from pynet.local.images import ensure_host_image

    return ensure_host_image()


@pytest.fixture(scope="session")
def chat_image(docker_engine: None) -> str:
    """The repository's Dockerfile built on the local base, tagged by the chat sources' digest."""
    from pynet.local.images import build_chat_image

    return build_chat_image(f"test-{_chat_source_digest()}")


@pytest.fixture(scope="session")
def chat_image_archive(chat_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`docker save | gzip` of the chat image: what the chat role uploads and loads."""
    from pynet.local.images import save_image

    return save_image(chat_image, tmp_path_factory.mktemp("images") / "pynet-chat.tar.gz")


@pytest.fixture
def ec2_host(host_image: str, ssh_keypair: tuple[Path, Path]) -> Iterator[Callable[..., Host]]:
    """A factory that boots EC2-like hosts; every host it made is removed afterwards."""
    from pynet.local.host import start_host, stop_host

    started: list[str] = []

    def start(name: str | None = None, **kwargs: Any) -> Host:
        name = name or f"pynet-test-{uuid.uuid4().hex[:8]}"
        started.append(name)
        return start_host(name, ssh_keypair[1], **kwargs)

    yield start
    for name in started:
        stop_host(name)
