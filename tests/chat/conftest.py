"""Fixtures for the chat tests (helpers live in fakes.py)."""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chat.fakes import LineClient, ServerProcess


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with the given flags; every one is killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, port: int = 0, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(*args, port=port, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
def clients() -> Iterator[Callable[..., LineClient]]:
    made: list[LineClient] = []

    def make(port: int, nick: str | None = None, **kwargs: object) -> LineClient:
        client = LineClient(port, nick, **kwargs)  # type: ignore[arg-type]  # LineClient's own keywords, passed through
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def many_files() -> None:
    """Allow a few thousand sockets in this process (the soft limit is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture
def sock(tmp_path: Path) -> str:
    """Where a release's handover socket goes (its directory is made by the server)."""
    return str(tmp_path / "run" / "handover.sock")
