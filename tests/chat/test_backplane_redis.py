"""The backplane against a real redis-server: start-up errors, losing Redis and getting it back."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from chat.backplane import BackplaneError, RedisBackplane
from tests.chat.fakes import RedisServer, SinkRecorder, msgs, until
from tests.kit import free_port


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(password="s3cret-pw")
    yield server
    server.close()


async def start(url: str, **kwargs: Any) -> tuple[RedisBackplane, SinkRecorder]:
    backplane = RedisBackplane(url, history_size=100, **kwargs)
    sink = SinkRecorder()
    await backplane.start(sink)
    return backplane, sink


def test_two_hosts_on_a_real_redis(redis_server: RedisServer) -> None:
    async def body() -> None:
        (a, sa), (b, sb) = await start(redis_server.url), await start(redis_server.url)
        assert await a.claim("ann", None) is True
        assert await b.claim("Ann", None) is False
        for i in range(200):
            (a if i % 2 else b).say("ann", f"m{i}")
        await until(lambda: len(sa.lines) == 200 and len(sb.lines) == 200)
        assert sa.lines == sb.lines
        assert [int(line.split()[1]) for line in sa.lines] == list(range(1, 201))
        assert b.since(198) == sa.lines[-2:]
        assert sorted(line.split()[3] for line in sa.lines) == sorted(
            f"m{i}".encode() for i in range(200)
        )
        await a.stop()
        await b.stop()

    run(body)


def test_any_text_crosses_the_real_redis_byte_for_byte(redis_server: RedisServer) -> None:
    """The operations travel as one JSON argument, decoded by Redis's own cjson: quotes,
    backslashes, non-ASCII and characters outside the BMP (surrogate pairs in JSON escapes)
    must come out as they went in, in both hosts' lines and for private messages."""
    texts = ['say "hi"', "back\\slash \\n", "über café", "emoji \U0001f600 ok", "[1,2]", "{}"]

    async def body() -> None:
        (a, sa), (b, sb) = await start(redis_server.url), await start(redis_server.url)
        assert await b.claim("bob", None) is True
        for text in texts:
            a.say("ann", text)
            assert await a.private("ann", "bob", text) is True
        await until(lambda: len(sb.lines) == len(texts) and len(sb.privates) == len(texts))
        expected = [f"MSG {i} ann {t}\n".encode() for i, t in enumerate(texts, 1)]
        assert sb.lines == expected
        assert [line for _, line in sb.privates] == [f"PRIV ann {t}\n".encode() for t in texts]
        await until(lambda: len(sa.lines) == len(texts))
        assert sa.lines == expected
        await a.stop()
        await b.stop()

    run(body)


def test_unreachable_wrong_password_and_not_redis_are_clear_errors(
    redis_server: RedisServer,
) -> None:
    async def expect(url: str, pattern: str) -> None:
        backplane = RedisBackplane(url)
        with pytest.raises(BackplaneError, match=pattern) as caught:
            await backplane.start(SinkRecorder())
        assert "s3cret" not in str(caught.value)
        assert "\n" not in str(caught.value)

    async def body() -> None:
        await expect(f"redis://127.0.0.1:{free_port()}/0", "cannot reach Redis at")
        wrong = redis_server.url.replace("s3cret-pw", "wrong")
        await expect(wrong, "refused the password")
        await expect(f"redis://127.0.0.1:{redis_server.port}/0", "refused the password")
        with not_redis() as port:
            await expect(f"redis://127.0.0.1:{port}/0", "Redis")

    run(body)


class not_redis:
    """A TCP server that answers like a web server."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_redis_lost_and_back_nothing_accepted_is_lost(redis_server: RedisServer) -> None:
    """Killed without a save: the hosts say so, hold broadcasts, resume with the same ids."""

    async def body() -> None:
        (a, sa), (b, sb) = await start(redis_server.url), await start(redis_server.url)
        assert await a.claim("ann", None) is True
        sa.held.append("ann")
        for i in range(3):
            a.say("ann", f"before{i}")
        await until(lambda: len(msgs(sb.lines)) == 3)
        redis_server.stop()
        await until(lambda: sa.statuses == [False] and sb.statuses == [False])
        assert not a.available
        accepted = [a.say("ann", f"during{i}") for i in range(3)]
        assert accepted == [True, True, True]  # held in the bounded queue
        redis_server.start()  # empty: no persistence
        await asyncio.sleep(3)
        print(sa.statuses, sb.statuses)
        await until(lambda: sa.statuses == [False, True] and sb.statuses == [False, True])
        await until(lambda: len(msgs(sb.lines)) == 6, timeout=10)
        ids = [int(line.split()[1]) for line in msgs(sb.lines)]
        assert ids == [1, 2, 3, 4, 5, 6]  # continued after the floor, never reused
        assert msgs(sa.lines) == msgs(sb.lines)
        # the lease was taken again at once: the name is still held by a
        assert await b.claim("ann", None) is False
        await a.stop()
        await b.stop()

    run(body)
