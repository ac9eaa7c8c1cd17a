"""Running Ansible and Molecule from tests, rendering the chat role's templates as the role does,
and talking to the chat like a client."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from ansible.plugins.filter.core import FilterModule

from tests.kit import wait_until

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
CHAT = ROLES / "chat"
BASE_CONFIG = REPO / ".config" / "molecule" / "config.yml"
BIN = Path(sys.executable).parent  # the venv's ansible-playbook, molecule, linters


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Ran:
    """A finished command: exit status, stdout and stderr merged, and how long it took."""

    returncode: int
    stdout: str
    duration: float


def run(argv: list[str], cwd: Path = REPO, timeout: float = 900, **env: str) -> Ran:
    """Run a command with the project's Ansible settings; stdout and stderr merged."""
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=ansible_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Ran(proc.returncode, proc.stdout, time.monotonic() - started)


RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in RECAP.finditer(output)
    }


class ChatClient:
    """A line-based client of the chat protocol (docs/protocol.md)."""

    def __init__(self, port: int, timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.lines = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        self.hello = self.readline()

    def send(self, line: str) -> None:
        self.lines.write(line + "\n")
        self.lines.flush()

    def readline(self) -> str:
        line = self.lines.readline()
        if not line:
            raise ConnectionError("connection closed")
        return line.rstrip("\n")

    def read_until(self, prefix: str) -> str:
        while not (line := self.readline()).startswith(prefix):
            pass
        return line

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ping(port: int) -> bool:
    try:
        with ChatClient(port, timeout=1.0) as client:
            client.send("/ping")
            return client.read_until("PONG") == "PONG"
    except (OSError, ConnectionError):
        return False


def wait_for_pong(port: int, timeout: float = 30.0, interval: float = 0.05) -> float:
    """Seconds until the chat on PORT answered /ping; WaitTimeout after TIMEOUT."""
    started = time.monotonic()
    wait_until(
        lambda: ping(port), timeout, f"chat on 127.0.0.1:{port} answering /ping", interval=interval
    )
    return time.monotonic() - started


# --- Molecule ---


def molecule_images(host_images: dict[str, str]) -> dict[str, str]:
    """The variables .config/molecule/config.yml reads the platforms' images from."""
    return {f"PYNET_HOST_IMAGE_{suite.upper()}": image for suite, image in host_images.items()}


def molecule_test(role: str, host_images: dict[str, str], **env: str) -> None:
    """`molecule test` of ROLE's default scenario, with the shared base config named explicitly."""
    argv = [tool("molecule"), "--base-config", str(BASE_CONFIG), "test"]
    proc = run(argv, cwd=ROLES / role, timeout=1500, **molecule_images(host_images), **env)
    print(f"molecule test ({role}, {', '.join(host_images)}): {proc.duration:.0f} s")
    assert proc.returncode == 0, proc.stdout[-8000:]
    for suite in host_images:  # both platforms went through converge and verify
        assert f"pynet-molecule-{suite}" in proc.stdout, proc.stdout[-8000:]


# --- the chat role's templates, rendered as the role does ---


def role_vars(**extra: Any) -> dict[str, Any]:
    """defaults/ then vars/ (vars win, as in Ansible), then EXTRA (as `-e` would give them),
    with templated values resolved."""
    values: dict[str, Any] = {"ansible_managed": "Ansible managed"}
    for part in ("defaults", "vars"):
        values.update(yaml.safe_load((CHAT / part / "main.yml").read_text()) or {})
    values.update(extra)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701

    def templated(value: Any) -> bool:
        return isinstance(value, str) and "{" in value

    # Lazily, as Ansible does: a value is rendered once every value it names is (a value read
    # while still a template would render as its text, or as 0 through `| int`).
    while pending := [k for k, v in values.items() if templated(v)]:
        ready = [
            k
            for k in pending
            if not any(
                templated(values.get(name))
                for name in jinja2.meta.find_undeclared_variables(env.parse(values[k]))
            )
        ]
        assert ready, f"role variables that name each other in a cycle: {pending}"
        values.update({k: env.from_string(values[k]).render(values) for k in ready})
    return values


def render(template: str, values: dict[str, Any]) -> str:
    env = jinja2.Environment(  # noqa: S701 (systemd units, not HTML)
        loader=jinja2.FileSystemLoader(CHAT / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(FilterModule().filters())
    return env.get_template(template).render(values)
