"""Waiting for something to become true: the one polling loop of the harness, demo and tests.

A wait names what it waits for, so a timeout says what never happened. `sleep` and `clock` are
parameters so unit tests can run a wait without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """What was awaited did not happen in time; the message says what and how long."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """PREDICATE's first truthy result, polling every INTERVAL; WaitTimeout after TIMEOUT s.

    PREDICATE runs at least once, and once more at the deadline, so a slow first call cannot
    use up the whole timeout unseen.
    """
    deadline = clock() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(f"{what}: not within {timeout:g} s")
        sleep(min(interval, remaining))
