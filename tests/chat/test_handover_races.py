"""Handover races, driven in one process where a real two-process run would hit them only by
chance: a connection accepted in the very loop turn the listener stops, and a cluster host
whose clients saw ids its own history never delivered."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import fakeredis

from chat.backplane import MAX_INHERITED, Position, RedisBackplane
from chat.config import Settings
from chat.history import History
from chat.service import ChatServer
from tests.chat.fakes import SinkRecorder


def test_a_connection_accepted_as_the_listener_stops_is_still_greeted() -> None:
    """asyncio accepts in one turn and builds the transport in a task a turn later. If the
    handover closed the server in between, that task failed and the client got a close without
    a word; now accepting only pauses, and the handover waits for that transport."""

    async def body() -> None:
        server = ChatServer(Settings(host="127.0.0.1", port=0), History(10))
        await server.start()
        loop: Any = asyncio.get_running_loop()
        accept = loop._accept_connection
        paused: list[bool] = []

        def accept_then_pause(*args: Any, **kwargs: Any) -> None:
            accept(*args, **kwargs)  # accepted; the transport is built in a later task
            if not paused:
                server.pause_accepting()  # what `give` does, in this same turn
                paused.append(True)

        loop._accept_connection = accept_then_pause
        aio_server = server.listener.server
        assert aio_server is not None
        listener: Any = aio_server.sockets[0]  # asyncio's TransportSocket around it
        loop._remove_reader(listener.fileno())
        loop._start_serving(server.listener.accepted, listener._sock, None, aio_server, 100)
        client = socket.create_connection(("127.0.0.1", server.port))
        client.settimeout(5)
        while not paused:
            await asyncio.sleep(0)
        await server.accepted_all(1.0)
        assert len(server.clients) == 1  # in the snapshot a handover would take now
        assert not server.listener.unborn
        kept = server.stop_accepting()
        assert client.recv(64).startswith(b"HELLO")  # written when it connected, just now
        client.close()
        kept.close()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_handover_chain_hands_on_only_the_newest_inboxes() -> None:
    """Each successor reads its predecessors' inboxes for a while; releases switched seconds
    apart must not pile them up until a position is refused."""

    async def body() -> None:
        fake = fakeredis.FakeServer()

        def connect(url: str, timeout: float) -> Any:
            return fakeredis.FakeAsyncRedis(server=fake)

        position: Position | None = None
        hosts = []
        for _ in range(MAX_INHERITED + 5):
            backplane = RedisBackplane("redis://x:1/0", connect=connect, check_version=False)
            await backplane.start(SinkRecorder(), 0 if position else None, position)
            hosts.append(backplane.host)
            position = backplane.position()
            await backplane.stop()
        assert position is not None
        assert list(position.inboxes) == hosts[::-1][: MAX_INHERITED + 1]

    asyncio.run(asyncio.wait_for(body(), 30))
