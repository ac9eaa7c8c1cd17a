"""The redis role's configuration, rendered and run by a real redis-server on 127.0.0.1.

Fast where Molecule is slow: it proves the whole template is a configuration Redis accepts, and
that its ACL lets the chat hosts' backplane do everything it needs (and no more).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from chat.backplane import RedisBackplane, validate_url
from tests.ansible.ansible_helpers import ROLES, run, tool
from tests.chat.fakes import SinkRecorder, until
from tests.kit import free_port

ROLE = ROLES / "redis"
PASSWORD = "role-test-password-0123456789"


def render(tmp: Path, port: int) -> str:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    env.filters["hash"] = lambda value, kind: hashlib.new(kind, value.encode()).hexdigest()
    values = {
        **defaults,
        "redis_password": PASSWORD,
        "redis_bind_address": "127.0.0.1",
        "redis_port": port,
        "redis_os_pidfile": str(tmp / "redis.pid"),
        "redis_os_data_dir": str(tmp),
        "ansible_managed": "rendered by a test",
    }
    return env.from_string((ROLE / "templates" / "redis.conf.j2").read_text()).render(values)


@pytest.fixture
def role_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: scripts/system-deps.sh installs it"
    port = free_port()
    conf = render(tmp_path, port)
    (tmp_path / "redis.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, str(tmp_path / "redis.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10
    while not (tmp_path / "appendonlydir").exists():
        assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    time.sleep(0.2)
    yield port, conf
    proc.kill()
    proc.wait(10)


def cli(port: int, *args: str, password: str | None = PASSWORD) -> str:
    argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
    if password is not None:
        argv += ["--user", "pynet", "--pass", password, "--no-auth-warning"]
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=10)
    return proc.stdout + proc.stderr


def test_the_config_keeps_the_password_hashed_and_persists(role_redis: tuple[int, str]) -> None:
    port, conf = role_redis
    assert PASSWORD not in conf
    assert hashlib.sha256(PASSWORD.encode()).hexdigest() in conf
    assert "aof_enabled:1" in cli(port, "INFO", "persistence")
    assert "maxmemory_policy:noeviction" in cli(port, "INFO", "memory")


def test_only_the_chat_user_gets_in_and_only_to_its_keys(role_redis: tuple[int, str]) -> None:
    port, _ = role_redis
    assert "NOAUTH" in cli(port, "PING", password=None)
    assert "WRONGPASS" in cli(port, "PING", password="not-the-password")
    assert cli(port, "PING").strip() == "PONG"
    assert cli(port, "SET", "pynet:x", "1").strip() == "OK"
    for denied in (["SET", "other", "1"], ["FLUSHALL"], ["CONFIG", "GET", "*"], ["KEYS", "*"]):
        assert "NOPERM" in cli(port, *denied), denied


def test_the_backplane_works_as_that_user(role_redis: tuple[int, str]) -> None:
    port, _ = role_redis
    url = f"redis://pynet:{PASSWORD}@127.0.0.1:{port}/0"

    async def body() -> None:
        a, sa = RedisBackplane(url), SinkRecorder()
        b, sb = RedisBackplane(url), SinkRecorder()
        await a.start(sa)
        await b.start(sb)
        assert await a.claim("ann", None) is True
        assert await b.claim("ANN", None) is False
        a.say("ann", "hi")
        a.line(b"JOIN ann\n")
        assert await b.private("bob", "ann", "psst") is True
        assert await b.who() == ["ann"]
        await until(lambda: len(sb.lines) == 2 and bool(sa.privates))
        assert sb.lines == [b"MSG 1 ann hi\n", b"JOIN ann\n"]
        sa.held.append("ann")
        await a._renew()
        assert sa.lost == []
        await a.stop()
        await b.stop()

    asyncio.run(asyncio.wait_for(body(), 30))


SITE = ROLES.parent / "playbooks" / "site.yml"


def chat_backplane(tmp: Path, inventory: Any, password: str | None = None) -> str:
    """`chat_backplane` as site.yml's chat play computes it for this inventory (local hosts)."""
    plays = yaml.safe_load(SITE.read_text())
    (chat_play,) = [p for p in plays if p["hosts"] == "chat"]
    probe = [
        {
            "name": "probe",
            "hosts": "chat",
            "gather_facts": False,
            "vars": chat_play.get("vars", {}),
            "tasks": [
                {
                    "name": "show",
                    "ansible.builtin.debug": {"msg": "BACKPLANE=[{{ chat_backplane }}]"},
                }
            ],
        }
    ]
    (tmp / "probe.yml").write_text(yaml.safe_dump(probe))
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    argv = [tool("ansible-playbook"), "-i", str(tmp / "hosts.yml"), str(tmp / "probe.yml")]
    if password is None:
        proc = run(argv, timeout=120)
    else:
        proc = run(argv, timeout=120, PYNET_REDIS_PASSWORD=password)
    assert proc.returncode == 0, proc.stdout
    found = re.findall(r"BACKPLANE=\[(.*?)\]", proc.stdout)
    assert found, proc.stdout
    return str(found[0])


def test_site_points_chat_hosts_at_the_redis_host_only_when_there_is_one(
    tmp_path: Path,
) -> None:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    alone = {"all": {"children": {"chat": {"hosts": {"c1": local}}}}}
    assert chat_backplane(tmp_path, alone) == ""
    cluster = {
        "all": {
            "children": {
                "chat": {"hosts": {"c1": local, "c2": local}},
                "redis": {"hosts": {"r1": {**local, "redis_bind_address": "10.0.0.7"}}},
            }
        }
    }
    url = chat_backplane(tmp_path, cluster, "pw/with:odd@chars")
    assert url == "redis://pynet:pw%2Fwith%3Aodd%40chars@10.0.0.7:6379/0"
    assert validate_url(url) == url
