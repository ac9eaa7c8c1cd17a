"""The flush policy (chat/flush_policy.py) as data: times in, waits out, no sockets."""

from __future__ import annotations

import pytest

from chat.flush_policy import MIN_WAIT, FlushPolicy

MS = 0.001


def after_fanout(cost: float, max_delay: float = 5 * MS) -> FlushPolicy:
    """A policy whose last flush ran from t=10 s for ``cost`` seconds."""
    policy = FlushPolicy(max_delay)
    policy.flushed(10.0, 10.0 + cost)
    return policy


def test_the_first_output_is_written_at_once() -> None:
    assert FlushPolicy(5 * MS).delay(0.0) == 0.0


def test_a_quiet_server_writes_at_once_even_after_a_costly_fanout() -> None:
    policy = after_fanout(8 * MS)  # 1,000 clients: a fan-out takes milliseconds
    assert policy.delay(10.0 + 8 * MS + 4 * MS) == 0.0  # idle half a fan-out: keeping up
    assert policy.delay(11.0) == 0.0


def test_output_right_after_a_costly_fanout_waits_one_fanout_from_its_end() -> None:
    policy = after_fanout(4 * MS)
    end = 10.0 + 4 * MS
    assert policy.delay(end) == pytest.approx(4 * MS)
    assert policy.delay(end + 1 * MS) == pytest.approx(3 * MS)


def test_the_wait_is_capped_by_max_delay() -> None:
    policy = after_fanout(40 * MS)  # 10,000 clients
    assert policy.delay(10.0 + 40 * MS) == pytest.approx(5 * MS)


def test_max_delay_zero_always_writes_at_once() -> None:
    policy = after_fanout(8 * MS, max_delay=0.0)
    assert policy.delay(10.0 + 8 * MS) == 0.0


def test_cheap_fanouts_never_wait() -> None:
    policy = after_fanout(MIN_WAIT / 2)  # a few clients: a fan-out takes microseconds
    assert policy.delay(10.0 + MIN_WAIT / 2) == 0.0


def test_the_policy_follows_the_load_down() -> None:
    policy = after_fanout(8 * MS)
    assert policy.delay(10.0 + 8 * MS) > 0  # busy: batch
    policy.flushed(10.020, 10.021)  # the next flush was cheap (one client's reply)
    assert policy.delay(10.022) == 0.0


def test_keep_up_sets_how_long_the_server_must_have_been_idle() -> None:
    policy = FlushPolicy(5 * MS, keep_up=1.0)
    policy.flushed(10.0, 10.0 + 4 * MS)
    assert policy.delay(10.0 + 4 * MS + 3 * MS) == pytest.approx(1 * MS)
    assert policy.delay(10.0 + 8 * MS) == 0.0
