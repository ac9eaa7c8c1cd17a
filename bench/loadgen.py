"""Load generator for the chat benchmarks. Runs in its own process, driven over a Pipe.

Built to cost as little as possible per delivery, so that the figures are the server's: one raw
``select.epoll`` loop over non-blocking sockets, ``os.readv`` into one preallocated buffer, and
deliveries are counted with ``bytearray.count(b"\\n")`` (C speed, no parsing). Latency: each
send burst (one per millisecond) carries one *marked* broadcast, ``@@<send time, 19 digits>``;
the others are padding of the same length. A few sampled clients (spread over the connection
order, so early and late positions in the server's fan-out are both represented) look for the
mark with ``bytearray.find``; nothing splits lines.

Two wire protocols, the same load:
- ``chat`` (PyNet and the threaded baseline): N clients ``/nick``; ten of them also send
  ``<text>`` lines; every client (the senders too) receives ``MSG ID NAME TEXT``: 1 newline each.
- ``resp`` (Redis pub/sub): N clients ``SUBSCRIBE c``; ten more connections ``PUBLISH c <text>``
  and have their ``:N`` replies read and discarded; each ``message`` reply has 7 newlines.

Commands (tuples sent by the parent; each gets one reply):
    ("connect", n, nick)   open n clients and the senders, wait until quiet -> dict
    ("step", rate, warmup, duration, drain_max) -> dict of figures (see ``step``)
    ("close",)       close everything and exit
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import psutil

from bench._common import HOST, pin_self, raise_nofile

NL = b"\n"
EPOLLIN = select.EPOLLIN
OUTBUF_CAP = 1 << 20  # per sender: stop generating when this much is queued (server not reading)
MARK = b"@@"
MARK_LEN = len(MARK) + 19  # "@@" + send time in monotonic ns, zero-padded to 19 digits
PROTOCOLS = ("chat", "resp")
# fd roles in the receive loop (absent = plain receiver: count only)
SAMPLED, PUBLISHER = 1, 2


def encode(proto: str, text: bytes) -> bytes:
    """One broadcast as the sender writes it."""
    if proto == "resp":
        return b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$%d\r\n%s\r\n" % (len(text), text)
    return text + NL


class LoadGen:
    def __init__(
        self,
        port: int,
        server_pid: int,
        proto: str = "chat",
        senders: int = 10,
        samplers: int = 40,
        payload: int = 32,
        round_ms: float = 0.0,
    ) -> None:
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r}")
        self.proto = proto
        self.per_delivery = 7 if proto == "resp" else 1  # newlines per delivered broadcast
        self.round_ns = int(round_ms * 1e6)
        self.port = port
        self.server = psutil.Process(server_pid)
        self.n_senders = senders
        self.n_samplers = samplers
        self.pad = b"x" * max(0, payload)
        self.plain = encode(proto, b"x" * MARK_LEN + self.pad)
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.receivers = 0  # clients that get every broadcast
        self.role: dict[int, int] = {}  # fd -> SAMPLED / PUBLISHER
        self.tails: dict[int, bytes] = {}  # sampled fd -> last bytes (a mark split across reads)
        self.senders: list[int] = []
        self.outbuf: dict[int, bytearray] = {}
        self.buf = bytearray(1 << 18)
        self.bufs = [self.buf]
        self.newlines = 0  # newlines received by all receivers since connect finished
        self.sent = 0  # broadcasts written (or queued) since connect finished
        self.marked = 0  # marked broadcasts sent inside the measured window
        self.closed = 0
        self.errors: list[str] = []
        self.lat: list[int] = []
        self.win = (0, 0)  # send-time window whose latencies are recorded
        self.mark_turn = 0

    # -- setup -------------------------------------------------------------------------------
    def _open(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex((HOST, self.port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            raise RuntimeError(f"connect to {HOST}:{self.port}: {os.strerror(rc)}")
        self.socks[s.fileno()] = s
        return s

    def _greet(self, idx: int, sender: bool, nick: bool) -> tuple[bytes, bytes]:
        """(first line to wait for or b"", what to send then, or b"" to send nothing)."""
        if self.proto == "resp":
            return b"", (b"PING\r\n" if sender else b"SUBSCRIBE c\r\n")
        return b"HELLO", (b"/nick c%d\n" % idx if nick else b"")

    def _ready(self, pend: bytearray, sender: bool, nick: bool) -> bool:
        if self.proto == "resp":  # +PONG, or the 3-element subscribe confirmation
            return pend.count(NL) >= (1 if sender else 6)
        return b"\nOK nick " in pend if nick else True

    def connect(
        self, n: int, nick: bool = True, batch: int = 256, timeout: float | None = None
    ) -> dict:
        """Open n receivers (chat: the first of them also send; resp: plus the publishers).

        ``nick=False`` (chat only) stops after ``HELLO``: connected but not named.
        """
        t0 = time.monotonic()
        deadline = t0 + (timeout if timeout is not None else 30 + n / 100)
        extra = self.n_senders if self.proto == "resp" else 0
        total = n + extra
        state: dict[int, list[Any]] = {}  # fd -> [idx, pending bytes, sent?, sender?]
        order: list[int] = []
        started = ready = 0
        while ready < total:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(
                    f"connect: only {ready}/{total} clients ready after {now - t0:.0f}s"
                )
            while started < total and started - ready < batch:
                s = self._open()
                fd = s.fileno()
                state[fd] = [started, bytearray(), False, started >= n]
                order.append(fd)
                self.ep.register(fd, EPOLLIN | select.EPOLLOUT)
                started += 1
            for fd, ev in self.ep.poll(0.2):
                st = state.get(fd)
                if st is None:  # ready: discard what others' setup broadcasts (JOIN lines)
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        os.read(fd, 1 << 18)
                    continue
                idx, pend, said, sender = st
                (
                    expect,
                    say,
                ) = self._greet(idx, sender, nick)
                if ev & select.EPOLLOUT:
                    self.ep.modify(fd, EPOLLIN)
                    if not expect and not said:
                        self.socks[fd].send(say)
                        st[2] = said = True
                if not ev & (EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise RuntimeError(f"client {idx}: {exc}") from exc
                if not data:
                    raise RuntimeError(
                        f"client {idx}: closed by the server during setup ({bytes(pend)[-200:]!r})"
                    )
                pend += data
                if pend.startswith((b"ERR", b"BYE", b"-")) or b"\nERR" in pend or b"\n-" in pend:
                    raise RuntimeError(f"client {idx}: {bytes(pend)[:200]!r}")
                if expect and not said and NL in pend:
                    if not pend.startswith(expect):
                        raise RuntimeError(f"client {idx}: {bytes(pend)[:200]!r}")
                    if say:
                        self.socks[fd].send(say)
                    st[2] = said = True
                if said and self._ready(pend, sender, nick):
                    ready += 1
                    del state[fd]
        connect_s = time.monotonic() - t0
        quiet_s = self.quiesce()
        receivers = order[:n]
        self.receivers = n
        if self.proto == "resp":
            self.senders = order[n:]
            self.role = dict.fromkeys(self.senders, PUBLISHER)
        else:
            self.senders = receivers[: min(n, self.n_senders)]
            self.role = {}
        n_samp = min(n, self.n_samplers)
        for i in range(n_samp):
            self.role[receivers[(i * n) // n_samp]] = SAMPLED
        if self.proto == "chat" and not nick:
            self.senders = []
        if self.proto == "chat":
            for fd in self.senders:  # a sender also receives: sample its own echo
                self.role[fd] = SAMPLED
        self.tails = {fd: b"" for fd, r in self.role.items() if r == SAMPLED}
        self.outbuf = {fd: bytearray() for fd in self.senders}
        self.newlines = self.sent = 0
        return {
            "connected": n,
            "connect_s": connect_s,
            "quiesce_s": quiet_s,
            "samplers": len(self.tails),
            "senders": len(self.senders),
        }

    def quiesce(self, quiet: float = 0.3, limit: float = 120.0) -> float:
        """Read and discard until nothing has arrived for ``quiet`` seconds (JOIN storms)."""
        t0 = last = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last >= quiet or now - t0 > limit:
                return now - t0
            for fd, _ev in self.ep.poll(0.05):
                try:
                    data = os.read(fd, 1 << 18)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(fd, "closed during setup")
                last = time.monotonic()

    def _drop(self, fd: int, why: str) -> None:
        with contextlib.suppress(KeyError, OSError):
            self.ep.unregister(fd)
        s = self.socks.pop(fd, None)
        if s is not None:
            s.close()
            self.closed += 1
            if self.role.get(fd) != PUBLISHER:
                self.receivers -= 1
            if len(self.errors) < 20:
                self.errors.append(f"fd {fd}: {why}")
        self.role.pop(fd, None)
        self.tails.pop(fd, None)
        self.outbuf.pop(fd, None)
        if fd in self.senders:
            self.senders.remove(fd)

    # -- the hot loop ------------------------------------------------------------------------
    def _receive(self, events: list[tuple[int, int]]) -> None:
        buf = self.buf
        bufs = self.bufs
        role = self.role
        readv = os.readv
        newlines = 0
        # The sampled clients first: a round reads up to thousands of sockets, and a mark read
        # at the end of one would carry the time spent reading all the others before it (the
        # load generator's lag, not the server's latency). Their reads are timed one by one.
        tails = self.tails
        sampled = [event for event in events if event[0] in tails]
        if sampled:
            events = sampled + [event for event in events if event[0] not in tails]
        for fd, _ev in events:
            try:
                n = readv(fd, bufs)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                self._drop(fd, str(exc))
                continue
            if n == 0:
                self._drop(fd, "closed by server")
                continue
            r = role.get(fd)
            if r is None:
                newlines += buf.count(NL, 0, n)
            elif r == SAMPLED:
                newlines += buf.count(NL, 0, n)
                self._marks(fd, n)
            elif buf.startswith(b"-", 0, n):  # a publisher's reply: only errors matter
                self._note(bytes(buf[:n]))
        self.newlines += newlines

    def _marks(self, fd: int, n: int) -> None:
        """Record the latency of every mark in the ``n`` bytes just read (and one split before)."""
        buf = self.buf
        now = time.monotonic_ns()
        lo, hi = self.win
        lat = self.lat
        tail = self.tails[fd]
        if tail:  # a mark that began in the previous read
            head = tail + bytes(buf[: min(n, MARK_LEN)])
            i = head.find(MARK)
            while 0 <= i < len(tail) and i + MARK_LEN <= len(head):
                ts = int(head[i + 2 : i + MARK_LEN])
                if lo <= ts < hi:
                    lat.append(now - ts)
                i = head.find(MARK, i + 1)
        i = buf.find(MARK, 0, n)
        while i >= 0 and i + MARK_LEN <= n:
            ts = int(buf[i + 2 : i + MARK_LEN])
            if lo <= ts < hi:
                lat.append(now - ts)
            i = buf.find(MARK, i + MARK_LEN, n)
        keep = MARK_LEN - 1
        self.tails[fd] = bytes(buf[n - keep : n]) if n >= keep else (tail + bytes(buf[:n]))[-keep:]

    def _note(self, data: bytes) -> None:
        if len(self.errors) < 20:
            self.errors.append(data.decode(errors="replace")[:200])

    def _send(self, due: int, now: int) -> int:
        """Write ``due`` broadcasts now over the senders, the first one marked; flush queues."""
        senders = list(self.senders)  # a failed write drops its sender from self.senders
        if not senders:
            return 0
        k = len(senders)
        generated = 0
        first = self.mark_turn % k
        if due:
            self.mark_turn += 1
            lo, hi = self.win
            if lo <= now < hi:
                self.marked += 1
        plain = self.plain
        for j in range(k):
            i = (first + j) % k
            fd = senders[i]
            count = due // k + (1 if j < due % k else 0)
            ob = self.outbuf[fd]
            if count and len(ob) < OUTBUF_CAP:
                if j == 0:
                    ob += encode(self.proto, MARK + b"%019d" % now + self.pad)
                    count -= 1
                    generated += 1
                ob += plain * count
                generated += count
            if ob:
                try:
                    w = os.write(fd, ob)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self._drop(fd, f"send: {exc}")
                    continue
                del ob[:w]
        return generated

    def _pending_out(self) -> int:
        return sum(len(b) for b in self.outbuf.values())

    def step(self, rate: float, warmup: float, duration: float, drain_max: float) -> dict:
        """Offer ``rate`` broadcasts/s for warmup+duration seconds, then drain.

        Latency is recorded for the marked broadcasts sent inside the measured window,
        including those received during the drain; ones never received count as infinitely late.
        """
        settle_s, backlog = self._settle()
        ep = self.ep
        recv = self._receive
        mono = time.monotonic_ns
        tick = 1_000_000  # 1 ms between send bursts
        self.lat = []
        self.marked = 0
        t0 = mono()
        tm0 = t0 + int(warmup * 1e9)
        tm1 = tm0 + int(duration * 1e9)
        self.win = (tm0, tm1)
        per_ns = rate / 1e9
        gen = 0  # broadcasts generated in this step
        shed = 0
        snap = None
        next_send = t0
        round_ns = self.round_ns
        last_poll = mono()
        busy: list[int] = []  # ns spent per receive round: how long ready data can wait for us
        while True:
            now = mono()
            if snap is None and now >= tm0:
                snap = self._snapshot(gen)
            if now >= tm1:
                break
            if now >= next_send:
                due = int((now - t0) * per_ns) - gen - shed
                if due > 0:
                    g = self._send(due, now)
                    gen += g
                    shed += due - g
                    self.sent += g
                elif self._pending_out():
                    self._send(0, now)
                next_send = now + tick
            t = mono()
            if round_ns and t - last_poll < round_ns:
                # let more bytes pile up per socket: fewer, bigger reads (<= round_ns of latency)
                time.sleep(min(round_ns - (t - last_poll), max(0, next_send - t)) / 1e9)
            last_poll = mono()
            events = ep.poll(max(0.0, (next_send - last_poll) / 1e9))
            if events:
                t = mono()
                recv(events)
                if snap is not None:
                    busy.append(mono() - t)
        end = self._snapshot(gen)
        assert snap is not None
        # drain: keep flushing queued broadcasts and receiving until every one has arrived
        d0 = mono()
        d_end = d0 + int(drain_max * 1e9)
        while True:
            pending_out = self._pending_out()
            if pending_out:
                self._send(0, 0)
            expected = self.sent * self.receivers * self.per_delivery
            if self.newlines >= expected and not pending_out:
                break
            if mono() >= d_end:
                break
            events = ep.poll(0.002)
            if events:
                recv(events)
        drain_s = (mono() - d0) / 1e9
        fig = self._figures(rate, snap, end, drain_s, shed)
        busy.sort()
        fig["lg_round_p99_ms"] = busy[int(0.99 * len(busy))] / 1e6 if busy else 0.0
        fig["lg_round_max_ms"] = busy[-1] / 1e6 if busy else 0.0
        fig["settle_s"] = settle_s
        fig["stale"] = backlog  # deliveries of earlier points still owed when this one began
        return fig

    def _backlog(self) -> int:
        """Deliveries sent but not yet received (by the receivers still connected)."""
        owed = self.sent * self.receivers * self.per_delivery - self.newlines
        return max(0, owed // self.per_delivery)

    def _settle(self, limit: float = 30.0, quiet: float = 1.0) -> tuple[float, int]:
        """Before a point: receive what earlier points still owe, until nothing is owed, or
        nothing arrived for ``quiet`` seconds, or ``limit`` passed. -> (seconds, still owed)."""
        t0 = last = time.monotonic()
        while self._backlog() or self._pending_out():
            now = time.monotonic()
            if now - last >= quiet or now - t0 >= limit:
                break
            if self._pending_out():
                self._send(0, 0)
            events = self.ep.poll(0.01)
            if events:
                self._receive(events)
                last = time.monotonic()
        return time.monotonic() - t0, self._backlog()

    def _snapshot(self, gen: int) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        st = self.server.cpu_times()
        sysw = psutil.cpu_times()
        return {
            "busy": sum(sysw) - sysw.idle - getattr(sysw, "iowait", 0.0),
            "t": time.monotonic(),
            "newlines": self.newlines,
            "gen": gen,
            "lg_cpu": ru.ru_utime + ru.ru_stime,
            "lg_sys": ru.ru_stime,
            "srv_cpu": st.user + st.system,
            "srv_rss": self.server.memory_info().rss,
        }

    def _figures(self, rate: float, a: dict, b: dict, drain_s: float, shed: int) -> dict:
        dt = b["t"] - a["t"]
        sent_win = b["gen"] - a["gen"]
        lat = sorted(self.lat)
        # every sampled client should hold one sample per marked broadcast sent in the window
        expected_samples = self.marked * len(self.tails)
        missing = max(0, expected_samples - len(lat))

        def pct(p: float) -> float | None:
            if not lat:
                return None
            idx = min(len(lat) + missing - 1, int(p * (len(lat) + missing)))
            if idx >= len(lat):
                return None  # inside the part that never arrived
            return lat[idx] / 1e6

        return {
            "rate": rate,
            "clients": self.receivers,
            "offered": rate * self.receivers,
            "sent_per_s": sent_win / dt,
            "delivered_per_s": (b["newlines"] - a["newlines"]) / self.per_delivery / dt,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": (lat[-1] / 1e6) if lat and not missing else None,
            "samples": len(lat),
            "missing": missing,
            "srv_cpu_pct": 100 * (b["srv_cpu"] - a["srv_cpu"]) / dt,
            "srv_rss": b["srv_rss"],
            "lg_cpu_pct": 100 * (b["lg_cpu"] - a["lg_cpu"]) / dt,
            "lg_sys_pct": 100 * (b["lg_sys"] - a["lg_sys"]) / dt,
            # CPU used by everything else on the machine (noise), % of one core
            "other_cpu_pct": 100
            * (
                (b["busy"] - a["busy"])
                - (b["lg_cpu"] - a["lg_cpu"])
                - (b["srv_cpu"] - a["srv_cpu"])
            )
            / dt,
            "drain_s": drain_s,
            "shed": shed,
            "closed": self.closed,
            "errors": list(self.errors),
        }

    def close(self) -> None:
        for s in self.socks.values():
            with contextlib.suppress(OSError):
                s.close()
        self.socks.clear()
        self.ep.close()


def run(
    ctl: Connection,
    port: int,
    server_pid: int,
    cpuset: set[int] | None,
    nice: int,
    rt: int,
    **kw,
) -> None:
    """Process entry point: serve commands from ``ctl`` until "close" or EOF."""
    raise_nofile()
    pin_self(cpuset, nice, rt)
    lg = LoadGen(port, server_pid, **kw)
    try:
        while True:
            try:
                cmd = ctl.recv()
            except EOFError:
                break
            try:
                if cmd[0] == "connect":
                    ctl.send(("ok", lg.connect(*cmd[1:])))
                elif cmd[0] == "step":
                    ctl.send(("ok", lg.step(*cmd[1:])))
                elif cmd[0] == "close":
                    ctl.send(("ok", {}))
                    break
                else:
                    ctl.send(("error", f"unknown command {cmd[0]!r}"))
            except Exception as exc:
                ctl.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        lg.close()


class LoadGenProcess:
    """Parent-side handle: starts ``run`` in a separate (spawned) process."""

    def __init__(
        self,
        port: int,
        server_pid: int,
        cpuset: set[int] | None,
        nice: int = 0,
        rt: int = 0,
        **kw,
    ) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.ctl, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=run,
            args=(child, port, server_pid, cpuset, nice, rt),
            kwargs=kw,
            daemon=True,
            name="pynet-loadgen",
        )
        self.proc.start()
        child.close()

    def call(self, *cmd, timeout: float = 600.0) -> dict:
        self.ctl.send(cmd)
        if not self.ctl.poll(timeout):
            raise RuntimeError(f"load generator did not answer {cmd[0]!r} in {timeout}s")
        status, value = self.ctl.recv()
        if status != "ok":
            raise RuntimeError(f"load generator: {value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.is_alive():
                self.ctl.send(("close",))
                self.ctl.poll(10)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.ctl.close()
