"""Checks made from the laptop with plain sockets, as a user or a security group sees the host.

Reading the first line matters, not just connecting: a port published through a proxy (Docker's
userland proxy, a load balancer) accepts the TCP connection even when nothing serves behind it.
"""

from __future__ import annotations

import socket


class ProbeError(OSError):
    """The port did not answer the way its service should; the message says how."""


def first_line(address: str, port: int, timeout: float = 3.0, limit: int = 512) -> str:
    """Connect and return the first line the server sends (the chat HELLO, the SSH banner)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < limit:
                chunk = sock.recv(limit)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError as exc:
        raise ProbeError(f"{address}:{port} refused the connection") from exc
    except TimeoutError as exc:
        raise ProbeError(f"{address}:{port} did not answer within {timeout:.0f}s") from exc
    except OSError as exc:
        raise ProbeError(f"{address}:{port}: {exc.strerror or exc}") from exc
    if not data:
        raise ProbeError(f"{address}:{port} accepted the connection but closed it without a word")
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def chat_hello(address: str, port: int, timeout: float = 3.0) -> str:
    """The chat greeting (`HELLO pynet VERSION`), or ProbeError."""
    line = first_line(address, port, timeout)
    if not line.startswith("HELLO "):
        raise ProbeError(f"{address}:{port} answered {line!r}, not a chat HELLO")
    return line


def ssh_banner(address: str, port: int, timeout: float = 5.0) -> str:
    line = first_line(address, port, timeout)
    if not line.startswith("SSH-"):
        raise ProbeError(f"{address}:{port} answered {line!r}, not an SSH banner")
    return line
