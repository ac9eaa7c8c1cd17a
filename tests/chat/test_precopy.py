"""A handover's pre-copy in one process: what a serving release describes before its pause
(`ChatServer.precopy`) and in it (`freeze`), and how a successor takes both (`prepare`,
`unprepare`). Only what changed since the copy may cross in the pause, and all of that must."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat.connection import Peer
from chat.handover import SessionRefused
from chat.service import ChatServer
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


def test_a_client_served_as_it_reads_goes_on_after_a_failed_handover() -> None:
    """A `/since` replay under way when a handover fails after the freeze: the pacer's turns
    came while the loop was blocked (and found the sessions frozen); the thaw must go on with
    it, and the output taken back goes out first."""

    async def body() -> None:
        server = local_server()
        await server.start()
        ann, ann_t = attach(server, 1, "ann")
        bob, _ = attach(server, 2, "bob")
        for i in range(3):
            server.received(bob, f"line {i}\n".encode())
        await asyncio.sleep(0.01)
        server.received(ann, b"/since 0\n")  # paced: its first page comes in a loop turn
        assert ann.replay is not None
        server.pause_accepting()
        await server.accepted_all(1.0)
        listener = server.stop_accepting()
        assert await server.answers_settled(1.0)
        server.freeze(set())
        time.sleep(0.02)  # the loop blocked, waiting for `ready`
        await server.thaw(listener)
        await asyncio.sleep(0.2)
        assert ann.replay is None, "the replay never went on after the thaw"
        assert b"MSG 3 bob line 2" in b"".join(ann_t.writes)
        await server.stop()

    run(body)


def housekeeping_timers(server: ChatServer) -> int:
    scheduled: list[asyncio.TimerHandle] = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return len([h for h in scheduled if not h.cancelled() and h._callback == server._housekeep])  # type: ignore[attr-defined]


def test_handovers_failing_before_the_freeze_leave_one_housekeeping_timer() -> None:
    async def body() -> None:
        server = local_server(nick_timeout=0.04)
        await server.start()
        assert housekeeping_timers(server) == 1
        for _ in range(3):  # answers never settled: thaw without a freeze
            server.pause_accepting()
            await server.accepted_all(1.0)
            await server.thaw(server.stop_accepting())
        await asyncio.sleep(0.05)
        assert housekeeping_timers(server) == 1
        await server.stop()
        await asyncio.sleep(0.05)
        assert housekeeping_timers(server) == 0

    run(body)


def test_a_nickname_that_moves_during_the_precopy_goes_to_the_later_copy() -> None:
    """The pre-copy goes in batches while the predecessor serves: ann, copied first, renames,
    and bob, copied later, takes "ann". The later copy wins; ann's comes again in the pause."""

    async def body() -> None:
        old = local_server()
        ann, _ = attach(old, 1, "ann")
        bob, _ = attach(old, 2, "bob")
        first = old.precopy([ann])
        old.received(ann, b"/nick zed\n")
        old.received(bob, b"/nick ann\n")
        second = old.precopy([bob])
        changed, same = old.freeze({ann, bob})
        assert [client for client, _ in changed] == [ann]
        assert same == [bob]
        new = local_server()
        ours = {ann: held(new, 1), bob: held(new, 2)}
        for client, session in first + second:
            new.prepare(ours[client], session, early=True)
        assert new.registry.named == {"ann": ours[bob]}
        assert not new.prepared(ours[ann])
        assert new.prepared(ours[bob])
        for client, session in changed:
            new.unprepare(ours[client])
            new.prepare(ours[client], session)
        assert new.registry.named == {"ann": ours[bob], "zed": ours[ann]}

    run(body)


def test_answers_still_owed_after_half_the_limit_stop_every_reader_until_the_thaw() -> None:
    async def body() -> None:
        server = local_server()
        await server.start()
        clients = [attach(server, 1000 + i, f"u{i}") for i in range(3)]
        asker = clients[0][0]
        server.waiting.add(asker)
        asyncio.get_running_loop().call_later(0.08, server.waiting.discard, asker)
        server.pause_accepting()
        listener = server.stop_accepting()
        assert await server.answers_settled(0.1)  # settled after half the limit
        assert not any(transport.reading for _, transport in clients)
        await server.thaw(listener)
        assert all(transport.reading for _, transport in clients)
        await server.stop()

    run(body)
