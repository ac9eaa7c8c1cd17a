"""Load generator for the chat benchmarks. Runs in its own process, driven over a Pipe.

Built for throughput so that it is not the bottleneck: one raw ``select.epoll`` loop over
non-blocking sockets, ``os.readv`` into one preallocated buffer, and delivered lines are counted
with ``bytearray.count(b"\\n")`` (C speed, no parsing). Only a few "sample" clients (the senders
plus receivers spread evenly over the connection order) split lines and parse the send timestamp
carried in each broadcast to record latency.

Commands (tuples sent by the parent; each gets one reply):
    ("connect", n, nick)   open n clients (and /nick them), wait until quiet -> dict
    ("step", rate, warmup, duration, drain_max) -> dict of figures (see ``step``)
    ("close",)             close everything and exit
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

import psutil

from bench._common import HOST, pin_self, raise_nofile

NL = b"\n"
EPOLLIN = select.EPOLLIN
OUTBUF_CAP = 1 << 20  # per sender: stop generating when this much is queued (server not reading)


class LoadGen:
    def __init__(
        self,
        port: int,
        server_pid: int,
        senders: int = 10,
        samplers: int = 40,
        payload: int = 32,
        round_ms: float = 0.0,
    ) -> None:
        self.round_ns = int(round_ms * 1e6)
        self.port = port
        self.server = psutil.Process(server_pid)
        self.n_senders = senders
        self.n_samplers = samplers
        self.pad = b"x" * max(0, payload)
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.order: list[int] = []  # fds in connection order
        self.sample: dict[int, bytearray] = {}  # fd -> partial line buffer, for sampled clients
        self.senders: list[int] = []
        self.outbuf: dict[int, bytearray] = {}
        self.buf = bytearray(1 << 18)
        self.bufs = [self.buf]
        self.lines = 0  # lines received by all clients since connect finished
        self.sent = 0  # broadcasts written (or queued) since connect finished
        self.alive = 0
        self.closed = 0
        self.errors: list[str] = []
        self.lat: list[int] = []
        self.win = (0, 0)  # send-time window whose latencies are recorded

    # -- setup -------------------------------------------------------------------------------
    def connect(self, n: int, nick: bool, batch: int = 256, timeout: float | None = None) -> dict:
        t0 = time.monotonic()
        deadline = t0 + (timeout if timeout is not None else 30 + n / 100)
        stage: dict[int, int] = {}  # 0 wait HELLO, 1 wait OK nick, 2 ready
        pend: dict[int, bytearray] = {}
        names: dict[int, int] = {}
        started = ready = 0
        while ready < n:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"connect: only {ready}/{n} clients ready after {now - t0:.0f}s")
            while started < n and started - ready < batch:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rc = s.connect_ex((HOST, self.port))
                if rc not in (0, errno.EINPROGRESS):
                    raise RuntimeError(f"connect #{started}: {os.strerror(rc)}")
                fd = s.fileno()
                self.socks[fd] = s
                self.order.append(fd)
                stage[fd] = 0
                pend[fd] = bytearray()
                names[fd] = started
                self.ep.register(fd, EPOLLIN)
                started += 1
            for fd, _ev in self.ep.poll(0.2):
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise RuntimeError(f"client {names.get(fd)}: {exc}") from exc
                if not data:
                    raise RuntimeError(
                        f"client {names.get(fd)}: closed by server during setup "
                        f"({bytes(pend.get(fd, b''))[-200:]!r})"
                    )
                if stage[fd] == 2:
                    continue
                pb = pend[fd]
                pb += data
                while stage[fd] < 2 and NL in pb:
                    i = pb.index(NL)
                    line = bytes(pb[:i])
                    del pb[: i + 1]
                    if line.startswith(b"ERR") or line.startswith(b"BYE"):
                        raise RuntimeError(f"client {names[fd]}: {line!r}")
                    if stage[fd] == 0 and line.startswith(b"HELLO"):
                        if nick:
                            self.socks[fd].send(b"/nick c%d\n" % names[fd])
                            stage[fd] = 1
                        else:
                            stage[fd] = 2
                    elif stage[fd] == 1 and line.startswith(b"OK nick"):
                        stage[fd] = 2
                if stage[fd] == 2:
                    ready += 1
                    pend[fd] = bytearray()
        connect_s = time.monotonic() - t0
        quiet_s = self.quiesce()
        self.alive = n
        n_samp = min(n, self.n_samplers)
        picks = {self.order[(i * n) // n_samp] for i in range(n_samp)}
        self.senders = self.order[: min(n, self.n_senders)] if nick else []
        picks.update(self.senders)
        self.sample = {fd: bytearray() for fd in picks}
        self.outbuf = {fd: bytearray() for fd in self.senders}
        self.lines = self.sent = 0
        return {
            "connected": n,
            "connect_s": connect_s,
            "quiesce_s": quiet_s,
            "samplers": len(self.sample),
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
            self.alive -= 1
            if len(self.errors) < 20:
                self.errors.append(f"fd {fd}: {why}")
        self.sample.pop(fd, None)
        self.outbuf.pop(fd, None)
        if fd in self.senders:
            self.senders.remove(fd)

    # -- the hot loop ------------------------------------------------------------------------
    def _receive(self, events: list[tuple[int, int]]) -> None:
        buf = self.buf
        bufs = self.bufs
        sample = self.sample
        readv = os.readv
        lines = 0
        now = 0
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
            lines += buf.count(NL, 0, n)
            pb = sample.get(fd)
            if pb is not None:
                if not now:
                    now = time.monotonic_ns()
                self._parse(fd, pb, buf[:n], now)
        self.lines += lines

    def _parse(self, fd: int, pb: bytearray, data: bytearray, now: int) -> None:
        pb += data
        if NL not in data:
            return
        parts = pb.split(NL)
        rest = parts.pop()
        lo, hi = self.win
        lat = self.lat
        for line in parts:
            if line.startswith(b"MSG "):
                f = line.split(b" ", 4)
                if len(f) >= 4:
                    try:
                        ts = int(f[3])
                    except ValueError:
                        continue
                    if lo <= ts < hi:
                        lat.append(now - ts)
            elif line and len(self.errors) < 20 and line.startswith((b"ERR", b"BYE")):
                self.errors.append(line.decode(errors="replace")[:200])
        pb[:] = rest

    def _send(self, due: int, now: int) -> int:
        """Generate ``due`` broadcasts now, round-robin over the senders; flush queues."""
        senders = self.senders
        if not senders:
            return 0
        k = len(senders)
        generated = 0
        line = b"%d %s\n" % (now, self.pad)
        for i, fd in enumerate(list(senders)):
            count = due // k + (1 if i < due % k else 0)
            ob = self.outbuf[fd]
            if count and len(ob) < OUTBUF_CAP:
                ob += line * count
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

        Latency is recorded for broadcasts sent inside the measured window, including those
        received during the drain; ones never received count as infinitely late.
        """
        ep = self.ep
        recv = self._receive
        mono = time.monotonic_ns
        tick = 1_000_000  # 1 ms between send bursts
        self.lat = []
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
                next_send = now + tick
            t = mono()
            if round_ns and t - last_poll < round_ns:
                # let more lines pile up per socket: fewer, bigger reads (<= round_ns of latency)
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
            expected = self.sent * self.alive
            if self.lines >= expected and not pending_out:
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
        return fig

    def _snapshot(self, gen: int) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        st = self.server.cpu_times()
        sysw = psutil.cpu_times()
        return {
            "busy": sum(sysw) - sysw.idle - getattr(sysw, "iowait", 0.0),
            "t": time.monotonic(),
            "lines": self.lines,
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
        # every sampled client should hold one sample per broadcast sent in the window
        expected_samples = sent_win * len(self.sample)
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
            "clients": self.alive,
            "offered": rate * self.alive,
            "sent_per_s": sent_win / dt,
            "delivered_per_s": (b["lines"] - a["lines"]) / dt,
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
