"""A modern Docker engine for the laptop side: Debian 13's Docker 26 (with buildx), in a container.

Users deploy from Docker Desktop or Docker Engine 25+, often with the containerd image store;
this machine's own engine is Debian 12's 20.10. So the harness runs Debian 13's `docker.io`
inside a container (the same emulated privileges as the EC2-like host), listening on a unix
socket in a bind-mounted folder, and writes a `docker` wrapper script beside it that talks to
that socket with Debian 13's own client and buildx plugin (copied out of the image). Pointing
`PYNET_DOCKER` at the wrapper makes `fab deploy` build, inspect and save with Docker 26.

The engine image is made like the other local images: `debootstrap trixie` into a tree, `FROM
scratch`, cached as `docker save | gzip` under `.cache/images/` by a digest of its recipe.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pynet.local.engine import EngineError, docker, ensure_engine
from pynet.local.host import DOCKER_IN_DOCKER
from pynet.local.images import (
    CACHE,
    DEBIAN_MIRROR,
    FILES,
    RECIPE_LABEL,
    ROOTFS_TRIM,
    load_image,
    save_image,
)
from pynet.wait import WaitTimeout, wait_until

ENGINE_IMAGE = "pynet-local/docker-engine:trixie"
SUITE = "trixie"
PACKAGES = "docker.io,docker-cli,docker-buildx,iptables,ca-certificates,procps,git"
RECIPE = ("engine.Dockerfile", "engine-start.sh")
LABEL = "pynet.local.engine"
#: The same emulated privileges as the EC2-like host (pynet/local/host.py): dockerd needs them.
RUN_FLAGS = DOCKER_IN_DOCKER
CLIENT_FILES = {
    "bin/docker": "/usr/bin/docker",
    "config/cli-plugins/docker-buildx": "/usr/libexec/docker/cli-plugins/docker-buildx",
}


def recipe_digest() -> str:
    digest = hashlib.sha256(f"{SUITE} {PACKAGES} {DEBIAN_MIRROR}".encode())
    for name in RECIPE:
        digest.update(name.encode() + (FILES / name).read_bytes())
    return digest.hexdigest()[:12]


def _label(tag: str) -> str:
    fmt = f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}'
    proc = docker("image", "inspect", "--format", fmt, tag, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _build_image() -> None:
    if shutil.which("debootstrap") is None:
        raise EngineError("debootstrap is needed to build the engine image: apt-get install it")
    with tempfile.TemporaryDirectory(prefix="pynet-engine-rootfs-", dir=CACHE) as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={PACKAGES}",
                SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for rel in (*ROOTFS_TRIM, "var/lib/apt/lists"):
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(work / "rootfs.tar"), "."], check=True)
        shutil.rmtree(rootfs)
        for name in RECIPE:
            shutil.copy(FILES / name, work / name)
        docker(
            "build",
            "-q",
            "-t",
            ENGINE_IMAGE,
            "--label",
            f"{RECIPE_LABEL}={recipe_digest()}",
            "-f",
            str(work / "engine.Dockerfile"),
            str(work),
        )


def ensure_engine_image() -> str:
    """The Docker 26 engine image, loaded from the cache or built (and cached) once."""
    ensure_engine()
    CACHE.mkdir(parents=True, exist_ok=True)
    if _label(ENGINE_IMAGE) == recipe_digest():
        return ENGINE_IMAGE
    archive = CACHE / f"pynet-local_docker-engine_{SUITE}-{recipe_digest()}.tar.gz"
    if archive.exists():
        try:
            load_image(archive)
            if _label(ENGINE_IMAGE) == recipe_digest():
                return ENGINE_IMAGE
        except EngineError:
            pass
        archive.unlink()
    _build_image()
    save_image(ENGINE_IMAGE, archive)
    return ENGINE_IMAGE


@dataclass(frozen=True)
class ModernEngine:
    """A running Docker 26 engine and the `docker` wrapper that talks to it."""

    name: str
    folder: Path
    containerd_store: bool

    @property
    def socket(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def wrapper(self) -> Path:
        """A `docker` command for this engine: what PYNET_DOCKER names."""
        return self.folder / "docker"

    def docker(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.wrapper), *args],
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode:
            err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
            raise EngineError(f"{self.name}: docker {' '.join(args[:2])} failed: {err.strip()}")
        return proc

    def info(self) -> str:
        """`VERSION STORE`: the engine's version and its image store (`overlay2`, `overlayfs`)."""
        fmt = "{{.ServerVersion}} {{.Driver}}"
        return self.docker("info", "--format", fmt, timeout=20).stdout.strip()

    def copy_image(self, tag: str) -> None:
        """Move TAG from this machine's engine into this one (`docker save | docker load`)."""
        with tempfile.NamedTemporaryFile(prefix="pynet-copy-", suffix=".tar") as tmp:
            docker("save", "-o", tmp.name, tag)
            self.docker("load", "--input", tmp.name)


def _write_wrapper(engine: ModernEngine) -> None:
    """The client files from the image, and a script that runs them against the socket."""
    for rel, source in CLIENT_FILES.items():
        target = engine.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        docker("cp", f"{engine.name}:{source}", str(target))
    engine.wrapper.write_text(
        "#!/bin/sh\n"
        f"# The Docker 26 client against the engine in container {engine.name}.\n"
        f"DOCKER_HOST=unix://{engine.socket} DOCKER_CONFIG={engine.folder / 'config'} "
        f'exec {engine.folder / "bin/docker"} "$@"\n'
    )
    engine.wrapper.chmod(0o755)


def start_engine(
    name: str, folder: Path, containerd_store: bool = False, timeout: float = 60.0
) -> ModernEngine:
    """Start engine NAME (replacing an old one) with its socket and wrapper in FOLDER."""
    image = ensure_engine_image()
    stop_engine(name)
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    engine = ModernEngine(name, folder, containerd_store)
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--label",
        LABEL,
        *RUN_FLAGS,
        "-e",
        f"PYNET_CONTAINERD_STORE={int(containerd_store)}",
        "-v",
        f"{folder}:/engine",
        image,
    )
    _write_wrapper(engine)

    def answers() -> bool:
        try:
            return engine.docker("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    try:
        wait_until(answers, timeout, f"dockerd in {name}", interval=0.5)
    except WaitTimeout:
        logs = docker("logs", "--tail", "20", name, check=False)
        raise EngineError(
            f"engine {name} did not answer within {timeout:.0f}s:\n{logs.stdout}{logs.stderr}"
        ) from None
    return engine


def stop_engine(name: str) -> None:
    """Remove engine NAME and its image store; a no-op when there is none."""
    docker("rm", "-f", "-v", name, check=False)
