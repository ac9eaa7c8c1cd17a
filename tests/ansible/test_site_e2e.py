"""playbooks/site.yml over real SSH against one local EC2-like host, then faults on that host.

On Debian 12 and Debian 13 alike: the host fixture is parametrized over both releases. The tests
share one provisioned host per release (module scope) and run in file order: the failure cases
come last and leave the host provisioned again. Faults that do not depend on the release (the
kills, a bad image archive) run on Debian 13 only, the default of `fab launch`.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pynet.local.host import Host
from pynet.local.images import SUITES
from pynet.local.provision import playbook_argv, write_inventory
from tests.ansible.ansible_helpers import ChatClient, Ran, ping, recap, run, wait_for_pong
from tests.kit import wait_until

pytestmark = pytest.mark.e2e

#: Where the faults that do not depend on the Debian release run: `fab launch`'s default.
DEFAULT = pytest.mark.parametrize("site", ["trixie"], indirect=True)


class Site:
    """One host and the way to run site.yml against it."""

    def __init__(self, host: Host, inventory: Path, archive: Path, suite: str) -> None:
        self.host = host
        self.suite = suite
        self.inventory = inventory
        self.archive = archive

    def play(self, *extra: str, archive: Path | None = None) -> Ran:
        argv = playbook_argv(self.inventory, f"chat_image_archive={archive or self.archive}")
        return run([*argv, *extra], timeout=600)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.exec("sh", "-c", script, check=check)


@pytest.fixture(scope="module", params=list(SUITES))
def site(
    request: pytest.FixtureRequest,
    host_images: dict[str, str],
    ssh_keypair: tuple[Path, Path],
    chat_image_archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    from pynet.local.host import start_host, stop_host

    suite = request.param
    name = f"pynet-ansible-{suite}-{uuid.uuid4().hex[:8]}"
    host = start_host(name, ssh_keypair[1], suite=suite)
    try:
        release = host.exec("cat", "/etc/debian_version").stdout
        assert release.startswith(f"{SUITES[suite]}."), release  # the release it claims to be
        inventory = write_inventory(tmp_path_factory.mktemp("inv") / "hosts.yml", host)
        site = Site(host, inventory, chat_image_archive, suite)
        first = site.play()
        print(f"site.yml on {suite}, first run: {first.duration:.0f} s")
        assert first.returncode == 0, first.stdout[-8000:]
        assert recap(first.stdout)[name]["failed"] == 0
        yield site
    finally:
        stop_host(name)


def test_second_run_changes_nothing(site: Site) -> None:
    second = site.play()
    print(f"site.yml on {site.suite}, second run: {second.duration:.0f} s")
    assert second.returncode == 0, second.stdout[-8000:]
    assert recap(second.stdout)[site.host.name] == {
        "ok": recap(second.stdout)[site.host.name]["ok"],
        "changed": 0,
        "unreachable": 0,
        "failed": 0,
    }, second.stdout[-8000:]


def test_dry_run_on_the_provisioned_host_changes_nothing(site: Site) -> None:
    """`--check --diff`, what operators run before a change: nothing to do, nothing fails."""
    dry = site.play("--check", "--diff")
    assert dry.returncode == 0, dry.stdout[-8000:]
    assert recap(dry.stdout)[site.host.name]["changed"] == 0, dry.stdout[-8000:]
    assert recap(dry.stdout)[site.host.name]["failed"] == 0, dry.stdout[-8000:]
    assert "Dry run stops here" not in dry.stdout


@pytest.mark.parametrize("suite", list(SUITES))
def test_dry_run_on_a_fresh_host_goes_as_far_as_it_can(
    ec2_host: Callable[..., Host], chat_image_archive: Path, tmp_path: Path, suite: str
) -> None:
    """Check mode installs nothing: the run stops, saying why, where packages are missing."""
    host = ec2_host(suite=suite)
    inventory = write_inventory(tmp_path / "hosts.yml", host)
    argv = playbook_argv(inventory, f"chat_image_archive={chat_image_archive}")
    dry = run([*argv, "--check", "--diff"], timeout=600)
    assert dry.returncode == 0, dry.stdout[-8000:]
    assert recap(dry.stdout)[host.name]["failed"] == 0, dry.stdout[-8000:]
    assert f"Dry run stops here on {host.name}" in dry.stdout, dry.stdout[-8000:]
    # It got past the SSH hardening (its diff shows the change it would make) and changed nothing.
    assert "+PasswordAuthentication no" in dry.stdout, dry.stdout[-8000:]
    probe = "test -e /etc/ssh/sshd_config.d/00-pynet-hardening.conf || test -e /usr/bin/docker"
    assert host.exec("sh", "-c", probe, check=False).returncode != 0


def test_chat_answers_on_the_published_port(site: Site) -> None:
    with ChatClient(site.host.app_port) as client:
        assert client.hello.startswith("HELLO pynet")
        client.send("/ping")
        assert client.read_until("PONG") == "PONG"


def test_the_unit_is_sandboxed(site: Site) -> None:
    """`systemd-analyze security` on the host scores the unit with its drop-in at most 2.0."""
    units = "systemctl list-units --plain --no-legend --state=running 'pynet-chat*.service'"
    unit = site.sh(units).stdout.split()[0]  # an instance, when the unit is a template
    report = site.sh(f"systemd-analyze security --no-pager {unit}").stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert match, report
    print(f"systemd-analyze security on the {site.suite} host: {match[1]}")
    assert float(match[1]) <= 2.0, report


def _recovery(site: Site, fault: str, script: str) -> float:
    """Seconds from FAULT until chat, having stopped answering, answers /ping again."""
    port = site.host.app_port
    wait_for_pong(port)
    started = time.monotonic()
    site.sh(script)
    wait_until(lambda: not ping(port), 10, f"chat to stop answering after {fault}", interval=0.02)
    wait_until(lambda: ping(port), 30, f"chat to answer again after {fault}", interval=0.02)
    seconds = time.monotonic() - started
    print(f"chat serves again {seconds:.2f} s after {fault}")
    return seconds


@DEFAULT
def test_comes_back_after_docker_kill(site: Site) -> None:
    script = "docker kill $(docker ps --quiet --filter name=^pynet-chat-)"
    assert _recovery(site, "docker kill", script) < 10


@DEFAULT
def test_comes_back_after_kill_9_of_the_server(site: Site) -> None:
    script = "kill -9 $(pgrep -f 'python3 -m chat.server' | head -n 1)"
    assert _recovery(site, "kill -9 of the chat server process", script) < 10


@DEFAULT
def test_kill_9_of_the_units_main_process_leaves_chat_serving(site: Site) -> None:
    """The main process only follows the container (roles/chat/README.md): systemd starts it
    again and it follows the same container; chat never stops answering."""
    active = "systemctl list-units --plain --no-legend --state=active 'pynet-chat@*'"
    unit = site.sh(active).stdout.split()[0]
    container = "docker ps --quiet --no-trunc --filter name=^pynet-chat-"
    before = site.sh(container).stdout

    def restarts() -> int:  # counted since boot: the tests before restarted it too
        return int(site.sh(f"systemctl show --property NRestarts --value {unit}").stdout)

    earlier = restarts()
    site.sh(f"kill -9 $(systemctl show --property MainPID --value {unit})")
    wait_until(
        lambda: (
            restarts() > earlier
            and site.sh(f"systemctl is-active {unit}", check=False).returncode == 0
        ),
        10,
        "systemd to start the unit's main process again",
    )
    answers = ping(site.host.app_port)
    why = site.sh(
        f"journalctl -u {unit} -n 40 --no-pager; docker ps -a; systemctl status {unit} --no-pager",
        check=False,
    ).stdout
    assert answers, why
    assert site.sh(container).stdout == before, why


def test_reboot_keeps_history(site: Site) -> None:
    text = f"before reboot {uuid.uuid4().hex[:8]}"
    with ChatClient(site.host.app_port) as client:
        client.send("/nick alice")
        client.read_until("OK nick")
        client.send(text)
        sent = client.read_until("MSG ")
    assert sent.endswith(text)
    # No wait for the history flush: the reboot stops chat gracefully, and that flushes it.

    site.host.restart()
    print(f"chat serves {wait_for_pong(site.host.app_port, timeout=120):.1f} s after sshd is up")

    with ChatClient(site.host.app_port) as client:
        client.send("/nick bob")
        client.read_until("OK nick")
        client.send("/since 0")
        assert client.read_until(f"MSG {sent.split()[1]} ") == sent


def test_broken_docker_config_fails_with_the_reason(site: Site) -> None:
    broken = site.play("-e", '{"docker_daemon_options": {"no-such-option": true}}')
    assert broken.returncode != 0
    assert "Docker could not start" in broken.stdout, broken.stdout[-8000:]
    assert "no-such-option" in broken.stdout, broken.stdout[-8000:]

    repaired = site.play()
    assert repaired.returncode == 0, repaired.stdout[-8000:]
    wait_for_pong(site.host.app_port)


@DEFAULT
def test_docker_without_its_cli_fails_in_one_line(site: Site) -> None:
    """Debian 13's docker.io only recommends docker-cli: a host left without the `docker`
    command is named as such, not blamed on daemon.json, and the next run repairs it."""
    site.sh("apt-get remove -y -q docker-cli >/dev/null 2>&1")
    assert site.sh("test -e /usr/bin/docker", check=False).returncode != 0
    broken = site.play("-e", '{"docker_distro_packages": ["docker.io"]}')
    assert broken.returncode != 0
    assert "there is no /usr/bin/docker" in broken.stdout, broken.stdout[-8000:]
    assert "Debian 13 needs docker-cli" in broken.stdout, broken.stdout[-8000:]
    assert "Docker could not start" not in broken.stdout, broken.stdout[-8000:]

    repaired = site.play()
    assert repaired.returncode == 0, repaired.stdout[-8000:]
    wait_for_pong(site.host.app_port)


@DEFAULT
def test_bad_image_archive_fails_with_the_reason(site: Site, tmp_path: Path) -> None:
    bad = tmp_path / "pynet-chat-broken.tar.gz"
    bad.write_bytes(b"this is not a docker save archive\n" * 100)
    for attempt in ("first", "second"):  # the bad upload is not kept: the next run fails too
        failed = site.play(archive=bad)
        assert failed.returncode != 0, attempt
        message = f"chat image archive {bad} could not be loaded"
        assert message in failed.stdout, failed.stdout[-8000:]
    # The running release is untouched.
    wait_for_pong(site.host.app_port)
