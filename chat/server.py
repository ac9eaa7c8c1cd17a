"""The chat server process: `python -m chat.server`.

Take over from the release serving now (`chat.takeover`) or start fresh, run `ChatServer`
(`chat.service`, the asyncio adapter around the rooms) until a signal or a successor, and
exit with the status the unit expects. Nothing here is on a client's path: this module is
the process's wiring, the adapter is the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING

from chat import __version__, collector, config
from chat import metrics as metrics_
from chat.config import Settings
from chat.connection import Peer
from chat.handover import HandoverError, SessionRefused
from chat.history import History, HistoryError
from chat.service import ChatServer
from chat.takeover import BUSY, Inheritance, Taking, take

if TYPE_CHECKING:
    from chat.cluster import ClusterRoom

log = logging.getLogger("chat.server")

SWITCH_RECORD = "last-switch.json"
HANDED_OVER_EXIT = 99
"""Exit status after a successor took over: the unit must not restart this release
(`RestartPreventExitStatus=` in the chat role's unit)."""


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


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def serve(settings: Settings) -> int:
    """Take over from the release serving now, or start fresh; run until SIGTERM/SIGINT or
    until a successor takes over. Returns the exit status."""
    began = time.perf_counter()
    # The history first: the predecessor's clients wait from `take` on, not for this; and a
    # file that cannot be used stops this release before it disturbs the one serving.
    try:
        history = History(settings.history_size, settings.history)
    except HistoryError as exc:
        log.error("error starting: %s", exc)
        return 1
    try:
        server = ChatServer(settings, history)
        collector.PauseWatch(server.metrics).install()
        signals = _Signals()
        how = await _begin(server, settings)
        if how is None:
            return 1
        record: dict[str, object] = {
            "how": how[0],
            "release": settings.release,
            "sessions": len(server.clients),
            "ms": round((time.perf_counter() - began) * 1000, 1),
            "time": time.time(),
        }
        if how[1]:
            record["from"] = how[1]
        if how[2]:
            record["reason"] = how[2]
        log.info("switch %s", " ".join(f"{k}={v}" for k, v in record.items()))
        if settings.handover_socket:
            write_switch_record(settings.handover_socket, record)
        exposed = metrics_.start(
            server.metrics,
            settings.metrics_host,
            settings.metrics_port,
            settings.metrics_cloudwatch,
        )
        signame = await _run_until_stopped(server, signals)
        exposed.close(wait=False)  # never blocks the loop; a successor binds the port next
        if signame is None:
            history.close()
            await server.room.close()  # what this release queued still reaches Redis
            log.info("stop version=%s release=%s handed over", __version__, settings.release)
            return HANDED_OVER_EXIT
        log.info("stopping signal=%s clients=%d", signame, len(server.clients))
        server.close_handover_point()
        await server.stop()
        log.info("stop version=%s last_id=%d", __version__, history.last_id)
        return 0
    finally:
        history.close()


async def _begin(server: ChatServer, settings: Settings) -> tuple[str, str, str] | None:
    """Take over or start; (how, from which release, why a fallback), or None after an error
    (logged; a predecessor, if any, serves on)."""
    cluster: ClusterRoom | None = None
    if settings.backplane:
        from chat.backplane import BackplaneError
        from chat.cluster import connect

        try:
            # Before asking the serving release for anything: redis-py's import and the
            # connection cost ~160 ms, which would otherwise be spent in the handover's pause.
            cluster = await connect(
                server, settings.backplane, settings.history_size, settings.log_messages
            )
        except BackplaneError as exc:
            log.error("error starting: %s", exc)
            return None
    began = None
    try:
        began = await _take_over_or_start(server, settings, cluster)
    finally:
        if began is None and cluster is not None:
            await cluster.close()  # whatever stopped it: its Redis connections go with it
    return began


async def _take_over_or_start(
    server: ChatServer, settings: Settings, cluster: ClusterRoom | None
) -> tuple[str, str, str] | None:
    """`_begin`, once connected to the cluster's Redis (CLUSTER), if any."""
    inheritance: Inheritance[Peer] | None = None
    taking: Taking[Peer] | None = None
    how, why = "fresh", ""

    def give_up(exc: Exception) -> None:
        """Before `ready`: say why, and let the serving release (if any) serve on."""
        log.error("error starting: %s", exc)
        if inheritance is not None:
            inheritance.refuse(f"successor failed: {exc}")
        elif taking is not None:
            taking.refuse(f"successor failed: {exc}")

    if settings.handover_socket:
        try:
            taking = take(
                settings.handover_socket, settings.release, settings.handover_timeout, server
            )
            if taking is not None:
                # The loop's turn finishes making the held transports (asyncio does it in
                # callbacks), here rather than in the pause.
                await asyncio.sleep(0)
                server.arm(taking.precopied_held())
                inheritance, taking = taking.finish(), None
        except SessionRefused as exc:  # the predecessor was told, and serves on
            log.error("error starting: %s", exc)
            return None
        except (HandoverError, OSError, EOFError) as exc:
            how, why = "fallback", str(exc) or type(exc).__name__
            if BUSY in why:
                log.error("error starting: the serving release refused: %s", why)
                return None
            log.warning("handover impossible reason=%s: starting next to the serving release", why)
    if cluster is not None:
        from chat.backplane import BackplaneError, Position

        try:
            # Before listening: no client is served without Redis. A successor reads on from
            # the last id the predecessor's clients saw.
            begin = inheritance.begin if inheritance is not None else None
            inherit = Position(**begin.backplane) if begin is not None and begin.backplane else None
            if begin is not None and inherit is not None and begin.retained is not None:
                # A host of this cluster handed over all it knew: no round trip, no await.
                cluster.take_over(begin.last_id, begin.retained, inherit)
            else:
                server.unarm()  # the loop turns of loading from Redis must read no client
                await cluster.start(begin.last_id if begin is not None else None, inherit)
        except BackplaneError as exc:
            give_up(exc)
            return None
        server.room = cluster
        log.info("cluster %s", cluster.describe())
    try:
        if inheritance is not None:
            if not inheritance.confirm():
                return None
            server.room.claim_adopted()  # before the loop runs again: ahead of any request
            laps = inheritance.laps
            laps.lap("confirm")
            server.history.adopt(inheritance.begin.last_id, inheritance.begin.history)
            laps.lap("history")
            await server.adopt(inheritance)
            server.room.adopted()
            laps.lap("adopt")
            how = "handover"
            # From the freeze (the begin frame follows it at once) to reading again.
            paused = time.perf_counter() - inheritance.frozen_at
            server.metrics.handover(paused)
            log.info(
                "handover took sessions=%d paused_ms=%.1f %s",
                len(inheritance.sessions),
                paused * 1000,
                laps,
            )
        else:
            await server.start()
        if settings.handover_socket:
            server.open_handover_point(settings.handover_socket)
    except (OSError, HandoverError) as exc:
        log.error("error starting: %s", exc)
        return None
    return how, inheritance.begin.release if inheritance is not None else "", why


class _Signals:
    """SIGTERM and SIGINT, caught from the moment the server exists (a signal that comes while
    it starts, or takes over, stops it gracefully once it serves, instead of killing it)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.received: list[str] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._caught, sig)

    def _caught(self, sig: signal.Signals) -> None:
        self.received.append(sig.name)
        self.stop.set()


async def _run_until_stopped(server: ChatServer, signals: _Signals) -> str | None:
    """Serve until a signal (its name) or until a successor took over (None)."""
    handed = asyncio.ensure_future(server.handed_over.wait())
    stopped = asyncio.ensure_future(signals.stop.wait())
    await asyncio.wait({handed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    handed.cancel()
    stopped.cancel()
    if server.handed_over.is_set():
        return None
    return signals.received[0]


def write_switch_record(handover_socket: str, record: dict[str, object]) -> None:
    """`last-switch.json` beside the handover socket: how this release took over (for
    `fab releases`). Best effort: a failure to write it is logged, never fatal."""
    path = os.path.join(os.path.dirname(handover_socket), SWITCH_RECORD)
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(record, file, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("switch record not written path=%s error=%s", path, exc)


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)
    setup_logging(settings.log_level)
    nofile = _raise_open_file_limit()
    if nofile < settings.max_clients:
        log.warning("open file limit %d is below max_clients=%d", nofile, settings.max_clients)
    # The standard loop, even where uvloop is installed: a handover takes unsent bytes back
    # from CPython's selector transports and builds transports for held sockets through them
    # (chat/connection.py), and under uvloop every connection failed as it was made.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
