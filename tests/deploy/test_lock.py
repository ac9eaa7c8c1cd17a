"""Reading and describing the deploy lock (the host side is in test_e2e_deploy.py)."""

from __future__ import annotations

from pynet.deploy.lock import LockInfo


def test_parse_and_describe_a_live_lock() -> None:
    owner = (
        '{"action": "deploy", "pid": 42, "since": "2026-01-01T00:00:00Z", '
        '"user": "ann@laptop", "version": "abc1234"}'
    )
    info = LockInfo.parse(f"1000\n995\n{owner}\n")
    assert info.idle == 5
    assert not info.stale(120)
    assert info.describe(120) == (
        "held by ann@laptop, pid 42, deploy of abc1234 since "
        "2026-01-01T00:00:00Z (last heartbeat 5s ago)"
    )


def test_a_silent_lock_is_stale_and_says_how_to_release_it() -> None:
    info = LockInfo.parse('1000\n100\n{"user": "bob@ci"}\n')
    assert info.stale(120)
    assert info.describe(120).endswith(
        "stale: no heartbeat for more than 120s (if that deploy is dead, release the lock with "
        "`fab unlock`)"
    )


def test_a_lock_without_owner_file_still_parses() -> None:
    info = LockInfo.parse("1000\n990\n{}\n")
    assert info.owner == {}
    assert info.describe().startswith("held by an unknown holder (last heartbeat 10s ago)")
