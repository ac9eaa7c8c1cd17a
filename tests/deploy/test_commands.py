"""Exact command text, as Kamal's tests do: what runs on the host is what these strings say."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from pynet.deploy import commands as cmd
from pynet.deploy.commands import render


def test_render_quotes_words_but_not_operators() -> None:
    argv = cmd.chain(["echo", "a b"], ["echo", "&&"])
    assert render(argv) == "echo 'a b' && echo '&&'"


def test_combinators() -> None:
    assert render(cmd.pipe(["a"], ["b"], ["c"])) == "a | b | c"
    assert render(cmd.either(["a"], ["b"])) == "a || b"
    assert render(cmd.seq(["a"], ["b"])) == "a ; b"
    assert render(cmd.sudo(["ls"])) == "sudo -n ls"


def test_local_build_passes_base_image_only_when_given() -> None:
    assert render(cmd.local_build("docker", "abc1234", "/src")) == (
        "docker build -t pynet-chat:abc1234 /src"
    )
    assert render(
        cmd.local_build(
            "/usr/bin/docker",
            "abc1234-dirty-1a2b3c4d",
            "/src",
            "pynet-local/debian:bookworm",
            "Dockerfile.x",
        )
    ) == (
        "/usr/bin/docker build -t pynet-chat:abc1234-dirty-1a2b3c4d -f Dockerfile.x "
        "--build-arg BASE_IMAGE=pynet-local/debian:bookworm /src"
    )


def test_local_inspect_and_save() -> None:
    assert render(cmd.local_layers("docker", "v1")) == (
        "docker image inspect --format '{{.Id}} {{json .RootFS.Layers}}' pynet-chat:v1"
    )
    assert render(cmd.local_save("docker", "v1", "/tmp/x.tar")) == (
        "docker save -o /tmp/x.tar pynet-chat:v1"
    )


def test_host_layers_lists_every_image() -> None:
    assert render(cmd.host_layers()) == (
        "sudo -n docker image ls --quiet --no-trunc | xargs -r sudo -n docker image inspect "
        "--format '{{json .RootFS.Layers}}'"
    )


def test_load_removes_the_partial_archive() -> None:
    assert render(cmd.load("/var/lib/pynet-deploy/archives/v1.tar.gz")) == (
        "sudo -n docker load --input /var/lib/pynet-deploy/archives/v1.tar.gz && "
        "rm -f /var/lib/pynet-deploy/archives/v1.tar.gz"
    )


def test_switching_releases() -> None:
    assert render(cmd.tag_current(cmd.image("v2"))) == (
        "sudo -n docker tag pynet-chat:v2 pynet-chat:current"
    )
    assert render(cmd.start("v2")) == (
        "sudo -n systemctl reset-failed pynet-chat@v2.service 2>/dev/null ; "
        "sudo -n systemctl start pynet-chat@v2.service"
    )
    assert render(cmd.restart("v2")) == (
        "sudo -n systemctl reset-failed pynet-chat@v2.service 2>/dev/null ; "
        "sudo -n systemctl reload-or-restart pynet-chat@v2.service"
    )
    assert render(cmd.stop("v1", "v0")) == (
        "sudo -n systemctl stop pynet-chat@v1.service pynet-chat@v0.service"
    )
    assert render(cmd.enable_only("v2", ["v1", "v2", "v0"])) == (
        "sudo -n systemctl enable --quiet pynet-chat@v2.service && "
        "sudo -n systemctl disable --quiet pynet-chat@v0.service pynet-chat@v1.service"
    )
    assert render(cmd.enable_only("v2", ["v2"])) == (
        "sudo -n systemctl enable --quiet pynet-chat@v2.service"
    )
    assert render(cmd.instances()) == (
        "systemctl list-units --all --plain --no-legend 'pynet-chat@*.service' ; echo -- ; "
        "find /etc/systemd/system/multi-user.target.wants -maxdepth 1 "
        "-name 'pynet-chat@*.service' -printf '%f\\n' 2>/dev/null"
    )
    assert render(cmd.handover_label("v2")) == (
        "sudo -n docker image inspect --format "
        "'{{index .Config.Labels \"io.pynet.handover\"}}' pynet-chat:v2"
    )
    assert render(cmd.switch_record()) == (
        "sudo -n cat /run/pynet/last-switch.json 2>/dev/null || echo '{}'"
    )
    assert render(cmd.remove_images(["v1", "v0"])) == (
        "sudo -n docker image rm pynet-chat:v1 pynet-chat:v0"
    )
    assert render(cmd.image_id("pynet-chat:current")) == (
        "sudo -n docker image inspect --format '{{.Id}}' pynet-chat:current"
    )
    assert render(cmd.release_images()) == (
        "sudo -n docker image ls --no-trunc --format '{{.Tag}} {{.ID}} {{.CreatedAt}}' pynet-chat"
    )


def test_health_checks_the_image_and_the_ping() -> None:
    assert render(cmd.health("v2", "sha256:abc")) == (
        "test \"$( sudo -n docker container inspect --format '{{.Image}}' pynet-chat-v2 )\" = "
        "sha256:abc && sudo -n docker exec pynet-chat-v2 python3 -m chat.healthcheck"
    )


def test_journal() -> None:
    assert render(cmd.journal()) == (
        "sudo -n journalctl --unit 'pynet-chat@*.service' --lines 20 --no-pager --output short-iso"
    )
    assert render(cmd.journal(5, follow=True)).endswith(
        "--lines 5 --no-pager --output short-iso --follow"
    )


def test_unit_probes() -> None:
    assert render(cmd.unit_show("v2")) == (
        "systemctl show pynet-chat@v2.service --property "
        "LoadState,ActiveState,SubState,NRestarts,ActiveEnterTimestamp,ExecMainStatus"
    )
    assert render(cmd.sessions(5050)) == "ss -Htn state established '( sport = :5050 )'"
    assert render(cmd.port_listening()) == "ss -Hltn 'sport = :5050'"
    assert render(cmd.disk_usage()) == "df -Pk /var/lib/docker 2>/dev/null || df -Pk /"
    assert render(cmd.memory()) == "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo"


def test_state_dir_is_only_created_when_not_writable() -> None:
    assert render(cmd.ensure_state_dir("admin")) == (
        "test -w /var/lib/pynet-deploy/archives || sudo -n install -d -o admin -m 0755 "
        "/var/lib/pynet-deploy /var/lib/pynet-deploy/archives"
    )


def test_lock_commands() -> None:
    assert render(cmd.lock_acquire({"user": "me@laptop", "token": "t1"})) == (
        "mkdir /var/lib/pynet-deploy/lock && "
        'printf \'%s\\n\' \'{"token": "t1", "user": "me@laptop"}\' > '
        "/var/lib/pynet-deploy/lock/owner.json && touch /var/lib/pynet-deploy/lock/heartbeat"
    )
    assert render(cmd.lock_info()) == (
        "test -d /var/lib/pynet-deploy/lock || exit 3 ; date +%s ; "
        "stat -c %Y /var/lib/pynet-deploy/lock/heartbeat 2>/dev/null || "
        "stat -c %Y /var/lib/pynet-deploy/lock ; "
        "cat /var/lib/pynet-deploy/lock/owner.json 2>/dev/null || echo '{}'"
    )
    assert render(cmd.lock_heartbeat()) == "touch /var/lib/pynet-deploy/lock/heartbeat"
    assert render(cmd.lock_release("t1")) == (
        "grep -qF t1 /var/lib/pynet-deploy/lock/owner.json && rm -rf /var/lib/pynet-deploy/lock"
    )
    assert render(cmd.lock_break()) == "sudo -n rm -rf /var/lib/pynet-deploy/lock"


def test_history_is_one_json_object_per_line() -> None:
    entry = {"version": "v1", "result": "ok", "user": "o'brien@laptop"}
    assert render(cmd.record(entry)) == (
        'printf \'%s\\n\' \'{"result": "ok", "user": "o\'"\'"\'brien@laptop", '
        '"version": "v1"}\' >> /var/lib/pynet-deploy/releases.jsonl'
    )
    assert render(cmd.read_releases()) == (
        "cat /var/lib/pynet-deploy/releases.jsonl 2>/dev/null || true"
    )


def test_a_deploy_reads_the_host_in_one_command() -> None:
    parts = render(cmd.snapshot()).split(f" ; echo {cmd.SECTION} ; ")
    assert parts == [
        "uname -m",
        render(cmd.quiet(cmd.host_layers())),
        render(cmd.release_images()),
        render(cmd.read_releases()),
        "sudo -n docker image inspect --format '{{.Id}}' pynet-chat:current 2>/dev/null || true",
        render(cmd.instances()),
    ]
    assert render(cmd.snapshot(layers=False)).split(f" ; echo {cmd.SECTION} ; ")[1] == "true"


def test_the_image_is_loaded_from_stdin_and_described_in_the_same_command() -> None:
    assert render(cmd.load_stdin("v1")) == (
        "sudo -n docker load && sudo -n docker image inspect --format "
        "'{{.Id}} {{json .RootFS.Layers}} {{.Created}} "
        'label={{index .Config.Labels "io.pynet.handover"}}\' pynet-chat:v1'
    )


def test_start_reads_the_clock_in_the_same_command_and_finish_is_one() -> None:
    assert render(cmd.start_clocked("v1")) == "date +%s ; " + render(cmd.start("v1"))
    assert render(cmd.start_clocked("v1", running=True)) == "date +%s ; " + render(
        cmd.restart("v1")
    )
    assert render(cmd.finish("v2", ["v1"], {"version": "v2"})) == (
        "sudo -n systemctl enable --quiet pynet-chat@v2.service && "
        "sudo -n systemctl disable --quiet pynet-chat@v1.service && "
        "sudo -n docker tag pynet-chat:v2 pynet-chat:current && "
        "printf '%s\\n' '{\"version\": \"v2\"}' >> /var/lib/pynet-deploy/releases.jsonl"
    )


def _wait(
    tmp_path: Path, since: float, timeout: float, crashing: bool = False
) -> subprocess.CompletedProcess[str]:
    """`commands.wait_switch` as the host runs it (without sudo), the record in TMP_PATH, and a
    `systemctl` whose NRestarts stays 0, or grows by one each time it is asked (CRASHING)."""
    fake = tmp_path / "bin"
    fake.mkdir(parents=True, exist_ok=True)
    count = tmp_path / "restarts"
    count.write_text("0")
    grow = f"echo $(($(cat {count}) + 1)) > {count}.new && mv {count}.new {count}\n"
    (fake / "systemctl").write_text(f"#!/bin/sh\ncat {count}\n" + (grow if crashing else ""))
    (fake / "systemctl").chmod(0o755)
    argv = cmd.wait_switch("v2", since, timeout)[2:]
    argv[3] = str(tmp_path / "last-switch.json")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=30)


def test_the_wait_on_the_host_ends_when_the_new_release_has_taken_over(tmp_path: Path) -> None:
    record = tmp_path / "last-switch.json"
    record.write_text(json.dumps({"release": "v1", "time": 2000.0}))  # the previous release's
    late = {"how": "handover", "release": "v2", "time": 1000.0}  # older than this start
    threading.Timer(0.3, lambda: record.write_text(json.dumps(late))).start()
    fresh = {"how": "handover", "release": "v2", "time": 2001.5}
    threading.Timer(0.6, lambda: record.write_text(json.dumps(fresh))).start()
    began = time.monotonic()
    done = _wait(tmp_path, since=2001, timeout=10)
    assert done.returncode == cmd.SWITCHED, done.stderr
    assert json.loads(done.stdout) == fresh
    assert 0.6 <= time.monotonic() - began < 2.0  # polled, not slept on


def test_the_wait_on_the_host_gives_up_on_a_crash_loop_and_at_its_timeout(
    tmp_path: Path,
) -> None:
    crashed = _wait(tmp_path / "crash", since=0, timeout=30, crashing=True)
    assert (crashed.returncode, crashed.stdout.strip()) == (cmd.CRASHED, "crashed 3")
    began = time.monotonic()
    assert _wait(tmp_path / "late", since=0, timeout=0.5).returncode == cmd.NOT_YET
    assert time.monotonic() - began < 5
