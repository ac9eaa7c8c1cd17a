"""A real `redis-server` (Debian's package) on a free port on 127.0.0.1, for the cluster tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.kit import free_port, wait_until


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
