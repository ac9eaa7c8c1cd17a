"""A stand-in for the EC2 instance metadata service, for tests only (stdlib, Python 3.9+).

Serves what the hardening role's EC2 Instance Connect command asks, the way IMDSv2 does: a
session token for a PUT to /latest/api/token (with a TTL header), then, only with that token,
the instance id and the keys pushed for each user. Its answers come from FOLDER, so a test
changes them by writing files: FOLDER/instance-id, FOLDER/keys/USER (the active-keys text; no
file: 404), FOLDER/hang (present: every answer waits 30 s, a metadata service that stalls).

usage: python3 imds_stand_in.py ADDRESS PORT FOLDER
The Molecule verify runs it inside the test's host container on 169.254.169.254 (an address of
its loopback interface); tests/ansible/test_instance_connect_keys.py runs it on 127.0.0.1.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEYS_PATH = re.compile(r"/latest/meta-data/managed-ssh-keys/active-keys/([^/]+)/")


def serve(address: str, port: int, folder: Path) -> ThreadingHTTPServer:
    """A server (not yet serving) answering from FOLDER on ADDRESS:PORT (0: any free port)."""
    token = secrets.token_urlsafe(16)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: str = "") -> None:
            if (folder / "hang").exists():
                time.sleep(30)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            if self.path == "/latest/api/token" and self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds"
            ):
                self._answer(200, token)
            else:
                self._answer(400)

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != token:
                self._answer(401)  # IMDSv2 only, as `fab launch` sets HttpTokens=required
                return
            if self.path == "/latest/meta-data/instance-id":
                self._answer(200, (folder / "instance-id").read_text().strip())
                return
            match = KEYS_PATH.fullmatch(self.path)
            keys = folder / "keys" / match.group(1) if match else None
            if keys is not None and keys.is_file():
                self._answer(200, keys.read_text())
            else:
                self._answer(404)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"stand-in: {self.command} {self.path}\n")

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True  # a hung answer never holds the test up
    return server


if __name__ == "__main__":
    server = serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
    server.serve_forever()
