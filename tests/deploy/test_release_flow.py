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
from pynet.deploy.commands import Argv, render
from pynet.deploy.remote import DeployError, Local, Remote

from .fakes import fake_docker_save

Answer = tuple[str, int] | Callable[[str], tuple[str, int]]


class ScriptedHost(Remote):
    def __init__(self, answers: list[tuple[str, Answer]]) -> None:
        super().__init__(
            SimpleNamespace(host="h", port=22, user="admin"),  # type: ignore[arg-type]
            out=io.StringIO(),
        )
        self.answers = answers
        self.log: list[str] = []
        self.uploads: list[Path] = []

    def run(self, argv: Argv, *, check: bool = True, hide: bool = True, **kw: Any) -> Result:
        line = render(argv)
        self.log.append(line)
        stdout, code = "", 0
        for prefix, answer in self.answers:
            if line.startswith(prefix):
                stdout, code = answer(line) if callable(answer) else answer
                break
        result = Result(stdout=stdout, stderr=stdout if code else "", exited=code, command=line)
        if check and result.failed:
            raise DeployError(line)
        return result

    def upload(self, local: Path, remote: str, progress: bool = True) -> None:
        self.uploads.append(local)
        self.log.append(f"upload {remote}")


IMAGES = (
    "sudo -n docker image ls --no-trunc",
    ("current sha256:old x\nold sha256:old x\nnew sha256:new x\n", 0),
)
CURRENT = ("sudo -n docker image inspect --format '{{.Id}}' pynet-chat:current", ("sha256:old", 0))


def _healthy_if(image_id: str) -> tuple[str, Answer]:
    return ("test ", lambda line: ("", 0 if f"= {image_id} " in line else 1))


def test_a_healthy_release_is_recorded_and_old_ones_pruned() -> None:
    host = ScriptedHost([IMAGES, CURRENT, _healthy_if("sha256:new")])
    outcome = release.activate(host, "new", "deploy", timeout=5, keep=5)
    assert outcome.previous == "old"
    assert host.log.index("sudo -n docker tag pynet-chat:new pynet-chat:current") < host.log.index(
        "sudo -n systemctl reset-failed pynet-chat && sudo -n systemctl restart pynet-chat"
    )
    record = next(line for line in host.log if line.startswith("printf"))
    assert '"result": "ok"' in record
    assert '"previous": "old"' in record


def test_an_unhealthy_release_is_rolled_back_and_the_reason_raised() -> None:
    host = ScriptedHost(
        [
            IMAGES,
            CURRENT,
            _healthy_if("sha256:old"),
            ("sudo -n journalctl", ("boom: the last words", 0)),
        ]
    )
    with pytest.raises(DeployError) as err:
        release.activate(host, "new", "deploy", timeout=1)
    message = str(err.value)
    assert message.startswith(
        "deploy of new failed: the health check did not pass within 1s; "
        "rolled back to old, which is serving."
    )
    assert message.endswith("boom: the last words")
    tags = [line for line in host.log if " docker tag " in line]
    assert tags == [
        "sudo -n docker tag pynet-chat:new pynet-chat:current",
        "sudo -n docker tag sha256:old pynet-chat:current",
    ]
    record = next(line for line in host.log if line.startswith("printf"))
    assert '"result": "rolled-back"' in record


def test_a_crash_loop_is_noticed_before_the_timeout() -> None:
    restarts = iter(range(100))
    host = ScriptedHost(
        [
            IMAGES,
            CURRENT,
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
    """`docker image inspect` answers with LAYERS; `docker save` writes a fake archive."""

    def __init__(self, layers: list[str]) -> None:
        super().__init__(out=io.StringIO())
        self.layers = layers

    def run(
        self, argv: Argv, *, check: bool = True, quiet: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        if argv[1] == "save":
            fake_docker_save(Path(argv[3]))
            return subprocess.CompletedProcess(argv, 0, "", "")
        return subprocess.CompletedProcess(argv, 0, f"sha256:new {json.dumps(self.layers)}", "")


def test_ship_sends_everything_when_the_slim_archive_does_not_load() -> None:
    loads = iter(
        [
            ("open /var/lib/docker/tmp/x/aaa/layer.tar: no such file or directory", 1),
            ("Loaded image: pynet-chat:v2", 0),
        ]
    )
    host = ScriptedHost(
        [
            (
                "sudo -n docker image inspect --format '{{.Id}}' pynet-chat:v2",
                lambda _: (
                    ("sha256:new", 0)
                    if any(line.startswith("sudo -n docker load") for line in host.log)
                    else ("", 1)
                ),
            ),
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


def test_ship_does_not_retry_other_load_failures() -> None:
    host = ScriptedHost(
        [
            ("sudo -n docker image inspect", ("", 1)),
            ("sudo -n docker image ls --quiet", ('["base"]\n', 0)),
            ("sudo -n docker load", ("write /var/lib/docker/tmp: no space left on device", 1)),
        ]
    )
    with pytest.raises(DeployError, match="no space left on device"):
        release.ship(host, ScriptedLocal(["base", "code"]), "docker", "v2")
