"""Test helpers: the server in a subprocess, and a blocking line client (imported by tests)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.kit import WaitTimeout, wait_until

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
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "chat.server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
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
