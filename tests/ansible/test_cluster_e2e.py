"""A cluster on local EC2-like hosts: two chat hosts and one Redis host provisioned by site.yml.

Clients on different hosts talk; Redis restarted: the service resumes and nothing accepted is
lost; `fab deploy` with the cluster's inventory rolls a new release through the chat hosts one
at a time while clients stay connected on both; one chat host removed: a client given both
addresses moves to the other and misses nothing. The tests run in file order on one cluster.
Only 127.0.0.1 (published ports) and the containers the test made are contacted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynet import inventory
from pynet.deploy.probe import chat_hello
from pynet.local.host import Host
from pynet.local.provision import build_context_copy, inventory_entry, playbook_argv
from tests.ansible.ansible_helpers import REPO, recap, run
from tests.chat.fakes import ClientProcess, LineClient
from tests.kit import wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "e2e-only-cluster-password-0123456789"
FAB = Path(sys.executable).parent / "fab"


@pytest.fixture(scope="module")
def inventory_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's inventory (groups `chat` and `redis`), as `fab launch-cluster` writes one."""
    return tmp_path_factory.mktemp("inv") / "hosts.yml"


@pytest.fixture(scope="module")
def cluster(
    host_image: str,
    ssh_keypair: tuple[Path, Path],
    chat_image_archive: Path,
    inventory_file: Path,
) -> Iterator[dict[str, Host]]:
    from pynet.local.host import start_host, stop_host

    tag = uuid.uuid4().hex[:6]
    names = {role: f"pynet-cl-{role}-{tag}" for role in ("chat1", "chat2", "redis")}
    try:
        hosts = {role: start_host(name, ssh_keypair[1]) for role, name in names.items()}
        for role, host in hosts.items():
            group = inventory.REDIS_GROUP if role == "redis" else inventory.GROUP
            inventory.upsert_host(inventory_entry(host), inventory_file, group)
        argv = playbook_argv(inventory_file, f"chat_image_archive={chat_image_archive}")
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


def upto(client: LineClient, text: str) -> list[str]:
    """The lines CLIENT reads up to and including the broadcast that ends with TEXT."""
    seen: list[str] = []
    while not (seen and seen[-1].startswith("MSG ") and seen[-1].endswith(f" {text}")):
        seen.append(client.line())
    return seen


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


def fab(inventory_file: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The real `fab TASK --inventory FILE` (hosts, keys and chat ports from the inventory)."""
    env = {
        **os.environ,
        "PYNET_DOCKER": "/usr/bin/docker",
        "PYNET_BASE_IMAGE": "pynet-local/debian:bookworm",
    }
    env.pop("PYNET_APP_PORT", None)  # each host's chat port comes from its inventory entry
    return subprocess.run(
        [str(FAB), *args, "--inventory", str(inventory_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def new_release(src: Path, label: str) -> str:
    """A real code change in SRC (a git copy of the build context): HELLO says `+LABEL`."""
    init = src / "chat" / "__init__.py"
    init.write_text(
        re.sub(r'__version__ = "([^"+]*)[^"]*"', rf'__version__ = "\1+{label}"', init.read_text())
    )
    git = ["git", "-C", str(src), "-c", "user.email=e2e@pynet.test", "-c", "user.name=e2e"]
    subprocess.run([*git, "commit", "-qam", label], check=True, capture_output=True)
    short = [*git, "rev-parse", "--short=7", "HEAD"]
    return subprocess.run(short, check=True, capture_output=True, text=True).stdout.strip()


def test_fab_deploy_rolls_through_the_chat_hosts_and_cuts_no_one(
    cluster: dict[str, Host], inventory_file: Path, tmp_path: Path
) -> None:
    one, two = cluster["chat1"], cluster["chat2"]
    eve = named(one.app_port, "eve")
    finn = named(two.app_port, "finn")
    eve.send("before the deploy")
    before = upto(finn, "eve before the deploy")[-1]
    upto(eve, "eve before the deploy")  # her own line

    version = new_release(build_context_copy(tmp_path / "src", commit=True), "cluster")
    started = time.monotonic()
    proc = fab(inventory_file, "deploy", "--context", str(tmp_path / "src"))
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # One host after the other: the first switched and passed its health check (`serving
    # after`) and finished before the second was touched; the Redis host was not deployed to.
    lines = proc.stdout.splitlines()
    tagged = [(i, re.match(r"\[127\.0\.0\.1:(\d+)\] ", line)) for i, line in enumerate(lines)]
    owner = [(i, int(m[1])) for i, m in tagged if m]
    order = list(dict.fromkeys(port for _, port in owner))
    assert sorted(order) == sorted((one.ssh_port, two.ssh_port)), proc.stdout
    second_began = next(i for i, port in owner if port == order[1])
    assert all(port == order[1] for i, port in owner if i >= second_began), proc.stdout
    for port in order:
        mine = [lines[i] for i, p in owner if p == port]
        assert any(f"] {version} serving after " in line for line in mine), proc.stdout
        assert any(f"] {version} is serving: handover of " in line for line in mine), proc.stdout
        assert any(f"] deployed {version} in " in line for line in mine), proc.stdout
    first_done = max(i for i, port in owner if port == order[0])
    assert first_done < second_began
    switched = [line for line in lines if f"{version} is serving:" in line]
    print(f"\nfab deploy {version} on two chat hosts, one at a time: {took:.0f} s")
    for line in switched:
        print(f"  {line}")

    # Both hosts serve the new release, and each took its clients over (a handover).
    for host in (one, two):
        assert chat_hello("127.0.0.1", host.app_port).endswith("+cluster")
    status = fab(inventory_file, "status", timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert len(re.findall(r"answers: HELLO pynet \S+\+cluster$", status.stdout, re.M)) == 2
    assert len(re.findall(rf"^version +{version} \(up ", status.stdout, re.M)) == 2
    history = fab(inventory_file, "releases", timeout=120)
    assert history.returncode == 0, history.stdout + history.stderr
    handed = re.findall(
        rf"^\* +{version} .* deploy +ok +handover of (\d+) sessions", history.stdout, re.M
    )
    assert len(handed) == 2, history.stdout
    assert all(int(n) >= 1 for n in handed), history.stdout

    # The clients connected before the deploy were not cut: no BYE, no second HELLO, and they
    # still talk across the hosts with the ids going on.
    eve.send("after the deploy")
    seen = upto(finn, "eve after the deploy")
    assert int(seen[-1].split()[1]) == int(before.split()[1]) + 1, (before, seen)
    finn.send("and back")
    back = upto(eve, "finn and back")
    assert int(back[-1].split()[1]) == int(before.split()[1]) + 2, (before, back)
    cut = [line for line in seen + back if line.startswith(("BYE", "HELLO", "INFO"))]
    assert not cut, seen + back
    print(
        f"  eve (chat1) and finn (chat2) stayed connected and talk on: ids "
        f"{before.split()[1]} -> {seen[-1].split()[1]}, {back[-1].split()[1]}"
    )
    eve.close()
    finn.close()


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
