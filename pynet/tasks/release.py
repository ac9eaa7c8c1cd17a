"""Release tasks: deploy, rollback, releases, logs, status, top, doctor, unlock.

Thin on purpose: each task picks its hosts (`-H`, else inventory/hosts.yml), calls one function
of `pynet.deploy`, and turns known failures into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from paramiko.ssh_exception import (
    AuthenticationException,
    NoValidConnectionsError,
    SSHException,
)

from pynet.aws.errors import CloudError
from pynet.aws.session import connect
from pynet.deploy import codelayer, logsource, release
from pynet.deploy import commands as cmd
from pynet.deploy import top as top_view
from pynet.deploy.doctor import diagnose, report
from pynet.deploy.hosts import NoHosts, Target, targets
from pynet.deploy.instance_connect import InstanceConnect
from pynet.deploy.lock import read_lock
from pynet.deploy.remote import DeployError, Local, Remote
from pynet.deploy.status import releases as releases_report
from pynet.deploy.status import status as status_report
from pynet.deploy.trust import HostKeyError
from pynet.deploy.version import VersionError, repo_root, source_version
from pynet.tasks.common import env_int, fail, one_line_errors
from pynet.tasks.options import PORT, task

__all__ = ["deploy", "doctor", "logs", "releases", "rollback", "status", "top", "unlock"]

CONNECT_TIMEOUT = 10
#: A release name is a Docker tag and a file name on the host: no slashes, no leading dot or dash.
VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
INVENTORY_HELP = (
    "inventory file to read the hosts from when -H is not given "
    "(default $PYNET_INVENTORY or inventory/hosts.yml)"
)
INSTANCE_CONNECT_HELP = (
    "log in with a key made for this run and pushed to each instance for 60 s (EC2 Instance "
    "Connect; AWS credentials needed) instead of a key file"
)
APP_PORT_HELP = (
    "chat port as reachable from here (0: $PYNET_APP_PORT, else the inventory's, else 5050)"
)
METRICS_PORT_HELP = (
    f"port of the chat server's /metrics on the host's loopback (default {cmd.METRICS_PORT}, "
    "the server's --metrics-port)"
)

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
    if isinstance(exc, (DeployError, CloudError)):
        return str(exc)
    return None


def _each(hosts: list[Target], body: Callable[[Target], object]) -> None:
    """Run BODY for each host; a failure a person can act on ends the task in one line."""
    for target in hosts:
        target.conn.connect_timeout = target.conn.connect_timeout or CONNECT_TIMEOUT
        try:
            body(target)
        except Exit:
            raise
        except Exception as exc:
            reason = _reason(exc, target)
            if reason is None:
                raise
            raise fail(reason, about=target.label) from None


def _every(hosts: list[Target], body: Callable[[Target], bool]) -> bool:
    """Run BODY for every host, whatever happens on one: a failure a person can act on is one
    line on stderr and the next host goes on. True if BODY said True for every host."""
    ok = True
    for target in hosts:
        target.conn.connect_timeout = target.conn.connect_timeout or CONNECT_TIMEOUT
        try:
            ok = body(target) and ok
        except Exit:
            raise
        except Exception as exc:
            reason = _reason(exc, target)
            if reason is None:
                raise
            print(f"{target.label}: {reason}", file=sys.stderr, flush=True)
            ok = False
    return ok


#: Problems with the inputs (no hosts, no git tree) end in one line too, with the error's own words.
_clean = one_line_errors(NoHosts, VersionError, DeployError, about=None)


def _release_name(flag: str, value: str) -> str:
    """A --version or --to value: it becomes a Docker tag and a file name on the host."""
    if value and not VERSION.match(value):
        raise fail(
            f"flag {flag} got {value!r}: expected a release name of letters, digits, '_', '.' "
            "and '-' (at most 128, not starting with '.' or '-')"
        )
    return value


def _docker(dry_run: bool) -> str:
    """PYNET_DOCKER (default docker), found on PATH unless only printing commands."""
    docker = os.environ.get("PYNET_DOCKER") or "docker"
    if not dry_run and shutil.which(docker) is None:
        raise fail(
            f"environment variable PYNET_DOCKER got {docker!r}: expected a docker command "
            "found on PATH (install Docker, or point PYNET_DOCKER at it)"
        )
    return docker


def _source(context: str, dockerfile: str) -> tuple[Path, Path | None]:
    """The build context and Dockerfile, checked before anything is built."""
    source = Path(context).expanduser().resolve() if context else repo_root(Path.cwd())
    if not source.is_dir():
        raise fail(f"flag --context got {context!r}: expected a directory to build")
    if not dockerfile:
        return source, None
    file = Path(dockerfile).expanduser()
    if not file.is_file():
        raise fail(f"flag --dockerfile got {dockerfile!r}: expected a Dockerfile that exists")
    return source, file


def _port(app_port: int) -> int | None:
    """--app-port, else PYNET_APP_PORT (checked), else None (the inventory's port)."""
    return app_port or env_int("PYNET_APP_PORT", PORT)


def _hosts(c: Context, inventory: str, instance_connect: bool = False) -> list[Target]:
    """The hosts from -H or the inventory; a -H port out of range is refused, not wrapped.
    INSTANCE_CONNECT: each connection logs in with a 60-second key pushed right before it
    opens (`InstanceConnect.attach`)."""
    hosts = targets(c, inventory or None)
    for target in hosts:
        if not 1 <= int(target.conn.port) <= 65535:
            raise fail(f"-H got port {target.conn.port} for {target.conn.host}: expected 1-65535")
    if instance_connect:
        pushing = InstanceConnect(connect)
        for target in hosts:
            pushing.attach(target)
    return hosts


def _reach(hosts: list[Target]) -> None:
    """Open every SSH connection now: an unreachable host fails in seconds, not after a build.
    (A host of `_hosts(..., instance_connect=True)` gets its key pushed as its connection opens.)"""
    _each(hosts, lambda target: target.conn.open())


@task(
    bounds={"timeout": (1, None), "keep": (1, None)},
    help={
        "base-image": "base for the chat image (build arg BASE_IMAGE; default $PYNET_BASE_IMAGE, "
        "else the Dockerfile's)",
        "timeout": "seconds to wait for the health check before rolling back",
        "keep": "how many releases (images) to keep on the host, the current one included",
        "dry-run": "print the commands instead of running them",
        "context": "source tree to build (default: the git work tree here)",
        "dockerfile": "Dockerfile to build (default: the context's)",
        "version": "release name (default: git short sha, -dirty-HASH when changed)",
        "inventory": INVENTORY_HELP,
        "instance-connect": INSTANCE_CONNECT_HELP,
    },
)
@_clean
def deploy(
    c: Context,
    base_image: str = "",
    timeout: int = int(release.HEALTH_TIMEOUT),
    keep: int = release.KEEP,
    dry_run: bool = False,
    context: str = "",
    dockerfile: str = "",
    version: str = "",
    inventory: str = "",
    instance_connect: bool = False,
) -> None:
    """Build the chat image here, ship it over SSH, switch to it, roll back if it is unhealthy."""
    phases = release.Phases()  # the breakdown each host's deploy ends with
    _release_name("--version", version)
    docker = _docker(dry_run)
    hosts = _hosts(c, inventory, instance_connect)  # "no hosts" fails before a long build
    source, file = _source(context, dockerfile)
    name = version or source_version(source)
    if not dry_run:
        # So does an unreachable host (and, with --instance-connect, a key AWS refused).
        _reach(hosts)
    local = Local(dry_run)
    remotes = [Remote(t.conn, dry_run) for t in hosts]
    arches: list[str | None] = []  # build for what the hosts run, not for this machine
    _each(hosts, lambda t: arches.append(release.host_arch(remotes[hosts.index(t)])))
    base = base_image or os.environ.get("PYNET_BASE_IMAGE")
    platform = release.build_platform(arches)
    with contextlib.ExitStack() as held:
        # Every host is locked and read while the image builds: no waiting for that later.
        preparing = held.enter_context(release.Preparing(remotes, name))
        built: release.Built | codelayer.Assembled | None = None
        with phases.timing("build"):
            recipe = release.recipe(local, docker, source, file, base, platform)
            built = release.assemble(recipe, name) if recipe else None
            if built is not None:
                held.enter_context(built)
                print(
                    f"[local] {cmd.image(name)}: only the code changed since the last build: "
                    "its layer made here (no docker build, no docker save)",
                    flush=True,
                )
            else:
                release.build(
                    local,
                    docker,
                    name,
                    source,
                    base,
                    str(file) if file else None,
                    platform=platform,
                )
                # Cached only if nothing it is made from changed while Docker read it.
                recipe = release.unchanged(recipe, local, docker, file, base, platform)
        prepared: list[release.Prepared] = []
        _each(hosts, lambda t: prepared.append(preparing.get(hosts.index(t))))
        if built is None and (dry_run or any(not p.snap.state.id_of(name) for p in prepared)):
            with phases.timing("save"):  # once, for every host that lacks the image
                built = held.enter_context(release.Built(local, docker, name, recipe))
        _each(
            hosts,
            lambda t: release.deploy(
                remotes[hosts.index(t)],
                local,
                docker,
                name,
                timeout,
                keep,
                prepared[hosts.index(t)],
                built,
                phases,
            ),
        )


@task(
    help={
        "to": "version to go back to (default: the release before the current one)",
        "timeout": "seconds to wait for the health check",
        "dry-run": "print the commands instead of running them",
        "inventory": INVENTORY_HELP,
        "instance-connect": INSTANCE_CONNECT_HELP,
    },
)
@_clean
def rollback(
    c: Context,
    to: str = "",
    timeout: int = int(release.HEALTH_TIMEOUT),
    dry_run: bool = False,
    inventory: str = "",
    instance_connect: bool = False,
) -> None:
    """Point the service back at a release already on the host (same path as deploy)."""
    _release_name("--to", to)
    _each(
        _hosts(c, inventory, instance_connect),
        lambda t: release.rollback(Remote(t.conn, dry_run), to or None, timeout),
    )


@task(help={"inventory": INVENTORY_HELP, "instance-connect": INSTANCE_CONNECT_HELP})
@_clean
def releases(c: Context, inventory: str = "", instance_connect: bool = False) -> None:
    """The deploy history on the host: version, when, by whom, result; * marks the current one."""
    _each(
        _hosts(c, inventory, instance_connect),
        lambda t: print(f"{t.label}\n{releases_report(Remote(t.conn))}"),
    )


@task(
    bounds={"lines": (0, None)},
    help={
        "follow": "keep printing new lines, of every host at once",
        "lines": "how many lines to show",
        "inventory": INVENTORY_HELP,
        "instance-connect": INSTANCE_CONNECT_HELP,
    },
)
@_clean
def logs(
    c: Context,
    follow: bool = False,
    lines: int = 50,
    inventory: str = "",
    instance_connect: bool = False,
) -> None:
    """The chat service's journal on each host, every line prefixed with its host (and where
    else its logs go, e.g. CloudWatch)."""
    hosts = _hosts(c, inventory, instance_connect)

    # A pty for --follow: Ctrl-C then reaches journalctl as SIGINT (without one Fabric cannot
    # interrupt the remote command and waits for it forever).
    def one(t: Target) -> bool:
        remote = Remote(t.conn)
        note = logsource.elsewhere(remote)  # first: --follow does not return
        if note:
            print(f"{t.label} note: {note}", flush=True)
        out = Prefixed(t.label, sys.stdout)
        try:
            remote.run(
                cmd.journal(lines, follow),
                check=not (follow or note),
                hide=False,
                pty=follow,
                out_stream=out,
            )
        finally:
            out.flush()
        return True

    if not follow:
        if not _every(hosts, one):
            raise Exit(code=1)
        return
    _follow_all(hosts, one)


class Prefixed:
    """A text stream that writes whole lines, each prefixed with its host (hosts followed at
    once interleave line by line, never mid-line)."""

    _lock = threading.Lock()

    def __init__(self, label: str, out: Any) -> None:
        self.label, self.out, self.pending = label, out, ""

    def write(self, text: str) -> int:
        self.pending += text.replace("\r\n", "\n")  # a pty ends lines with CRLF
        *done, self.pending = self.pending.split("\n")
        if done:
            with self._lock:
                self.out.write("".join(f"{self.label} {line}\n" for line in done))
                self.out.flush()
        return len(text)

    def flush(self) -> None:
        if self.pending:
            with self._lock:
                self.out.write(f"{self.label} {self.pending}\n")
                self.out.flush()
            self.pending = ""


class _Stopped(Exception):
    """Ctrl-C or SIGTERM while following: the signal's number, for the exit status."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _follow_all(hosts: list[Target], one: Callable[[Target], bool]) -> None:
    """Follow every host in its own thread until Ctrl-C or SIGTERM (or every journal ends).

    Both signals are caught here even when SIGINT came in ignored (a background job of a
    non-interactive shell, as some CI runners start steps): Ctrl-C is how this ends.
    """
    threads = [
        threading.Thread(target=_every, args=([t], one), name=t.label, daemon=True) for t in hosts
    ]
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # a Ctrl-C while the threads start (one may print first) is a Ctrl-C too
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except _Stopped as stopped:
        # Only this thread got the signal: hang up every SSH session (which ends each remote
        # journalctl), so the threads reading them end too. Every step is bounded: a close or a
        # reader stuck in the SSH library, or a thread the interpreter would wait for at exit,
        # must not keep `fab` alive after Ctrl-C.
        closers = [
            threading.Thread(target=_hang_up, args=(t,), name=f"close {t.label}", daemon=True)
            for t in hosts
        ]
        for thread in closers:
            thread.start()
        deadline = time.monotonic() + 5
        for thread in [*closers, *threads]:
            if thread.is_alive():  # the signal may have come while one was being started
                thread.join(max(0.0, deadline - time.monotonic()))
        sys.stdout.flush()
        os._exit(128 + stopped.signum)  # 130 after Ctrl-C, 143 after SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hang_up(target: Target) -> None:
    with contextlib.suppress(Exception):
        target.conn.close()


@task(
    bounds={"app_port": (0, 65535), "metrics_port": PORT},
    help={
        "app-port": APP_PORT_HELP,
        "metrics-port": METRICS_PORT_HELP,
        "inventory": INVENTORY_HELP,
        "instance-connect": INSTANCE_CONNECT_HELP,
    },
)
@_clean
def status(
    c: Context,
    app_port: int = 0,
    metrics_port: int = cmd.METRICS_PORT,
    inventory: str = "",
    instance_connect: bool = False,
) -> None:
    """Every host, healthy or not: unit state, running version, uptime, restarts, the key
    figures, and whether the port answers from here. Exit 1 if any host is not healthy."""
    port = _port(app_port)

    def one(t: Target) -> bool:
        text, healthy = status_report(Remote(t.conn), t.public_port(port), metrics_port)
        print(f"{t.label}\n{text}", flush=True)
        return healthy

    if not _every(_hosts(c, inventory, instance_connect), one):
        raise Exit(code=1)


@task(
    bounds={"metrics_port": PORT},
    help={
        "once": "print one frame (two scrapes a second apart) and exit, for scripts",
        "metrics-port": METRICS_PORT_HELP,
        "inventory": INVENTORY_HELP,
        "instance-connect": INSTANCE_CONNECT_HELP,
    },
)
@_clean
def top(
    c: Context,
    once: bool = False,
    metrics_port: int = cmd.METRICS_PORT,
    inventory: str = "",
    instance_connect: bool = False,
) -> None:
    """Every host's users, lines/s in and out, deliveries/s, p99 fan-out time, slow readers
    cut and last handover, refreshed every second from /metrics over SSH (Ctrl-C ends it)."""
    hosts = _hosts(c, inventory, instance_connect)
    _reach(hosts)
    watched = [top_view.Watched(t.label, Remote(t.conn)) for t in hosts]
    top_view.watch(watched, metrics_port, once=once)


@task(
    bounds={"app_port": (0, 65535)},
    help={
        "app-port": APP_PORT_HELP,
        "inventory": INVENTORY_HELP,
        "instance-connect": INSTANCE_CONNECT_HELP,
    },
)
@_clean
def doctor(
    c: Context, app_port: int = 0, inventory: str = "", instance_connect: bool = False
) -> None:
    """Check the path from here to the chat port in order; name the first fault and its fix."""
    port = _port(app_port)

    def one(t: Target) -> None:
        print(f"doctor: {t.label}, chat port {t.conn.host}:{t.public_port(port)}")
        findings = []
        for finding in diagnose(Remote(t.conn), t.public_port(port)):
            findings.append(finding)
        print(report(findings))
        if not findings[-1].ok:
            raise Exit(code=1)

    _each(_hosts(c, inventory, instance_connect), one)


@task(
    help={
        "force": "release even a lock whose holder still sends heartbeats",
        "inventory": INVENTORY_HELP,
    }
)
@_clean
def unlock(c: Context, force: bool = False, inventory: str = "") -> None:
    """Release the deploy lock left by an interrupted deploy."""

    def one(t: Target) -> None:
        remote = Remote(t.conn)
        info = read_lock(remote)
        if info is None:
            print(f"{t.label}: no deploy lock")
            return
        if not (force or info.stale()):
            raise fail(
                f"the lock is {info.describe(hint=False)}; it looks alive, "
                "pass --force to release it anyway",
                about=t.label,
            )
        remote.run(cmd.lock_break())
        print(f"{t.label}: released the deploy lock ({info.describe(hint=False)})")

    _each(_hosts(c, inventory), one)
