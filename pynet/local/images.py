"""Images the harness builds locally, because no registry is reachable from here.

`debootstrap` makes a Debian root filesystem once per release (12 "bookworm" or 13 "trixie",
`SUITES`); it becomes a `FROM scratch` base image (`base_image(suite)`; `BASE_IMAGE` is
bookworm's, which the chat Dockerfile accepts as its `BASE_IMAGE` build argument) and, with
systemd and sshd set up like a Debian EC2 instance, the image of the local EC2-like host
(`host_image(suite)`; `HOST_IMAGE` is bookworm's). All are cached as `docker save | gzip` files
under `.cache/images/`, so a later run loads them in seconds instead of rebuilding for minutes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pynet.local.engine import DOCKER, EngineError, docker

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PYNET_CACHE", REPO / ".cache")) / "images"
FILES = Path(__file__).resolve().parent / "files"

#: The Debian releases a local host can run: codename -> version (`fab launch --os debianN`).
SUITES = {"bookworm": "12", "trixie": "13"}
DEFAULT_SUITE = "bookworm"


def base_image(suite: str = DEFAULT_SUITE) -> str:
    """The tag of the Debian SUITE base image."""
    return f"pynet-local/debian:{check_suite(suite)}"


def host_image(suite: str = DEFAULT_SUITE) -> str:
    """The tag of the EC2-like host image on Debian SUITE."""
    return f"pynet-local/ec2-host:{check_suite(suite)}"


def check_suite(suite: str) -> str:
    """Refuse a Debian release the harness cannot build, in one line."""
    if suite not in SUITES:
        choices = ", ".join(f"{name} (Debian {version})" for name, version in SUITES.items())
        raise EngineError(f"unknown Debian release {suite!r} for a local host: choose {choices}")
    return suite


BASE_IMAGE = base_image()
HOST_IMAGE = host_image()
RECIPE_LABEL = "dev.pynet.recipe"
BASE_FILES = ("base.Dockerfile",)
HOST_FILES = (
    "base.Dockerfile",
    "host.Dockerfile",
    "sshd-pynet.conf",
    "ssh-hostkeys.conf",
    "docker-harness.conf",
    "harness-no-metadata.service",
)
RECIPES = {
    **{base_image(suite): BASE_FILES for suite in SUITES},
    **{host_image(suite): HOST_FILES for suite in SUITES},
}
DEBIAN_MIRROR = os.environ.get("PYNET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ROOTFS_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,sudo,iproute2,"
    "ca-certificates,procps,iptables,netcat-openbsd"
)
# Trimmed from the root filesystem: documentation and caches nobody reads in a container.
ROOTFS_TRIM = (
    "var/cache/apt/archives",
    "var/cache/debconf/templates.dat-old",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


def recipe_digest(tag: str) -> str:
    """A digest of what TAG is made from: a changed recipe invalidates the cached image."""
    digest = hashlib.sha256(ROOTFS_PACKAGES.encode() + DEBIAN_MIRROR.encode())
    suite = tag.rsplit(":", 1)[1]
    if suite != "bookworm":  # bookworm's digest predates the choice: its cache stays valid
        digest.update(suite.encode())
    for name in RECIPES[tag]:
        digest.update(name.encode() + (FILES / name).read_bytes())
    return digest.hexdigest()[:12]


def _label(tag: str) -> str:
    proc = docker(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}',
        tag,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _archive(tag: str) -> Path:
    name = tag.replace("/", "_").replace(":", "_")
    return CACHE / f"{name}-{recipe_digest(tag)}.tar.gz"


def save_image(tag: str, path: Path) -> Path:
    """Write `docker save TAG | gzip -1` to PATH (the format `docker load` and the roles take)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with tmp.open("wb") as out:
        save = subprocess.Popen([DOCKER, "save", tag], stdout=subprocess.PIPE)
        gzip = subprocess.run(["gzip", "-1"], stdin=save.stdout, stdout=out, check=False)
        save.wait()
    if save.returncode or gzip.returncode:
        tmp.unlink(missing_ok=True)
        raise EngineError(f"could not save image {tag}")
    tmp.replace(path)
    return path


def load_image(path: Path) -> None:
    with path.open("rb") as archive:
        proc = subprocess.run([DOCKER, "load"], stdin=archive, capture_output=True, check=False)
    if proc.returncode:
        raise EngineError(f"docker load {path} failed: {proc.stderr.decode().strip()}")


def _cached(tag: str, build: Callable[[], None]) -> str:
    """Return TAG, loading it from the cache or building (and caching) it when missing."""
    if _label(tag) == recipe_digest(tag):
        return tag
    archive = _archive(tag)
    if archive.exists():
        try:
            load_image(archive)
            if _label(tag) == recipe_digest(tag):
                return tag
        except EngineError:
            pass
        archive.unlink()  # truncated or stale: rebuild below
    build()
    save_image(tag, archive)
    return tag


def _debootstrap(rootfs: Path, suite: str = DEFAULT_SUITE) -> None:
    if os.geteuid() != 0:
        raise EngineError(
            "building the local Debian base image needs root (debootstrap): run "
            "this once as root, e.g. `sudo make demo`; later runs load it from "
            f"{CACHE}"
        )
    if shutil.which("debootstrap") is None:
        raise EngineError(
            "debootstrap is needed to build the local base image: "
            "`sudo apt-get install debootstrap`"
        )
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={ROOTFS_PACKAGES}",
            suite,
            str(rootfs),
            DEBIAN_MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for rel in ROOTFS_TRIM:
        target = rootfs / rel
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    lists = rootfs / "var/lib/apt/lists"
    shutil.rmtree(lists)
    (lists / "partial").mkdir(parents=True)
    # Empty lists with a fresh mtime make Ansible's cache_valid_time skip `apt-get update`.
    os.utime(lists, (946684800, 946684800))
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {DEBIAN_MIRROR} {suite} main\n"
        f"deb {DEBIAN_MIRROR} {suite}-updates main\n"
        f"deb {DEBIAN_MIRROR.replace('/debian', '/debian-security')} {suite}-security main\n"
    )
    # trixie writes its sources in deb822 form too: one list, the one above.
    (rootfs / "etc/apt/sources.list.d/debian.sources").unlink(missing_ok=True)


def _build_base(suite: str) -> None:
    tag = base_image(suite)
    with tempfile.TemporaryDirectory(prefix="pynet-rootfs-", dir=CACHE) as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        _debootstrap(rootfs, suite)
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(work / "rootfs.tar"), "."], check=True)
        shutil.rmtree(rootfs)
        shutil.copy(FILES / "base.Dockerfile", work / "Dockerfile")
        label = f"{RECIPE_LABEL}={recipe_digest(tag)}"
        docker("build", "-q", "-t", tag, "--label", label, str(work))


def _build_host(suite: str) -> None:
    tag = host_image(suite)
    docker(
        "build",
        "-q",
        "-t",
        tag,
        "--build-arg",
        f"BASE={ensure_base_image(suite)}",
        "--label",
        f"{RECIPE_LABEL}={recipe_digest(tag)}",
        "-f",
        str(FILES / "host.Dockerfile"),
        str(FILES),
    )


def ensure_base_image(suite: str = DEFAULT_SUITE) -> str:
    """Debian SUITE with python3, built without a registry: the chat image's local base."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return _cached(base_image(suite), lambda: _build_base(suite))


def ensure_host_image(suite: str = DEFAULT_SUITE) -> str:
    """Debian SUITE booting systemd with sshd and a sudo user `admin`: the EC2-like host."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return _cached(host_image(suite), lambda: _build_host(suite))


def build_chat_image(version: str, base: str | None = None) -> str:
    """Build the repository's Dockerfile as `pynet-chat:VERSION` on the local base image."""
    tag = f"pynet-chat:{version}"
    docker(
        "build",
        "-q",
        "-t",
        tag,
        "--build-arg",
        f"BASE_IMAGE={base or ensure_base_image()}",
        str(REPO),
    )
    return tag
