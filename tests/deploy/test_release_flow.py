"""The deploy flow against a scripted host: the order of commands, rollback, the slim fallback.

No SSH and no Docker: `ScriptedHost` answers rendered command lines by prefix and records them,
so these tests read like the transcript of a deploy.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from invoke.runners import Result

from pynet.deploy import release
from pynet.deploy.commands import SECTION, Argv, render
from pynet.deploy.remote import DeployError, Fed, Local, Remote
from tests.deploy.fakes import CONFIG_ID, fake_docker_save, fake_oci_save

Answer = tuple[str, int] | Callable[[str], tuple[str, int]]


class ScriptedHost(Remote):
    def __init__(self, answers: list[tuple[str, Answer]]) -> None:
        super().__init__(
            SimpleNamespace(host="h", port=22, user="admin"),
            out=io.StringIO(),
        )
        self.answers = answers
        self.log: list[str] = []
        self.uploads: list[Path] = []

    def run(self, argv: Argv, *, check: bool = True, hide: bool = True, **kw: Any) -> Result:
        line = render(argv)
        self.log.append(line)
        # A batched read (`commands.snapshot`): each part answered as if it ran alone.
        outputs, code = [], 0
        for part in line.split(f" ; echo {SECTION} ; "):
            stdout, code = self.answer(part)
            outputs.append(stdout)
        stdout = f"\n{SECTION}\n".join(outputs)
        result = Result(stdout=stdout, stderr=stdout if code else "", exited=code, command=line)
        if check and result.failed:
            raise DeployError(line)
        return result

    def answer(self, line: str) -> tuple[str, int]:
        for prefix, answer in self.answers:
            if line.startswith(prefix):
                return answer(line) if callable(answer) else answer
        return "", 0

    def feed(self, argv: Argv, local: Path, progress: bool = True) -> Fed:
        self.uploads.append(local)
        result = self.run(argv, check=False)
        self.log[-1] = f"{self.log[-1]} < {local.name}"
        return Fed(result, 0.0, 0.0)


IMAGES = (
    "sudo -n docker image ls --no-trunc",
    ("current sha256:old x\nold sha256:old x\nnew sha256:new x\n", 0),
)
CURRENT = ("sudo -n docker image inspect --format '{{.Id}}' pynet-chat:current", ("sha256:old", 0))


def _index(log: list[str], prefix: str) -> int:
    return next(i for i, line in enumerate(log) if line.startswith(prefix))


def _healthy_if(image_id: str) -> tuple[str, Answer]:
    return ("test ", lambda line: ("", 0 if f"= {image_id} " in line else 1))


def _units(host_log: list[str]) -> tuple[str, Answer]:
    """`old` serves until `new` was started; then only `new` (it took over)."""

    def answer(_: str) -> tuple[str, int]:
        started = any("systemctl start pynet-chat@new.service" in line for line in host_log)
        version = "new" if started else "old"
        return (
            f"pynet-chat@{version}.service loaded active running chat\n--\n"
            "pynet-chat@old.service\n",
            0,
        )

    return ("systemctl list-units", answer)


LABEL = ("sudo -n docker image inspect --format '{{index", ("1", 0))
CLOCK = ("date +%s", ("1000", 0))
SWITCH = (
    "sudo -n cat /run/pynet/last-switch.json",
    (
        json.dumps(
            {
                "how": "handover",
                "release": "new",
                "from": "old",
                "sessions": 20,
                "ms": 28.4,
                "time": 1001,
            }
        ),
        0,
    ),
)


WAITED = ("sudo -n python3 -c ", SWITCH[1])


def test_a_healthy_release_takes_over_and_is_recorded() -> None:
    host = ScriptedHost([IMAGES, CURRENT, LABEL, CLOCK, WAITED, _healthy_if("sha256:new")])
    host.answers.append(_units(host.log))
    outcome = release.activate(host, "new", "deploy", timeout=5, keep=5)
    assert outcome.previous == "old"
    assert outcome.switch["how"] == "handover"
    start = host.log.index(
        "date +%s ; sudo -n systemctl reset-failed pynet-chat@new.service 2>/dev/null ; "
        "sudo -n systemctl start pynet-chat@new.service"
    )
    waited = _index(host.log, "sudo -n python3 -c ")
    assert host.log[waited].endswith(
        " /run/pynet/last-switch.json new pynet-chat@new.service 1000 5.0"
    )
    health = _index(host.log, "test ")
    # One round trip once it is healthy: enabled at boot (alone), `current`, the history.
    [finish] = [line for line in host.log if "systemctl enable" in line]
    assert finish.startswith(
        "sudo -n systemctl enable --quiet pynet-chat@new.service && "
        "sudo -n systemctl disable --quiet pynet-chat@old.service && "
        "sudo -n docker tag pynet-chat:new pynet-chat:current && printf "
    )
    assert start < waited < health < host.log.index(finish)
    assert not [line for line in host.log if "systemctl stop" in line]  # old one left by itself
    assert not [line for line in host.log if "last-switch.json 2>" in line]  # the wait read it
    record = finish
    assert '"result": "ok"' in record
    assert '"previous": "old"' in record
    assert '"switch": {"from": "old", "how": "handover", "ms": 28.4, "sessions": 20}' in record
    assert "new is serving: handover of 20 sessions from old in 28.4 ms" in host.out.getvalue()  # type: ignore[attr-defined]


def test_an_overlap_stops_the_old_release_after_the_new_one_serves() -> None:
    both = (
        "systemctl list-units",
        (
            "pynet-chat@old.service loaded active running chat\n"
            "pynet-chat@new.service loaded active running chat\n--\n",
            0,
        ),
    )
    host = ScriptedHost([IMAGES, CURRENT, LABEL, CLOCK, _healthy_if("sha256:new"), both])
    release.activate(host, "new", "deploy", timeout=5)
    assert "sudo -n systemctl stop pynet-chat@old.service" in host.log


def test_a_release_that_predates_the_handover_starts_after_the_old_one_stops() -> None:
    no_label = ("sudo -n docker image inspect --format '{{index", ("", 0))
    host = ScriptedHost([IMAGES, CURRENT, no_label, CLOCK, _healthy_if("sha256:new")])
    host.answers.append(_units(host.log))
    outcome = release.activate(host, "new", "deploy", timeout=5)
    stop = host.log.index("sudo -n systemctl stop pynet-chat@old.service")
    assert stop < host.log.index(
        "date +%s ; sudo -n systemctl reset-failed pynet-chat@new.service 2>/dev/null ; "
        "sudo -n systemctl start pynet-chat@new.service"
    )
    assert not [line for line in host.log if "python3 -c" in line]  # it writes no record
    assert outcome.switch == {"how": "restart", "reason": "the release predates the handover"}


def test_an_unhealthy_release_hands_back_to_the_previous_and_the_reason_is_raised() -> None:
    host = ScriptedHost(
        [
            IMAGES,
            CURRENT,
            LABEL,
            CLOCK,
            _healthy_if("sha256:old"),
            ("sudo -n journalctl", ("boom: the last words", 0)),
        ]
    )
    host.answers.append(_units(host.log))
    with pytest.raises(DeployError) as err:
        release.activate(host, "new", "deploy", timeout=1)
    message = str(err.value)
    assert message.startswith(
        "deploy of new failed: the health check did not pass within 1s; "
        "rolled back to old, which is serving."
    )
    assert "journalctl -u pynet-chat@new.service" in message
    assert message.endswith("boom: the last words")
    starts = [line for line in host.log if "systemctl start" in line]
    assert [s.rsplit(" ", 1)[1] for s in starts] == [
        "pynet-chat@new.service",
        "pynet-chat@old.service",
    ]
    stop = host.log.index("sudo -n systemctl stop pynet-chat@new.service")
    assert stop > host.log.index(starts[1])  # the old one took the connections back first
    assert not [line for line in host.log if " docker tag " in line]  # current never moved
    record = next(line for line in host.log if line.startswith("printf"))
    assert '"result": "rolled-back"' in record


def test_a_release_that_never_took_over_leaves_the_old_one_serving() -> None:
    """The new one crashed before its handover: the old one still serves; it is only checked."""
    old_only = (
        "systemctl list-units",
        ("pynet-chat@old.service loaded active running chat\n--\n", 0),
    )
    host = ScriptedHost([IMAGES, CURRENT, LABEL, CLOCK, _healthy_if("sha256:old"), old_only])
    with pytest.raises(DeployError, match="rolled back to old, which is serving"):
        release.activate(host, "new", "deploy", timeout=1)
    starts = [line for line in host.log if "systemctl start" in line]
    assert [s.rsplit(" ", 1)[1] for s in starts] == ["pynet-chat@new.service"]
    assert "sudo -n systemctl stop pynet-chat@new.service" in host.log


def test_a_crash_loop_is_noticed_before_the_timeout() -> None:
    restarts = iter(range(100))
    host = ScriptedHost(
        [
            IMAGES,
            CURRENT,
            LABEL,
            CLOCK,
            _healthy_if("sha256:old"),
            ("systemctl show", lambda _: (f"NRestarts={next(restarts)}\n", 0)),
        ]
    )
    with pytest.raises(DeployError, match="the service crashed 3 times in a row"):
        release.activate(host, "new", "deploy", timeout=600)


def test_a_release_that_is_not_on_the_host() -> None:
    host = ScriptedHost([IMAGES, CURRENT])
    with pytest.raises(
        DeployError,
        match=r"pynet-chat:gone is not on the host \(releases there: "
        r"old, new\)",
    ):
        release.activate(host, "gone", "rollback")


class ScriptedLocal(Local):
    """`docker image inspect` answers with LAYERS; `docker save` writes a fake archive (the
    OCI layout of Docker 25+ when OCI, with the containerd store's nested index when NESTED)."""

    def __init__(self, layers: list[str], oci: bool = False, nested: bool = False) -> None:
        super().__init__(out=io.StringIO())
        self.layers, self.oci, self.nested = layers, oci, nested
        self.top = ""  # the image ID a containerd store reports

    def run(
        self, argv: Argv, *, check: bool = True, quiet: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        if argv[1] == "save":
            if self.oci:
                self.top = fake_oci_save(Path(argv[3]), nested=self.nested)
            else:
                fake_docker_save(Path(argv[3]))
            return subprocess.CompletedProcess(argv, 0, "", "")
        ident = self.top or CONFIG_ID
        return subprocess.CompletedProcess(argv, 0, f"{ident} {json.dumps(self.layers)}", "")


OTHER_CONTENT = '["sha256:other"] 2000-01-01T00:00:00Z'


def _loads(image_id: str, content: str = OTHER_CONTENT) -> tuple[str, int]:
    """What `commands.load_stdin` prints when the host loaded an image it reports as IMAGE_ID."""
    return f"Loaded image: pynet-chat:v2\n{image_id} {content} label=2\n", 0


def test_ship_sends_everything_when_the_slim_archive_does_not_load() -> None:
    loads = iter(
        [
            ("open /var/lib/docker/tmp/x/aaa/layer.tar: no such file or directory", 1),
            _loads(CONFIG_ID),
        ]
    )
    host = ScriptedHost(
        [
            ("sudo -n docker image ls --quiet", ('["base"]\n', 0)),
            ("sudo -n docker load", lambda _: next(loads)),
        ]
    )
    release.ship(host, ScriptedLocal(["base", "code"]), "docker", "v2")
    shipped = host.out.getvalue()  # type: ignore[attr-defined]
    assert "shipping 1 of 2 layers" in shipped
    assert "the host lacks a layer it was expected to have; sending all layers" in shipped
    assert "shipping 2 of 2 layers" in shipped
    assert len(host.uploads) == 2
    # Into docker load's stdin: no file left on the host, no second command to load it.
    assert [line for line in host.log if "docker load" in line] == [
        "sudo -n docker load && sudo -n docker image inspect --format "
        "'{{.Id}} {{json .RootFS.Layers}} {{.Created}} "
        'label={{index .Config.Labels "io.pynet.handover"}}\' pynet-chat:v2 < v2.tar.gz'
    ] * 2


def test_ship_skips_a_release_the_host_has() -> None:
    host = ScriptedHost([("sudo -n docker image ls --no-trunc", ("v2 sha256:x y\n", 0))])
    assert release.ship(host, ScriptedLocal(["base", "code"]), "docker", "v2") == 0
    assert "pynet-chat:v2 is already on the host: nothing to ship" in host.out.getvalue()  # type: ignore[attr-defined]
    assert host.uploads == []


def test_ship_does_not_retry_other_load_failures() -> None:
    host = ScriptedHost(
        [
            ("sudo -n docker image ls --quiet", ('["base"]\n', 0)),
            ("sudo -n docker load", ("write /var/lib/docker/tmp: no space left on device", 1)),
        ]
    )
    with pytest.raises(DeployError, match="no space left on device"):
        release.ship(host, ScriptedLocal(["base", "code"]), "docker", "v2")


def _loading_host(
    reports: Callable[[], str], machine: str = "x86_64", content: str = OTHER_CONTENT
) -> ScriptedHost:
    """A host with the base layer that loads what it gets and reports REPORTS() as its ID."""
    return ScriptedHost(
        [
            ("uname -m", (machine, 0)),
            ("sudo -n docker image ls --quiet", ('["base"]\n', 0)),
            ("sudo -n docker load", lambda _: _loads(reports(), content)),
        ]
    )


@pytest.mark.parametrize("nested", [False, True], ids=["oci-classic-store", "containerd-store"])
def test_ship_from_docker_25_sends_only_the_code_layer(nested: bool) -> None:
    """Docker 25+ saves the OCI layout: the base layer's blob stays home, and the line says so."""
    local = ScriptedLocal(["base", "code"], oci=True, nested=nested)
    host = _loading_host(lambda: CONFIG_ID)  # a classic store on the host
    size = release.ship(host, local, "docker", "v2")
    shipped = host.out.getvalue()  # type: ignore[attr-defined]
    assert "shipping 1 of 2 layers (" in shipped
    assert " compressed, 1 already on the host)" in shipped
    assert 0 < size < 5_000  # the 50 kB base layer was left out
    assert len(host.uploads) == 1


def test_ship_accepts_the_manifest_digest_a_containerd_store_reports() -> None:
    """A containerd store names the image by its index digest, a classic one by its config
    digest: both are this image, so the first deploy goes through at the first try."""
    local = ScriptedLocal(["base", "code"], oci=True, nested=True)
    host = _loading_host(lambda: local.top)
    release.ship(host, local, "docker", "v2")
    assert local.top.startswith("sha256:")


def test_ship_accepts_a_manifest_the_host_s_containerd_store_made_for_the_same_content() -> None:
    """A containerd store loading a classic (Docker 20.10) archive names the image by a manifest
    of its own: the same layers and creation time are the same image."""
    content = '["sha256:base","sha256:code"] 2026-12-07T02:10:00.123456789Z'
    host = _loading_host(lambda: "sha256:" + "1" * 64, content=content)
    release.ship(host, ScriptedLocal(["base", "code"]), "docker", "v2")


def test_ship_refuses_an_image_another_image_replaced_on_the_host() -> None:
    content = '["sha256:base","sha256:other"] 2026-12-07T02:10:00.123456789Z'
    host = _loading_host(lambda: "sha256:" + "0" * 64, content=content)
    with pytest.raises(DeployError, match=r"on the host \(sha256:0+\) differs from the one built"):
        release.ship(host, ScriptedLocal(["base", "code"], oci=True), "docker", "v2")


def test_ship_refuses_an_image_for_another_architecture_before_uploading() -> None:
    host = _loading_host(lambda: CONFIG_ID, machine="aarch64")
    with pytest.raises(DeployError) as caught:
        release.ship(host, ScriptedLocal(["base", "code"]), "docker", "v2")
    assert str(caught.value) == (
        "pynet-chat:v2 is built for linux/amd64 but the host runs linux/arm64: rebuild it for "
        "linux/arm64 (is the base image amd64-only?)"
    )
    assert host.uploads == []


def test_build_platform_is_the_hosts_architecture() -> None:
    assert release.build_platform(["arm64", "arm64"]) == "linux/arm64"
    assert release.build_platform([None]) is None  # a dry run: nothing asked
    with pytest.raises(DeployError, match=r"different architectures \(amd64, arm64\)"):
        release.build_platform(["amd64", "arm64"])


def test_a_crash_loop_seen_by_the_wait_on_the_host_rolls_back_at_once() -> None:
    host = ScriptedHost([IMAGES, CURRENT, LABEL, CLOCK, ("sudo -n python3 -c ", ("crashed 3", 3))])
    host.answers.append(_healthy_if("sha256:old"))
    host.answers.append(_units(host.log))
    with pytest.raises(DeployError, match="the service crashed 3 times in a row after the start"):
        release.activate(host, "new", "deploy", timeout=600)
    assert not [line for line in host.log if "pynet-chat-new python3" in line]  # no health check


def test_a_deploy_decides_from_the_snapshot_and_the_load() -> None:
    """What the deploy read under its lock and learnt from the load: no reading again."""
    text = f"\n{SECTION}\n".join(
        [
            "x86_64",
            '["a"]\n["a","b"]',
            "current sha256:old x\nold sha256:old x",
            '{"version": "old", "result": "ok"}',
            "sha256:old",
            "pynet-chat@old.service loaded active running chat\n--\npynet-chat@old.service",
        ]
    )
    snap = release.Snapshot.parse(text)
    assert (snap.machine, snap.arch, snap.layers) == ("x86_64", "amd64", [["a"], ["a", "b"]])
    assert snap.state.current == "old"
    assert (snap.units.active, snap.units.enabled) == (["old"], ["old"])
    snap.loaded("new", "sha256:new", "2")
    host = ScriptedHost([WAITED, _healthy_if("sha256:new"), CLOCK])
    host.answers.append(_units(host.log))
    phases = release.Phases()
    release.activate(host, "new", "deploy", timeout=5, snap=snap, phases=phases)
    assert not [line for line in host.log if "docker image ls" in line or "{{index" in line]
    assert set(phases.seconds) == {"start", "switch"}
    assert phases.describe(97_745).startswith("build 0.00s, save 0.00s, ship 0.00s (97.7 kB), ")


def test_a_wait_on_the_host_that_timed_out_names_the_whole_timeout() -> None:
    host = ScriptedHost(
        [IMAGES, CURRENT, LABEL, CLOCK, ("sudo -n python3 -c ", ("", 4)), _healthy_if("sha256:old")]
    )
    host.answers.append(_units(host.log))
    with pytest.raises(DeployError, match="the health check did not pass within 2s; rolled back"):
        release.activate(host, "new", "deploy", timeout=2)
