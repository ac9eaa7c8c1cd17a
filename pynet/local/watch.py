"""Watch a chat server for silences, from a process of its own.

    python -m pynet.local.watch HOST PORT [CLIENTS]

A load generator that reads a thousand sockets in one Python thread measures its own lag as
well as the server's: after a pause it is still sweeping the others when a sampled client's
lines arrive, so the silence it records is too long. These few clients, alone in their process,
note when each line arrives and nothing else. They join as `watchN`, print `ready`, and when
their standard input closes print one JSON object: the longest silence any of them saw between
two `MSG` lines (seconds), how many lines each got, and every silence of at least NOTED
seconds (at most MAX_GAPS, the longest) with the wall-clock time it ended, longest first, so a
bench can tell the silences that span a handover from the others. Used by
`bench/handover_bench.py` next to `pynet.local.load.LiveLoad`. Traffic goes only to the
address given.
"""

from __future__ import annotations

import heapq
import json
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import IO

from pynet.local.load import join

MSG = b"MSG "
NOTED = 0.02
"""Seconds: a silence at least this long is reported, with the wall-clock time it ended."""
MAX_GAPS = 50_000
"""Silences reported at most (the longest): a bound on the verdict, not reached in a bench."""


class Watch:
    """Runs in the bench's process: starts the watcher and reads its verdict."""

    def __init__(self, host: str, port: int, clients: int = 5) -> None:
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pynet.local.watch", host, str(port), str(clients)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the watcher did not start (exit {self._proc.wait(10)})")

    def stop(self) -> dict[str, object]:
        """The watcher's verdict: `longest_pause` (s) and `lines` per client."""
        out, _ = self._proc.communicate(timeout=30)
        return dict(json.loads(out))


def watch(socks: Sequence[socket.socket], stdin: IO[str]) -> dict[str, object]:
    """Read until STDIN closes; the longest gap between MSG arrivals on any socket."""
    last: dict[int, float] = {}
    lines = {sock.fileno(): 0 for sock in socks}
    longest = 0.0
    gaps: list[tuple[float, float]] = []  # a heap of the silences: (seconds, when it ended)
    tails: dict[int, bytes] = {}
    by_fd = {sock.fileno(): sock for sock in socks}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    poller.register(stdin.fileno(), select.EPOLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == stdin.fileno():
                return {
                    "longest_pause": longest,
                    "lines": sorted(lines.values()),
                    "gaps": [(ended, gap) for gap, ended in sorted(gaps, reverse=True)],
                }
            try:
                data = by_fd[fd].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                poller.unregister(fd)
                continue
            now = time.monotonic()
            data = tails.get(fd, b"") + data  # "MSG " cut by two reads counts where it ends
            tails[fd] = data[-3:]
            count = data.count(MSG)
            if count:
                if fd in last:
                    gap = now - last[fd]
                    longest = max(longest, gap)
                    if gap >= NOTED:
                        heapq.heappush(gaps, (gap, time.time()))
                        if len(gaps) > MAX_GAPS:
                            heapq.heappop(gaps)
                last[fd] = now
                lines[fd] += count


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or not all(a.isdigit() for a in args[1:]):
        print("usage: python -m pynet.local.watch HOST PORT [CLIENTS]", file=sys.stderr)
        return 2
    host, port, clients = args[0], int(args[1]), int(args[2]) if len(args) == 3 else 5
    socks = [join(host, port, f"watch{i}") for i in range(clients)]
    print("ready", flush=True)
    print(json.dumps(watch(socks, sys.stdin)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
