"""`chat.fanout.Fanout` on its own: no server, no sockets, receivers are plain objects.

What the server relies on: each receiver gets its lines in order, in one write per flush; its
own lines wait behind the broadcasts it has not had; the three callbacks are called once per
step (never once per receiver); slow readers are handed to `cut`; nothing is written while held.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from chat import fanout as fanout_module
from chat.fanout import Fanout
from tests.chat.fakes import RecordingTransport, run


@dataclass(eq=False)
class Member:
    """A receiver as the fan-out sees one (`transport` is `recorder`)."""

    recorder: RecordingTransport
    transport: asyncio.Transport = field(init=False)
    out: list[bytes] | None = None
    receiving: bool = False
    seen: int = 0
    allowance: int = 0
    close_after_flush: bool = False
    replay: list[int] | None = None

    def __post_init__(self) -> None:
        self.transport = self.recorder


@dataclass
class Owner:
    """The callbacks, counted."""

    members: list[Member] = field(default_factory=list)
    commits: int = 0
    receiver_calls: int = 0
    cuts: list[list[Member]] = field(default_factory=list)

    def receivers(self) -> list[Member]:
        self.receiver_calls += 1
        return [m for m in self.members if m.receiving]

    def commit(self) -> None:
        self.commits += 1

    def cut(self, members: list[Member]) -> None:
        self.cuts.append(members)
        for member in members:
            member.receiving = False


def make(owner: Owner, **bounds: int) -> Fanout[Member]:
    return Fanout(
        asyncio.get_running_loop(),
        0.0,
        bounds.get("max_backlog", 1 << 20),
        bounds.get("max_buffered", 1 << 30),
        receivers=owner.receivers,
        everyone=lambda: owner.members,
        commit=owner.commit,
        cut=owner.cut,
    )


def join(fanout: Fanout[Member], owner: Owner, port: int) -> Member:
    member = Member(RecordingTransport(port))
    owner.members.append(member)
    fanout.receives(member)
    return member


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_each_receiver_gets_every_broadcast_in_one_write_and_callbacks_run_per_step() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        members = [join(fanout, owner, 1000 + i) for i in range(50)]
        for i in range(3):
            fanout.broadcast(f"MSG {i}\n".encode())
        await turns()
        for member in members:
            assert member.recorder.writes == [b"MSG 0\nMSG 1\nMSG 2\n"]
        assert owner.commits == 1, "one group commit for the whole fan-out"
        assert owner.receiver_calls == 1
        assert not fanout.log
        assert not fanout.pending

    run(body)


def test_own_lines_wait_behind_the_broadcasts_not_yet_had() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        a, b = join(fanout, owner, 1), join(fanout, owner, 2)
        fanout.broadcast(b"MSG 1\n")
        fanout.send(a, b"OK private\n")
        fanout.broadcast(b"MSG 2\n")
        await turns()
        assert a.recorder.lines() == [b"MSG 1", b"OK private", b"MSG 2"]
        assert b.recorder.lines() == [b"MSG 1", b"MSG 2"]

    run(body)


def test_a_receiver_named_later_gets_only_what_follows() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        early = join(fanout, owner, 1)
        fanout.broadcast(b"MSG 1\n")
        late = join(fanout, owner, 2)
        fanout.broadcast(b"MSG 2\n")
        await turns()
        assert early.recorder.lines() == [b"MSG 1", b"MSG 2"]
        assert late.recorder.lines() == [b"MSG 2"]

    run(body)


def test_a_large_fan_out_is_written_in_steps_and_a_line_joins_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout_module, "FANOUT_STEP", 2)

    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        members = [join(fanout, owner, i) for i in range(6)]
        fanout.broadcast(b"MSG 1\n")
        await asyncio.sleep(0)  # the first step: two receivers written
        assert fanout.sweeping
        assert sum(1 for m in members if m.recorder.writes) == 2
        fanout.broadcast(b"MSG 2\n")  # read between two steps
        await turns(10)
        written = [m.recorder.writes for m in members]
        assert written[:2] == [[b"MSG 1\n", b"MSG 2\n"]] * 2  # in the next fan-out
        assert written[2:] == [[b"MSG 1\nMSG 2\n"]] * 4  # joined the one under way
        assert owner.commits >= 3

    run(body)


def test_a_slow_reader_is_handed_to_cut_once_and_the_others_go_on() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner, max_backlog=100)
        slow, fine = join(fanout, owner, 1), join(fanout, owner, 2)
        slow.recorder.size = 101
        fanout.broadcast(b"MSG 1\n")
        await turns()
        assert owner.cuts == [[slow]]
        assert fine.recorder.lines() == [b"MSG 1"]

    run(body)


def test_a_replay_allowance_tolerates_one_big_backlog() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner, max_backlog=100)
        member = join(fanout, owner, 1)
        member.allowance = 500
        member.recorder.size = 400
        fanout.broadcast(b"MSG 1\n")
        await turns()
        assert owner.cuts == []
        member.recorder.size = 0
        fanout.broadcast(b"MSG 2\n")
        await turns()
        assert member.allowance == 0, "spent once the backlog drained"

    run(body)


def test_past_max_buffered_the_biggest_backlogs_go_first() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner, max_backlog=1 << 20, max_buffered=1000)
        sizes = [100, 700, 300, 50]
        members = [join(fanout, owner, i) for i in range(len(sizes))]
        for member, size in zip(members, sizes, strict=True):
            member.recorder.size = size
        fanout.broadcast(b"MSG 1\n")
        await turns()
        # 1,150 buffered: cut down to three quarters of the bound, biggest first.
        assert owner.cuts == [[members[1]]]

    run(body)


def test_nothing_is_written_while_held_and_everything_after_resume() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        member = join(fanout, owner, 1)
        fanout.hold()
        fanout.broadcast(b"MSG 1\n")
        fanout.send(member, b"PONG\n")
        await turns()
        assert member.recorder.writes == []
        fanout.resume()
        await turns()
        assert member.recorder.lines() == [b"MSG 1", b"PONG"]

    run(body)


def test_lines_wait_behind_a_replay_and_follow_it() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        member, other = join(fanout, owner, 1), join(fanout, owner, 2)
        fanout.broadcast(b"MSG 5\n")
        fanout.settle(member)  # what it was owed before the replay goes first
        member.replay = [0, 5]
        fanout.hold_back(member)
        fanout.broadcast(b"MSG 6\n")
        await turns()
        assert member.recorder.writes == [b"MSG 5\n"]
        assert other.recorder.lines() == [b"MSG 5", b"MSG 6"]
        member.recorder.write(b"MSG 1\nMSG 2\n")  # the replay's page, written directly
        member.replay = None
        fanout.schedule()
        await turns()
        assert member.recorder.lines() == [b"MSG 5", b"MSG 1", b"MSG 2", b"MSG 6"]

    run(body)


def test_what_waits_behind_a_replay_counts_against_the_backlog() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner, max_backlog=100)
        member = join(fanout, owner, 1)
        member.replay = [0, 5]
        fanout.hold_back(member)
        for i in range(20):
            fanout.broadcast(b"MSG %d xxxxxxxx\n" % i)
        await turns()
        assert owner.cuts
        assert owner.cuts[0] == [member]

    run(body)


def test_close_after_flush_writes_the_last_lines_then_closes() -> None:
    async def body() -> None:
        owner = Owner()
        fanout = make(owner)
        member = join(fanout, owner, 1)
        member.recorder.protocol = asyncio.Protocol()
        fanout.send(member, b"BYE quit\n")
        member.close_after_flush = True
        await turns()
        assert member.recorder.lines() == [b"BYE quit"]
        assert member.recorder.closing

    run(body)
