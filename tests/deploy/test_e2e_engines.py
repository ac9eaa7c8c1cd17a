"""`fab deploy` from the Docker engines users have, to one EC2-like host over real SSH.

The laptop's engine is this machine's Docker 20.10, then Debian 13's Docker 26
(pynet/local/modern.py) once with the classic image store and once with the containerd image
store (the default of fresh Docker Engine 29+ and Docker Desktop installs). Docker 25+ saves
images in the OCI layout and the containerd store names images by manifest digest: the two ways
a deploy used to ship the whole image every time or abort on its first try. The host is
provisioned by the playbook, as in test_e2e_deploy.py.

Each engine's figures (bytes shipped, deploy time) are printed as `MEASURED ...` lines
(`pytest -s` shows them).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pynet.local.images import BASE_IMAGE
from pynet.local.modern import ModernEngine
from tests.deploy.rigs import Rig, git, provisioned_rig

pytestmark = pytest.mark.e2e

SIZE = r"([\d.]+) (B|kB|MB|GB)"
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


@dataclass
class EngineRig(Rig):
    """The host, and a source tree deployed with a Docker 26 engine's client (ENGINE), or with
    this machine's Docker 20.10 when there is none."""

    engine: ModernEngine | None = None

    @property
    def env(self) -> dict[str, str]:
        if self.engine is None:
            return super().env
        return {
            **super().env,
            "PYNET_DOCKER": str(self.engine.wrapper),
            "PYNET_DEPLOY_CACHE": str(self.engine.folder / "deploy-cache"),
        }

    @property
    def store(self) -> str:
        if self.engine is None:
            return "docker20.10"
        return "containerd" if self.engine.containerd_store else "classic"


def _bytes(number: str, unit: str) -> float:
    return float(number) * UNITS[unit]


@dataclass(frozen=True)
class Shipped:
    """What one deploy printed about its shipment, and how long it took."""

    layers: int
    total: int
    compressed: float  # bytes, as the shipping line says
    uploaded: float  # bytes, as the summary line of what went over SSH says
    seconds: float  # the whole deploy
    ship: float  # of which saving, slimming, sending and loading

    @classmethod
    def parse(cls, stdout: str) -> Shipped:
        line = re.search(
            rf"shipping (\d+) of (\d+) layers \({SIZE} compressed, (\d+) already on the host\)",
            stdout,
        )
        sent = re.search(rf"^  ssh \S+\.tar\.gz: {SIZE} in ", stdout, re.M)
        took = re.search(
            r"^\S+ deployed \S+ in ([\d.]+)s: build [\d.]+s, save ([\d.]+)s, ship ([\d.]+)s "
            r"\(.*\), load ([\d.]+)s, ",
            stdout,
            re.M,
        )
        assert line, stdout
        assert sent, stdout
        assert took, stdout
        assert int(line[1]) + int(line[5]) == int(line[2])
        return cls(
            int(line[1]),
            int(line[2]),
            _bytes(line[3], line[4]),
            _bytes(sent[1], sent[2]),
            float(took[1]),
            float(took[2]) + float(took[3]) + float(took[4]),
        )


@pytest.fixture(scope="module")
def host_rig(
    host_image: str,
    ssh_keypair: tuple[Path, Path],
    chat_image_archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EngineRig]:
    with provisioned_rig(
        EngineRig, "engines", ssh_keypair, chat_image_archive, tmp_path_factory
    ) as made:
        yield made


@pytest.fixture(
    scope="module",
    params=[None, False, True],
    ids=["docker20.10", "docker26-classic-store", "docker26-containerd"],
)
def rig(
    request: pytest.FixtureRequest,
    host_rig: EngineRig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EngineRig]:
    """HOST_RIG deployed from a Docker 26 engine that holds the same local base image (from
    this machine's engine when the parameter is None)."""
    from pynet.local.modern import start_engine, stop_engine

    if request.param is None:
        yield host_rig
        return
    store = "containerd" if request.param else "classic"
    name = f"pynet-engine26-{store}-{os.getpid()}"
    engine = start_engine(name, tmp_path_factory.mktemp(f"engine-{store}"), request.param)
    try:
        engine.copy_image(BASE_IMAGE)
        host_rig.engine = engine
        yield host_rig
    finally:
        host_rig.engine = None
        stop_engine(name)


def test_the_engine_is_the_one_under_test(rig: EngineRig) -> None:
    if rig.engine is None:
        assert rig.env["PYNET_DOCKER"] == "/usr/bin/docker"
        return
    version, driver = rig.engine.info().split()
    assert version.startswith("26.")
    # The containerd image store shows as its snapshotter (overlayfs), the classic one overlay2.
    assert driver == ("overlayfs" if rig.engine.containerd_store else "overlay2")
    archive = rig.engine.folder / "probe.tar"
    rig.engine.docker("save", "-o", str(archive), BASE_IMAGE)
    listing = subprocess.run(["tar", "tf", str(archive)], capture_output=True, text=True).stdout
    archive.unlink()
    assert "oci-layout" in listing.split()  # Docker 25+ saves the OCI layout


def test_first_deploy_from_a_modern_engine_succeeds_at_the_first_try(rig: EngineRig) -> None:
    """The base image's layers are on the host already (the seed release): they stay home."""
    store = rig.store
    version = rig.commit(f"first-{store}")
    proc = rig.deploy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "differs from the one built here" not in proc.stdout + proc.stderr
    assert "sending all layers" not in proc.stdout
    assert f"[local] building pynet-chat:{version} for linux/amd64 from " in proc.stdout
    assert f"{version} is serving" in proc.stdout
    assert rig.hello().endswith(f"+first-{store}")
    shipped = Shipped.parse(proc.stdout)
    assert shipped.layers < shipped.total  # the base layer stayed home
    assert shipped.uploaded == shipped.compressed  # the line tells what went over the wire
    assert shipped.uploaded < 5e6  # not the 160 MB base
    print(f"\nMEASURED {store} first deploy: {shipped}")


def test_a_code_only_change_ships_kilobytes(rig: EngineRig) -> None:
    store = rig.store
    version = rig.commit(f"code-{store}")
    proc = rig.deploy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sending all layers" not in proc.stdout
    # Made from this engine's own `docker save` of the first deploy (OCI layout on Docker 26,
    # the containerd store's nested index too), without docker build or docker save.
    assert f"[local] pynet-chat:{version}: only the code changed since the last build" in (
        proc.stdout
    )
    assert rig.hello().endswith(f"+code-{store}")
    shipped = Shipped.parse(proc.stdout)
    assert shipped.layers == 1  # the chat/ layer, nothing else
    assert shipped.uploaded == shipped.compressed
    assert shipped.uploaded < 200e3, proc.stdout  # kilobytes
    assert re.search(rf"^version +{version} \(up ", rig.fab("status").stdout, re.M)
    print(f"\nMEASURED {store} code-only deploy: {shipped}")


def test_a_failed_build_shows_docker_s_error(rig: EngineRig) -> None:
    good = git(rig.src, "rev-parse", "--short=7", "HEAD")
    dockerfile = rig.src / "Dockerfile"
    text = dockerfile.read_text()
    broken = text.replace(
        "WORKDIR /app\n", "WORKDIR /app\nRUN python3 -c 'import pynet_missing'\n", 1
    )
    assert broken != text
    dockerfile.write_text(broken)
    try:
        proc = rig.deploy("--version", "broken-build")
    finally:
        dockerfile.write_text(text)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr.split("The output before it:")[0]
    first = proc.stderr.splitlines()[0]
    prefix = "docker build of pynet-chat:broken-build failed (exit 1): "
    if rig.engine is None:  # Docker 20.10's classic builder
        assert first == (
            f"{prefix}The command '/bin/sh -c python3 -c 'import pynet_missing'' returned a "
            "non-zero code: 1"
        ), proc.stderr
        assert re.search(r"^  Step \d+/\d+ : RUN python3", proc.stdout, re.M)  # streamed
    else:  # BuildKit (buildx)
        assert first.startswith(f"{prefix}ERROR: failed to solve: "), proc.stderr
        assert re.search(r"^  #\d+ \[", proc.stdout, re.M)  # its progress, streamed
    assert "ModuleNotFoundError: No module named 'pynet_missing'" in proc.stderr
    assert re.search(rf"^version +{good} \(up ", rig.fab("status").stdout, re.M)
