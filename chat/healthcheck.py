"""`python -m chat.healthcheck [HOST] [PORT]`: exit 0 when the server answers `/ping` with PONG.

Used by the Docker HEALTHCHECK and by deploys. Blocking sockets on purpose: it is one short
exchange, and the simplest code is the most trustworthy probe. Prints one line either way.
"""

from __future__ import annotations

import socket
import sys
import time

from chat import PORT
from chat.config import OneLineParser, env_port, port_argument, seconds_argument
from chat.protocol import ClientConnection, Error, Ping, Pong, Quit


class Unhealthy(Exception):
    """The server did not answer as a healthy one does."""


def check(host: str, port: int, timeout: float) -> float:
    """Connect, send `/ping`, wait for `PONG`. Returns the round trip in seconds."""
    started = time.monotonic()
    deadline = started + timeout
    conn = ClientConnection()
    conn.send(Ping())
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(conn.data_to_send())
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    raise Unhealthy("connection closed before PONG")
                conn.receive_data(data)
                for event in conn.events_received():
                    if isinstance(event, Pong):
                        elapsed = time.monotonic() - started
                        conn.send(Quit("healthcheck"))
                        sock.sendall(conn.data_to_send())
                        return elapsed
                    if isinstance(event, Error):
                        raise Unhealthy(f"server refused: ERR {event.code} {event.text}")
    except TimeoutError:
        raise Unhealthy(f"no PONG within {timeout:g}s") from None
    except OSError as exc:
        raise Unhealthy(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m chat.healthcheck",
        description="Exit 0 when the chat server answers /ping with PONG, else 1.",
    )
    parser.add_argument("host", nargs="?", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument(
        "port",
        nargs="?",
        type=port_argument,
        default=env_port(parser),
        help=f"default $PYNET_PORT or {PORT}",
    )
    parser.add_argument("--timeout", type=seconds_argument, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        elapsed = check(args.host, args.port, args.timeout)
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    print(f"healthy: PONG from {args.host}:{args.port} in {elapsed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
