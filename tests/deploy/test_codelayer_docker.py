"""The code layer made here is the one `docker build` makes: both built for real and compared.

A full build of the repository's Dockerfile (on the local Debian base) is cached; the code then
changes (a file edited, one added, one removed, a byte-compiled file that .dockerignore keeps
out); the image assembled from the cache is loaded into the engine and compared with a real
`docker build` of the same tree: the runtime config, the layers below the code, and every
path under /app with its type, mode, owner, size, modification time and content. Twice: with
this machine's Docker 20.10 (the classic builder) and with Debian 13's Docker 26 (BuildKit).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pynet.deploy import release
from pynet.deploy.remote import Local
from pynet.local.engine import DOCKER, docker
from pynet.local.images import BASE_IMAGE
from pynet.local.provision import build_context_copy

pytestmark = pytest.mark.e2e

Docker = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module", params=["docker20.10", "docker26"])
def engine(
    request: pytest.FixtureRequest, chat_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Docker]]:
    """(the docker command, a function running it) for each engine. (CHAT_IMAGE: the base
    image and this machine's engine exist.)"""
    if request.param == "docker20.10":
        yield DOCKER, docker
        return
    from pynet.local.modern import start_engine, stop_engine

    name = f"pynet-engine26-codelayer-{os.getpid()}"
    started = start_engine(name, tmp_path_factory.mktemp("engine-codelayer"), False)
    try:
        started.copy_image(BASE_IMAGE)
        yield str(started.wrapper), started.docker
    finally:
        stop_engine(name)


def _listing(command: str, run: Docker, image: str) -> list[str]:
    """Every path under /app in IMAGE: type, mode, owner, size, file time and content digest
    (from `docker export` of a container made, never started, from it)."""
    made = run("create", image).stdout.strip()
    try:
        exported = subprocess.run([command, "export", made], capture_output=True, check=True).stdout
    finally:
        run("rm", made, check=False)
    rows = []
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        for m in tar.getmembers():
            if not m.name.startswith("app/"):
                continue
            data = tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            when = int(m.mtime) if m.isfile() else "-"  # folders: the build's time
            digest = hashlib.sha256(data).hexdigest()[:16]
            kind, mode = m.type.decode(), m.mode & 0o7777
            rows.append(f"{m.name} {kind} {mode:o} {m.uid}:{m.gid} {m.size} {when} {digest}")
    return sorted(rows)


def _inspect(run: Docker, image: str, what: str) -> str:
    return run("image", "inspect", "--format", what, image).stdout.strip()


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the build context, and a deploy cache of its own."""
    monkeypatch.setenv("PYNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    source = build_context_copy(tmp_path / "src")
    (source / "chat").chmod(0o775)  # a umask of 002: does the folder's mode carry over?
    return source


def test_the_assembled_image_is_what_docker_build_makes(
    engine: tuple[str, Docker], context: Path, tmp_path: Path
) -> None:
    command, run = engine
    local = Local(out=open("/dev/null", "w"))  # noqa: SIM115 - the builds' progress is noise here
    tags = ["cl-first", "cl-assembled", "cl-built"]
    try:
        recipe = release.recipe(local, command, context, None, BASE_IMAGE, None)
        assert recipe is not None
        assert release.assemble(recipe, "cl-assembled") is None  # nothing cached yet
        release.build(local, command, "cl-first", context, BASE_IMAGE)
        release.Built(local, command, "cl-first", recipe).close()  # the full build, cached

        init = context / "chat" / "__init__.py"
        init.write_text(init.read_text() + "\nASSEMBLED = True\n")
        (context / "chat" / "added.py").write_text("X = 1\n")
        (context / "chat" / "window.py").unlink()
        (context / "chat" / "__pycache__").mkdir(exist_ok=True)
        (context / "chat" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"\0" * 8)

        again = release.recipe(local, command, context, None, BASE_IMAGE, None)
        assert again is not None
        assert again.fingerprint == recipe.fingerprint
        assembled = release.assemble(again, "cl-assembled")
        assert assembled is not None
        with assembled:
            archive = tmp_path / "assembled.tar.gz"
            assembled.slim(archive, 0)  # every layer: this engine loads it as a host would
            run("load", "-i", str(archive))
            assert _inspect(run, "pynet-chat:cl-assembled", "{{.Id}}") == assembled.image.config
        release.build(local, command, "cl-built", context, BASE_IMAGE)

        mine, theirs = "pynet-chat:cl-assembled", "pynet-chat:cl-built"
        for what in ("{{json .Config}}", "{{.Os}}/{{.Architecture}}"):
            assert _inspect(run, mine, what) == _inspect(run, theirs, what)
        layers = "{{json .RootFS.Layers}}"
        below = [json.loads(_inspect(run, image, layers))[:-1] for image in (mine, theirs)]
        assert below[0] == below[1]  # every layer but the code's is the same
        listing = _listing(command, run, mine)
        assert any(row.startswith("app/chat/added.py 0 644 0:0 6 ") for row in listing), listing
        assert not any("window.py" in row or "__pycache__" in row for row in listing)
        assert listing == _listing(command, run, theirs)
    finally:
        for tag in tags:
            run("image", "rm", "-f", f"pynet-chat:{tag}", check=False)
