"""The shared conversation of a cluster of chat servers, kept in Redis Streams.

Why streams and not pub/sub: a stream is read from an id, so a host cut off from Redis resumes
where it stopped and loses nothing; pub/sub drops what was published meanwhile.

Layout (all keys under one prefix, `pynet:` by default):
- `room`: the stream of broadcasts and presence lines. A broadcast gets the id `<n>-0`, where
  n is the protocol's message id (one Lua script takes the next n and adds the entry, so ids
  are integers, increasing, never reused); a presence line (JOIN, LEFT, NICK) gets `<n>-<k>`
  with k > 0, so it sorts after the broadcast it followed. Trimmed with `MAXLEN ~`.
- `counter`: the last message id. The script never goes below the highest id the calling host
  has seen, nor below the stream's last entry, so ids continue even if Redis lost its data.
- `nick:<lower>`: a lease `<host>\\t<Name>` with an expiry the owning host renews; a host that
  dies loses its nicknames within `LEASE_MS`.
- `who:<host>`: that host's nicknames (a hash with the same expiry); `hosts`: the set of hosts.
- `inbox:<host>`: a stream of private messages for the users of one host.
- `seq:<host>`: the last operation applied for a host. Every mutation carries a per-host
  sequence number, so a batch retried after a lost connection is never applied twice.

Each host reads `room` and its inbox with one `XREAD BLOCK` loop over its own connection, from
the last id it saw, and serves `/since` from the retained lines in memory (loaded with
`XREVRANGE` at start, kept current by the loop). Writes are queued and sent as one script call
per batch: one round trip however many lines arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol
from urllib.parse import urlsplit

from chat.protocol import Message, PrivateMessage, bad_text, valid_nick
from chat.window import Window

log = logging.getLogger("chat.backplane")

MAX_TEXT = 1 << 16
"""Longest text or line accepted from Redis (a client's is at most `--max-line`, 4 KiB)."""

LEASE_MS = 15_000
"""A nickname held by a host that stopped renewing it is free again after this long."""
RENEW_EVERY = LEASE_MS / 3000
"""Seconds between lease renewals: two renewals may fail before a lease lapses."""
BLOCK_MS = 1000
"""How long one XREAD waits for news; the socket timeout is a few seconds longer."""
MAX_QUEUE = 10_000
"""Operations held while Redis is slow or away; past this, broadcasts get ERR unavailable.
A handover's nicknames (`adopt`) are not counted, nor ever refused: there is one per connection
handed over (as many as `--max-clients`), and one dropped would leave its client's nickname with
the old release's host, whose lapsing lease would then cut the client."""
MAX_BATCH = 1000
"""Operations sent in one script call."""
READ_COUNT = 2000
"""Entries one XREAD returns at most per stream."""
RETAIN = 100_000
"""Entries the room stream keeps at least (`MAXLEN ~`): a host that falls this far behind (10 s
at 10,000 broadcasts/s) skips what was trimmed; /since needs only `history_size` of them."""
MAX_INHERITED = 7
"""Predecessors' inboxes a host hands on in a handover (`position()`), newest first."""
MIN_VERSION = (7, 0)  # XADD with an explicit time and automatic sequence (`<n>-*`)


class BackplaneError(Exception):
    """Redis cannot serve as the backplane (unreachable, wrong password, not Redis...)."""


class Unavailable(Exception):
    """Redis cannot take this operation right now; the client may try again."""


class Sink(Protocol):
    """What the backplane calls on the chat server (all on the event loop)."""

    def deliver(self, lines: list[bytes]) -> None:
        """Broadcast lines (MSG, JOIN, LEFT, NICK) in stream order, for every local client."""

    def deliver_private(self, to: str, line: bytes) -> None:
        """A PRIV line for the local user whose lower-cased nickname is `to`."""

    def status(self, available: bool) -> None:
        """Redis went away (False) or came back (True)."""

    def nicks_lost(self, nicks: list[str]) -> None:
        """Leases this host can no longer hold (another host took them while Redis was away)."""

    def nicks_held(self) -> list[str]:
        """The nicknames of this host's clients, as they are spelled."""


def validate_url(text: str) -> str:
    """`redis://[:PASSWORD@]HOST:PORT/DB` or `rediss://...`; raises ValueError saying why."""
    parts = urlsplit(text)
    if parts.scheme not in {"redis", "rediss"}:
        raise ValueError("must start with redis:// or rediss://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number 0..65535") from None
    if not parts.hostname:
        raise ValueError("needs a host, e.g. redis://10.0.0.5:6379/0")
    if port == 0:
        raise ValueError("needs a port 1..65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"has database {db!r}; expected a number, e.g. /0")
    return text


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@" + parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()


PRESENCE = ("JOIN ", "LEFT ", "NICK ", "INFO ")
"""The server lines a host puts in the room besides messages."""


def _nick(raw: bytes) -> str:
    nick = raw.decode()
    if not valid_nick(nick):
        raise ValueError(f"an invalid nickname {nick[:40]!r}")
    return nick


def _text(raw: bytes) -> str:
    text = raw.decode()
    if not text or len(raw) > MAX_TEXT or bad_text(text):
        raise ValueError(
            "text a client could not have sent (empty, too long or control characters)"
        )
    return text


def _presence(raw: bytes) -> bytes:
    """A presence line as read from the room, if it is one a host could have written."""
    text = raw.decode()
    if not text.startswith(PRESENCE) or not text.endswith("\n") or len(raw) > MAX_TEXT:
        raise ValueError("a line that is not a presence line")
    if bad_text(text[:-1]):
        raise ValueError("a presence line with control characters")
    return raw


def _private(fields: dict[bytes, bytes]) -> tuple[str, bytes]:
    """(to, the PRIV line) of an inbox entry, checked."""
    return _nick(fields[b"to"]), PrivateMessage(_nick(fields[b"f"]), _text(fields[b"t"])).line()


def _skipped(stream: str, entry_id: bytes, why: object) -> None:
    log.warning(
        "backplane skipped a malformed entry stream=%s id=%s reason=%s",
        stream,
        entry_id.decode(errors="replace"),
        why,
    )


def host_id() -> str:
    """A name for this process, unique across restarts: `hostname-pid-random`."""
    name = "".join(c for c in socket.gethostname() if c.isascii() and (c.isalnum() or c in "-."))
    name = name[:40]
    return f"{name or 'host'}-{os.getpid()}-{secrets.token_hex(3)}"


# One call applies a batch of operations, in order, atomically.
# ARGV: prefix, host, floor, maxlen, lease_ms, then the operations as one JSON array of
# [kind, seq, a, b, c] (one argument, not five per operation: packing thousands of arguments
# was a tenth of a busy host's time in redis-py). Returns one result per operation.
_APPLY = r"""
local P, H = ARGV[1], ARGV[2]
local floor, maxlen, lease = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local room, counter = P .. 'room', P .. 'counter'
local seqkey = P .. 'seq:' .. H
local done = tonumber(redis.call('GET', seqkey) or '0')
local base = tonumber(redis.call('GET', counter) or '0')
if base < floor then base = floor end
local last = redis.call('XREVRANGE', room, '+', '-', 'COUNT', 1)[1]
if last then
  local ms = tonumber(string.match(last[1], '^(%d+)'))
  if ms > base then base = ms end
end
local mine = H .. '\t'
local who = P .. 'who:' .. H
local function owned(v) return v and string.sub(v, 1, #mine) == mine end
local function release(low)
  local key = P .. 'nick:' .. low
  if owned(redis.call('GET', key)) then redis.call('DEL', key) end
  redis.call('HDEL', who, low)
end
local out = {}
for _, op in ipairs(cjson.decode(ARGV[6])) do
  local kind, seq = op[1], tonumber(op[2])
  local a, b, c = op[3], op[4], op[5]
  local r = 0
  if seq <= done then
    r = -1
  elseif kind == 'say' then
    base = base + 1
    redis.call('XADD', room, 'MAXLEN', '~', maxlen, base .. '-0', 'n', a, 't', b)
    r = base
  elseif kind == 'line' then
    redis.call('XADD', room, 'MAXLEN', '~', maxlen, base .. '-*', 'l', a)
  elseif kind == 'claim' then
    local key = P .. 'nick:' .. a
    local v = redis.call('GET', key)
    if v and not owned(v) then
      r = 0
    else
      redis.call('SET', key, mine .. b, 'PX', lease)
      redis.call('HSET', who, a, b)
      redis.call('PEXPIRE', who, lease)
      redis.call('SADD', P .. 'hosts', H)
      if c ~= '' and c ~= a then release(c) end
      r = 1
    end
  elseif kind == 'adopt' then
    local key = P .. 'nick:' .. a
    local v = redis.call('GET', key)
    if v and not owned(v) then
      redis.call('HDEL', P .. 'who:' .. string.match(v, '^([^\t]*)'), a)
    end
    redis.call('SET', key, mine .. b, 'PX', lease)
    redis.call('HSET', who, a, b)
    redis.call('PEXPIRE', who, lease)
    redis.call('SADD', P .. 'hosts', H)
  elseif kind == 'release' then
    release(a)
  elseif kind == 'priv' then
    local v = redis.call('GET', P .. 'nick:' .. a)
    if v then
      local host = string.match(v, '^([^\t]*)')
      redis.call('XADD', P .. 'inbox:' .. host, 'MAXLEN', '~', 10000, '*',
                 'to', a, 'f', b, 't', c, 'a', base)
      redis.call('PEXPIRE', P .. 'inbox:' .. host, lease)
      r = 1
    end
  elseif kind == 'who' then
    r = {}
    for _, h in ipairs(redis.call('SMEMBERS', P .. 'hosts')) do
      local names = redis.call('HVALS', P .. 'who:' .. h)
      if #names == 0 then redis.call('SREM', P .. 'hosts', h) end
      for _, n in ipairs(names) do r[#r + 1] = n end
    end
  end
  if seq > done then done = seq end
  out[#out + 1] = r
end
if base > tonumber(redis.call('GET', counter) or '0') then redis.call('SET', counter, base) end
redis.call('SET', seqkey, done, 'PX', 86400000)
return out
"""

# Renew this host's leases; re-take the ones Redis forgot (after a restart without data).
# ARGV: prefix, host, lease_ms, then lower/Name pairs. Returns the lower names now held by
# another host.
_RENEW = r"""
local P, H, lease = ARGV[1], ARGV[2], ARGV[3]
local mine = H .. '\t'
local who = P .. 'who:' .. H
local lost = {}
for i = 4, #ARGV, 2 do
  local low, name = ARGV[i], ARGV[i + 1]
  local key = P .. 'nick:' .. low
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #mine) ~= mine then
    lost[#lost + 1] = low
    redis.call('HDEL', who, low)
  else
    redis.call('SET', key, mine .. name, 'PX', lease)
    redis.call('HSET', who, low, name)
  end
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', who, lease)
  redis.call('SADD', P .. 'hosts', H)
end
redis.call('PEXPIRE', P .. 'inbox:' .. H, lease)
return lost
"""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a host stopped reading: the last room entry it delivered, and for each inbox it
    reads (its own, and those it inherited in a recent handover) the last entry delivered, by
    host id. A handover carries it to the successor (`chat.handover.Begin`)."""

    room: str
    inboxes: dict[str, str]


@dataclass(slots=True)
class _Op:
    """One queued mutation; `future` is set when the caller waits for its result."""

    kind: str
    seq: int
    a: str = ""
    b: str = ""
    c: str = ""
    future: asyncio.Future[Any] | None = None
    queued: float = 0.0  # time.monotonic() when it was queued


Connect = Callable[[str, float], Any]
"""(url, socket_timeout) -> a `redis.asyncio.Redis`; tests pass fakeredis here."""


def _connect(url: str, timeout: float) -> Any:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One immediate retry on a fresh connection, so a pooled socket that went stale while
    # Redis restarted is not mistaken for Redis being away. Safe: every write carries its
    # sequence number and is applied at most once.
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=3.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


class RedisBackplane:
    """A host's link to the shared conversation. Call `start()` before serving."""

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        prefix: str = "pynet:",
        connect: Connect | None = None,
        check_version: bool = True,
        lease_ms: int = LEASE_MS,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.host = host_id()
        self.available = False
        self.lag = float("nan")  # seconds the oldest line of the last batch waited for Redis
        self.lease_ms = lease_ms
        self.max_queue = max_queue
        self._connect = connect or _connect
        self._check_version = check_version
        self._retained = Window(history_size)
        self._maxlen = str(max(2 * history_size, RETAIN))
        self._load_count = max(2 * history_size, 100)
        self._room = prefix + "room"
        self._inbox = f"{prefix}inbox:{self.host}"
        self._room_pos = "0-0"
        # Inboxes read, and from where: this host's, and for a while after a handover the
        # predecessor's (private messages routed to it before the leases moved here).
        self._inboxes: dict[str, str] = {self._inbox: "0-0"}
        self._inherited_until = 0.0  # loop time after which the predecessor's inbox is let go
        self._seq = 0
        self._queue: deque[_Op] = deque()
        self._adopts = 0  # of them `adopt`s: not counted against `max_queue`
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()  # set: the read loop may deliver
        self._retry = asyncio.Event()
        self._sink: Sink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._renew_due = 0.0
        self._cmd: Any = None
        self._reader: Any = None
        self._sha: dict[str, str] = {}

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def last_id(self) -> int:
        return self._retained.last_id

    def describe(self) -> str:
        return f"redis:{redact(self.url)} host={self.host} last_id={self.last_id}"

    async def open(self) -> None:
        """Connect to Redis and check it can serve (a ping, its version). Raises BackplaneError.

        A successor does this before it asks the serving release for anything: the seconds
        of importing redis-py and connecting are then spent while clients are still served,
        not in the handover's pause, and a Redis it cannot use stops it before it disturbs
        the serving release."""
        if self._cmd is not None:
            return
        self._cmd = self._connect(self.url, 5.0)
        self._reader = self._connect(self.url, BLOCK_MS / 1000 + 5.0)
        await self._guarded(self._check())

    async def _check(self) -> None:
        await self._cmd.ping()
        if self._check_version:
            await self._require_version()

    async def _guarded(self, step: Awaitable[None]) -> None:
        """Await STEP; Redis' failures become one BackplaneError, the connections closed."""
        from redis import exceptions as rx

        where = redact(self.url)
        try:
            await step
        except BackplaneError:
            await self._close_clients()
            raise
        except rx.AuthenticationError as exc:
            await self._close_clients()
            raise BackplaneError(f"Redis at {where} refused the password: {exc}") from None
        except rx.ResponseError as exc:
            await self._close_clients()
            text = str(exc)
            if "NOAUTH" in text or "WRONGPASS" in text or "AUTH" in text.upper()[:40]:
                raise BackplaneError(f"Redis at {where} refused the password: {text}") from None
            raise BackplaneError(f"{where} answered like no Redis server: {text}") from None
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            await self._close_clients()
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, rx.ConnectionError) and "Protocol" in reason:
                raise BackplaneError(f"{where} is not a Redis server: {reason}") from None
            raise BackplaneError(f"cannot reach Redis at {where}: {reason}") from None
        except rx.RedisError as exc:
            await self._close_clients()
            raise BackplaneError(f"{where} is not a usable Redis server: {exc}") from None

    async def start(
        self, sink: Sink, resume_from: int | None = None, inherit: Position | None = None
    ) -> None:
        """Check Redis (`open`, unless done), load the retained history, start reading.
        Raises BackplaneError.

        `resume_from`: a handover. The predecessor's clients saw broadcasts up to that id, so
        reading starts right after it, and only once `resume()` says the clients are here.
        `inherit`: where exactly the predecessor stopped reading (`position()`), so presence
        lines after that id are not skipped and its inbox is read on from there.
        """
        self._sink = sink
        await self.open()
        await self._guarded(self._load(resume_from))
        self._begin(resume_from, inherit)

    def take_over(self, sink: Sink, last_id: int, retained: list[bytes], inherit: Position) -> None:
        """Start where a predecessor of this cluster stopped (a handover), from what it handed
        over: the last id its clients saw, its retained lines, its reading position. Nothing
        is asked of Redis and nothing awaited: in the pause the successor must not yield to
        its loop, which already watches the clients' sockets. `open` first."""
        if self._cmd is None:
            raise BackplaneError("the backplane was not opened before the handover")
        self._sink = sink
        self._retained.reset(last_id, retained)
        self._begin(last_id, inherit)

    def _begin(self, resume_from: int | None, inherit: Position | None) -> None:
        self.available = True
        loop = asyncio.get_running_loop()
        if inherit is not None:
            self._room_pos = inherit.room
            for host, pos in inherit.inboxes.items():
                self._inboxes[f"{self.prefix}inbox:{host}"] = pos
            self._inherited_until = loop.time() + 2 * self.lease_ms / 1000
        if resume_from is None:
            self._reading.set()
        self._renew_due = loop.time() + RENEW_EVERY
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="backplane-read"),
            asyncio.create_task(self._write_loop(), name="backplane-write"),
        ]

    async def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (within `timeout`), then close the connections."""
        if self._closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), timeout)
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for op in self._queue:
            if op.future is not None and not op.future.done():
                op.future.set_exception(Unavailable("shutting down"))
        if self._queue:
            log.warning("backplane stop unsent=%d", len(self._queue))
        await self._close_clients()

    async def _drain(self) -> None:
        while self._queue and self.available:
            await asyncio.sleep(0.01)

    async def _close_clients(self) -> None:
        clients, self._cmd, self._reader = (self._cmd, self._reader), None, None
        for client in clients:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _require_version(self) -> None:
        info = await self._cmd.info("server")
        text = str(info.get("redis_version", "")) if isinstance(info, dict) else ""
        try:
            version = tuple(int(x) for x in text.split(".")[:2])
        except ValueError:
            version = ()
        if len(version) != 2:
            raise BackplaneError(f"{redact(self.url)} did not report a Redis version")
        if version < MIN_VERSION:
            need = ".".join(map(str, MIN_VERSION))
            raise BackplaneError(
                f"Redis at {redact(self.url)} is version {text}; the backplane needs >= {need}"
            )

    async def _load(self, upto: int | None = None) -> None:
        """The newest retained broadcasts (up to id `upto`), and the position to read from."""
        entries = await self._cmd.xrevrange(self._room, "+", "-", count=self._load_count)
        counter = int(await self._cmd.get(self.prefix + "counter") or 0)
        if upto is not None:
            entries = [e for e in entries if int(e[0].split(b"-", 1)[0]) <= upto]
        if entries:
            self._room_pos = entries[0][0].decode()
        for entry_id, fields in reversed(entries):
            self._entry(entry_id, fields, None)
        if upto is not None:
            self._retained.last_id = max(self._retained.last_id, upto)
        elif self._retained.last_id < counter:
            self._retained.last_id = counter

    def resume(self) -> None:
        """Start delivering (after a handover's clients are registered), or again after
        `hold`."""
        self._reading.set()

    def hold(self) -> None:
        """Deliver nothing until `resume`: a handover is freezing the clients. What Redis sends
        meanwhile waits, unread as far as `position()` is concerned, so the successor (or this
        host, if the handover fails) delivers it exactly once."""
        self._reading.clear()

    def position(self) -> Position:
        """Where this host stopped reading: what a successor reads on from."""
        # Its own inbox first, then the inherited ones, newest first; a chain of handovers
        # seconds apart hands on only the few whose nicknames may still point at them.
        start = len(f"{self.prefix}inbox:")
        inboxes = islice(self._inboxes.items(), MAX_INHERITED + 1)
        return Position(self._room_pos, {key[start:]: pos for key, pos in inboxes})

    # ---- what the server calls -----------------------------------------------------------

    def since(self, after: int) -> list[bytes]:
        return self._retained.since(after)

    def page(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int]:
        """One page of a replay (`chat.window.Window.page`)."""
        return self._retained.page(after, upto, limit)

    def say(self, nick: str, text: str) -> bool:
        """Queue a broadcast. False: it cannot be placed now (answer ERR unavailable)."""
        return self._enqueue("say", nick, text) is not None

    def line(self, line: bytes) -> None:
        """Queue a presence line (JOIN, LEFT, NICK) for every host."""
        self._enqueue("line", line.decode())

    def release(self, nick: str) -> None:
        """Give a nickname back (queued: it need not wait)."""
        self._enqueue("release", nick.lower())

    def adopt(self, name: str) -> None:  # never refused: see MAX_QUEUE
        """Hold `name` whoever holds it now: its connection was handed over to this host."""
        self._enqueue("adopt", name.lower(), name)

    def claim(self, name: str, old: str | None) -> asyncio.Future[Any]:
        """Take `name` across the cluster (releasing `old`). Result: True, or False if taken."""
        return self._ask("claim", name.lower(), name, (old or "").lower())

    def private(self, sender: str, to: str, text: str) -> asyncio.Future[Any]:
        """Send a PRIV to a user on any host. Result: True, or False if no such nickname."""
        return self._ask("priv", to.lower(), sender, text)

    def who(self) -> asyncio.Future[Any]:
        """Result: the nicknames of every host."""
        return self._ask("who")

    def _ask(self, kind: str, a: str = "", b: str = "", c: str = "") -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.available or len(self._queue) - self._adopts >= self.max_queue:
            future.set_exception(Unavailable("the shared store is unavailable"))
            return future
        self._enqueue(kind, a, b, c, future)
        return future

    def _enqueue(
        self,
        kind: str,
        a: str = "",
        b: str = "",
        c: str = "",
        future: asyncio.Future[Any] | None = None,
    ) -> _Op | None:
        if self._closing:
            return None
        if kind == "adopt":
            self._adopts += 1
        elif len(self._queue) - self._adopts >= self.max_queue:
            return None
        self._seq += 1
        op = _Op(kind, self._seq, a, b, c, future, time.monotonic())
        self._queue.append(op)
        self._wake.set()
        return op

    # ---- writing --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        from redis import exceptions as rx

        loop = asyncio.get_running_loop()
        delay = 0.05
        while not self._closing:
            if not self._queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), max(0.0, self._renew_due - loop.time())
                    )
            try:
                if loop.time() >= self._renew_due or not self.available:
                    await self._renew()
                    self._renew_due = loop.time() + RENEW_EVERY
                if self._queue:
                    await self._apply(list(islice(self._queue, MAX_BATCH)))
            except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
                self._lost(exc)
                self._retry.clear()
                with contextlib.suppress(TimeoutError):  # cut short when the reader is back
                    await asyncio.wait_for(self._retry.wait(), delay)
                delay = min(1.0, delay * 2)
                continue
            except rx.RedisError as exc:  # a script error: drop the batch, keep going
                log.error("backplane write failed error=%s", exc)
                self._fail_batch(MAX_BATCH)
                continue
            delay = 0.05
            self._back()

    async def _script(self, name: str, source: str, args: list[Any]) -> Any:
        from redis import exceptions as rx

        sha = self._sha.get(name)
        if sha is not None:
            try:
                return await self._cmd.evalsha(sha, 0, *args)
            except rx.NoScriptError:
                pass  # Redis restarted and forgot it
        self._sha[name] = await self._cmd.script_load(source)
        return await self._cmd.evalsha(self._sha[name], 0, *args)

    async def _apply(self, batch: list[_Op]) -> None:
        ops = json.dumps([(op.kind, op.seq, op.a, op.b, op.c) for op in batch], ensure_ascii=False)
        args = [self.prefix, self.host, self.last_id, self._maxlen, self.lease_ms, ops]
        try:
            results = await self._script("apply", _APPLY, args)
        except BaseException:
            # Unknown whether it was applied: questions fail (the user may ask again),
            # broadcasts and releases stay queued and are resent with the same seq.
            self._fail_questions()
            raise
        for _ in batch:
            self._popleft()
        self.lag = time.monotonic() - batch[0].queued  # the oldest of the batch waited most
        for op, result in zip(batch, results, strict=True):
            if op.future is None or op.future.done():
                continue
            if op.kind == "who":
                op.future.set_result(sorted((n.decode() for n in result), key=str.lower))
            else:
                op.future.set_result(result == 1)

    def _popleft(self) -> _Op:
        op = self._queue.popleft()
        if op.kind == "adopt":
            self._adopts -= 1
        return op

    def _fail_questions(self) -> None:
        kept: deque[_Op] = deque()
        for op in self._queue:
            if op.future is None:
                kept.append(op)
            elif not op.future.done():
                op.future.set_exception(Unavailable("the shared store went away"))
        self._queue = kept

    def _fail_batch(self, size: int) -> None:
        for _ in range(min(size, len(self._queue))):
            op = self._popleft()
            if op.future is not None and not op.future.done():
                op.future.set_exception(Unavailable("the shared store refused it"))

    async def _renew(self) -> None:
        assert self._sink is not None
        args: list[Any] = [self.prefix, self.host, self.lease_ms]
        for name in self._sink.nicks_held():
            args += (name.lower(), name)
        lost = await self._script("renew", _RENEW, args)
        if lost:
            self._sink.nicks_lost([n.decode() for n in lost])

    # ---- reading --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        from redis import exceptions as rx

        delay = 0.05
        await self._reading.wait()
        while not self._closing:
            try:
                if self._inherited_until and asyncio.get_running_loop().time() > (
                    self._inherited_until
                ):
                    self._inboxes = {self._inbox: self._inboxes[self._inbox]}
                    self._inherited_until = 0.0
                reply = await self._reader.xread(
                    {self._room: self._room_pos, **self._inboxes},
                    count=READ_COUNT,
                    block=BLOCK_MS,
                )
            except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
                self._lost(exc)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            delay = 0.05
            self._back()
            if reply:
                await self._reading.wait()  # held during a handover's freeze
                if not self._closing:
                    try:
                        self._dispatch(reply)
                    except Exception:  # a bug must not end reading: every host would go deaf
                        log.exception("backplane could not deliver a batch: reading on")

    def _dispatch(self, reply: Any) -> None:
        """Room entries in order; each private one after the room entries it followed."""
        room: list[Any] = []
        inbox: list[tuple[int, str, bytes, dict[bytes, bytes]]] = []
        for stream, entries in reply:
            name = stream.decode()
            if name == self._room:
                room.extend(entries)
            elif name in self._inboxes:
                for entry_id, fields in entries:
                    try:
                        after = int(fields.get(b"a", b"0"))
                    except ValueError:
                        self._inboxes[name] = entry_id.decode()
                        _skipped(name, entry_id, "a position that is not a number")
                        continue
                    inbox.append((after, name, entry_id, fields))
        inbox.sort(key=lambda item: item[0])  # stable: each inbox keeps its own order
        lines: list[bytes] = []
        privates: list[tuple[str, bytes]] = []
        i = 0
        for after, name, entry_id, fields in inbox:
            while i < len(room) and int(room[i][0].split(b"-", 1)[0]) <= after:
                self._entry(room[i][0], room[i][1], lines)
                i += 1
            self._flush_lines(lines, privates)
            self._inboxes[name] = entry_id.decode()
            try:
                to, line = _private(fields)
            except (KeyError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                _skipped(name, entry_id, exc)
                continue
            privates.append((to, line))
            self._flush_lines(lines, privates)
        for entry_id, fields in room[i:]:
            self._entry(entry_id, fields, lines)
        self._flush_lines(lines, privates)

    def _flush_lines(self, lines: list[bytes], privates: list[tuple[str, bytes]]) -> None:
        assert self._sink is not None
        if lines:
            self._sink.deliver(lines.copy())
            lines.clear()
        for to, line in privates:
            self._sink.deliver_private(to, line)
        privates.clear()

    def _entry(self, entry_id: bytes, fields: dict[bytes, bytes], out: list[bytes] | None) -> None:
        """One room entry: checked as client input is (a bad one is skipped and logged: what
        Redis holds may have been written by anything that reached it)."""
        try:
            self._checked_entry(entry_id, fields, out)
        except (KeyError, ValueError) as exc:
            _skipped(self._room, entry_id, exc)

    def _checked_entry(
        self, entry_id: bytes, fields: dict[bytes, bytes], out: list[bytes] | None
    ) -> None:
        ms, _, seq = entry_id.decode().partition("-")
        self._room_pos = entry_id.decode()
        if seq == "0" and b"n" in fields:
            msg_id = int(ms)
            if out is not None:
                last = self._retained.last_id
                if msg_id <= last:
                    return  # already seen (cannot happen with a sane stream; never repeat one)
                if last and msg_id > last + 1:
                    log.warning(
                        "backplane gap after=%d next=%d (trimmed before read)", last, msg_id
                    )
            line = Message(msg_id, _nick(fields[b"n"]), _text(fields[b"t"])).line()
            self._retained.add(msg_id, line)
        elif b"l" in fields and out is not None:
            line = _presence(fields[b"l"])
        else:
            return
        if out is not None:
            out.append(line)

    # ---- availability ---------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if self.available:
            self.available = False
            log.warning("backplane lost redis=%s error=%s", redact(self.url), exc or type(exc))
            if self._sink is not None:
                self._sink.status(False)

    def _back(self) -> None:
        if not self.available:
            self.available = True
            log.info("backplane back redis=%s last_id=%d", redact(self.url), self.last_id)
            self._renew_due = 0.0  # re-take the leases at once: Redis may have lost them
            self._wake.set()
            self._retry.set()
            if self._sink is not None:
                self._sink.status(True)
