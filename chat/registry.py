"""Who is connected: the registry of one server's connections, without sockets.

It knows every connection served here, which of them chose a nickname, how many each address
holds (for `max_per_address`), and which are overdue (no nickname in time, a line left
unfinished, idle). It never writes to a connection: the server does, from what this returns.
Generic over the connection type, so tests use plain objects.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    """The protocol state of a connection, as far as the registry reads it."""

    @property
    def nick(self) -> str | None: ...


class Member(Protocol):
    """What the registry reads of a connection (`chat.connection.Peer` has these)."""

    address: str
    connected_at: float
    last_seen: float
    partial_since: float

    @property
    def conn(self) -> Named: ...


M = TypeVar("M", bound=Member)
B = TypeVar("B")


class Registry(Generic[M, B]):
    """The connections served here. `clients` is the one truth of who is served: a refused
    connection, or one handed over to a successor, is in none of these.

    SHARED, when given, makes what the connections of one address share (a rate limit: see
    `chat.protocol.TokenBucket`); it lives while the address holds a connection.
    """

    __slots__ = ("_shared", "clients", "named", "per_address", "shared", "unnamed", "version")

    def __init__(self, shared: Callable[[], B] | None = None) -> None:
        self.clients: set[M] = set()
        self.unnamed: set[M] = set()
        self.named: dict[str, M] = {}  # lower-cased nickname -> connection
        self.per_address: dict[str, int] = {}  # connections held per address_key
        self.shared: dict[str, B] = {}  # what the connections of an address share
        self._shared = shared
        self.version = 0  # changes whenever a nickname comes, goes or changes (for caches)

    def shared_of(self, key: str) -> B | None:
        """What the connections of address KEY share (None: nothing is shared)."""
        if self._shared is None:
            return None
        value = self.shared.get(key)
        if value is None:
            value = self.shared[key] = self._shared()
        return value

    def admits(self, key: str, cap: int) -> bool:
        """Whether one more connection from KEY fits under CAP (0: no cap)."""
        return not cap or self.per_address.get(key, 0) < cap

    def add(self, member: M, key: str) -> None:
        """Serve MEMBER (not named yet), counted against address KEY."""
        self.per_address[key] = self.per_address.get(key, 0) + 1
        member.address = key
        self.clients.add(member)

    def remove(self, member: M) -> None:
        """MEMBER's connection is gone: it no longer counts against its address."""
        self.clients.discard(member)
        count = self.per_address.pop(member.address, 0) - 1
        if count > 0:
            self.per_address[member.address] = count
        else:
            self.shared.pop(member.address, None)

    def name(self, member: M, nick: str, old: str | None) -> None:
        """MEMBER is known as NICK from now on (it was OLD, or unnamed when OLD is None)."""
        if old is None:
            self.unnamed.discard(member)
        else:
            self.named.pop(old.lower(), None)
        self.named[nick.lower()] = member
        self.version += 1

    def unname(self, member: M, nick: str | None) -> None:
        """Forget MEMBER's nickname (it is leaving)."""
        self.unnamed.discard(member)
        if nick is not None and self.named.get(nick.lower()) is member:
            del self.named[nick.lower()]
            self.version += 1

    def nicks(self) -> list[str]:
        """The nicknames in use here, as their holders chose them."""
        return [m.conn.nick for m in self.named.values() if m.conn.nick]

    def overdue(
        self, now: float, nick_timeout: float, line_timeout: float, idle_timeout: float
    ) -> list[tuple[M, str, str]]:
        """(member, reason, what the others are told) for each connection past a timeout, in
        the order they are checked: no nickname in time, a line left unfinished, idle (a
        timeout of 0 is off, except the nickname's). A member may be listed twice: the first
        reason wins, as dropping one twice does nothing."""
        due = [
            (m, "nick-timeout", "") for m in self.unnamed if m.connected_at <= now - nick_timeout
        ]
        if line_timeout:
            limit = now - line_timeout
            due += [
                (m, "line-timeout", "line-timeout")
                for m in self.clients
                if 0.0 < m.partial_since <= limit
            ]
        if idle_timeout:
            limit = now - idle_timeout
            due += [
                (m, "idle-timeout", "idle-timeout")
                for m in self.named.values()
                if m.last_seen <= limit
            ]
        return due

    def clear(self) -> None:
        self.clients.clear()
        self.unnamed.clear()
        self.named.clear()
        self.per_address.clear()
        self.shared.clear()
        self.version += 1


def address_key(peer: object) -> str:
    """The address a connection counts against for `max_per_address`.

    IPv4: the address. IPv6: its /64, since one host or home usually gets a whole /64 and
    could otherwise pick a new address per connection. IPv4-mapped IPv6 counts as IPv4.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    return _address_key(str(host))


@functools.lru_cache(maxsize=4096)
def _address_key(host: str) -> str:
    """Cached: a handover registers a thousand sessions at once, mostly from few addresses,
    and parsing each address again was a tenth of the time every client waited."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
