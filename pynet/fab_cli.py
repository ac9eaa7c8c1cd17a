"""`fab`: Fabric's own program (fabric.main), with its own flags checked like PyNet's task options.

Fabric and Invoke parse their core flags before any PyNet code runs, and cast them bare:
`fab -t abc` ended in int()'s traceback, and `fab -H user@HOST:abc` in one from
fabric.connection.derive_shorthand once the task's connection was made. Here the number flags
(-t, -T, -D) and -H parse through checked arguments instead, so a bad value raises ParseError while
argv is parsed -- wherever the flag stands, before or after the task -- and Invoke's Program.run
prints it as one line and exits 1, before any task runs or any host is contacted. Nothing else
changes. pyproject.toml installs `program.run` as the `fab` script, in place of Fabric's.
"""

from __future__ import annotations

from typing import Any

from fabric import Config, Executor
from fabric import __version__ as fabric_version
from fabric.main import Fab as FabricFab
from invoke.exceptions import ParseError
from invoke.parser import Argument

from pynet.tasks.options import PORT, CheckedArgument, check_int

HOST_FORM = f"[user@]host[:port] with a port from {PORT[0]} to {PORT[1]}"


def spellings(arg: Argument) -> str:
    """Every way to write ARG on the command line, short first: -t/--connect-timeout."""
    return "/".join(f"-{n}" if len(n) == 1 else f"--{n}" for n in sorted(arg.names, key=len))


class CoreNumber(CheckedArgument):
    """-t/--connect-timeout, -T/--command-timeout, -D/--list-depth: 0 (none, as before) or more."""

    bounds = (0, None)

    def flag(self) -> str:
        return spellings(self)


def bad_host(item: str) -> bool:
    """Whether ITEM has no host, or a port that is not a whole number from 1 to 65535 (Fabric
    raises on 'abc', paramiko wraps 70000 around, and ':0' or a bare ':' quietly mean port 22).

    Split as fabric.connection.derive_shorthand splits it: user@ off the left, then :port off the
    right unless the rest has more than one ':' (an IPv6 address, which Fabric leaves whole).
    """
    hostport = item.rsplit("@", 1)[-1]
    if hostport.count(":") > 1:
        return False
    host, colon, port = hostport.partition(":")
    if not host:
        return True
    if not colon:
        return False
    try:
        check_int("port", port, PORT)
    except ValueError:
        return True
    return False


class Hosts(Argument):
    """-H/--hosts: every comma-separated [user@]host[:port], checked when it is parsed."""

    def set_value(self, value: Any, cast: bool = True) -> None:
        if isinstance(value, str):
            items = value.split(",")
            for item in items:
                if bad_host(item):
                    where = repr(item) if len(items) == 1 else f"{item!r} in {value!r}"
                    raise ParseError(
                        f"error: flag {spellings(self)} got {where}: expected {HOST_FORM}"
                    )
        super().set_value(value, cast)


def checked(arg: Argument) -> Argument:
    """ARG as a checked argument when it is -H or a number; otherwise ARG itself."""
    if "hosts" in arg.names:
        kind: type[Argument] = Hosts
    elif arg.kind is int:
        kind = CoreNumber
    else:
        return arg
    return kind(
        names=arg.names,
        kind=arg.kind,
        default=arg.default,
        help=arg.help,
        positional=arg.positional,
        optional=arg.optional,
        incrementable=arg.incrementable,
        attr_name=arg.attr_name,
    )


class Fab(FabricFab):
    """Fabric's `fab`, whose core flags are checked while they are parsed (see the module doc)."""

    def core_args(self) -> list[Argument]:
        return [checked(arg) for arg in super().core_args()]


def make_program() -> Fab:
    """Built as fabric.main.make_program builds Fabric's `program`."""
    return Fab(name="Fabric", version=fabric_version, executor_class=Executor, config_class=Config)


program = make_program()
