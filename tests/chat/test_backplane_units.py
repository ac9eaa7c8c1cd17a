"""The Redis backplane on its own, against fakeredis (its Lua runs the real scripts).

Two `RedisBackplane` objects on one fake server stand for two chat hosts. What fakeredis
cannot show faithfully (a real socket going away, a wrong password, a server that is not Redis)
is tested against a real redis-server in test_backplane_redis.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import fakeredis
import pytest

from chat.backplane import (
    BackplaneError,
    RedisBackplane,
    Unavailable,
    redact,
    validate_url,
)
from tests.chat.fakes import URL, SinkRecorder, fake_connect, host, msgs, run, until


def test_broadcasts_from_two_hosts_share_one_id_sequence() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        (a, sa), (b, sb) = await host(server), await host(server)
        for i in range(5):
            assert a.say("ann", f"a{i}")
            assert b.say("bob", f"b{i}")
        await until(lambda: len(msgs(sa.lines)) == 10 and len(msgs(sb.lines)) == 10)
        assert sa.lines == sb.lines  # both hosts see one order
        ids = [int(line.split()[1]) for line in sa.lines]
        assert ids == list(range(1, 11))
        # each sender's lines keep their order
        assert [ln.split()[3] for ln in sa.lines if b" ann " in ln] == [
            f"a{i}".encode() for i in range(5)
        ]
        assert a.last_id == b.last_id == 10
        await a.stop()
        await b.stop()

    run(body)


def test_since_replays_what_any_host_posted_and_a_new_host_loads_it() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        a, sa = await host(server, size=3)
        for i in range(5):
            a.say("ann", f"m{i}")
        await until(lambda: len(sa.lines) == 5)
        assert a.since(3) == [b"MSG 4 ann m3\n", b"MSG 5 ann m4\n"]
        assert a.since(0) == sa.lines[-3:]  # three retained
        assert a.since(5) == []
        late, _ = await host(server, size=3)
        assert late.last_id == 5
        assert late.since(2) == [b"MSG 3 ann m2\n", b"MSG 4 ann m3\n", b"MSG 5 ann m4\n"]
        await a.stop()
        await late.stop()

    run(body)


def test_ids_never_go_back_even_if_redis_forgets_its_data() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        a, sa = await host(server)
        for i in range(3):
            a.say("ann", f"m{i}")
        await until(lambda: len(sa.lines) == 3)
        flush = fakeredis.FakeAsyncRedis(server=server)
        await flush.flushall()  # a Redis restarted without persistence
        a.say("ann", "after")
        await until(lambda: len(sa.lines) == 4)
        assert sa.lines[-1] == b"MSG 4 ann after\n"
        await a.stop()

    run(body)


def test_presence_lines_reach_every_host_in_order_with_messages() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        (a, _), (b, sb) = await host(server), await host(server)
        a.line(b"JOIN ann\n")
        a.say("ann", "hi")
        a.line(b"LEFT ann bye\n")
        await until(lambda: len(sb.lines) == 3)
        assert sb.lines == [b"JOIN ann\n", b"MSG 1 ann hi\n", b"LEFT ann bye\n"]
        assert b.since(0) == [b"MSG 1 ann hi\n"]  # presence is not replayed
        await a.stop()
        await b.stop()

    run(body)


def test_nicks_are_unique_across_hosts_case_insensitively_and_released() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        (a, sa), (b, _) = await host(server), await host(server)
        assert await a.claim("Ann", None) is True
        sa.held.append("Ann")
        assert await b.claim("ANN", None) is False
        assert await a.claim("ann", "Ann") is True  # the holder may change case
        sa.held[:] = ["ann"]
        assert await a.claim("Anna", "ann") is True  # rename frees the old one
        assert await b.claim("Ann", None) is True
        assert await b.who() == ["Ann", "Anna"]
        a.release("Anna")
        await until(lambda: not a._queue)
        assert await b.claim("anna", None) is True
        assert await a.who() == ["Ann", "anna"]
        await a.stop()
        await b.stop()

    run(body)


def test_a_dead_hosts_nicks_expire_with_its_lease() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        a, _ = await host(server, lease_ms=300)
        b, _ = await host(server)
        assert await a.claim("ann", None) is True
        await a.stop()  # dies without releasing: only the lease frees the name
        assert await b.claim("ann", None) is False
        await asyncio.sleep(0.4)
        assert await b.who() == []
        assert await b.claim("ann", None) is True
        await b.stop()

    run(body)


def test_private_messages_reach_a_user_on_another_host_after_earlier_broadcasts() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        (a, sa), (b, sb) = await host(server), await host(server)
        assert await b.claim("bob", None) is True
        a.say("ann", "first")
        assert await a.private("ann", "BOB", "psst") is True
        assert await a.private("ann", "nobody", "psst") is False
        await until(lambda: bool(sb.privates))
        assert sb.privates == [("bob", b"PRIV ann psst\n")]
        assert sa.privates == []
        assert b"MSG 1 ann first\n" in sb.lines
        await a.stop()
        await b.stop()

    run(body)


def test_renewal_reports_a_nick_another_host_took_while_the_lease_lapsed() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        (a, sa), (b, _) = await host(server), await host(server)
        assert await a.claim("ann", None) is True
        sa.held.append("ann")
        raw = fakeredis.FakeAsyncRedis(server=server)
        await raw.delete("pynet:nick:ann")  # the lease lapsed
        assert await b.claim("ann", None) is True
        await a._renew()
        assert sa.lost == ["ann"]
        await a.stop()
        await b.stop()

    run(body)


def test_a_batch_resent_after_a_lost_reply_is_applied_once() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        a, sa = await host(server)
        a.say("ann", "once")
        await until(lambda: len(sa.lines) == 1)
        # The same operation (same seq) sent again, as after a reply lost in transit.
        again = await a._script(
            "apply",
            "",
            [
                a.prefix,
                a.host,
                0,
                a._maxlen,
                a.lease_ms,
                json.dumps([["say", 1, "ann", "once", ""]]),
            ],
        )
        assert again == [-1]
        await asyncio.sleep(0.05)
        assert sa.lines == [b"MSG 1 ann once\n"]
        await a.stop()

    run(body)


def test_questions_fail_at_once_when_redis_is_away_and_the_queue_is_bounded() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        a, _ = await host(server, max_queue=3)
        a.available = False
        with pytest.raises(Unavailable):
            await a.who()
        for task in a._tasks:
            task.cancel()  # nothing drains the queue from here on
        assert [a.say("ann", str(i)) for i in range(4)] == [True, True, True, False]
        await a.stop(timeout=0.1)

    run(body)


def test_unreachable_at_start_is_one_clear_error() -> None:
    async def body() -> None:
        server = fakeredis.FakeServer()
        server.connected = False
        backplane = RedisBackplane(URL, connect=fake_connect(server), check_version=False)
        with pytest.raises(BackplaneError, match=r"cannot reach Redis at redis://:\*\*\*@"):
            await backplane.start(SinkRecorder())

    run(body)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x:6379", "redis://"),
        ("redis://", "needs a host"),
        ("redis://h:port/0", "not a number"),
        ("redis://h:6379/x", "database 'x'"),
    ],
)
def test_bad_urls_say_what_was_expected(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_url(url)


def test_good_urls_and_redaction() -> None:
    for url in ("redis://10.0.0.5:6379/0", "rediss://:pw@host:6380/2", "redis://u:pw@h"):
        assert validate_url(url) == url
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("rediss://user:pw@h/1") == "rediss://user:***@h/1"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_a_successor_holds_delivery_then_reads_on_from_the_handed_over_id() -> None:
    """A handover: the predecessor's clients saw up to id 2; ids 3 and 4 were posted since.
    The successor delivers nothing before resume(), then exactly 3 and 4, in order."""

    async def body() -> None:
        server = fakeredis.FakeServer()
        a, sa = await host(server)
        for i in range(4):
            a.say("ann", f"m{i}")
        await until(lambda: len(sa.lines) == 4)
        successor = RedisBackplane(
            URL, history_size=100, connect=fake_connect(server), check_version=False
        )
        sink = SinkRecorder()
        await successor.start(sink, resume_from=2)
        assert successor.since(0) == [b"MSG 1 ann m0\n", b"MSG 2 ann m1\n"]
        await asyncio.sleep(0.1)
        assert sink.lines == []  # held until the handed-over clients are registered
        successor.resume()
        await until(lambda: len(sink.lines) == 2)
        assert sink.lines == [b"MSG 3 ann m2\n", b"MSG 4 ann m3\n"]
        assert successor.since(2) == sink.lines
        await a.stop()
        await successor.stop()

    run(body)


def test_malformed_entries_in_redis_are_skipped_logged_and_reading_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What Redis holds is checked as client input is: anything that reached Redis could have
    written it, and one bad entry must neither reach a terminal nor stop every host."""

    async def body() -> None:
        server = fakeredis.FakeServer()
        (a, sa), (b, sb) = await host(server), await host(server)
        raw = fakeredis.FakeAsyncRedis(server=server)
        assert a.say("ann", "before")
        await until(lambda: len(msgs(sb.lines)) == 1)
        room = "pynet:room"
        bad: list[dict[Any, Any]] = [
            {"n": "eve\x1b[2J", "t": "hi"},  # a nickname no client may take
            {"n": "eve", "t": "\x1b]0;pwned\x07"},  # text that drives terminals
            {"n": "eve", "t": b"\xff\xfe"},  # not UTF-8
            {"t": "no nickname"},
            {"l": "MSG 1 forged\n"},  # not a presence line
            {"l": "JOIN x\nBYE forged\n"},  # two lines in one
        ]
        for i, fields in enumerate(bad):
            await raw.xadd(
                room, fields, id=f"{100 + i}-{0 if 'n' in fields or 't' in fields else 1}"
            )
        await raw.xadd(f"pynet:inbox:{b.host}", {"a": "x", "f": "eve", "to": "bob", "t": "x"})
        await raw.xadd(f"pynet:inbox:{b.host}", {"a": "0", "f": "eve", "to": "bo b", "t": "x"})
        await raw.set("pynet:counter", 200)
        assert a.say("ann", "after")
        await until(lambda: b"after" in b"".join(sb.lines))
        assert not [line for line in sb.lines if b"eve" in line or b"forged" in line]
        assert sb.privates == []
        skipped = [r for r in caplog.records if "skipped a malformed entry" in r.message]
        assert len(skipped) >= len(bad) + 2
        assert b.say("bob", "still reading")
        await until(lambda: b"still reading" in b"".join(sa.lines))
        await a.stop()
        await b.stop()
        # A host that starts now loads the same stream without crashing on it.
        (c, _) = await host(server)
        replay = b"".join(c.since(0))
        await c.stop()
        assert b"ann after" in replay
        assert b"eve" not in replay

    run(body)


def test_a_successor_takes_over_without_asking_redis_and_reads_on_from_the_position() -> None:
    """A handover within a cluster: the successor opens Redis before the pause, and in it takes
    the predecessor's last id, retained lines and position as handed over, without a round trip
    (it cannot await there). Then it delivers, once resumed, exactly what came after."""

    async def body() -> None:
        server = fakeredis.FakeServer()
        old, _ = await host(server, size=3)
        for i in range(4):
            old.say("ann", f"m{i}")
        await until(lambda: old.last_id == 4)
        old.hold()  # the freeze
        old.say("ann", "after the freeze")  # in Redis, unread by the predecessor
        await asyncio.sleep(0.1)
        last_id, retained, position = old.last_id, old.since(0), old.position()
        assert retained == [b"MSG 2 ann m1\n", b"MSG 3 ann m2\n", b"MSG 4 ann m3\n"]

        new = RedisBackplane(URL, history_size=3, connect=fake_connect(server), check_version=False)
        sink = SinkRecorder()
        await new.open()
        calls: list[str] = []
        real = new._cmd.execute_command

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(str(args[0]))
            return await real(*args, **kwargs)

        new._cmd.execute_command = counted
        new.take_over(sink, last_id, retained, position)  # not a coroutine: nothing awaited
        assert calls == []
        assert new.last_id == 4
        assert new.since(2) == [b"MSG 3 ann m2\n", b"MSG 4 ann m3\n"]
        await asyncio.sleep(0.1)
        assert sink.lines == []  # nothing delivered before its clients are registered
        new.resume()
        await until(lambda: bool(sink.lines))
        assert sink.lines == [b"MSG 5 ann after the freeze\n"]
        await old.stop()
        await new.stop()

    run(body)


def test_a_take_over_before_open_is_a_clear_error() -> None:
    async def body() -> None:
        new = RedisBackplane(URL, connect=fake_connect(fakeredis.FakeServer()))
        position = new.position()
        with pytest.raises(BackplaneError, match="not opened before the handover"):
            new.take_over(SinkRecorder(), 0, [], position)

    run(body)


def test_a_handovers_nicknames_are_never_refused_nor_counted_against_the_queue() -> None:
    """A successor adopts one nickname per connection handed over (10,000 at once on a full
    host). The queue bound refused the ones past it, and those clients were cut 15 s later
    when the old host's lease lapsed; nor may they make broadcasts `ERR unavailable`."""

    async def body() -> None:
        server = fakeredis.FakeServer()
        new, sink = await host(server, max_queue=5)
        names = [f"user{i}" for i in range(12)]
        for name in names:
            new.adopt(name)
        # Nothing sent yet (no await): 12 adopts queued, and the bound of 5 is for the rest.
        accepted = [new.say("user0", f"m{i}") for i in range(6)]
        assert accepted == [True] * 5 + [False]
        await until(lambda: len(msgs(sink.lines)) == 5)
        fake = fakeredis.FakeAsyncRedis(server=server)
        for name in names:
            held = cast(bytes | None, await fake.get(f"pynet:nick:{name}"))
            assert held is not None
            assert held.endswith(name.encode())
        assert new._adopts == 0  # every adopt sent, and the count back to zero
        await new.stop()

    run(body)
