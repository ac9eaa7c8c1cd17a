"""The chat server: an asyncio adapter around `chat.protocol`.

It accepts connections, keeps the registry of named clients, fans broadcasts out, enforces
the limits, and shuts down gracefully. Everything about parsing and replies is in the protocol;
this module only moves bytes.

How fan-out stays cheap (the benchmark drives 1,000 clients):
- each broadcast is encoded once; during one loop iteration broadcasts collect in `_batch`, and
  one flush at the end of the iteration writes the joined batch, the same bytes object, to every
  named client: one `transport.write` per client per iteration, however many messages;
- a client that also has its own lines this iteration (a reply, a private message) gets a
  private copy of the batch so far (it is "forked"), and later broadcasts are appended to it,
  so every client still sees its lines in order;
- one slow reader costs only its own buffer: past `max_backlog` unsent bytes it gets
  `BYE too-slow` and is cut; past `max_buffered` in total the biggest backlogs go first.
- idle connections hold no task and no timer: one housekeeping callback per second checks
  nickname timeouts;
- durable ids: each flush first commits the batch's history rows in one SQLite transaction
  (`History.commit`), so no client ever sees an id that a crash could hand out again.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from chat import __version__, config
from chat.config import Settings
from chat.history import History
from chat.protocol import (
    Bye,
    Error,
    Hello,
    Info,
    Joined,
    Left,
    Nick,
    NickChanged,
    Private,
    PrivateMessage,
    Quit,
    Refused,
    Say,
    ServerConnection,
    Since,
    State,
    Who,
    WhoList,
)

log = logging.getLogger("chat.server")

SLOW_CLOSE_GRACE = 5.0
# Below this a timer costs more than it saves: write at the end of the tick instead.
MIN_FLUSH_WAIT = 0.0005
"""Seconds a disconnected slow reader gets to read its BYE before the socket is cut."""
RESTART_NOTICE = "server restarting, reconnect in a few seconds"


class Client(asyncio.Protocol):
    """One TCP connection. Small on purpose: 10,000 idle ones must fit in ~100 MB."""

    __slots__ = (
        "allowance",
        "close_after_flush",
        "conn",
        "connected_at",
        "out",
        "peer",
        "reason",
        "receiving",
        "server",
        "transport",
    )

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.conn: ServerConnection | None = None  # None: refused (server full)
        self.transport: asyncio.Transport
        self.out: list[bytes] | None = None  # this iteration's lines when forked
        self.receiving = False  # named: gets broadcasts
        self.close_after_flush = False
        self.allowance = 0  # extra backlog tolerated after a /since replay
        self.reason = ""
        self.connected_at = 0.0
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connected(self)

    def data_received(self, data: bytes) -> None:
        self.server.received(self, data)

    def eof_received(self) -> bool:
        self.server.drop(self, "eof", "connection closed")
        return True  # we close it ourselves once the replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self, exc)


class ChatServer:
    """Registry, fan-out, limits and shutdown for one listening socket."""

    def __init__(self, settings: Settings, history: History) -> None:
        self.settings = settings
        self.history = history
        self.clients: set[Client] = set()
        self.unnamed: set[Client] = set()
        self.named: dict[str, Client] = {}  # lower-cased nickname -> client
        self.port = 0
        self._batch: list[bytes] = []
        self._forked: list[Client] = []
        self._flush_scheduled = False
        self._flush_cost = 0.0  # seconds the last fan-out took
        self._stopping = False
        self._all_gone = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.AbstractServer | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self._hello = Hello(__version__).line()
        self._greeting = self._hello + Info("choose a nickname with /nick NAME").line()
        self._handlers: dict[type, Callable[[Client, Any], None]] = {
            Say: self._on_say,
            Nick: self._on_nick,
            Private: self._on_private,
            Who: self._on_who,
            Since: self._on_since,
            Quit: self._on_quit,
            Refused: self._on_refused,
        }

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._server = await self._loop.create_server(
            lambda: Client(self), s.host, s.port, backlog=4096
        )
        sockname = self._server.sockets[0].getsockname()
        self.port = sockname[1]
        self._housekeep()
        log.info(
            "start version=%s listen=%s:%d loop=%s history=%s %s",
            __version__,
            sockname[0],
            self.port,
            type(self._loop).__module__.split(".")[0],
            self.history.describe().replace(" ", ","),
            config.describe(s),
        )

    async def stop(self) -> None:
        """Stop accepting, say INFO + BYE restarting to everyone, flush history, close."""
        deadline = self._loop.time() + self.settings.stop_timeout * 0.8  # room to exit
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        notice = Info(RESTART_NOTICE)
        for client in list(self.clients):
            conn = client.conn
            assert conn is not None
            if conn.state is not State.CLOSING:
                conn.send(notice)
            self.drop(client, "restarting", "", announce=False)
        self._flush()
        self.history.close()
        if self.clients:
            try:
                await asyncio.wait_for(
                    self._all_gone.wait(), max(0.0, deadline - self._loop.time())
                )
            except TimeoutError:
                log.warning("stop cut=%d clients still draining", len(self.clients))
                for client in list(self.clients):
                    client.transport.abort()
                await asyncio.sleep(0)

    def _housekeep(self) -> None:
        """Once a period: drop connections that never chose a nickname."""
        now = self._loop.time()
        s = self.settings
        limit = now - s.nick_timeout
        for client in [c for c in self.unnamed if c.connected_at <= limit]:
            self.drop(client, "nick-timeout", "")
        period = min(1.0, s.nick_timeout / 4)
        self._housekeeping = self._loop.call_later(period, self._housekeep)

    # ---- connections ----------------------------------------------------------------------

    def connected(self, client: Client) -> None:
        transport = client.transport
        peer = transport.get_extra_info("peername")
        client.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        s = self.settings
        if self._stopping or len(self.clients) >= s.max_clients:
            transport.write(
                self._hello
                + Error("server-full", "too many clients, try again later").line()
                + Bye("server-full").line()
            )
            transport.close()
            log.warning(
                "refuse peer=%s reason=server-full clients=%d", client.peer, len(self.clients)
            )
            return
        client.conn = ServerConnection(max_line=s.max_line, rate=s.rate, burst=s.rate_burst)
        client.connected_at = self._loop.time()
        self.clients.add(client)
        self.unnamed.add(client)
        self._send(client, self._greeting)
        log.info("connect peer=%s clients=%d", client.peer, len(self.clients))

    def received(self, client: Client, data: bytes) -> None:
        conn = client.conn
        if conn is None:
            return
        conn.receive_data(data)
        handlers = self._handlers
        for event in conn.events_received():
            self._pump(client)  # replies the protocol made before this event go first
            handlers[type(event)](client, event)
        self._pump(client)

    def drop(self, client: Client, reason: str, left: str, *, announce: bool = True) -> None:
        """Say `BYE reason` and close after the next flush; others see `LEFT nick left`."""
        conn = client.conn
        if conn is None or client.close_after_flush:
            return
        conn.close(reason)
        self._pump(client)
        if client.out is None:
            self._send(client, b"")  # make sure the next flush closes it
        client.close_after_flush = True
        client.reason = reason
        self._forget(client, left, announce)

    def lost(self, client: Client, exc: Exception | None) -> None:
        if client.conn is None:
            return
        self.clients.discard(client)
        reason = client.reason or ("connection reset" if exc else "connection closed")
        self._forget(client, reason, announce=not self._stopping)
        log.info(
            "disconnect peer=%s nick=%s reason=%s clients=%d",
            client.peer,
            client.conn.nick or "-",
            reason,
            len(self.clients),
        )
        if self._stopping and not self.clients:
            self._all_gone.set()

    def _forget(self, client: Client, left: str, announce: bool) -> None:
        """Take the client out of the registry; tell the others it left."""
        self.unnamed.discard(client)
        if client.receiving:
            client.receiving = False
            nick = client.conn.nick  # type: ignore[union-attr]
            assert nick is not None
            del self.named[nick.lower()]
            if announce:
                self._broadcast(Left(nick, left).line())

    # ---- events ---------------------------------------------------------------------------

    def _on_say(self, client: Client, event: Say) -> None:
        nick = client.conn.nick  # type: ignore[union-attr]
        assert nick is not None
        self._broadcast(self.history.add(nick, event.text))
        if self.settings.log_messages:
            log.debug("msg nick=%s id=%d text=%r", nick, self.history.last_id, event.text)

    def _on_nick(self, client: Client, event: Nick) -> None:
        conn = client.conn
        assert conn is not None
        name, key = event.name, event.name.lower()
        holder = self.named.get(key)
        if holder is not None and holder is not client:
            conn.refuse("nick-taken", "that nickname is in use")
            self._pump(client)
            return
        old = conn.nick
        conn.accept_nick(name)
        self._pump(client)
        if not client.receiving:
            self.unnamed.discard(client)
            self.named[key] = client
            client.receiving = True
            self._broadcast(Joined(name).line())
            log.info("nick peer=%s nick=%s", client.peer, name)
        elif old is not None and old != name:
            del self.named[old.lower()]
            self.named[key] = client
            self._broadcast(NickChanged(old, name).line())
            log.info("nick peer=%s old=%s nick=%s", client.peer, old, name)

    def _on_private(self, client: Client, event: Private) -> None:
        target = self.named.get(event.to.lower())
        conn = client.conn
        assert conn is not None
        assert conn.nick is not None
        if target is None:
            conn.refuse("no-such-nick", "no such nickname")
            self._pump(client)
            return
        self._send(target, PrivateMessage(conn.nick, event.text).line())
        if self.settings.log_messages:
            log.debug("priv nick=%s to=%s text=%r", conn.nick, target.conn.nick, event.text)  # type: ignore[union-attr]

    def _on_who(self, client: Client, event: Who) -> None:
        names = sorted((c.conn.nick for c in self.named.values()), key=str.lower)  # type: ignore[union-attr]
        client.conn.send(WhoList(tuple(names)))  # type: ignore[union-attr, arg-type]
        self._pump(client)

    def _on_since(self, client: Client, event: Since) -> None:
        lines = self.history.since(event.after)
        if lines:
            data = b"".join(lines)
            client.allowance = len(data)  # a replay may exceed the backlog limit once
            self._send(client, data)

    def _on_quit(self, client: Client, event: Quit) -> None:
        self.drop(client, "quit", event.reason or "quit")

    def _on_refused(self, client: Client, event: Refused) -> None:
        log.debug("refused peer=%s code=%s", client.peer, event.code)

    # ---- output ---------------------------------------------------------------------------

    def _pump(self, client: Client) -> None:
        data = client.conn.data_to_send()  # type: ignore[union-attr]
        if data:
            self._send(client, data)

    def _send(self, client: Client, data: bytes) -> None:
        """Queue lines for one client, behind the broadcasts it already received this tick."""
        out = client.out
        if out is None:
            out = client.out = self._batch.copy() if client.receiving else []
            self._forked.append(client)
        out.append(data)
        if not self._flush_scheduled:
            self._schedule_flush()

    def _broadcast(self, data: bytes) -> None:
        """Queue one encoded line for every named client."""
        self._batch.append(data)
        for client in self._forked:
            if client.receiving:
                client.out.append(data)  # type: ignore[union-attr]
        if not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Flush at the end of this tick, or a little later when fan-out is costly.

        Each write is a syscall (several microseconds on loopback), so with many clients one
        fan-out takes milliseconds. Waiting about as long as the last fan-out took (capped by
        `flush_delay`) lets the broadcasts that arrive meanwhile share the next write to each
        client: throughput rises several-fold and latency stays bounded by the cap. With few
        clients the last fan-out was quick and output leaves at once.
        """
        self._flush_scheduled = True
        delay = min(self._flush_cost, self.settings.flush_delay)
        if delay < MIN_FLUSH_WAIT:
            self._loop.call_soon(self._flush)
        else:
            self._loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        """Write this iteration's output: one write per client."""
        self._flush_scheduled = False
        began = time.perf_counter()
        # Group commit: the batch is durable before any client sees an id from it.
        self.history.commit()
        limit = self.settings.max_backlog
        slow: list[Client] = []
        total = 0
        batch = self._batch
        if batch:
            self._batch = []
            data = b"".join(batch)
            for client in self.named.values():
                if client.out is None:
                    transport = client.transport
                    transport.write(data)
                    size = transport.get_write_buffer_size()
                    if size:
                        total += size
                        if size > limit and size > limit + client.allowance:
                            slow.append(client)
                    elif client.allowance:
                        client.allowance = 0
        forked, self._forked = self._forked, []
        for client in forked:
            out, client.out = client.out, None
            transport = client.transport
            if transport.is_closing():
                continue
            transport.write(b"".join(out))  # type: ignore[arg-type]
            if client.close_after_flush:
                transport.close()
                if transport.get_write_buffer_size():
                    self._loop.call_later(SLOW_CLOSE_GRACE, transport.abort)
                continue
            size = transport.get_write_buffer_size()
            total += size
            if size > limit and size > limit + client.allowance:
                slow.append(client)
        self._flush_cost = time.perf_counter() - began
        if total > self.settings.max_buffered:
            slow.extend(self._biggest_backlogs(total))
        for client in slow:
            if not client.close_after_flush:
                log.warning(
                    "too-slow peer=%s nick=%s backlog=%d",
                    client.peer,
                    client.conn.nick,  # type: ignore[union-attr]
                    client.transport.get_write_buffer_size(),
                )
                self.drop(client, "too-slow", "too-slow")

    def _biggest_backlogs(self, total: int) -> list[Client]:
        """Clients to cut, biggest backlog first, to bring the total back under the bound."""
        target = self.settings.max_buffered * 3 // 4
        chosen = []
        for client in sorted(
            self.clients, key=lambda c: c.transport.get_write_buffer_size(), reverse=True
        ):
            if total <= target:
                break
            total -= client.transport.get_write_buffer_size()
            chosen.append(client)
        return chosen


# --------------------------------------------------------------------------------------------
# Entry point.


def _raise_open_file_limit() -> int:
    """Allow as many sockets as the hard limit permits (the soft default is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (faster), else the standard loop."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    history = History(settings.history_size, settings.history)
    server = ChatServer(settings, history)
    try:
        await server.start()
    except OSError as exc:
        log.error("error starting: %s", exc)
        history.close()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    log.info("stopping signal=%s clients=%d", received[0], len(server.clients))
    await server.stop()
    log.info("stop version=%s last_id=%d", __version__, history.last_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)
    setup_logging(settings.log_level)
    nofile = _raise_open_file_limit()
    if nofile < settings.max_clients:
        log.warning("open file limit %d is below max_clients=%d", nofile, settings.max_clients)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
