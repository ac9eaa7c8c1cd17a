"""A cluster on local EC2-like hosts: two chat hosts and one Redis host provisioned by site.yml.

Clients on different hosts talk; Redis restarted: the service resumes and nothing accepted is
lost; one chat host removed: a client given both addresses moves to the other and misses
nothing. Only 127.0.0.1 (published ports) and the containers the test made are contacted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynet import inventory
from pynet.local.host import Host
from pynet.local.provision import inventory_entry, playbook_argv
from tests.ansible.ansible_helpers import recap, run
from tests.chat.chat_helpers import ClientProcess, LineClient
from tests.kit import wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "e2e-only-cluster-password-0123456789"


@pytest.fixture(scope="module")
def cluster(
    host_image: str,
    ssh_keypair: tuple[Path, Path],
    chat_image_archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Host]]:
    from pynet.local.host import start_host, stop_host

    tag = uuid.uuid4().hex[:6]
    names = {role: f"pynet-cl-{role}-{tag}" for role in ("chat1", "chat2", "redis")}
    try:
        hosts = {role: start_host(name, ssh_keypair[1]) for role, name in names.items()}
        path = tmp_path_factory.mktemp("inv") / "hosts.yml"
        for role, host in hosts.items():
            group = inventory.REDIS_GROUP if role == "redis" else inventory.GROUP
            inventory.upsert_host(inventory_entry(host), path, group)
        argv = playbook_argv(path, f"chat_image_archive={chat_image_archive}")
        first = run(argv, timeout=1500, PYNET_REDIS_PASSWORD=PASSWORD)
        print(f"site.yml on three hosts: {first.duration:.0f} s")
        assert first.returncode == 0, first.stdout[-8000:]
        assert all(counts["failed"] == 0 for counts in recap(first.stdout).values())
        yield hosts
    finally:
        for name in names.values():
            stop_host(name)


def named(port: int, nick: str) -> LineClient:
    """A client once the chat answers on PORT (it may still be starting)."""

    def attempt() -> LineClient | None:
        try:
            return LineClient(port, nick, timeout=10)
        except (OSError, AssertionError):
            return None

    return wait_until(attempt, 60, f"a chat on 127.0.0.1:{port}", interval=0.5)


def test_the_chat_hosts_point_at_redis_and_it_is_locked_down(cluster: dict[str, Host]) -> None:
    env = cluster["chat1"].exec("cat", "/etc/pynet/chat.env").stdout
    assert "PYNET_BACKPLANE=redis://pynet:" in env
    conf = cluster["redis"].exec("cat", "/etc/redis/redis.conf").stdout
    assert PASSWORD not in conf
    anonymous = cluster["redis"].exec("redis-cli", "PING", check=False).stdout
    assert "NOAUTH" in anonymous


def test_clients_on_two_hosts_then_redis_restarted(cluster: dict[str, Host]) -> None:
    ann = named(cluster["chat1"].app_port, "ann")
    bob = named(cluster["chat2"].app_port, "bob")
    ann.send("hello across hosts")
    first = bob.until("MSG")[-1]
    assert first.endswith(" ann hello across hosts")
    bob.send("/who")
    assert bob.until("WHO")[-1] == "WHO ann bob"
    cluster["redis"].exec("systemctl", "restart", "redis-server")
    ann.send("after the restart")
    line = bob.until("MSG ")[-1]
    assert line.endswith(" ann after the restart")
    assert int(line.split()[1]) == int(first.split()[1]) + 1  # the ids went on, none reused
    ann.close()
    bob.close()


def test_a_client_moves_when_its_chat_host_goes_away(cluster: dict[str, Host]) -> None:
    from pynet.local.host import stop_host

    one, two = cluster["chat1"], cluster["chat2"]
    servers = f"127.0.0.1:{one.app_port},127.0.0.1:{two.app_port}"
    zoe = ClientProcess(one.app_port, "--nick", "zoe", "--raw", "--max-backoff", "1", host=servers)
    try:
        zoe.wait_for("OK nick zoe", timeout=30)
        carl = named(two.app_port, "carl")
        carl.send("before")
        wait_until(lambda: any(ln.endswith(" carl before") for ln in zoe.lines), 20, "before")
        stop_host(one.name)  # the whole host is gone
        carl.send("while moving")
        zoe.wait_for("OK nick zoe", count=2, timeout=60)
        wait_until(
            lambda: any(ln.endswith(" carl while moving") for ln in zoe.lines), 30, "caught up"
        )
        assert sum(ln.endswith(" carl before") for ln in zoe.lines) == 1  # nothing twice
    finally:
        zoe.kill()
