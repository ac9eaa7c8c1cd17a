"""Pure parts of releasing: naming the current image, what to prune, what to roll back to."""

from __future__ import annotations

from typing import Any

from invoke.runners import Result

from pynet.deploy import commands as cmd
from pynet.deploy.commands import Argv
from pynet.deploy.release import (
    POLL,
    HostState,
    ReleaseImage,
    name_of,
    parse_history,
    parse_images,
    plan_prune,
    wait_healthy,
)
from pynet.deploy.remote import Remote

IMAGES = parse_images(
    "current sha256:c 2026-01-05 10:00:00 +0000 UTC\n"
    "v5 sha256:c 2026-01-05 10:00:00 +0000 UTC\n"
    "v4 sha256:4 2026-01-04 10:00:00 +0000 UTC\n"
    "v3 sha256:3 2026-01-03 10:00:00 +0000 UTC\n"
    "seed sha256:1 2026-01-01 10:00:00 +0000 UTC\n"
    "<none> sha256:0 2026-01-01 09:00:00 +0000 UTC\n"
)
HISTORY = parse_history(
    '{"version": "v3", "result": "ok"}\n'
    "not json\n"
    '{"version": "v4", "result": "ok"}\n'
    '{"version": "v5", "result": "ok"}\n'
)


def test_parse_images_skips_untagged() -> None:
    assert [i.tag for i in IMAGES] == ["current", "v5", "v4", "v3", "seed"]
    assert IMAGES[1] == ReleaseImage("v5", "sha256:c", "2026-01-05 10:00:00 +0000 UTC")


def test_name_of_prefers_the_most_recently_deployed_tag() -> None:
    images = [*IMAGES, ReleaseImage("v5-again", "sha256:c", "x")]
    history: list[dict[str, object]] = [*HISTORY, {"version": "v5-again", "result": "ok"}]
    assert name_of("sha256:c", images, history) == "v5-again"
    assert name_of("sha256:c", IMAGES, HISTORY) == "v5"
    assert name_of("sha256:none", IMAGES, HISTORY) is None


def test_plan_prune_keeps_the_most_recent_and_protected() -> None:
    assert plan_prune(IMAGES, HISTORY, keep=2, protect={"sha256:c"}) == ["v3", "seed"]
    assert plan_prune(IMAGES, HISTORY, keep=2, protect={"sha256:c", "sha256:3"}) == ["seed"]
    assert plan_prune(IMAGES, HISTORY, keep=10, protect=set()) == []


def test_previous_release_is_the_last_good_one_still_on_the_host() -> None:
    state = HostState(IMAGES, [*HISTORY, {"version": "v6", "result": "rolled-back"}], "sha256:c")
    assert state.current == "v5"
    assert state.previous_release() == "v4"
    gone = HostState([i for i in IMAGES if i.tag != "v4"], HISTORY, "sha256:c")
    assert gone.previous_release() == "v3"


def test_previous_release_falls_back_to_any_other_image() -> None:
    state = HostState(
        parse_images("current sha256:2 x\nv2 sha256:2 x\nseed sha256:1 x\n"), [], "sha256:2"
    )
    assert state.previous_release() == "seed"


class HealthAnswers(Remote):
    """A host whose health check fails until its Nth poll, with a fake clock the sleeps advance."""

    def __init__(self, healthy_at: int | None, restarts: int = 0) -> None:
        super().__init__(conn=None)
        self.healthy_at, self.restarts = healthy_at, restarts
        self.polls = 0
        self.now = 0.0
        self.sleeps: list[float] = []

    def run(self, argv: Argv, *, check: bool = True, hide: bool = True, **kwargs: Any) -> Result:
        if argv == cmd.unit_show("v2"):
            return Result(stdout=f"NRestarts={self.restarts}\n", exited=0)
        if argv == cmd.switch_record():
            return Result(stdout='{"release": "v2", "time": 5}', exited=0)
        assert argv == cmd.health("v2", "sha256:new")
        self.polls += 1
        return Result(exited=0 if self.polls == self.healthy_at else 1)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_healthy_polls_until_the_check_passes() -> None:
    host = HealthAnswers(healthy_at=3)
    assert (
        wait_healthy(host, "v2", "sha256:new", 10, clock=lambda: host.now, sleep=host.sleep) is None
    )
    assert host.sleeps == [POLL, POLL]


def test_wait_healthy_gives_up_at_the_timeout() -> None:
    host = HealthAnswers(healthy_at=None)
    reason = wait_healthy(host, "v2", "sha256:new", 3, clock=lambda: host.now, sleep=host.sleep)
    assert reason == "the health check did not pass within 3s"
    assert 3 <= sum(host.sleeps) <= 3 + POLL
