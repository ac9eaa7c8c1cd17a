"""`python -m chat.client HOST [PORT] --nick NAME`: a terminal client that survives restarts.

- Incoming lines are shown while you type (stdin is read by a thread, so the loop never blocks;
  on a terminal the half-typed line is redrawn under each incoming one).
- When the connection drops it reconnects with exponential backoff and jitter, restores the
  nickname and sends `/since LAST_ID`, so no broadcast is missed; broadcasts are de-duplicated
  by id.
- Scriptable: stdin may be a pipe; at EOF it sends `/quit` once everything is sent and exits
  when the server says BYE (`--stay` keeps listening instead); `--raw` prints protocol lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable

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
    Pong,
    PrivateMessage,
    Since,
    Unknown,
    WhoList,
    valid_nick,
)

# C0/C1 control characters would let a peer drive our terminal (escape sequences): show them
# as U+FFFD instead.
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)], "\ufffd")
_EOF = None


def clean(text: str) -> str:
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
    """The protocol line itself, for scripts."""
    if isinstance(event, Unknown):
        return event.line_text
    return event.line().decode().removesuffix("\n")


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
    ) -> None:
        self.host, self.port, self.nick = host, port, nick
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
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                if not self.reconnect or self.quitting:
                    self.terminal.note(f"cannot connect to {self.host}:{self.port}: {exc}")
                    return 1
                await self._wait_before_retry(f"cannot connect ({exc.strerror or exc})")
                continue
            try:
                await self._session(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if self.quitting or not self.reconnect:
                return self.exit_code
            await self._wait_before_retry("connection lost")

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
        sender = asyncio.create_task(self._send_input(conn, writer))
        try:
            while not state.over:
                data = await reader.read(65536)
                if not data:
                    break
                conn.receive_data(data)
                for event in conn.events_received():
                    self._handle(event, state)
        except OSError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send_input(self, conn: ClientConnection, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await self.input.get()
            if line is _EOF:
                if self.stay:
                    return
                line = "/quit"
            if not line:
                continue
            if line.split(" ", 1)[0].lower() == "/quit":
                self.quitting = True
            conn.send_line(line)
            writer.write(conn.data_to_send())
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

    __slots__ = ("named", "over", "seen_message")

    def __init__(self) -> None:
        self.named = False
        self.over = False
        self.seen_message = False


def _nick(text: str) -> str:
    if not valid_nick(text):
        raise argparse.ArgumentTypeError("use 1 to 32 characters of A-Z a-z 0-9 _ -")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chat.client",
        description="Chat from a terminal or a script. Type text to talk to everyone, "
        "/msg NAME TEXT to one person, /who, /quit. Ctrl-C or end of input leaves.",
    )
    parser.add_argument("host")
    parser.add_argument(
        "port", nargs="?", type=int, default=int(os.environ.get("PYNET_PORT") or 5050)
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
        "--max-backoff", type=float, default=30.0, help="longest wait between reconnects (s)"
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    client = ChatClient(
        args.host,
        args.port,
        args.nick,
        terminal=Terminal(sys.stdin.isatty() and sys.stdout.isatty()),
        show_raw=args.raw,
        stay=args.stay,
        reconnect=not args.no_reconnect,
        backoff=Backoff(cap=args.max_backoff),
    )
    stopping: list[bool] = []

    def on_signal() -> None:
        if stopping:  # second Ctrl-C: leave at once
            raise SystemExit(130)
        stopping.append(True)
        client.request_quit()
        loop.call_later(3.0, main_task.cancel)

    main_task = asyncio.current_task()
    assert main_task is not None
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
