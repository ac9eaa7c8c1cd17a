"""The end-to-end deploy rig: one EC2-like host provisioned by the playbook, reached over real
SSH, and the source tree `fab deploy` ships to it.

Its own module rather than fakes.py: fakes.py holds the fast tests' stand-ins and imports
nothing that starts containers, while this rig drives Docker, ansible-playbook and SSH for the
e2e modules (test_e2e_deploy.py, test_e2e_engines.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pynet.deploy.probe import ProbeError, chat_hello
from pynet.local.host import Host
from pynet.local.load import LiveLoad
from pynet.local.provision import (
    build_context_copy,
    playbook_argv,
    write_inventory,
    write_ssh_config,
)
from tests.deploy.fakes import REPO
from tests.kit import wait_until

BIN = Path(sys.executable).parent
BROKEN_CMD = 'CMD ["python3", "-c", "raise SystemExit(\'broken on purpose\')"]\n'


@dataclass
class Rig:
    """The provisioned host, the source tree we deploy from, and how to run `fab` at them."""

    host: Host
    key: Path
    src: Path
    ssh_config: Path  # points `fab -H` at the harness's pinned host keys

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYNET_DOCKER": "/usr/bin/docker",
            "PYNET_BASE_IMAGE": "pynet-local/debian:bookworm",
            "PYNET_APP_PORT": str(self.host.app_port),
            # The code-only path's cache of the last full build: this rig's own.
            "PYNET_DEPLOY_CACHE": str(self.src.parent / "deploy-cache"),
        }

    def fab(
        self,
        *args: str,
        key: Path | None = None,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.fab_argv(*args, key=key),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def fab_argv(self, *args: str, key: Path | None = None) -> list[str]:
        target = f"admin@127.0.0.1:{self.host.ssh_port}"
        return [
            str(BIN / "fab"),
            "-S",
            str(self.ssh_config),
            "-H",
            target,
            "-i",
            str(key or self.key),
            *args,
        ]

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.fab("deploy", "--context", str(self.src), *args)

    def hello(self) -> str:
        return chat_hello("127.0.0.1", self.host.app_port)

    def root(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command on the host as root, behind SSH's back (fault injection)."""
        return self.host.exec(*argv, check=check)

    def commit(self, label: str, broken: bool = False) -> str:
        """A new release of the source: HELLO will say `0.1.0+LABEL`. Returns its version."""
        init = self.src / "chat" / "__init__.py"
        init.write_text(
            re.sub(
                r'__version__ = "([^"+]*)[^"]*"', rf'__version__ = "\1+{label}"', init.read_text()
            )
        )
        dockerfile = self.src / "Dockerfile"
        text = dockerfile.read_text().replace(BROKEN_CMD, "")
        dockerfile.write_text(text + BROKEN_CMD if broken else text)
        git(self.src, "commit", "-qam", label)
        return git(self.src, "rev-parse", "--short=7", "HEAD")

    def serving(self) -> str:
        """The unit of the release that runs (exactly one, outside a deploy)."""
        units = self.root(
            "systemctl", "list-units", "--plain", "--no-legend", "--state=active", "pynet-chat@*"
        ).stdout.split("\n")
        names = [line.split()[0] for line in units if line.strip()]
        assert len(names) == 1, names
        return names[0]

    def kill_serving(self) -> None:
        """A crash: SIGKILL to the serving release's container."""
        container = self.serving().removesuffix(".service").replace("pynet-chat@", "pynet-chat-")
        self.root("docker", "kill", container)

    def load(self, **kwargs: Any) -> LiveLoad:
        return LiveLoad("127.0.0.1", self.host.app_port, **kwargs).start()

    def wait_serving(self, label: str, timeout: float = 30) -> str:
        def serving() -> str | None:
            try:
                hello = self.hello()
            except ProbeError:
                return None
            return hello if hello.endswith(f"+{label}") else None

        return wait_until(serving, timeout, f"0.1.0+{label} serving", interval=0.3)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=e2e@pynet.test", "-c", "user.name=e2e", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def provision(host: Host, archive: Path, tmp: Path) -> None:
    """The real roles, the way a user provisions: ansible-playbook with an inventory file."""
    inventory = write_inventory(tmp / "hosts.yml", host)
    proc = subprocess.run(
        playbook_argv(inventory, f"chat_image_archive={archive}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


R = TypeVar("R", bound=Rig)


@contextmanager
def provisioned_rig(
    kind: type[R],
    label: str,
    ssh_keypair: tuple[Path, Path],
    archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[R]:
    """A KIND of rig on a fresh host `pynet-LABEL-e2e-PID`, provisioned with ARCHIVE as its
    seed release, with a git copy of the source in a `LABEL-e2e` temp folder; the host is
    stopped on the way out (what the e2e modules' module-scoped rig fixtures yield)."""
    from pynet.local.host import start_host, stop_host

    tmp = tmp_path_factory.mktemp(f"{label}-e2e")
    name = f"pynet-{label}-e2e-{os.getpid()}"
    host = start_host(name, ssh_keypair[1])
    try:
        provision(host, archive, tmp)
        yield kind(
            host,
            ssh_keypair[0],
            build_context_copy(tmp / "src", commit=True),
            write_ssh_config(tmp / "ssh_config", host),
        )
    finally:
        stop_host(name)
