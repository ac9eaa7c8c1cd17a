"""The chat image, built for real on the locally made Debian base and talked to over 127.0.0.1."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from pynet.local.engine import docker
from tests.kit import free_port, wait_until

pytestmark = pytest.mark.e2e


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def connect(port: int, timeout: float = 20.0) -> socket.socket:
    """Connect once the container's server has said HELLO."""

    def greeted() -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            return None
        if read_until(sock, b"\n", 2).startswith(b"HELLO pynet "):
            return sock
        sock.close()
        return None

    return wait_until(
        greeted, timeout, f"the container saying HELLO on 127.0.0.1:{port}", interval=0.2
    )


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"pynet-test-history-{uuid.uuid4().hex[:8]}"
    yield name
    docker("volume", "rm", "-f", name, check=False)


@pytest.fixture
def run_chat(chat_image: str) -> Iterator:
    started: list[str] = []

    def run(*flags: str) -> tuple[str, int]:
        name = f"pynet-test-chat-{uuid.uuid4().hex[:8]}"
        port = free_port()
        docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5050", *flags, chat_image)
        started.append(name)
        return name, port

    yield run
    for name in started:
        docker("rm", "-f", name, check=False)


def test_image_holds_only_the_service(chat_image: str) -> None:
    config = docker(
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Cmd}} {{json .Config.ExposedPorts}} "
        "{{json .Config.Volumes}}",
        chat_image,
    ).stdout
    assert config.split()[0] == "10001:10001"
    assert '["python3","-m","chat.server"]' in config
    assert '"5050/tcp"' in config
    assert '"/var/lib/pynet"' in config
    listing = docker(
        "run", "--rm", "--entrypoint", "find", chat_image, "/app", "-maxdepth", "2", "-name", "*.py"
    ).stdout.split()
    assert "/app/chat/server.py" in listing
    assert all(path.startswith("/app/chat/") for path in listing), listing


def test_container_serves_is_healthy_and_non_root(run_chat) -> None:
    name, port = run_chat(
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp"
    )
    with connect(port) as sock:
        sock.sendall(b"/nick ada\nhello from a container\n")
        assert b"MSG 1 ada hello from a container" in read_until(sock, b"MSG 1 ")
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    probe = docker("exec", name, "python3", "-m", "chat.healthcheck", check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr


def test_docker_stop_is_graceful_and_history_survives(run_chat, volume: str) -> None:
    name, port = run_chat("-v", f"{volume}:/var/lib/pynet")
    with connect(port) as sock:
        sock.sendall(b"/nick ada\nremember me\n")
        assert b"MSG 1 ada remember me" in read_until(sock, b"MSG 1 ")
        docker("stop", "-t", "10", name)
        goodbye = read_until(sock, b"BYE restarting")
    assert b"INFO " in goodbye
    assert b"BYE restarting" in goodbye
    assert docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"

    _, port = run_chat("-v", f"{volume}:/var/lib/pynet")
    with connect(port) as sock:
        sock.sendall(b"/nick bob\n/since 0\nnext\n")
        replay = read_until(sock, b"MSG 2 ")
    assert b"MSG 1 ada remember me" in replay
    assert b"MSG 2 bob next" in replay
