"""The chat container's memory limit holds the server's own bounds (roles/chat/README.md,
"Memory bounds"): the defaults, the rendered chat.env, the README table and two measurements
of the server must agree, so the server sheds load before the kernel's OOM killer cuts everyone.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.config import Settings
from tests.ansible.ansible_helpers import ROLES, render, role_vars
from tests.kit import wait_until

KIB, MIB = 1024, 1024 * 1024
README = ROLES / "chat" / "README.md"


def chat_env(values: dict[str, Any]) -> dict[str, str]:
    text = render("chat.env.j2", values)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


def limit_bytes(text: str) -> int:
    """`docker run --memory` syntax: a number with an optional b, k, m or g."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", str(text).strip().lower())
    assert match, f"chat_memory_limit {text!r} is not docker's memory syntax"
    return int(match[1]) * {"": 1, "b": 1, "k": KIB, "m": MIB, "g": 1024 * MIB}[match[2]]


def budget(values: dict[str, Any]) -> dict[str, int]:
    clients = int(values["chat_max_clients"])
    return {
        "base": int(values["chat_memory_base_mib"]) * MIB,
        "buffered": int(values["chat_max_buffered_mib"]) * MIB,
        "clients": clients,
        "per_client": int(values["chat_memory_per_client_kib"]) * KIB,
    }


def test_the_limit_holds_every_bound_the_server_keeps() -> None:
    values = role_vars()
    parts = budget(values)
    need = parts["base"] + parts["buffered"] + parts["clients"] * parts["per_client"]
    assert limit_bytes(values["chat_memory_limit"]) >= need
    env = chat_env(values)
    # The server is told the very bounds the limit was derived from.
    assert int(env["PYNET_MAX_CLIENTS"]) == parts["clients"]
    assert int(env["PYNET_MAX_BUFFERED"]) == parts["buffered"]
    # Every open file a client needs fits under the container's open-file limit.
    assert parts["clients"] < int(values["chat_nofile_limit"])


def test_raising_a_bound_raises_the_limit() -> None:
    values = role_vars()
    base = limit_bytes(values["chat_memory_limit"])
    more = role_vars(chat_nofile_limit=32768, chat_max_buffered_mib=512)
    assert limit_bytes(more["chat_memory_limit"]) >= base + 256 * MIB + 16384 * 16 * KIB


def test_the_readme_table_says_what_the_defaults_say() -> None:
    values = role_vars()
    text = README.read_text()
    section = text.split("## Memory bounds", 1)[1].split("\n## ", 1)[0]
    parts = budget(values)
    per_clients = parts["clients"] * parts["per_client"]
    for shown in (
        f"{parts['base'] // MIB} MiB",
        f"{parts['buffered'] // MIB} MiB",
        f"{parts['clients']:,}",
        f"{parts['per_client'] // KIB} KiB",
        f"{-(-per_clients // MIB)} MiB",
        f"**{limit_bytes(values['chat_memory_limit']) // MIB} MiB**",
    ):
        assert shown in section, f"README Memory bounds should say {shown}"
    front = (ROLES.parent / "README.md").read_text()  # the bounds table of the front page
    assert (
        f"the container's memory on a host ({limit_bytes(values['chat_memory_limit']) // MIB} MiB: "
        in front
    )
    defaults = (ROLES / "chat" / "defaults" / "main.yml").read_text()
    assert f"= {limit_bytes(values['chat_memory_limit']) // MIB} MiB" in defaults


def test_chat_env_cannot_slip_past_the_derivation() -> None:
    tasks = (ROLES / "chat" / "tasks" / "main.yml").read_text()
    assert "['PYNET_MAX_CLIENTS', 'PYNET_MAX_BUFFERED']" in tasks


# --- the budgets, measured on the real server -------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The server as the role runs it (SQLite history), on a free port, one address unlimited."""
    env = {
        **os.environ,
        "PYNET_HOST": "127.0.0.1",
        "PYNET_PORT": "0",
        "PYNET_HISTORY": str(tmp_path / "history.sqlite3"),
        "PYNET_MAX_PER_ADDRESS": "0",
        "PYNET_RATE": "100000",
        "PYNET_RATE_BURST": "100000",
    }
    log = tmp_path / "server.log"
    with log.open("w") as out:  # a file: a pipe nobody reads would fill and stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "chat.server"], env=env, stdout=out, stderr=out
        )
    match = wait_until(
        lambda: re.search(r"listen=127\.0\.0\.1:(\d+)", log.read_text()), 15, "the server"
    )
    try:
        yield proc, int(match[1])
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_the_server_fits_its_base_budget_with_a_full_history(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = server
    values = role_vars()
    line = "x" * (Settings().max_line - 200)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"/nick filler\n")
        reader = sock.makefile("rb")
        for n in range(Settings().history_size):
            sock.sendall(f"{n} {line}\n".encode())
            while not reader.readline().startswith(b"MSG "):
                pass
    used = rss(proc.pid)
    print(f"server RSS with a full history: {used / MIB:.1f} MiB")
    assert used <= int(values["chat_memory_base_mib"]) * MIB


def test_a_connection_costs_less_than_its_budget(
    server: tuple[subprocess.Popen[bytes], int],
) -> None:
    """Per named connection, the server's own memory: the budget leaves a half line (4 KiB)
    and the kernel's socket (about 4 KiB) on top of it."""
    proc, port = server
    values = role_vars()
    wait_until(lambda: rss(proc.pid) > 0, 10, "the server")
    before = rss(proc.pid)
    count = 400
    socks = []
    try:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"/nick m{n}\n".encode())
            socks.append(sock)
        for n, sock in enumerate(socks):
            data = b""
            while f"OK nick m{n}".encode() not in data:
                data += sock.recv(65536)
        per = (rss(proc.pid) - before) / count
    finally:
        for sock in socks:
            sock.close()
    print(f"server memory per named connection: {per / KIB:.2f} KiB")
    room = int(values["chat_memory_per_client_kib"]) * KIB - Settings().max_line - 4 * KIB
    assert per <= room
