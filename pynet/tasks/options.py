"""Task options and `PYNET_*` settings, checked where they come in: one line, never a traceback.

Invoke casts a number flag with `int(...)` while it parses the command line, before any task
runs, so `--lines abc` used to end in a traceback. `task()` here makes number flags parse through
`CheckedArgument`, which names the flag, the value and what was expected, and says the default
in `fab --help TASK`. Automatic short flags are off for every task: they made `fab -H HOST
rollback -i KEY` read the key file as the timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fabric.tasks import Task
from fabric.tasks import task as fabric_task
from invoke.exceptions import ParseError
from invoke.parser import Argument

#: The lowest and highest value (None: no limit) a number option takes; the default is >= 1.
Range = tuple[int, int | None]
POSITIVE: Range = (1, None)
PORT: Range = (1, 65535)

#: Every `PYNET_*` variable the tasks read, with what it means (the README table must match).
ENVIRONMENT: dict[str, str] = {
    "PYNET_INVENTORY": "inventory file of every task (default inventory/hosts.yml); "
    "--inventory wins",
    "PYNET_APP_PORT": "chat port as reachable from here, for status and doctor; --app-port wins",
    "PYNET_DOCKER": "the docker command deploy builds and saves images with (default docker)",
    "PYNET_BASE_IMAGE": "base image for the chat image (build arg BASE_IMAGE); --base-image wins",
    "PYNET_DEPLOY_CACHE": "where deploy keeps the last full build of each build context, for "
    "code-only changes (default ~/.cache/pynet/deploy; off: always docker build)",
    "PYNET_LOCK_STALE_AFTER": "seconds without a heartbeat before a deploy lock counts as "
    "abandoned (default 120)",
    "PYNET_CHECKIP_URL": "where launch asks for your public IP (default "
    "https://checkip.amazonaws.com)",
}


def expectation(bounds: Range) -> str:
    low, high = bounds
    if high is None:
        return f"a whole number >= {low}"
    return f"a whole number from {low} to {high}"


def check_int(where: str, raw: str, bounds: Range) -> int:
    """RAW as a whole number within BOUNDS, or ValueError naming WHERE it came from."""
    low, high = bounds
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise ValueError(f"{where} got {raw!r}: expected {expectation(bounds)}")
    return value


class CheckedArgument(Argument):
    """A task's number flag: checked while parsing, so a bad value is one line and status 1."""

    bounds: Range = POSITIVE

    def flag(self) -> str:
        """How the error names the flag (`fab`'s own flags say every spelling: -t/--connect-...)."""
        return f"--{self.names[0]}"

    def set_value(self, value: Any, cast: bool = True) -> None:
        if cast and self.kind is int and isinstance(value, str):
            try:
                value = check_int(f"flag {self.flag()}", value, self.bounds)
            except ValueError as err:
                raise ParseError(f"error: {err}") from None
            cast = False
        super().set_value(value, cast)


class CheckedTask(Task):
    """A Fabric task whose number flags are range-checked and whose help shows every default."""

    def __init__(
        self, *args: Any, bounds: Mapping[str, Range] | None = None, **kwargs: Any
    ) -> None:
        self.bounds = dict(bounds or {})
        super().__init__(*args, **kwargs)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        # Invoke pops each help text as it reads it: a second reader (the tests, a `--help`
        # after a completion) would get none. Each call reads its own copy.
        kept: dict[str, str] = dict(getattr(self, "help", {}))
        try:
            return [self._checked(arg) for arg in super().get_arguments(ignore_unknown_help)]
        finally:
            self.help = kept

    def _checked(self, arg: Argument) -> Argument:
        bounds = self.bounds.get(arg.attr_name or arg.names[0], POSITIVE)
        new = CheckedArgument(
            names=arg.names,
            kind=arg.kind,
            default=arg.default,
            help=_with_default(arg, bounds),
            positional=arg.positional,
            optional=arg.optional,
            incrementable=arg.incrementable,
            attr_name=arg.attr_name,
        )
        new.bounds = bounds
        return new


def _with_default(arg: Argument, bounds: Range) -> str:
    """The help text with the type's range and the default, unless the text already says it."""
    text = arg.help or ""
    if arg.kind is bool:
        return text if "default" in text else f"{text} (default: {'on' if arg.default else 'off'})"
    if arg.kind is int:
        low, high = bounds
        span = f"{low}-{high}" if high is not None else f">= {low}"
        shown = "" if "default" in text else f"; default {arg.default}"
        return f"{text} ({span}{shown})"
    return text


def task(**options: Any) -> Callable[[Callable[..., Any]], CheckedTask]:
    """`@task(...)` for our tasks: checked number flags, no automatic short flags."""
    options.setdefault("auto_shortflags", False)
    return fabric_task(klass=CheckedTask, **options)
