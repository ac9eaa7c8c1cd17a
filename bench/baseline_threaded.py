"""The classic tutorial chat server, used as the baseline by ``bench/chat_load.py``.

One thread per client, a global ``clients`` dict, and every broadcast is a ``sendall`` to
everyone while holding one lock. It speaks just enough of docs/protocol.md for the benchmark load:

- ``HELLO pynet baseline`` on connect,
- ``/nick NAME`` -> ``OK nick NAME`` (no uniqueness check, no JOIN broadcast),
- ``/ping`` -> ``PONG``, ``/quit`` -> ``BYE``,
- any line not starting with ``/`` -> ``MSG ID NAME TEXT`` to every client, the sender included.

Run: ``python -m bench.baseline_threaded --host 127.0.0.1 --port 5051``.
Deliberately naive: do not optimise it, it is the yardstick.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import threading

clients: dict[socket.socket, str] = {}
lock = threading.Lock()
next_id = 1


def broadcast(name: str, text: str) -> None:
    global next_id
    with lock:
        line = f"MSG {next_id} {name} {text}\n".encode()
        next_id += 1
        for conn in list(clients):
            try:
                conn.sendall(line)
            except OSError:
                clients.pop(conn, None)


def handle(conn: socket.socket) -> None:
    name = ""
    try:
        conn.sendall(b"HELLO pynet baseline\n")
        reader = conn.makefile("rb")
        for raw in reader:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                continue
            if line.startswith("/nick "):
                name = line[6:].strip()
                with lock:
                    clients[conn] = name
                conn.sendall(f"OK nick {name}\n".encode())
            elif line == "/ping":
                conn.sendall(b"PONG\n")
            elif line.startswith("/quit"):
                conn.sendall(b"BYE\n")
                break
            elif line.startswith("/"):
                conn.sendall(b"ERR unknown-command baseline speaks little\n")
            elif not name:
                conn.sendall(b"ERR need-nick send /nick NAME first\n")
            else:
                broadcast(name, line)
    except OSError:
        pass
    finally:
        with lock:
            clients.pop(conn, None)
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("PYNET_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PYNET_PORT", "5051")))
    args = parser.parse_args(argv)

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    srv = socket.create_server((args.host, args.port), backlog=1024, reuse_port=False)
    print(f"baseline listening on {args.host}:{args.port}", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
