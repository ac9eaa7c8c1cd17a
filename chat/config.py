"""Server settings: one table of options, each settable by flag or `PYNET_*` variable.

The table is the single source for the flags, the environment variables, the defaults and the
`--help` text, so they cannot drift apart. Precedence: flag, then environment, then default.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from chat import PORT, __version__

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server can be told. Defaults are safe for a small public server."""

    host: str = "0.0.0.0"  # noqa: S104 - a server in a container listens on all interfaces
    port: int = PORT
    history: str | None = None
    history_size: int = 1000
    backplane: str | None = None
    max_line: int = 4096
    nick_timeout: float = 30.0
    line_timeout: float = 60.0
    idle_timeout: float = 0.0
    max_per_address: int = 64
    keepalive_idle: int = 30
    keepalive_interval: int = 10
    keepalive_count: int = 3
    rate: float = 50.0
    rate_burst: int = 100
    address_rate: float = 100.0
    address_burst: int = 200
    max_clients: int = 20000
    max_backlog: int = 1 * MIB
    max_buffered: int = 256 * MIB
    flush_delay: float = 0.005
    stop_timeout: float = 5.0
    handover_socket: str | None = None
    handover_timeout: float = 10.0
    release: str = __version__
    log_level: str = "INFO"
    log_messages: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9050
    metrics_cloudwatch: str | None = None


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return value


def _positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _port(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0..65535")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:  # also refuses nan
        raise ValueError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _keepalive_idle(text: str) -> int:
    """Whole seconds (the kernel's unit, at most 32767); 0 turns keepalive off."""
    value = _whole(text)
    if not 0 <= value <= 32767:
        raise ValueError("must be 0..32767 whole seconds")
    return value


def _keepalive_interval(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 32767:
        raise ValueError("must be 1..32767 whole seconds")
    return value


def _keepalive_count(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 127:  # the kernel's limit for TCP_KEEPCNT
        raise ValueError("must be 1..127")
    return value


def _line_limit(text: str) -> int:
    value = _whole(text)
    if value < 64:
        raise ValueError("must be >= 64")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _release(text: str) -> str:
    if not 0 < len(text) <= 128 or not text.isprintable() or " " in text:
        raise ValueError("must be 1 to 128 printable characters without spaces")
    return text


def _backplane(text: str) -> str | None:
    """A Redis URL (chat/backplane.py checks its form); empty = single host."""
    if not text:
        return None
    from chat.backplane import validate_url

    return validate_url(text)


def mask_password(url: str) -> str:
    """URL with everything that may be a password replaced by `***`, even when the URL is
    malformed (the error that rejects it must not print it): the user info after its first
    `:`, or all of it when it has no `:` (`redis://SECRET@host` is a password-only form)."""
    head, at, rest = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.rpartition("://")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user + colon if colon else ''}***@{rest}"


def _path(text: str) -> str | None:
    return text or None


_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def _deployment(text: str) -> str | None:
    """A CloudWatch dimension value: the deployment's name (what `fab launch --name` got)."""
    if not text:
        return None
    if not _DEPLOYMENT.fullmatch(text):
        raise ValueError("must be a deployment name: letters, digits, '_', '.', '-' (max 255)")
    return text


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _listen_host(text: str) -> str:
    """An IP address, or a name this machine resolves (checked now: at bind time the error
    would not say which setting was wrong)."""
    if not text:
        return text  # all interfaces, as asyncio reads an empty host
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOST_NAME.fullmatch(text):
            raise ValueError("must be an IP address or a host name") from None
        try:
            socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise ValueError("must be an IP address or a host name that resolves here") from None
    return text


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _history(text: str) -> str | None:
    """A SQLite file we can open, or one we can create: checked before the server starts."""
    if not text:
        return None
    path = Path(text)
    if path.is_dir():
        raise ValueError("is a directory, must be a SQLite database file")
    if path.exists():
        try:
            with path.open("rb") as file:
                head = file.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise ValueError(f"cannot be read ({exc.strerror})") from None
        if head and head != _SQLITE_MAGIC:
            raise ValueError("is not a SQLite database (give a new file name or an existing one)")
    elif not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its field in `Settings`, its variable, how to parse it, what it does."""

    field: str
    env: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""
    secret: bool = False  # may hold a password: an error shows the value with it masked

    def shown(self, text: str) -> str:
        """TEXT as an error line may echo it."""
        return mask_password(text) if self.secret else text

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("host", "PYNET_HOST", _listen_host, "address to listen on", "ADDR"),
    Option("port", "PYNET_PORT", _port, "TCP port; 0 picks a free one (see the start log)", "N"),
    Option(
        "history",
        "PYNET_HISTORY",
        _history,
        "SQLite file keeping broadcast history across restarts "
        "(e.g. /var/lib/pynet/history.sqlite3); empty = memory only",
        "PATH",
    ),
    Option(
        "history_size",
        "PYNET_HISTORY_SIZE",
        _non_negative_int,
        "broadcasts retained for /since replay",
        "N",
    ),
    Option(
        "backplane",
        "PYNET_BACKPLANE",
        _backplane,
        "Redis shared by a cluster of chat servers, redis://[:PASSWORD@]HOST:PORT/DB or "
        "rediss:// (TLS); empty = this server alone (needs the redis package: pynet[cluster])",
        "URL",
        secret=True,
    ),
    Option(
        "max_line",
        "PYNET_MAX_LINE",
        _line_limit,
        "maximum line length in bytes, newline included",
        "BYTES",
    ),
    Option(
        "nick_timeout",
        "PYNET_NICK_TIMEOUT",
        _positive_float,
        "close connections that have not sent /nick within this many seconds",
        "SEC",
    ),
    Option(
        "line_timeout",
        "PYNET_LINE_TIMEOUT",
        _non_negative_float,
        "close connections that hold a started line (no newline yet) this many seconds "
        "(BYE line-timeout); clients send whole lines, so only a stalled or hostile peer "
        "waits this long; 0 = never",
        "SEC",
    ),
    Option(
        "idle_timeout",
        "PYNET_IDLE_TIMEOUT",
        _non_negative_float,
        "close named connections that send nothing for this many seconds (BYE idle-timeout); "
        "0 = never: a reader who never talks is legitimate, and dead peers are found by "
        "TCP keepalive",
        "SEC",
    ),
    Option(
        "max_per_address",
        "PYNET_MAX_PER_ADDRESS",
        _non_negative_int,
        "connections one client address may hold (IPv6: one /64); more get ERR server-full; "
        "0 = no limit (behind a proxy that hides client addresses)",
        "N",
    ),
    Option(
        "keepalive_idle",
        "PYNET_KEEPALIVE_IDLE",
        _keepalive_idle,
        "seconds a connection may be silent before TCP keepalive probes it (keep it under the "
        "idle timeout of NATs and load balancers: 350 s on an AWS NLB); 0 = no keepalive",
        "SEC",
    ),
    Option(
        "keepalive_interval",
        "PYNET_KEEPALIVE_INTERVAL",
        _keepalive_interval,
        "seconds between unanswered keepalive probes",
        "SEC",
    ),
    Option(
        "keepalive_count",
        "PYNET_KEEPALIVE_COUNT",
        _keepalive_count,
        "unanswered probes before a peer is dead: its session ends and its nickname is free "
        "after idle + interval x count seconds, which also bounds unacknowledged data "
        "(TCP_USER_TIMEOUT)",
        "N",
    ),
    Option(
        "rate",
        "PYNET_RATE",
        _non_negative_float,
        "lines per second allowed per client (token bucket); 0 = unlimited",
        "N",
    ),
    Option(
        "rate_burst",
        "PYNET_RATE_BURST",
        _positive_int,
        "lines a client may send at once before the rate applies",
        "N",
    ),
    Option(
        "address_rate",
        "PYNET_ADDRESS_RATE",
        _non_negative_float,
        "lines per second allowed per address (IPv6: per /64), shared by all its connections, "
        "so that more connections do not buy more lines; 0 = unlimited (also off when --rate "
        "or --max-per-address is 0)",
        "N",
    ),
    Option(
        "address_burst",
        "PYNET_ADDRESS_BURST",
        _positive_int,
        "lines one address may send at once before its rate applies",
        "N",
    ),
    Option(
        "max_clients",
        "PYNET_MAX_CLIENTS",
        _positive_int,
        "connections accepted at once; more get ERR server-full",
        "N",
    ),
    Option(
        "max_backlog",
        "PYNET_MAX_BACKLOG",
        _positive_int,
        "unsent bytes allowed per client before it gets BYE too-slow",
        "BYTES",
    ),
    Option(
        "max_buffered",
        "PYNET_MAX_BUFFERED",
        _positive_int,
        "unsent bytes allowed across all clients; past it the slowest readers are disconnected",
        "BYTES",
    ),
    Option(
        "flush_delay",
        "PYNET_FLUSH_DELAY",
        _non_negative_float,
        "longest wait used to batch broadcasts into fewer writes when fanning out is costly "
        "(many clients); 0 writes at once",
        "SEC",
    ),
    Option(
        "stop_timeout",
        "PYNET_STOP_TIMEOUT",
        _positive_float,
        "seconds a graceful shutdown (SIGTERM/SIGINT) may take before connections are cut",
        "SEC",
    ),
    Option(
        "handover_socket",
        "PYNET_HANDOVER_SOCKET",
        _path,
        "unix socket through which a new release takes over the listener and every client "
        "connection from the one serving (zero-downtime deploys); empty = off",
        "PATH",
    ),
    Option(
        "handover_timeout",
        "PYNET_HANDOVER_TIMEOUT",
        _positive_float,
        "seconds a handover step may take before the serving release gives up and serves on",
        "SEC",
    ),
    Option(
        "release",
        "PYNET_RELEASE",
        _release,
        "name of this release, for logs and the handover record",
        "NAME",
    ),
    Option("log_level", "PYNET_LOG_LEVEL", _log_level, "DEBUG, INFO, WARNING or ERROR", "LEVEL"),
    Option(
        "log_messages",
        "PYNET_LOG_MESSAGES",
        _bool,
        "also log message text at DEBUG (off: message text is private)",
        "BOOL",
    ),
    Option(
        "metrics_host",
        "PYNET_METRICS_HOST",
        _listen_host,
        "address /metrics (Prometheus text) listens on; keep it on loopback: `fab top` reads "
        "it through SSH and no security group opens it",
        "ADDR",
    ),
    Option(
        "metrics_port",
        "PYNET_METRICS_PORT",
        _port,
        "TCP port of /metrics (docs/operating.md); 0 = no metrics endpoint",
        "N",
    ),
    Option(
        "metrics_cloudwatch",
        "PYNET_METRICS_CLOUDWATCH",
        _deployment,
        "deployment name: print the figures every minute as CloudWatch embedded-metric JSON "
        "lines (namespace PyNet, dimension Deployment) for the awslogs driver to ship; "
        "empty = off",
        "NAME",
    ),
)

assert {o.field for o in OPTIONS} == {f.name for f in fields(Settings)}, "OPTIONS out of sync"


def port_argument(text: str) -> int:
    """A port to connect to (argparse type, shared by the client and the health check)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a port 1-65535")
    return value


def env_port(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> int:
    """PYNET_PORT as the default of a `port` argument, checked like the argument itself."""
    raw = (os.environ if env is None else env).get("PYNET_PORT") or str(PORT)
    try:
        return port_argument(raw)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"environment variable PYNET_PORT: {exc}")


def seconds_argument(text: str) -> float:
    """An argparse type for a duration: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected seconds > 0")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (the flag, the value, what it must be),
    without the usage block around it; `--help` still shows everything."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m chat.server` parser; flags not given are left out of the result."""
    parser = OneLineParser(
        prog="python -m chat.server",
        description=f"PyNet chat server {__version__}. Every option can also be set with the "
        "environment variable shown; a flag wins over the variable.",
    )
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        shown = ("memory" if option.field == "history" else "none") if default is None else default
        parser.add_argument(
            option.flag,
            dest=option.field,
            type=_argparse_type(option),
            default=argparse.SUPPRESS,
            metavar=option.metavar or None,
            help=f"{option.help} (env {option.env}, default {shown})",
        )
    parser.add_argument("--version", action="version", version=f"pynet chat {__version__}")
    return parser


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"invalid value {option.shown(text)!r}: {exc}"
            ) from None

    parse.__name__ = option.field
    return parse


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and environment. Exits with a usage message on a bad value."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if hasattr(args, option.field):
            values[option.field] = getattr(args, option.field)
        elif option.env in env:
            try:
                values[option.field] = option.parse(env[option.env])
            except ValueError as exc:
                parser.error(
                    f"environment variable {option.env}: "
                    f"invalid value {option.shown(env[option.env])!r}: {exc}"
                )
    return Settings(**values)


def describe(settings: Settings) -> str:
    """The settings as `key=value` words for the start log line."""
    words = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "backplane" and value:
            from chat.backplane import redact

            value = redact(value)  # never log the password
        words.append(f"{f.name}={value}")
    return " ".join(words)


def log_level(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level]
