"""The rooms without processes: `LocalRoom` and `ClusterRoom` (over fakeredis) behind a real
`ChatServer` whose connections are recording transports.

The rules are written once (`chat.room.Conversation`); these tests hold both rooms to them:
the same conversation gives the same lines on one host and across two hosts of a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import fakeredis

from chat.backplane import RedisBackplane
from chat.cluster import ClusterRoom
from chat.config import Settings
from chat.history import History
from chat.room import LocalRoom
from chat.service import ChatServer
from tests.chat.fakes import URL, RecordingTransport, attach, fake_connect, local_server, run, until


async def clustered(redis: fakeredis.FakeServer) -> ChatServer:
    server = local_server()
    backplane = RedisBackplane(
        URL, history_size=100, connect=fake_connect(redis), check_version=False
    )
    room = ClusterRoom(server, backplane)
    await room.start()
    server.room = room
    return server


def said(transport: RecordingTransport) -> Callable[[], list[bytes]]:
    """The lines TRANSPORT got, without the greeting."""
    return lambda: [
        line for line in transport.lines() if not line.startswith((b"HELLO", b"INFO choose"))
    ]


def test_local_room_nick_say_who_private_since_quit() -> None:
    async def body() -> None:
        server = local_server()
        assert isinstance(server.room, LocalRoom)
        ann, ann_t = attach(server, 1)
        bob, bob_t = attach(server, 2)
        server.received(ann, b"/nick ann\n")
        server.received(bob, b"/nick ann\n/nick bob\n")
        server.received(ann, b"hello\n/who\n/msg bob psst\n/msg nobody x\n")
        server.received(bob, b"/since 0\n/quit done\n")
        await until(lambda: bob_t.closing)
        assert said(ann_t)() == [
            b"OK nick ann",
            b"JOIN ann",
            b"JOIN bob",
            b"MSG 1 ann hello",
            b"WHO ann bob",
            b"ERR no-such-nick no such nickname",
            b"LEFT bob done",
        ]
        assert said(bob_t)() == [
            b"ERR nick-taken that nickname is in use",
            b"OK nick bob",
            b"JOIN bob",
            b"MSG 1 ann hello",
            b"PRIV ann psst",
            b"MSG 1 ann hello",
            b"BYE quit",
        ]

    run(body)


def test_local_room_renames_and_frees_the_old_name() -> None:
    async def body() -> None:
        server = local_server()
        ann, ann_t = attach(server, 1)
        bob, bob_t = attach(server, 2)
        server.received(ann, b"/nick ann\n")
        server.received(ann, b"/nick anna\n")
        server.received(bob, b"/nick ann\n")
        await until(lambda: len(said(bob_t)()) >= 2)
        assert said(ann_t)()[:3] == [b"OK nick ann", b"JOIN ann", b"OK nick anna"]
        assert b"NICK ann anna" in said(ann_t)()
        assert said(bob_t)()[:2] == [b"OK nick ann", b"JOIN ann"]
        assert sorted(server.registry.named) == ["ann", "anna"]

    run(body)


def test_cluster_room_one_conversation_across_two_hosts() -> None:
    async def body() -> None:
        redis = fakeredis.FakeServer()
        one, two = await clustered(redis), await clustered(redis)
        ann, ann_t = attach(one, 1)
        bob, bob_t = attach(two, 2)
        one.received(ann, b"/nick ann\n")
        await until(lambda: b"OK nick ann" in said(ann_t)())
        two.received(bob, b"/nick ANN\n")  # taken on the other host, whatever the case
        two.received(bob, b"/nick bob\n")
        await until(lambda: b"JOIN bob" in said(ann_t)())
        one.received(ann, b"hello\n/who\n/msg bob psst\n/msg nobody x\n")
        await until(lambda: b"ERR no-such-nick no such nickname" in said(ann_t)())
        await until(lambda: b"PRIV ann psst" in said(bob_t)())
        two.received(bob, b"/since 0\n")
        await until(lambda: said(bob_t)().count(b"MSG 1 ann hello") == 2)
        assert said(ann_t)() == [
            b"OK nick ann",
            b"JOIN ann",
            b"JOIN bob",
            b"MSG 1 ann hello",
            b"WHO ann bob",
            b"ERR no-such-nick no such nickname",
        ]
        assert said(bob_t)()[:3] == [
            b"ERR nick-taken that nickname is in use",
            b"OK nick bob",
            b"JOIN bob",
        ]
        assert said(bob_t)()[3:] == [b"MSG 1 ann hello", b"PRIV ann psst", b"MSG 1 ann hello"]
        one.received(ann, b"/quit bye\n")
        await until(lambda: b"LEFT ann bye" in said(bob_t)())
        two.received(bob, b"/nick ann\n")  # free again once its holder left
        await until(lambda: b"NICK bob ann" in said(bob_t)())
        for server in (one, two):
            await server.room.close()

    run(body)


def test_cluster_room_holds_a_clients_later_lines_until_redis_answers() -> None:
    async def body() -> None:
        server = await clustered(fakeredis.FakeServer())
        ann, ann_t = attach(server, 1)
        # /nick needs Redis; the line after it must not overtake its answer.
        server.received(ann, b"/nick ann\nfirst\n")
        assert ann in server.waiting
        await until(lambda: b"MSG 1 ann first" in said(ann_t)())
        assert said(ann_t)() == [b"OK nick ann", b"JOIN ann", b"MSG 1 ann first"]
        assert not server.waiting
        await server.room.close()

    run(body)


def test_cluster_room_gives_back_a_name_claimed_for_a_client_that_left() -> None:
    async def body() -> None:
        redis = fakeredis.FakeServer()
        one, two = await clustered(redis), await clustered(redis)
        ann, ann_t = attach(one, 1)
        one.received(ann, b"/nick ann\n")
        ann_t.close()  # gone before Redis answered
        await asyncio.sleep(0.05)
        bob, bob_t = attach(two, 2)
        two.received(bob, b"/nick ann\n")
        await until(lambda: b"OK nick ann" in said(bob_t)())
        for server in (one, two):
            await server.room.close()

    run(body)


def test_cluster_room_who_lists_a_name_just_taken_on_this_host() -> None:
    """`/who` is served again for a second (WHO_TTL), but not once a name came or went here:
    a client that just got `OK nick bob` must find bob in the `/who` that follows."""

    async def body() -> None:
        server = await clustered(fakeredis.FakeServer())
        try:  # closed whatever happens: a room left open keeps the loop from ending
            ann, ann_t = attach(server, 1)
            bob, bob_t = attach(server, 2)
            server.received(ann, b"/nick ann\n/who\n")
            await until(lambda: b"WHO ann" in said(ann_t)())
            server.received(bob, b"/nick bob\n/who\n")
            await until(lambda: any(line.startswith(b"WHO") for line in said(bob_t)()))
            whos = [line for line in said(bob_t)() if line.startswith(b"WHO")]
            assert whos == [b"WHO ann bob"]
            server.received(bob, b"/quit\n")
            await until(lambda: b"LEFT bob quit" in said(ann_t)())
            server.received(ann, b"/who\n")
            await until(lambda: said(ann_t)().count(b"WHO ann") == 2)
        finally:
            await server.room.close()

    run(body)


def test_a_line_begun_before_a_replay_is_not_timed_while_the_server_does_not_read() -> None:
    """During a `/since` replay the server stops reading the client (the rest of its line
    waits in the kernel): the line timeout must not cut it for a line only the server holds up."""

    async def body() -> None:
        settings = Settings(host="127.0.0.1", port=0, rate=0.0, max_per_address=0, line_timeout=0.2)
        server = ChatServer(settings, History(100, None))
        for _ in range(40):  # 120 KB: more than one page
            server.history.add("old", "y" * 3000)
        ann, ann_t = attach(server, 1)
        server.received(ann, b"/nick ann\n")
        await until(lambda: b"OK nick ann" in said(ann_t)())
        ann_t.size = 20_000  # a reader that has not read the first page yet
        server.received(ann, b"/since 0\nhel")
        assert ann.replay is not None
        server._housekeep()
        try:
            await asyncio.sleep(0.5)
            assert not ann_t.closing, said(ann_t)()[-1]
            ann_t.size = 0
            await until(lambda: ann.replay is None)
            server.received(ann, b"lo\n")
            await until(lambda: b"MSG 41 ann hello" in said(ann_t)())
        finally:
            if server._housekeeping is not None:
                server._housekeeping.cancel()

    run(body)


def test_a_rename_right_after_a_handover_leaves_no_ghost_nickname() -> None:
    """The successor holds the handed-over nicknames (`claim_adopted`) before it reads any
    client: a `/nick` read first queued the claim of the new name (releasing the old one)
    ahead of the adopt of the old name, which then wrote it back into `/who` for good."""

    async def body() -> None:
        redis = fakeredis.FakeServer()
        server = local_server()  # named here as the predecessor had them: no Redis yet
        ann, ann_t = attach(server, 1, "old")
        room = ClusterRoom(
            server,
            RedisBackplane(URL, history_size=100, connect=fake_connect(redis), check_version=False),
        )
        await room.start()
        server.room = room
        fake = fakeredis.FakeAsyncRedis(server=redis)
        await fake.set("pynet:nick:old", "predecessor-host\told")  # the old release's hold
        await fake.hset("pynet:who:predecessor-host", "old", "old")
        await fake.sadd("pynet:hosts", "predecessor-host")
        room.claim_adopted()  # right after the commit, before the loop reads anyone
        room.adopted()
        server.received(ann, b"/nick new\n")
        await until(lambda: b"OK nick new" in said(ann_t)())
        server.received(ann, b"/who\n")
        await until(lambda: any(line.startswith(b"WHO") for line in said(ann_t)()))
        assert [line for line in said(ann_t)() if line.startswith(b"WHO")] == [b"WHO new"]
        assert await fake.get("pynet:nick:old") is None
        await room.close()

    run(body)
