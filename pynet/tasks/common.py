"""What the tasks share: the one way a failure becomes an exit, printing, confirmation, the
inventory guard and host key pinning after a launch.

A failure the operator can act on ends a task with one line on stderr and status 1 (130 when
interrupted), never a traceback: every task turns its expected errors into that exit through
`one_line_errors` (a context manager and a decorator), and checks build it with `fail`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit

from pynet.aws import ec2
from pynet.aws.errors import CloudError
from pynet.aws.userdata import HOST_KEY_TAG
from pynet.hostkeys import fingerprint, known_hosts_beside, pin, pinned_key
from pynet.tasks.options import CheckedTask, Range, check_int, task

#: What a destroy task does: (name, region, yes, wait timeout, inventory, ask).
DestroyBody = Callable[[str, str | None, bool, int, str | None, Callable[[str], str]], None]

REGION_HELP = "AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your profile's)"
INVENTORY_HELP = "inventory file to update (default $PYNET_INVENTORY or inventory/hosts.yml)"
INTERRUPTED = "interrupted: run the same command again; it picks up where it stopped"


def fail(message: str, about: str | None = "error") -> Exit:
    """The exit of a task that cannot go on: `ABOUT: MESSAGE` (MESSAGE alone when ABOUT is None,
    for errors that already say what they are about) on stderr, status 1."""
    return Exit(f"{about}: {message}" if about else message, code=1)


@contextmanager
def one_line_errors(
    *expected: type[Exception], about: str | None = "error", interrupted: str | None = None
) -> Iterator[None]:
    """EXPECTED errors (CloudError when none is named) end the task through `fail`.

    With INTERRUPTED, Ctrl-C ends it with that line and status 130 instead of a traceback.
    Works as a decorator too (`@one_line_errors(NoHosts)`).
    """
    caught = expected or (CloudError,)
    try:
        yield
    except caught as err:
        raise fail(str(err), about) from None
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        raise Exit(interrupted, code=130) from None


@contextmanager
def inventory_errors() -> Iterator[None]:
    """A broken or unwritable inventory file is the operator's to fix: say which."""
    try:
        yield
    except (ValueError, OSError) as err:
        raise CloudError(f"cannot update the inventory: {err}") from err


def say(message: str) -> None:
    """Progress for the operator, printed at once."""
    print(message, flush=True)


def display(path: Path | None) -> str:
    """A key file as the operator would type it (~/...)."""
    if path is None:
        return "(your ssh agent or default key)"
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def confirm(name: str, region: str, what: str, ask: Callable[[str], str]) -> None:
    """Ask on a terminal before deleting WHAT; without one, refuse rather than guess."""
    if not sys.stdin or not sys.stdin.isatty():
        raise CloudError(
            f"refusing to destroy {name!r} without confirmation (stdin is not a terminal): "
            "pass --yes"
        )
    print(f"about to delete in {region}: {what}")
    try:
        answer = ask(f"type the deployment name ({name}) to confirm: ")
    except EOFError:
        answer = ""
    if answer.strip() != name:
        raise CloudError("not confirmed; nothing was deleted")


def pin_host_key(host: ec2.Ec2Host, inventory_file: Path) -> Path | None:
    """Pin the host key launch made (read back from the instance tag) beside the inventory."""
    if not host.host_key or not host.public_ip:
        print(
            f"warning: {host.instance_id} carries no pinned host key (launched without pynet's "
            f"host key hand-over); every connection is refused until you check and pin it: "
            f"fab -H {host.ssh_user}@{host.public_ip} accept-host-key",
            flush=True,
        )
        return None
    path = known_hosts_beside(inventory_file)
    with inventory_errors():
        before = pinned_key(path, host.name)
        if before and before.split() != host.host_key.split()[:2]:
            _say_replaced(host, before, path)  # never silently: the instance tag has another key
        pin(path, host.name, host.public_ip, 22, host.host_key)
    return path


def _say_replaced(host: ec2.Ec2Host, before: str, path: Path) -> None:
    """Tell the operator that a relaunch pins another key than the one pinned before."""
    try:
        old = fingerprint(before)
    except ValueError:  # a hand-edited line
        old = repr(before)
    print(
        f"warning: {host.name}'s host key changed: {path} pinned {old}, {host.instance_id} "
        f"carries {fingerprint(host.host_key)} (its {HOST_KEY_TAG} tag, set at launch); pinning "
        "that one. Expected only if the instance was replaced: check it if you did not do that",
        flush=True,
    )


def destroy_task(task_name: str, launched_by: str, doc: str, body: DestroyBody) -> CheckedTask:
    """A destroy task (`fab destroy`, `fab destroy-cluster`): the same options, written once.

    BODY gets (name, region, yes, wait timeout, inventory, ask) and does the work.
    """

    def destroy(
        c: Context,
        name: str = "",
        region: str | None = None,
        yes: bool = False,
        wait_timeout: int = 600,
        inventory: str | None = None,
    ) -> None:
        with one_line_errors(interrupted=INTERRUPTED):
            body(name, region, yes, wait_timeout, inventory, input)

    destroy.__name__ = destroy.__qualname__ = task_name
    destroy.__doc__ = doc
    return task(
        positional=[],
        help={
            "name": f"name given to `fab {launched_by}` (required, no default)",
            "region": REGION_HELP,
            "yes": "do not ask for confirmation",
            "wait-timeout": "seconds to wait for each instance to terminate",
            "inventory": INVENTORY_HELP,
        },
    )(destroy)


def env_int(name: str, bounds: Range) -> int | None:
    """A whole-number `PYNET_*` variable, None when unset; the task's exit when it is bad."""
    raw = os.environ.get(name, "")
    if raw == "":
        return None
    try:
        return check_int(f"environment variable {name}", raw, bounds)
    except ValueError as err:
        raise fail(str(err)) from None
