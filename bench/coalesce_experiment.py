"""Experiment: ``chat.server`` with broadcasts coalesced over a short time window.

Not a server to deploy: it monkeypatches ``ChatServer._broadcast`` so that, when at least
``COALESCE_MIN_CLIENTS`` (256) clients are named, the flush that fans broadcasts out runs
``COALESCE_MS`` (default 5) milliseconds after the first pending broadcast instead of at the end
of the current loop iteration. Each ``send()`` then carries several messages. Used to check the
profile finding in bench/README.md:

    BENCH_PYNET_MODULE=bench.coalesce_experiment COALESCE_MS=5 \\
        .venv/bin/python -m bench.chat_load --servers pynet --clients 1000

Written against chat/server.py as of this benchmark; delete it once the server coalesces.
"""

from __future__ import annotations

import os
import sys

import chat.server as chat_server

DELAY = float(os.environ.get("COALESCE_MS", "5")) / 1000
MIN_CLIENTS = int(os.environ.get("COALESCE_MIN_CLIENTS", "256"))


def _broadcast(self: chat_server.ChatServer, data: bytes) -> None:
    self._batch.append(data)
    for client in self._forked:
        if client.receiving:
            client.out.append(data)  # type: ignore[union-attr]
    if not self._flush_scheduled:
        self._flush_scheduled = True
        if len(self.named) >= MIN_CLIENTS:
            self._loop.call_later(DELAY, self._flush)
        else:
            self._loop.call_soon(self._flush)


chat_server.ChatServer._broadcast = _broadcast  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(chat_server.main())
