"""`fab deploy` on a cluster inventory: the chat hosts one at a time, never the Redis host."""

from __future__ import annotations

import re
from pathlib import Path

from pynet import inventory
from tests.deploy.fakes import fab


def test_deploy_rolls_through_the_chat_hosts_one_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    for name, port in (("c-chat1", 2201), ("c-chat2", 2202)):
        inventory.upsert_host(inventory.Host(name, "127.0.0.1", "admin", port=port), path)
    redis = inventory.Host("c-redis", "127.0.0.1", "admin", port=2203)
    inventory.upsert_host(redis, path, inventory.REDIS_GROUP)
    done = fab("deploy", "--dry-run", "--inventory", str(path), "--version", "v1")
    assert done.returncode == 0, done.stdout + done.stderr
    # Before the build, every chat host is asked its architecture (the image is built for it).
    before_build = done.stdout.split("[local] docker build")[0]
    assert re.findall(r"^\[127\.0\.0\.1:(\d+)\] uname -m$", before_build, re.M) == [
        "2201",
        "2202",
    ]
    # While it builds, every chat host is locked and read (in threads; in order in a dry run),
    # and the image is saved once for all of them.
    build, rest = done.stdout.split("[local] docker save")
    prepared = re.findall(r"^\[127\.0\.0\.1:(\d+)\] mkdir /var/lib/pynet-deploy/lock ", build, re.M)
    assert prepared == ["2201", "2202"]
    assert rest.count("[local] docker save") == 0
    order = re.findall(r"^\[127\.0\.0\.1:(\d+)\] ", rest, re.M)
    assert set(order) == {"2201", "2202"}  # the Redis host is not a chat host
    first_of_second = order.index("2202")
    assert set(order[:first_of_second]) == {"2201"}  # one host finished before the next began
    assert set(order[first_of_second:]) == {"2202"}
    # each host passes its own health check before the next is touched
    lines = rest.splitlines()
    health = [i for i, line in enumerate(lines) if "chat.healthcheck" in line]
    second_start = next(i for i, line in enumerate(lines) if line.startswith("[127.0.0.1:2202]"))
    assert health
    assert health[0] < second_start
