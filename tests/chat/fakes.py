"""The chat tests' helpers, in one module: the server in a subprocess, blocking line clients,
a real `redis-server`, a fake Redis for the backplane, and socket-free recorders.

Test files import from here only (never from one another).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import fakeredis

from chat.backplane import RedisBackplane
from chat.config import Settings
from chat.connection import Peer
from chat.handover import Session
from chat.history import History
from chat.service import ChatServer
from pynet.local import chat_server
from tests.kit import WaitTimeout, free_port, wait_until

URL = "redis://:secret@127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]
LISTEN = re.compile(r"listen=[^ ]*:(\d+)")


class ServerProcess:
    """`python -m chat.server` on 127.0.0.1 with an ephemeral port read from its start line.

    `prefix` goes before the command (e.g. `ip netns exec NAME` to run it in a namespace).
    """

    def __init__(
        self,
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self.lines: list[str] = []
        self._done = False
        self.proc = chat_server.start(
            *args,
            port=port,
            env=env,
            prefix=prefix,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        start = self.wait_for_log("listen=", timeout=10)
        listen = LISTEN.search(start)
        assert listen, start
        self.port = int(listen[1])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
        self._done = True

    def wait_for_log(self, text: str, timeout: float = 5) -> str:
        """The first log line containing `text`, waiting for it if needed."""

        def found() -> str | None:
            done = self._done
            line = next((line for line in list(self.lines) if text in line), None)
            if line is None and done:
                raise AssertionError(f"server exited without logging {text!r}; log:\n{self.log}")
            return line

        try:
            return wait_until(found, timeout, f"a log line with {text!r}", interval=0.01)
        except WaitTimeout as error:
            raise AssertionError(f"{error}; log:\n{self.log}") from None

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


Start = Callable[..., "ServerProcess"]


def start_release(
    start_server: Start, path: str, release: str, *args: str, port: int = 0
) -> ServerProcess:
    """A server with a handover socket, once that socket is bound (after the port: `listen=`),
    so a release started next cannot miss it and fall back."""
    server = start_server("--handover-socket", path, "--release", release, *args, port=port)
    server.wait_for_log("handover listening")
    return server


class LineClient:
    """A blocking client speaking raw protocol lines, for asserting exact server output."""

    def __init__(
        self,
        port: int,
        nick: str | None = None,
        *,
        timeout: float = 5,
        rcvbuf: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buf = b""
        self.hello = self.line()
        if nick is not None:
            self.send(f"/nick {nick}")
            self.until(f"OK nick {nick}")
            self.until(f"JOIN {nick}")

    def send(self, *lines: str | bytes) -> None:
        data = b"".join(
            (line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines
        )
        self.sock.sendall(data)

    def line(self) -> str:
        """The next line (without newline); AssertionError on timeout or close."""
        while b"\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"timed out waiting for a line; buffered {self._buf!r}"
                ) from None
            if not data:
                raise AssertionError(f"connection closed; buffered {self._buf!r}")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def lines(self, n: int) -> list[str]:
        return [self.line() for _ in range(n)]

    def until(self, prefix: str) -> list[str]:
        """Lines read up to and including the first one starting with `prefix`."""
        seen = []
        while True:
            line = self.line()
            seen.append(line)
            if line.startswith(prefix):
                return seen

    def closed(self, timeout: float = 5) -> bool:
        """True once the server closed the connection (reading and dropping what is left)."""
        self.sock.settimeout(timeout)
        chunks = [self._buf]  # joined once: `+=` on bytes would copy megabytes per read
        try:
            while data := self.sock.recv(65536):
                chunks.append(data)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self._buf = b"".join(chunks)
        return True

    def rest(self) -> list[str]:
        """Every line left after the server closed."""
        assert self.closed()
        return [line.decode() for line in self._buf.split(b"\n") if line]

    def close(self) -> None:
        self.sock.close()


class ClientProcess:
    """`python -m chat.client HOST PORT ARGS` with pipes; stdout and stderr read as lines.

    `prefix` goes before the command (e.g. `ip netns exec NAME` to run it in a namespace).
    """

    def __init__(
        self, port: int, *args: str, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()
    ) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "chat.client", host, str(port), *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        for stream, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: Iterable[str] | None, into: list[str]) -> None:
        for line in stream or ():
            into.append(line.rstrip("\n"))

    def wait_for(self, line: str, count: int = 1, timeout: float = 10) -> None:
        """Until stdout has shown LINE COUNT times."""
        what = f"{line!r} {count} times on stdout"
        try:
            wait_until(lambda: self.lines.count(line) >= count, timeout, what, interval=0.02)
        except WaitTimeout as error:
            raise AssertionError(f"{error}: {self.lines} {self.errors}") from None

    def wait_for_error(self, text: str, timeout: float = 10) -> str:
        """The first stderr line containing TEXT, waiting for it if needed."""

        def found() -> str | None:
            return next((line for line in list(self.errors) if text in line), None)

        try:
            return wait_until(found, timeout, f"{text!r} on stderr", interval=0.02)
        except WaitTimeout as error:
            raise AssertionError(f"{error}: {self.errors}") from None

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class RedisServer:
    """`redis-server` without persistence (unless `appendonly`), killed by `stop()`."""

    def __init__(
        self, password: str | None = None, port: int = 0, appendonly: bool = False
    ) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: scripts/system-deps.sh installs it"
        self.binary = binary
        self.password = password
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="pynet-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, "redis-server answering PING")

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, "redis-server exited at start"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return bool(sock.recv(64))
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (no shutdown save): what a crash looks like to the chat hosts."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SinkRecorder:
    """A backplane Sink that remembers what the backplane delivered."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.privates: list[tuple[str, bytes]] = []
        self.statuses: list[bool] = []
        self.lost: list[str] = []
        self.held: list[str] = []

    def deliver(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)

    def deliver_private(self, to: str, line: bytes) -> None:
        self.privates.append((to, line))

    def status(self, available: bool) -> None:
        self.statuses.append(available)

    def nicks_lost(self, nicks: list[str]) -> None:
        self.lost.extend(nicks)

    def nicks_held(self) -> list[str]:
        return list(self.held)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def fake_connect(server: fakeredis.FakeServer) -> Callable[[str, float], Any]:
    return lambda url, timeout: fakeredis.FakeAsyncRedis(server=server)


async def host(
    server: fakeredis.FakeServer, size: int = 100, **kwargs: Any
) -> tuple[RedisBackplane, SinkRecorder]:
    backplane = RedisBackplane(
        URL, history_size=size, connect=fake_connect(server), check_version=False, **kwargs
    )
    sink = SinkRecorder()
    await backplane.start(sink)
    return backplane, sink


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def msgs(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"MSG ")]


class RecordingTransport(asyncio.Transport):
    """A transport that keeps what is written, a write at a time, with a buffer size the test
    sets (a slow or draining reader)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.size = 0
        self.closing = False
        self.port = port
        self.protocol: asyncio.Protocol
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:  # as asyncio's: once the connection is lost, writes are dropped
            self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.size

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", self.port) if name == "peername" else default

    def lines(self) -> list[bytes]:
        return b"".join(self.writes).splitlines()


def local_server(history: int = 100, **limits: Any) -> ChatServer:
    """A `ChatServer` in this process with no listener, no rate limits and no per-address cap
    (its connections come from `attach`)."""
    settings = Settings(host="127.0.0.1", port=0, rate=0.0, max_per_address=0, **limits)
    return ChatServer(settings, History(history, None))


def attach(
    server: ChatServer, port: int, nick: str | None = None
) -> tuple[Peer, RecordingTransport]:
    """A connection to SERVER on a recording transport (peer 127.0.0.1:PORT), named NICK."""
    client = Peer(server)
    transport = RecordingTransport(port)
    transport.protocol = client
    client.connection_made(transport)
    if nick is not None:
        server.received(client, f"/nick {nick}\n".encode())
    return client, transport


def named_session(nick: str) -> Session:
    """The session of a named, idle client, as a handover carries it."""
    return Session(
        state="named",
        nick=nick,
        peer="127.0.0.1:1",
        connected_age=1.0,
        last_seen_age=1.0,
        partial_age=None,
        tokens=1.0,
        stamp_age=0.0,
        partial=b"",
        discarding=False,
        unsent=b"",
        allowance=0,
        closing=False,
        extra={},
    )
