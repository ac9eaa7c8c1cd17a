"""pynet/wait.py: the one polling loop, run on a fake clock (no real waiting)."""

from __future__ import annotations

import pytest

from tests.kit import WaitTimeout, wait_until


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_answer() -> None:
    clock = FakeTime()
    answers = iter([None, "", "ready", "later"])
    got = wait_until(
        lambda: next(answers), 5, "x", interval=0.5, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert got == "ready"
    assert clock.sleeps == [0.5, 0.5]


def test_times_out_naming_what_it_waited_for() -> None:
    clock = FakeTime()
    with pytest.raises(WaitTimeout, match=r"^the port answering: not within 2 s$"):
        wait_until(
            lambda: False,
            2,
            "the port answering",
            interval=0.3,
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    # It polls up to the deadline and once at it, never sleeping past it.
    assert sum(clock.sleeps) == pytest.approx(2)
    assert max(clock.sleeps) <= 0.3


def test_a_predicate_error_is_not_swallowed() -> None:
    def broken() -> bool:
        raise RuntimeError("server exited")

    with pytest.raises(RuntimeError, match="server exited"):
        wait_until(broken, 5, "x")
