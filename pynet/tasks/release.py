"""Release tasks: deploy, rollback, releases, logs, status, doctor, unlock.

Thin on purpose: each task picks its hosts (`-H`, else inventory/hosts.yml), calls one function
of `pynet.deploy`, and turns known failures into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from fabric import task
from invoke.context import Context
from invoke.exceptions import Exit
from paramiko.ssh_exception import (
    AuthenticationException,
    NoValidConnectionsError,
    SSHException,
)

from pynet.deploy import commands as cmd
from pynet.deploy import release
from pynet.deploy.doctor import diagnose, report
from pynet.deploy.hosts import NoHosts, Target, targets
from pynet.deploy.lock import STALE_AFTER, read_lock
from pynet.deploy.remote import DeployError, Local, Remote
from pynet.deploy.status import releases as releases_report
from pynet.deploy.status import status as status_report
from pynet.deploy.trust import HostKeyError
from pynet.deploy.version import VersionError, repo_root, source_version

__all__ = ["deploy", "doctor", "logs", "releases", "rollback", "status", "unlock"]

DOCKER = os.environ.get("PYNET_DOCKER", "docker")
CONNECT_TIMEOUT = 10

# paramiko logs a failed handshake with a traceback from its own thread; we report it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _reason(exc: BaseException, target: Target) -> str | None:
    """One line for the failures a person can act on; None for real bugs (keep the traceback)."""
    conn = target.conn
    if isinstance(exc, HostKeyError):  # already says what to check and how to pin
        return str(exc)
    if isinstance(exc, AuthenticationException):
        return (
            f"SSH authentication failed for user {conn.user!r}: check the key (-i or "
            "ansible_ssh_private_key_file) and the user (`admin` on Debian)"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {conn.host!r}"
    if isinstance(
        exc, (SSHException, NoValidConnectionsError, ConnectionError, TimeoutError, EOFError)
    ):
        text = str(exc) or type(exc).__name__
        return f"cannot reach the host over SSH ({text}); `fab doctor` says why"
    if isinstance(exc, DeployError):
        return str(exc)
    return None


def _each(c: Context | list[Target], body: Callable[[Target], object]) -> None:
    """Run BODY for each host; a failure a person can act on ends the task in one line."""
    for target in c if isinstance(c, list) else targets(c):
        target.conn.connect_timeout = target.conn.connect_timeout or CONNECT_TIMEOUT
        try:
            body(target)
        except Exit:
            raise
        except Exception as exc:
            reason = _reason(exc, target)
            if reason is None:
                raise
            raise Exit(f"{target.label}: {reason}", code=1) from None


def _clean(fn: Callable[..., None]) -> Callable[..., None]:
    """Problems with the inputs (no hosts, no git tree) end in one line too."""

    @wraps(fn)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> None:
        try:
            fn(c, *args, **kwargs)
        except (NoHosts, VersionError, DeployError) as exc:
            raise Exit(str(exc), code=1) from None

    return wrapper


@task(
    help={
        "base-image": "base for the chat image (build arg BASE_IMAGE; env PYNET_BASE_IMAGE)",
        "timeout": "seconds to wait for the health check before rolling back",
        "keep": "how many releases (images) to keep on the host",
        "dry-run": "print the commands instead of running them",
        "context": "source tree to build (default: the git work tree here)",
        "dockerfile": "Dockerfile to build (default: the context's)",
        "version": "release name (default: git short sha, -dirty-HASH when changed)",
    }
)
@_clean
def deploy(
    c: Context,
    base_image: str = "",
    timeout: float = release.HEALTH_TIMEOUT,
    keep: int = release.KEEP,
    dry_run: bool = False,
    context: str = "",
    dockerfile: str = "",
    version: str = "",
) -> None:
    """Build the chat image here, ship it over SSH, switch to it, roll back if it is unhealthy."""
    hosts = targets(c)  # "no hosts" fails before a long build, not after
    source = Path(context).resolve() if context else repo_root(Path.cwd())
    name = version or source_version(source)
    local = Local(dry_run)
    release.build(
        local,
        DOCKER,
        name,
        source,
        base_image or os.environ.get("PYNET_BASE_IMAGE"),
        dockerfile or None,
    )
    _each(
        hosts, lambda t: release.deploy(Remote(t.conn, dry_run), local, DOCKER, name, timeout, keep)
    )


@task(
    help={
        "to": "version to go back to (default: the release before the current one)",
        "timeout": "seconds to wait for the health check",
        "dry-run": "print the commands instead of running them",
    }
)
@_clean
def rollback(
    c: Context, to: str = "", timeout: float = release.HEALTH_TIMEOUT, dry_run: bool = False
) -> None:
    """Point the service back at a release already on the host (same path as deploy)."""
    _each(c, lambda t: release.rollback(Remote(t.conn, dry_run), to or None, timeout))


@task
@_clean
def releases(c: Context) -> None:
    """The deploy history on the host: version, when, by whom, result; * marks the current one."""
    _each(c, lambda t: print(f"{t.label}\n{releases_report(Remote(t.conn))}"))


@task(help={"follow": "keep printing new lines", "lines": "how many lines to show"})
@_clean
def logs(c: Context, follow: bool = False, lines: int = 50) -> None:
    """The chat service's journal on the host."""
    # A pty for --follow: Ctrl-C then reaches journalctl as SIGINT (without one Fabric cannot
    # interrupt the remote command and waits for it forever).
    _each(
        c,
        lambda t: Remote(t.conn).run(
            cmd.journal(lines, follow), hide=False, pty=follow, check=not follow
        ),
    )


@task(help={"app-port": "chat port as reachable from here (env PYNET_APP_PORT, default 5050)"})
@_clean
def status(c: Context, app_port: int = 0) -> None:
    """Unit state, running version, uptime, restarts, and whether the port answers from here."""

    def one(t: Target) -> None:
        text, healthy = status_report(Remote(t.conn), t.public_port(app_port))
        print(f"{t.label}\n{text}")
        if not healthy:
            raise Exit(code=1)

    _each(c, one)


@task(help={"app-port": "chat port as reachable from here (env PYNET_APP_PORT, default 5050)"})
@_clean
def doctor(c: Context, app_port: int = 0) -> None:
    """Check the path from here to the chat port in order; name the first fault and its fix."""

    def one(t: Target) -> None:
        print(f"doctor: {t.label}, chat port {t.conn.host}:{t.public_port(app_port)}")
        findings = []
        for finding in diagnose(Remote(t.conn), t.public_port(app_port)):
            findings.append(finding)
        print(report(findings))
        if not findings[-1].ok:
            raise Exit(code=1)

    _each(c, one)


@task(help={"force": "release even a lock whose holder still sends heartbeats"})
@_clean
def unlock(c: Context, force: bool = False) -> None:
    """Release the deploy lock left by an interrupted deploy."""

    def one(t: Target) -> None:
        remote = Remote(t.conn)
        info = read_lock(remote)
        if info is None:
            print(f"{t.label}: no deploy lock")
            return
        if not (force or info.stale(STALE_AFTER)):
            raise Exit(
                f"{t.label}: the lock is {info.describe(hint=False)}; it looks alive, "
                "pass --force to release it anyway",
                code=1,
            )
        remote.run(cmd.lock_break())
        print(f"{t.label}: released the deploy lock ({info.describe(hint=False)})")

    _each(c, one)
