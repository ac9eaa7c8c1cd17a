"""`python -m chat.client HOST [PORT] --nick NAME`: a terminal client that survives restarts.

- Incoming lines are shown while you type (stdin is read by a thread, so the loop never blocks;
  on a terminal the half-typed line is redrawn under each incoming one).
- When the connection drops it reconnects with exponential backoff and jitter, restores the
  nickname and sends `/since LAST_ID`, so no broadcast is missed; broadcasts are de-duplicated
  by id. Given several servers (`HOST1,HOST2:PORT`, a cluster), it moves to the next one at
  once when its server goes away.
- A server that vanished without closing (its host lost power, a NAT forgot the flow) is
  noticed: after `--ping-interval` seconds in which it sent nothing the client sends `/ping`,
  and if nothing comes back within `--timeout` it drops the connection and reconnects. TCP
  keepalive (chat/keepalive.py) covers the same on the socket level, and the pings keep an idle
  flow alive through NATs and load balancers.
- Scriptable: stdin may be a pipe; at EOF it sends `/quit` once everything is sent and exits
  when the server says BYE (`--stay` keeps listening instead); `--raw` prints protocol lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from chat import PORT, keepalive
from chat.config import OneLineParser, env_port, port_argument, seconds_argument
from chat.protocol import (
    Bye,
    ClientConnection,
    ClientEvent,
    Error,
    Hello,
    Info,
    Joined,
    Left,
    Message,
    Nick,
    NickAccepted,
    NickChanged,
    Ping,
    Pong,
    PrivateMessage,
    Since,
    Unknown,
    WhoList,
    valid_nick,
)

# What a peer could use to drive our terminal or disguise text: C0 (TAB aside), DEL and C1
# controls (escape sequences, BEL, a bare CR), and bidirectional overrides and isolates, which
# reorder what follows them on screen. The server refuses the controls (docs/protocol.md); the
# client escapes them too, so a server that does not is no danger either. Shown as `\u202e`.
_ESCAPED = [*range(0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0)]
_ESCAPED += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROLS = {code: f"\\u{code:04x}" for code in _ESCAPED}
_EOF = None
PING_INTERVAL = 30.0
"""Seconds the client may send nothing before it sends `/ping`: well under the idle timeouts
of NATs and load balancers (350 s on an AWS Network Load Balancer)."""
TIMEOUT = 15.0
"""Seconds to wait for an answer to that `/ping`, or for a connection, before reconnecting."""


def clean(text: str) -> str:
    """TEXT safe to print: controls and bidi overrides escaped as `\\uXXXX`."""
    return text.translate(_CONTROLS)


def human(event: ClientEvent) -> str | None:
    """How a person sees one server line (None: nothing worth showing)."""
    stamp = time.strftime("%H:%M")
    match event:
        case Message(_, name, text):
            return f"{stamp} <{clean(name)}> {clean(text)}"
        case PrivateMessage(name, text):
            return f"{stamp} *{clean(name)}* {clean(text)}"
        case Joined(name):
            return f"-- {clean(name)} joined"
        case Left(name, reason):
            return f"-- {clean(name)} left" + (f" ({clean(reason)})" if reason else "")
        case NickChanged(old, new):
            return f"-- {clean(old)} is now {clean(new)}"
        case WhoList(names):
            return f"-- online ({len(names)}): {clean(' '.join(names))}"
        case NickAccepted(name):
            return f"-- you are {clean(name)}"
        case Hello(version):
            return f"-- connected (pynet {clean(version)})"
        case Info(text):
            return f"-- {clean(text)}"
        case Error(code, text):
            return f"!! {clean(code)}: {clean(text)}"
        case Bye(reason):
            return "-- server closed the connection" + (f": {clean(reason)}" if reason else "")
        case Pong():
            return "-- pong"
        case Unknown(line):
            return clean(line)
    return None


def raw(event: ClientEvent) -> str:
    """The protocol line itself, for scripts (escaped like `human`: it goes to a terminal too)."""
    if isinstance(event, Unknown):
        return clean(event.line_text)
    return clean(event.line().decode().removesuffix("\n"))


class Terminal:
    """Writes lines to stdout; on a terminal, keeps the line being typed visible."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._readline = None
        if interactive:
            with contextlib.suppress(ImportError):
                import readline

                self._readline = readline

    def show(self, text: str) -> None:
        if self._readline is not None:
            typed = self._readline.get_line_buffer()
            sys.stdout.write(f"\r\x1b[K{text}\n{typed}")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """Client-side notices go to stderr, so `--raw` output stays pure protocol."""
        print(f"-- {text}", file=sys.stderr, flush=True)


def start_stdin_reader(loop: asyncio.AbstractEventLoop, put: Callable[[str | None], None]) -> None:
    """Read stdin in a daemon thread (works for terminals, pipes and files alike)."""

    def read() -> None:
        interactive = sys.stdin.isatty()
        while True:
            try:
                line: str | None = input() if interactive else sys.stdin.readline() or None
            except (EOFError, OSError, ValueError):
                line = None
            if line is None:
                loop.call_soon_threadsafe(put, _EOF)
                return
            loop.call_soon_threadsafe(put, line.rstrip("\r\n"))

    threading.Thread(target=read, name="stdin", daemon=True).start()


class Backoff:
    """Exponential backoff with jitter: base, 2*base, ... up to cap, each delay in [d/2, d]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class ChatClient:
    """One person's session, kept alive across connections."""

    def __init__(
        self,
        host: str,
        port: int,
        nick: str,
        *,
        terminal: Terminal,
        show_raw: bool = False,
        stay: bool = False,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        ping_interval: float = PING_INTERVAL,
        timeout: float = TIMEOUT,
        servers: list[tuple[str, int]] | None = None,
    ) -> None:
        self.host, self.port, self.nick = host, port, nick
        # Several servers (a cluster): when one goes away, the next one is tried at once.
        self.servers = servers or [(host, port)]
        self.host, self.port = self.servers[0]
        self._failed_in_a_row = 0
        self.served = False  # the last connection got as far as our nickname
        self.ping_interval = ping_interval
        self.timeout = timeout
        self.terminal = terminal
        self.format = raw if show_raw else human
        self.stay = stay
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.last_id: int | None = None
        self.named_once = False
        self.quitting = False
        self.exit_code = 0
        self.input: asyncio.Queue[str | None] = asyncio.Queue()

    async def run(self) -> int:
        """Connect, talk, reconnect; returns the exit code."""
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
            except OSError as exc:  # TimeoutError included
                why = exc.strerror or str(exc) or f"no answer within {self.timeout:g}s"
                self._failed_in_a_row += 1
                if self._next_server(f"cannot connect to {self.host}:{self.port} ({why})"):
                    continue
                if not self.reconnect or self.quitting:
                    self.terminal.note(f"cannot connect to {self.host}:{self.port}: {why}")
                    return 1
                await self._wait_before_retry(f"cannot connect ({why})")
                continue
            self._failed_in_a_row = 0
            sock = writer.get_extra_info("socket")
            if sock is not None:
                keepalive.enable(sock)
            try:
                await self._session(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if self.quitting or not self.reconnect:
                return self.exit_code
            # A host that served us went away: try the next one at once. Refused (our nickname
            # is still held while a dead host's lease runs out): back off first.
            if self._next_server(f"connection to {self.host}:{self.port} lost", self.served):
                continue
            await self._wait_before_retry("connection lost")

    def _next_server(self, why: str, now: bool = True) -> bool:
        """Move to the next server; True to try it now (not every one failed in a row yet)."""
        if len(self.servers) < 2 or self.quitting:
            return False
        index = (self.servers.index((self.host, self.port)) + 1) % len(self.servers)
        self.host, self.port = self.servers[index]
        if not now or self._failed_in_a_row >= len(self.servers):
            self._failed_in_a_row = 0
            return False  # a whole round failed: back off before the next one
        self.terminal.note(f"{why}; trying {self.host}:{self.port}")
        return True

    async def _wait_before_retry(self, why: str) -> None:
        delay = self.backoff.next_delay()
        self.terminal.note(f"{why}; reconnecting in {delay:.1f}s")
        await asyncio.sleep(delay)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConnection()
        conn.send(Nick(self.nick))
        if self.last_id is not None:
            conn.send(Since(self.last_id))  # same write as /nick: nothing can slip in between
        writer.write(conn.data_to_send())
        state = _Session()
        self.served = False
        sender = asyncio.create_task(self._send_input(conn, writer, state))
        loop = asyncio.get_running_loop()
        state.sent_at = loop.time()
        try:
            while not state.over:
                if state.pinged_at:  # waiting for any answer
                    wait = state.pinged_at + self.timeout - loop.time()
                else:  # waiting until we have been quiet for a ping interval
                    wait = state.sent_at + self.ping_interval - loop.time()
                if wait <= 0:
                    if state.pinged_at:
                        self._give_up(writer)
                        break
                    self._ping(conn, writer, state, loop.time())
                    continue
                try:
                    data = await asyncio.wait_for(reader.read(65536), wait)
                except TimeoutError:
                    continue
                if not data:
                    break
                state.pinged_at = 0.0  # any line shows the server is alive
                conn.receive_data(data)
                for event in conn.events_received():
                    self._handle(event, state)
        except OSError:
            pass
        finally:
            self.served = state.named
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _ping(
        self, conn: ClientConnection, writer: asyncio.StreamWriter, state: _Session, now: float
    ) -> None:
        """We have been quiet: ask for a PONG (not shown; see `_handle`).

        Pinging when *we* were quiet, not when the server was, also keeps a reader in a busy
        room from looking idle to the server (`--idle-timeout`); either way the flow stays fresh
        in NATs and load balancers.
        """
        conn.send(Ping())
        writer.write(conn.data_to_send())
        state.pinged_at = state.sent_at = now
        state.pongs.append(True)

    def _give_up(self, writer: asyncio.StreamWriter) -> None:
        """No answer to our /ping: the server or the path to it is gone."""
        self.terminal.note(f"no answer from {self.host}:{self.port} within {self.timeout:g}s")
        writer.transport.abort()  # closing would wait to flush to a peer that never acks
        if not self.reconnect:
            self.exit_code = 1

    async def _send_input(
        self, conn: ClientConnection, writer: asyncio.StreamWriter, state: _Session
    ) -> None:
        while True:
            line = await self.input.get()
            if line is _EOF:
                if self.stay:
                    return
                line = "/quit"
            if not line:
                continue
            word = line.split(" ", 1)[0].lower()
            if word == "/quit":
                self.quitting = True
            elif word == "/ping":
                state.pongs.append(False)  # the person asked: show the PONG
            conn.send_line(line)
            writer.write(conn.data_to_send())
            state.sent_at = asyncio.get_running_loop().time()
            await writer.drain()

    def _handle(self, event: ClientEvent, state: _Session) -> None:
        if isinstance(event, Message):
            if not self._fresh(event, state):
                return
        elif isinstance(event, NickAccepted):
            self.nick = event.name
            self.named_once = True
            self.backoff.reset()
        elif isinstance(event, Error) and event.code == "nick-taken" and not state.named:
            if not self.named_once:
                self.terminal.note(f"nickname {self.nick} is in use; choose another with --nick")
                self.quitting, self.exit_code = True, 1
            state.over = True  # restoring: our old connection may linger; retry later
        elif isinstance(event, Bye):
            state.over = True
        elif isinstance(event, Pong) and state.pongs and state.pongs.popleft():
            return  # the answer to our own keepalive /ping
        text = self.format(event)
        if text is not None:
            self.terminal.show(text)
        if isinstance(event, NickAccepted):
            state.named = True

    def _fresh(self, message: Message, state: _Session) -> bool:
        """De-duplicate by id; notice a server whose history was reset, or a gap."""
        last = self.last_id
        first = not state.seen_message
        state.seen_message = True
        if last is not None and message.id <= last:
            if not first:
                return False  # a duplicate
            self.terminal.note("the server's message ids restarted; its history was reset")
        elif first and last is not None and message.id > last + 1 and self.format is human:
            self.terminal.note(
                f"{message.id - last - 1} older messages were not kept by the server"
            )
        self.last_id = message.id
        return True

    def request_quit(self) -> None:
        """Ctrl-C: say /quit (the caller gives the server a moment to answer)."""
        self.quitting = True
        self.input.put_nowait("/quit")


class _Session:
    """What one connection has seen so far."""

    __slots__ = ("named", "over", "pinged_at", "pongs", "seen_message", "sent_at")

    def __init__(self) -> None:
        self.named = False
        self.over = False
        self.seen_message = False
        self.sent_at = 0.0  # loop time we last wrote to the server
        self.pinged_at = 0.0  # loop time of a keepalive /ping nothing has answered yet
        self.pongs: deque[bool] = deque()  # PONGs expected, in order: True = our keepalive


def _nick(text: str) -> str:
    if not valid_nick(text):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected 1 to 32 characters of A-Z a-z 0-9 _ -"
        )
    return text


#: --max-backoff bounds. Each wait is drawn from [cap/2, cap], so at 0.1 s a server that is down
#: sees at most 20 attempts a second per client; 0 meant ~540 a second, a reconnect storm.
MAX_BACKOFF = (0.1, 3600.0)


def _backoff(text: str) -> float:
    low, high = MAX_BACKOFF
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected seconds from {low:g} to {high:g}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `python -m chat.client` parser (the docs test reads its options from here)."""
    parser = OneLineParser(
        prog="python -m chat.client",
        description="Chat from a terminal or a script. Type text to talk to everyone, "
        "/msg NAME TEXT to one person, /who, /quit. Ctrl-C or end of input leaves.",
    )
    parser.add_argument(
        "host",
        help="server name or address; for a cluster several, comma-separated "
        "(HOST[:PORT],HOST[:PORT]...): when one goes away the client moves to the next",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=port_argument,
        default=env_port(parser),
        help=f"server port (default $PYNET_PORT, else {PORT})",
    )
    parser.add_argument("--nick", required=True, type=_nick, help="your nickname")
    parser.add_argument("--raw", action="store_true", help="print protocol lines as received")
    parser.add_argument(
        "--stay", action="store_true", help="keep listening after end of input (Ctrl-C leaves)"
    )
    parser.add_argument(
        "--no-reconnect", action="store_true", help="exit when the connection drops"
    )
    parser.add_argument(
        "--max-backoff",
        type=_backoff,
        default=30.0,
        metavar="SEC",
        help=f"longest wait between reconnects, {MAX_BACKOFF[0]:g} to {MAX_BACKOFF[1]:g} "
        "seconds (default 30)",
    )
    parser.add_argument(
        "--ping-interval",
        type=seconds_argument,
        default=PING_INTERVAL,
        metavar="SEC",
        help="send /ping after this many seconds in which we sent nothing, so a vanished "
        f"server is noticed and idle connections stay open (default {PING_INTERVAL:g})",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_argument,
        default=TIMEOUT,
        metavar="SEC",
        help="seconds to wait for an answer to that /ping, or for a connection, before "
        f"reconnecting (default {TIMEOUT:g})",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.servers = split_servers(args.host, args.port)
    except ValueError as exc:
        parser.error(f"argument host: invalid value {args.host!r}: {exc}")
    return args


def split_servers(text: str, default_port: int) -> list[tuple[str, int]]:
    """`a,b:5051,[::1]:5052` -> [(a, default_port), (b, 5051), (::1, 5052)]."""
    servers = []
    for item in text.split(","):
        item = item.strip()
        host, port = item, default_port
        if item.startswith("["):  # [IPv6]:PORT
            host, _, rest = item[1:].partition("]")
            if rest:
                port = _server_port(rest.removeprefix(":"), item)
        elif item.count(":") == 1:
            host, _, number = item.partition(":")
            port = _server_port(number, item)
        if not host:
            raise ValueError("expected HOST or HOST:PORT, comma-separated")
        servers.append((host, port))
    return servers


def _server_port(text: str, item: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{item!r} has port {text!r}; expected 1-65535")
    return int(text)


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    client = ChatClient(
        args.host,
        args.port,
        args.nick,
        servers=args.servers,
        terminal=Terminal(sys.stdin.isatty() and sys.stdout.isatty()),
        show_raw=args.raw,
        stay=args.stay,
        reconnect=not args.no_reconnect,
        backoff=Backoff(cap=args.max_backoff),
        ping_interval=args.ping_interval,
        timeout=args.timeout,
    )
    stopping: list[bool] = []

    def on_signal() -> None:
        if stopping:  # second Ctrl-C: leave at once
            raise SystemExit(130)
        stopping.append(True)
        client.request_quit()
        loop.call_later(3.0, main_task.cancel)

    current = asyncio.current_task()
    assert current is not None
    main_task = current  # a Task for the closure above, which mypy cannot narrow
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    start_stdin_reader(loop, client.input.put_nowait)
    try:
        return await client.run()
    except asyncio.CancelledError:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
