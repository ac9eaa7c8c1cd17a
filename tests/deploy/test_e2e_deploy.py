"""`fab deploy` and friends over real SSH, against one EC2-like host provisioned by the playbook.

One host for the whole module (provisioning is the slow part). The tests run in file order and
build on each other, as an operator's day would: deploy, deploy again, ship a broken release,
race two deploys, find a stale lock, roll back, look at logs and status, break things for doctor.
The source deployed is a throwaway git copy of the repository's Dockerfile and chat/, whose
`__version__` each test changes, so the chat HELLO line shows which release serves.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.fakes import REPO
from tests.deploy.rigs import Rig, git, provisioned_rig
from tests.kit import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rig(
    host_image: str,
    ssh_keypair: tuple[Path, Path],
    chat_image_archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    with provisioned_rig(Rig, "deploy", ssh_keypair, chat_image_archive, tmp_path_factory) as made:
        yield made


def test_provisioned_host_serves_the_seed_release(rig: Rig) -> None:
    assert rig.hello().startswith("HELLO pynet ")
    proc = rig.fab("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^unit +pynet-chat@\S+\.service: active \(running\)", proc.stdout, re.M)


PHASES = ("build", "save", "ship", "load", "start", "switch")
BREAKDOWN = re.compile(
    r"^\[127\.0\.0\.1:\d+\] deployed (?P<version>\S+) in (?P<total>[\d.]+)s: "
    + ", ".join(
        rf"{name} (?P<{name}>[\d.]+)s" + (r" \([\d.]+ \w+\)" if name == "ship" else "")
        for name in PHASES
    )
    + "$",
    re.M,
)


def breakdown(stdout: str) -> dict[str, float]:
    """The per-phase seconds `fab deploy` ends with (bench/deploy_bench.py reads the same)."""
    found = BREAKDOWN.search(stdout)
    assert found, stdout
    return {k: float(v) for k, v in found.groupdict().items() if k != "version"}


def test_deploy_ships_only_the_code_layer_and_serves_it(rig: Rig) -> None:
    version = rig.commit("one")
    began = time.monotonic()
    proc = rig.deploy()
    took = time.monotonic() - began
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Where the time went, in the deploy's own output: every phase ran, and together they
    # are the deploy (what is left is connecting and waiting for nothing).
    phases = breakdown(proc.stdout)
    assert all(phases[name] >= 0 for name in PHASES), phases
    assert all(phases[name] > 0 for name in ("build", "save", "load", "start", "switch")), phases
    assert sum(phases[name] for name in PHASES) <= phases["total"] + 0.05 < took
    assert phases["total"] - sum(phases[name] for name in PHASES) < 1.0, phases
    shipped = re.search(r"shipping (\d+) of (\d+) layers \(([\d.]+) (B|kB|MB)", proc.stdout)
    assert shipped, proc.stdout
    assert int(shipped[1]) <= 1 < int(shipped[2])  # the base layers stayed home
    assert shipped[4] in ("B", "kB")  # under 1 MB
    assert f"[local] building pynet-chat:{version} " in proc.stdout  # nothing cached yet
    assert f"{version} is serving" in proc.stdout
    assert rig.hello().endswith("+one")
    assert re.search(rf"^version +{version} \(up ", rig.fab("status").stdout, re.M)


def test_second_deploy_and_the_history(rig: Rig) -> None:
    first = git(rig.src, "rev-parse", "--short=7", "HEAD")
    version = rig.commit("two")
    proc = rig.deploy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"deploy: {first} -> {version}" in proc.stdout
    # Only the code changed since the first deploy's build: no docker build, no docker save.
    made_here = "only the code changed since the last build: its layer made here"
    assert f"[local] pynet-chat:{version}: {made_here}" in proc.stdout, proc.stdout
    assert "[local] building" not in proc.stdout
    assert breakdown(proc.stdout)["save"] < 0.3  # writing the slim archive alone
    assert rig.hello().endswith("+two")
    history = rig.fab("releases").stdout
    assert re.search(rf"^ +{first} .* deploy +ok +handover of \d+ sessions", history, re.M), history
    assert re.search(rf"^\* +{version} .* deploy +ok +handover of ", history, re.M), history
    assert f"current: {version}" in history


def test_deploy_and_rollback_under_load_cut_no_one_and_lose_nothing(rig: Rig) -> None:
    """The defining promise: connected users never notice a deploy or a rollback."""
    before = git(rig.src, "rev-parse", "--short=7", "HEAD")
    load = rig.load(clients=20, rate=40.0, connect_every=0.01, prefix="d")
    version = rig.commit("load")
    deployed = rig.deploy()
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"{version} is serving: handover of " in deployed.stdout
    rolled = rig.fab("rollback", "--to", before)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert f"{before} is serving: handover of " in rolled.stdout
    report = load.stop()
    journal = rig.root(
        "sh",
        "-c",
        "journalctl -u 'pynet-chat@*' -o cat | grep -E 'handover|switch|ERROR|WARN'",
        check=False,
    ).stdout
    assert report.ok(), (
        f"{report.summary()} cut={report.cut[:3]} lost={report.lost[:5]}\n{journal[-6000:]}"
    )
    assert report.connects > 100
    assert report.acknowledged > 40
    assert rig.hello().endswith("+two")
    assert rig.serving() == f"pynet-chat@{before}.service"
    enabled = rig.root("ls", "/etc/systemd/system/multi-user.target.wants").stdout.split()
    assert [u for u in enabled if u.startswith("pynet-chat@")] == [f"pynet-chat@{before}.service"]
    git(rig.src, "reset", "-q", "--hard", before)  # the next tests build on what serves


def test_a_crash_under_load_never_reuses_an_id(rig: Rig) -> None:
    """SIGKILL of the serving container: clients reconnect, and no id comes back with other text."""
    load = rig.load(clients=5, rate=40.0, connect_every=0.05, prefix="k")
    wait_until(lambda: load.acknowledged > 20, 30, "some messages before the crash")
    rig.kill_serving()
    report = load.stop(drain=0.5)
    assert report.cut  # a crash does cut sessions; what matters is what comes back
    seen = report.ids
    rig.wait_serving("two")
    check = socket.create_connection(("127.0.0.1", rig.host.app_port), timeout=10)
    check.sendall(b"/nick checker\n/since %d\n/ping\n" % (min(seen) - 1))
    data = b""
    while b"PONG\n" not in data:
        data += check.recv(65536)
    check.close()
    replay = {
        int(ident): text
        for _, ident, _, text in (
            line.split(" ", 3) for line in data.decode().splitlines() if line.startswith("MSG ")
        )
    }
    for ident, text in seen.items():
        assert replay.get(ident) == text, (ident, text, replay.get(ident))


def test_broken_release_rolls_back_on_its_own(rig: Rig) -> None:
    good = git(rig.src, "rev-parse", "--short=7", "HEAD")
    bad = rig.commit("three", broken=True)
    proc = rig.deploy("--timeout", "60")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    # The crash loop is noticed as such, without sitting out the whole timeout.
    assert f"deploy of {bad} failed: the service crashed 3 times in a row" in proc.stderr
    assert f"rolled back to {good}, which is serving" in proc.stderr
    assert "broken on purpose" in proc.stderr  # the last log lines say why
    assert rig.hello().endswith("+two")
    assert re.search(rf"^ +{bad} .* deploy +rolled-back", rig.fab("releases").stdout, re.M)


def test_concurrent_deploys_one_is_refused(rig: Rig) -> None:
    version = rig.commit("four")
    first = subprocess.Popen(
        rig.fab_argv("deploy", "--context", str(rig.src)),
        cwd=REPO,
        env=rig.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def locked() -> bool:
        assert first.poll() is None, "the first deploy ended before it took the lock"
        return rig.root("test", "-d", "/var/lib/pynet-deploy/lock", check=False).returncode == 0

    wait_until(locked, 60, "the first deploy taking the lock")
    second = rig.deploy()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert second.returncode == 1
    assert re.fullmatch(
        rf"admin@127\.0\.0\.1:\d+: refused: the deploy lock on admin@127\.0\.0\.1:\d+ is held by "
        rf"\S+, pid {first.pid}, deploy of {version} since \S+Z \(last heartbeat \d+s ago\)\n",
        second.stderr,
    )
    assert rig.hello().endswith("+four")


def test_stale_lock_is_reported_and_released(rig: Rig) -> None:
    rig.root(
        "sh",
        "-c",
        "mkdir /var/lib/pynet-deploy/lock && "
        'echo \'{"user": "ghost@old-laptop", "pid": 4242}\' '
        "> /var/lib/pynet-deploy/lock/owner.json && "
        "touch -d '10 minutes ago' /var/lib/pynet-deploy/lock/heartbeat",
    )
    refused = rig.fab("rollback")
    assert refused.returncode == 1
    assert "held by ghost@old-laptop, pid 4242" in refused.stderr
    assert "stale: no heartbeat for more than 120s" in refused.stderr
    assert "`fab unlock`" in refused.stderr
    released = rig.fab("unlock")
    assert released.returncode == 0, released.stderr
    assert "released the deploy lock (held by ghost@old-laptop" in released.stdout
    assert rig.root("test", "-d", "/var/lib/pynet-deploy/lock", check=False).returncode == 1


def test_a_live_lock_is_not_released_without_force(rig: Rig) -> None:
    rig.root(
        "sh", "-c", "mkdir /var/lib/pynet-deploy/lock && touch /var/lib/pynet-deploy/lock/heartbeat"
    )
    kept = rig.fab("unlock")
    assert kept.returncode == 1
    assert "it looks alive, pass --force" in kept.stderr
    assert rig.fab("unlock", "--force").returncode == 0


def test_rollback_to_a_named_version(rig: Rig) -> None:
    log = git(rig.src, "log", "--format=%h %s", "--abbrev=7")
    one = next(line.split()[0] for line in log.splitlines() if line.endswith(" one"))
    proc = rig.fab("rollback", "--to", one)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rig.hello().endswith("+one")
    history = rig.fab("releases").stdout
    assert re.search(rf"^\* +{one} .* rollback +ok\b", history, re.M), history


def test_rollback_to_a_version_not_on_the_host(rig: Rig) -> None:
    proc = rig.fab("rollback", "--to", "deadbee")
    assert proc.returncode == 1
    assert "pynet-chat:deadbee is not on the host (releases there: " in proc.stderr
    assert rig.hello().endswith("+one")


def test_top_once_shows_the_figures_of_the_serving_release(rig: Rig) -> None:
    """`fab top --once` reads /metrics through SSH (chat/metrics.py, served by chat.server on
    127.0.0.1:9050 of the host): users, rates while a load runs, the rollback's handover."""
    serving = rig.serving().removeprefix("pynet-chat@").removesuffix(".service")
    load = rig.load(clients=5, sampled=5, rate=20.0, connect_every=3600, prefix="t")
    try:
        proc = rig.fab("top", "--once", timeout=60)
    finally:
        load.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = f"admin@127.0.0.1:{rig.host.ssh_port}"
    [row] = [line for line in proc.stdout.splitlines() if label in line]
    cells = [cell.strip() for cell in re.split(r"[│┃|]", row)[1:-1]]
    host, release, users, named, lines_in, out, deliveries, p99, cuts, handover = cells
    assert (host, release) == (label, serving)
    assert int(users) >= 6
    assert int(named) >= 6
    assert float(lines_in) > 0
    assert float(out) > 0
    assert float(deliveries.replace(",", "")) >= float(out) * 6 * 0.5
    assert p99.endswith(("ms", "s")), p99
    assert cuts == "0"
    assert "ms pause" in handover  # the rollback just before handed the connections over
    status = rig.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"^figures +\d+ connected \(\d+ named\), \d+ accepted", status.stdout, re.M)


def test_logs_and_status_tell_the_truth(rig: Rig) -> None:
    logs = rig.fab("logs", "--lines", "300")  # the deploys, health checks and probes log too
    assert logs.returncode == 0
    assert "chat.server start version=0.1.0+one" in logs.stdout
    follow = subprocess.Popen(
        rig.fab_argv("logs", "--follow", "--lines", "0"),
        cwd=REPO,
        env=rig.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in follow.stdout or ():
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()

    def followed() -> bool:
        if any("chat.server connect peer=" in line for line in lines):
            return True
        rig.hello()  # the server logs each connection
        return False

    wait_until(followed, 30, "--follow showing a new line", interval=0.5)
    follow.send_signal(signal.SIGINT)  # Ctrl-C must end it
    assert follow.wait(timeout=15) is not None
    one = rig.fab("status")
    assert one.returncode == 0
    assert re.search(
        r"^unit +pynet-chat@\S+\.service: active \(running\), restarts 0, enabled at boot",
        one.stdout,
        re.M,
    ), one.stdout
    assert "answers: HELLO pynet 0.1.0+one" in one.stdout
    rig.kill_serving()  # systemd restarts it: status must show that
    rig.wait_serving("one")
    after = rig.fab("status").stdout
    assert "restarts 1" in after, after


def test_old_releases_are_pruned(rig: Rig) -> None:
    rig.commit("five")
    proc = rig.deploy("--keep", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = git(rig.src, "rev-parse", "--short=7", "HEAD")
    tags = rig.root("docker", "image", "ls", "--format", "{{.Tag}}", "pynet-chat").stdout.split()
    assert "current" in tags
    assert head in tags
    assert len(tags) == 3, tags  # current + the two kept releases


def test_wrong_key_is_one_line(rig: Rig, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    proc = rig.fab("status", key=other)
    assert proc.returncode == 1
    port = rig.host.ssh_port
    assert proc.stderr.strip().splitlines() == [
        f"admin@127.0.0.1:{port}: SSH authentication failed for user 'admin': check the key "
        "(-i or ansible_ssh_private_key_file) and the user (`admin` on Debian)"
    ]


@pytest.mark.parametrize(
    ("fault", "repair", "check", "diagnosis"),
    [
        (
            ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "5050", "-j", "DROP"],
            ["iptables", "-D", "INPUT", "-p", "tcp", "--dport", "5050", "-j", "DROP"],
            "port from here",
            "the security group (or a host firewall) blocks TCP",
        ),
        (
            ["systemctl", "stop", "SERVING"],
            ["systemctl", "start", "SERVING"],
            "service",
            "SERVING is not running",
        ),
        (
            # Masked while stopped: the chat unit (Wants=docker.service, restarted 200 ms after
            # its container's follower ends) would otherwise start dockerd again at once.
            [
                "sh",
                "-c",
                "systemctl mask --runtime docker.socket docker.service"
                " && systemctl stop docker.socket docker.service",
            ],
            [
                "sh",
                "-c",
                "systemctl unmask --runtime docker.socket docker.service"
                " && systemctl start docker SERVING",
            ],
            "docker",
            "docker is not running",
        ),
        (["systemctl", "stop", "ssh"], ["systemctl", "start", "ssh"], "ssh port", "SSH is refused"),
    ],
    ids=["port-closed", "service-stopped", "docker-stopped", "ssh-refused"],
)
def test_doctor_names_the_fault(
    rig: Rig, fault: list[str], repair: list[str], check: str, diagnosis: str
) -> None:
    serving = rig.serving()
    fault, repair = (
        [w.replace("SERVING", serving) for w in fault],
        [w.replace("SERVING", serving) for w in repair],
    )
    diagnosis = diagnosis.replace("SERVING", serving)
    rig.root(*fault)
    try:
        proc = rig.fab("doctor")
    finally:
        rig.root(*repair)
    assert proc.returncode == 1, proc.stdout
    assert re.search(rf"^  FAIL  {check} ", proc.stdout, re.M), proc.stdout
    assert re.search(rf"^diagnosis: .*{re.escape(diagnosis)}", proc.stdout, re.M), proc.stdout
    assert "\nfix: " in proc.stdout
    rig.wait_serving("five")
    healthy = rig.fab("doctor")
    assert healthy.returncode == 0, healthy.stdout
    assert healthy.stdout.endswith("diagnosis: all checks passed\n")
