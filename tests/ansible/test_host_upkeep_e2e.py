"""The host's upkeep under live load, and the metadata service, on one provisioned local host.

What an operator and the host itself do to a running service: restart the Docker engine (a
security update of docker.io, containerd or runc does), apply a settings change with
`site.yml`, and a curious chat process reading the instance metadata service. Measured with
`pynet.local.load.LiveLoad` (20 clients, a sender, a connect every 10 ms): 0 refused, 0 cut,
0 lost. A crash still cuts: measured last, and printed.

The metadata service is a stand-in made inside the host container (169.254.169.254 and
fd00:ec2::254 on its loopback interface, served by python3 -m http.server), so no packet leaves
that container; every test checks the address is local there before anything connects to it.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynet.local.host import Host
from pynet.local.load import LiveLoad, Report
from pynet.local.provision import playbook_argv, write_inventory
from tests.ansible.ansible_helpers import Ran, recap, run, wait_for_pong

pytestmark = pytest.mark.e2e

USER_DATA = f"stand-in user data {uuid.uuid4().hex}"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # a Redis password that must never be printed


class Rig:
    def __init__(self, host: Host, inventory: Path, archive: Path) -> None:
        self.host, self.inventory, self.archive = host, inventory, archive

    def play(self, *extra: str) -> Ran:
        argv = playbook_argv(self.inventory, f"chat_image_archive={self.archive}")
        return run([*argv, *extra], timeout=600)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.exec("sh", "-c", script, check=check)

    def unit(self) -> str:
        units = self.sh("systemctl list-units --plain --no-legend --state=active 'pynet-chat@*'")
        (name,) = [line.split()[0] for line in units.stdout.splitlines() if line.strip()]
        return name

    def container(self) -> str:
        return self.unit().removesuffix(".service").replace("pynet-chat@", "pynet-chat-")

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show --property {prop} --value {self.unit()}").stdout.strip()

    def load(self, prefix: str) -> LiveLoad:
        return LiveLoad("127.0.0.1", self.host.app_port, clients=20, prefix=prefix).start()


@pytest.fixture(scope="module")
def rig(
    host_image: str,
    ssh_keypair: tuple[Path, Path],
    chat_image_archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    from pynet.local.host import start_host, stop_host

    name = f"pynet-upkeep-{uuid.uuid4().hex[:8]}"
    host = start_host(name, ssh_keypair[1])
    try:
        inventory = write_inventory(tmp_path_factory.mktemp("inv") / "hosts.yml", host)
        rig = Rig(host, inventory, chat_image_archive)
        first = rig.play()
        assert first.returncode == 0, first.stdout[-8000:]
        yield rig
    finally:
        stop_host(name)


def assert_untouched(report: Report, what: str) -> None:
    print(f"{what}: {report.summary()}")
    assert report.ok(), (
        f"{what}: {report.summary()} refusals={report.refusals[:3]} cut={report.cut[:3]} "
        f"lost={report.lost[:3]}"
    )
    assert report.connects > 50
    assert report.acknowledged > 20


# --- the metadata service ---------------------------------------------------------------------

FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n"
    "except OSError as error:\n"
    "    print('blocked:', error)\n"
)


@pytest.fixture(scope="module")
def metadata(rig: Rig) -> list[str]:
    """Stand-in metadata services inside the host container; their URLs."""
    serve = (
        "systemd-run --unit {unit} python3 -m http.server --bind {address} --directory {root} 80"
    )
    rig.sh(
        "ip addr add 169.254.169.254/32 dev lo && install -d /var/tmp/imds/latest && "
        f"echo '{USER_DATA}' > /var/tmp/imds/latest/user-data && "
        + serve.format(unit="pynet-test-imds4", address="169.254.169.254", root="/var/tmp/imds")
    )
    urls = ["http://169.254.169.254/latest/user-data"]
    # IPv6 where the host container has it (Docker turns it off in containers by default).
    six = rig.sh("ip -6 addr add fd00:ec2::254/128 dev lo nodad", check=False)
    if six.returncode == 0:
        rig.sh(serve.format(unit="pynet-test-imds6", address="fd00:ec2::254", root="/var/tmp/imds"))
        urls.append("http://[fd00:ec2::254]/latest/user-data")
    else:
        print(f"no IPv6 in the host container ({six.stderr.strip()}): IPv4 stand-in only")
    listeners = len(urls)
    rig.sh(
        "timeout 20 sh -c "
        f"'until [ $(ss -Hltn \"sport = :80\" | wc -l) -ge {listeners} ]; do sleep 0.1; done'"
    )
    for address in ("169.254.169.254", *(["fd00:ec2::254"] if len(urls) > 1 else [])):
        route = rig.sh(f"ip route get {address}").stdout
        assert route.startswith("local "), f"{address} must stay inside the host: {route}"
    return urls


def test_the_host_reads_the_metadata_service_and_the_chat_process_cannot(
    rig: Rig, metadata: list[str]
) -> None:
    for url in metadata:
        host_read = rig.host.exec("python3", "-c", FETCH, url).stdout
        assert USER_DATA in host_read, f"the host itself must still read {url}: {host_read}"
        # Any other user of the host too: the block is for the container's user only.
        admin = rig.host.exec("runuser", "-u", "admin", "--", "python3", "-c", FETCH, url)
        assert USER_DATA in admin.stdout, admin.stdout
        chat = rig.host.exec("docker", "exec", rig.container(), "python3", "-c", FETCH, url)
        assert chat.stdout.startswith("blocked:"), f"the chat process read {url}: {chat.stdout}"
        assert USER_DATA not in chat.stdout
    rules = rig.sh("iptables -S PYNET-METADATA; ip6tables -S PYNET-METADATA").stdout
    assert "-d 169.254.169.254/32 -m owner --uid-owner 10001 -j REJECT" in rules, rules
    assert "-d fd00:ec2::254/128 -m owner --uid-owner 10001 -j REJECT" in rules, rules


def test_the_block_is_restored_by_the_role_and_at_boot(rig: Rig) -> None:
    rig.sh("iptables -D OUTPUT -j PYNET-METADATA")
    assert rig.sh("/usr/local/libexec/pynet-chat-metadata check", check=False).returncode != 0
    again = rig.play()
    assert again.returncode == 0, again.stdout[-8000:]
    assert rig.sh("/usr/local/libexec/pynet-chat-metadata check", check=False).returncode == 0
    unit = rig.sh("systemctl is-enabled pynet-chat-metadata.service; true").stdout.strip()
    assert unit == "enabled"
    requires = rig.sh(f"systemctl show --property Requires --value {rig.unit()}").stdout
    assert "pynet-chat-metadata.service" in requires


# --- upkeep under live load -------------------------------------------------------------------


def test_a_docker_engine_restart_cuts_no_one(rig: Rig) -> None:
    container = rig.sh(f"docker inspect --format '{{{{.Id}}}}' {rig.container()}").stdout
    restarts = rig.show("NRestarts")
    load = rig.load("e")
    time.sleep(1.0)
    rig.sh("systemctl restart docker")
    rig.sh("until docker info >/dev/null 2>&1; do sleep 0.2; done")
    time.sleep(1.0)
    report = load.stop(drain=3.0)
    assert_untouched(report, "docker engine restart")
    # The very same container serves on, followed again by the same unit, never restarted.
    after = rig.sh(f"docker inspect --format '{{{{.Id}}}}' {rig.container()}").stdout
    assert after == container
    assert rig.show("NRestarts") == restarts
    assert rig.show("ActiveState") == "active"


def test_a_settings_change_is_a_handover(rig: Rig) -> None:
    before = rig.sh(f"docker inspect --format '{{{{.Id}}}}' {rig.container()}").stdout
    restarts = rig.show("NRestarts")
    load = rig.load("s")
    changed = rig.play("-e", "chat_log_level=DEBUG")
    report = load.stop(drain=3.0)
    assert changed.returncode == 0, changed.stdout[-8000:]
    assert recap(changed.stdout)[rig.host.name]["changed"] >= 1
    assert_untouched(report, "settings change (chat_log_level=DEBUG)")
    inspect = json.loads(rig.sh(f"docker inspect {rig.container()}").stdout)[0]
    assert inspect["Id"] != before  # a new process...
    assert "PYNET_LOG_LEVEL=DEBUG" in inspect["Config"]["Env"]  # ...with the new settings
    switch = json.loads(rig.sh("cat /run/pynet/last-switch.json").stdout)
    assert switch["how"] == "handover", switch
    assert rig.show("NRestarts") == restarts
    assert rig.sh("docker ps -a --format '{{.Names}}' | grep -c retiring", check=False).stdout == (
        "0\n"
    )
    back = rig.play()  # and back to the defaults, the same way
    assert back.returncode == 0, back.stdout[-8000:]
    env = json.loads(rig.sh(f"docker inspect {rig.container()}").stdout)[0]["Config"]["Env"]
    assert "PYNET_LOG_LEVEL=INFO" in env


def test_killing_the_units_main_process_cuts_no_one(rig: Rig) -> None:
    """The unit's main process only follows the container: systemd starts it again, and the
    new one follows the container that never stopped."""
    unit, name = rig.unit(), rig.container()
    container = rig.sh(f"docker inspect --format '{{{{.Id}}}}' {name}").stdout
    restarts = int(rig.show("NRestarts"))
    load = rig.load("m")
    time.sleep(1.0)
    rig.sh(f"kill -9 $(systemctl show --property MainPID --value {unit})")
    rig.sh(
        "timeout 20 sh -c 'until [ \"$(systemctl show --property NRestarts --value "
        f"{unit})\" -gt {restarts} ] && systemctl is-active --quiet {unit}; do sleep 0.1; done'"
    )
    time.sleep(1.0)
    report = load.stop(drain=3.0)
    assert_untouched(report, "kill -9 of the unit's main process")
    after = rig.sh(f"docker inspect --format '{{{{.Id}}}}' {rig.container()}").stdout
    assert after == container


def test_a_dry_run_never_prints_the_redis_password(rig: Rig) -> None:
    backplane = f"redis://pynet:{PASSWORD}@192.0.2.7:6379/0"
    dry = rig.play("--check", "--diff", "-e", f"chat_backplane={backplane}")
    assert dry.returncode == 0, dry.stdout[-8000:]
    assert PASSWORD not in dry.stdout
    # The settings file still shows as changed: what changes is known, not what it holds.
    assert recap(dry.stdout)[rig.host.name]["changed"] >= 1
    assert "TASK [chat : Write the chat settings.]" in dry.stdout
    section = dry.stdout.split("TASK [chat : Write the chat settings.]", 1)[1].split("TASK", 1)[0]
    assert "changed:" in section, section


def test_a_crash_still_cuts_and_costs_this_much(rig: Rig) -> None:
    """SIGKILL of the container: the listening socket dies with the process, so its clients
    are cut and connects are refused until systemd has started the release again."""
    load = rig.load("c")
    rig.sh(f"docker kill {rig.container()}")
    wait_for_pong(rig.host.app_port)
    report = load.stop(drain=1.0)
    print(
        f"crash: {report.summary()}; refused from {report.refusals[:1]} to {report.refusals[-1:]}"
    )
    assert report.cut
