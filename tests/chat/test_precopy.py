"""A handover's pre-copy in one process: what a serving release describes before its pause
(`ChatServer.precopy`) and in it (`freeze`), and how a successor takes both (`prepare`,
`unprepare`). Only what changed since the copy may cross in the pause, and all of that must."""

from __future__ import annotations

import asyncio

import pytest

from chat.connection import Peer
from chat.handover import SessionRefused
from chat.server import ChatServer
from tests.chat.fakes import RecordingTransport, attach, local_server, named_session, run


def held(server: ChatServer, port: int) -> Peer:
    """A connection as `take` holds it: its transport made, not registered, not read."""
    client = Peer(server)
    client.held = True
    transport = RecordingTransport(port)
    transport.protocol = client
    client.connection_made(transport)
    return client


def test_only_sessions_changed_since_the_copy_are_described_in_the_pause() -> None:
    async def body() -> None:
        server = local_server()
        clients = [attach(server, 1000 + i, f"u{i}")[0] for i in range(5)]
        lurker, _ = attach(server, 1005)  # connected, never named
        await asyncio.sleep(0)
        copied = server.precopy([*clients, lurker])
        assert [client for client, _ in copied] == [*clients, lurker]
        assert all(not session.unsent for _, session in copied)  # the output stays
        renamed, halfway, dropped, quiet, asked = clients
        server.received(renamed, b"/nick ann\n")
        server.received(halfway, b"half a li")
        server.drop(dropped, "kicked", "")
        server.received(asked, b"/ping\n")
        late, _ = attach(server, 2000, "eve")  # connected after the copy
        changed, same = server.freeze({client for client, _ in copied})
        assert set(same) == {quiet, lurker}
        by_client = dict(changed)
        assert set(by_client) == {renamed, halfway, dropped, asked, late}
        assert by_client[renamed].nick == "ann"
        assert by_client[halfway].partial == b"half a li"
        assert by_client[dropped].closing
        assert by_client[late].nick == "eve"

    run(body)


def test_a_copy_skips_what_is_under_way() -> None:
    """A client served as it reads, or waiting for an answer, is described in the pause only."""

    async def body() -> None:
        server = local_server()
        replaying, waiting, plain = (attach(server, 1000 + i, f"u{i}")[0] for i in range(3))
        replaying.replay = [0, 5]
        server.waiting.add(waiting)
        copied = server.precopy([replaying, waiting, plain])
        assert [client for client, _ in copied] == [plain]

    run(body)


def test_a_successor_redoes_the_changed_sessions_after_undoing_them_all() -> None:
    """Two clients swap nicknames after the copy: the successor must end with each nickname
    on the right connection (undoing one at a time would free a nickname the other holds)."""

    async def body() -> None:
        old = local_server()
        ann, _ = attach(old, 1, "ann")
        bob, _ = attach(old, 2, "bob")
        copied = old.precopy([ann, bob])
        for client, line in ((ann, b"/nick tmp\n"), (bob, b"/nick ann\n"), (ann, b"/nick bob\n")):
            old.received(client, line)
        changed, same = old.freeze({ann, bob})
        assert same == []

        new = local_server()
        one, two = held(new, 1), held(new, 2)
        ours = {ann: one, bob: two}
        for client, session in copied:
            new.prepare(ours[client], session)
        assert new.registry.named == {"ann": one, "bob": two}
        for client, _ in changed:
            new.unprepare(ours[client])
        assert not new.clients
        for client, session in changed:
            new.prepare(ours[client], session)
        assert new.registry.named == {"bob": one, "ann": two}
        assert new.clients == {one, two}
        assert new.registry.per_address == {"127.0.0.1": 2}

    run(body)


def test_a_nickname_handed_over_twice_is_refused() -> None:
    async def body() -> None:
        new = local_server()
        new.prepare(held(new, 1), named_session("ann"))
        with pytest.raises(SessionRefused, match="handed over twice"):
            new.prepare(held(new, 2), named_session("ANN"))
        assert len(new.clients) == 1

    run(body)
