"""TCP keepalive tuned so a peer that vanished is noticed in about a minute, on both ends.

A peer can vanish without a FIN or RST: a laptop sleeps and wakes on another network, a host
loses power, a NAT or load balancer forgets an idle flow. Without keepalive the socket stays
open forever and the server keeps the dead session and its nickname. The kernel defaults
(first probe after 2 hours) are far too slow and longer than most middleboxes keep idle flows
(an AWS Network Load Balancer drops TCP flows idle for 350 s), so both ends set:

- TCP_KEEPIDLE: silence before the first probe; a probe also refreshes NAT and load balancer
  state, so it must stay well under their idle timeouts;
- TCP_KEEPINTVL / TCP_KEEPCNT: how often and how many unanswered probes mean dead;
- TCP_USER_TIMEOUT (Linux): the same bound for data sent and never acknowledged, which
  keepalive alone does not cover (keepalive only probes while nothing is in flight).
"""

from __future__ import annotations

import socket
from typing import Protocol

IDLE = 30
INTERVAL = 10
COUNT = 3
"""Defaults: probe after 30 s of silence, every 10 s, dead after 3 misses: 60 s in all."""


class _SocketLike(Protocol):
    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def dead_after(idle: int, interval: int, count: int) -> int:
    """Seconds from the last sign of life until the kernel gives the connection up."""
    return idle + interval * count


def enable(
    sock: _SocketLike, idle: int = IDLE, interval: int = INTERVAL, count: int = COUNT
) -> None:
    """Turn keepalive on for SOCK with these timers; idle 0 leaves the socket as it is.

    Options this platform lacks are skipped (TCP_USER_TIMEOUT is Linux only): keepalive then
    still finds dead idle peers.
    """
    if idle <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
        ("TCP_USER_TIMEOUT", dead_after(idle, interval, count) * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
