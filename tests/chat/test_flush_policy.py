"""The flush policy (chat/flush_policy.py) as data: times in, waits out, no sockets."""

from __future__ import annotations

import pytest

from chat.flush_policy import KEEP_UP, MIN_WAIT, FlushPolicy

MS = 0.001


def after_flush(cost: float, max_delay: float = 5 * MS, broadcasts: int = 3) -> FlushPolicy:
    """A policy whose last flush ran from t=10 s for ``cost`` seconds."""
    policy = FlushPolicy(max_delay)
    policy.flushed(10.0, 10.0 + cost, broadcasts)
    return policy


def test_the_first_output_is_written_at_once() -> None:
    assert FlushPolicy(5 * MS).delay(0.0) == 0.0


def test_a_quiet_server_writes_at_once_even_after_a_costly_fanout() -> None:
    policy = after_flush(8 * MS)  # 1,000 clients: a fan-out takes milliseconds
    end = 10.0 + 8 * MS
    assert policy.delay(end + KEEP_UP * 8 * MS) == 0.0  # idle long enough: keeping up
    assert policy.delay(11.0) == 0.0


def test_fanouts_that_keep_up_never_wait() -> None:
    # one broadcast per flush: none arrived while the last fan-out was written
    policy = after_flush(8 * MS, broadcasts=1)
    assert policy.delay(10.0 + 8 * MS) == 0.0
    policy.flushed(10.010, 10.018, 0)  # replies only
    assert policy.delay(10.018) == 0.0


def test_output_right_after_a_batched_fanout_waits_part_of_its_cost() -> None:
    policy = after_flush(8 * MS)
    end = 10.0 + 8 * MS
    assert policy.delay(end) == pytest.approx(KEEP_UP * 8 * MS)  # broadcasts outrun fan-outs
    assert policy.delay(end + 1 * MS) == pytest.approx(KEEP_UP * 8 * MS - 1 * MS)


def test_the_wait_is_capped_by_max_delay() -> None:
    policy = after_flush(100 * MS)  # 10,000 clients
    assert policy.delay(10.0 + 100 * MS) == pytest.approx(5 * MS)


def test_max_delay_zero_always_writes_at_once() -> None:
    policy = after_flush(8 * MS, max_delay=0.0)
    assert policy.delay(10.0 + 8 * MS) == 0.0


def test_cheap_fanouts_never_wait() -> None:
    policy = after_flush(MIN_WAIT)  # a few clients: a fan-out takes microseconds
    assert policy.delay(10.0 + MIN_WAIT) == 0.0


def test_the_policy_follows_the_load_down() -> None:
    policy = after_flush(8 * MS)
    assert policy.delay(10.0 + 8 * MS) > 0  # busy: batch
    policy.flushed(10.020, 10.021, 2)  # the next flush was cheap (few clients left)
    assert policy.delay(10.021) == 0.0  # a quarter of 1 ms is below MIN_WAIT: at once


def test_keep_up_sets_the_least_idle_time_after_a_flush() -> None:
    policy = FlushPolicy(5 * MS, keep_up=1.0)
    policy.flushed(10.0, 10.0 + 4 * MS, 2)
    assert policy.delay(10.0 + 4 * MS + 3 * MS) == pytest.approx(1 * MS)
    assert policy.delay(10.0 + 8 * MS) == 0.0
