"""The hardening role's EC2 Instance Connect command, run as sshd runs it, against the metadata
stand-in on 127.0.0.1 (the Molecule verify runs both inside a host container, with sshd)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import jinja2
import pytest
import yaml

from tests.ansible.ansible_helpers import ROLES
from tests.kit import free_port

ROLE = ROLES / "hardening"
INSTANCE = "i-0standin00000001"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkCkuD0a3L8xDm7lYQ1Mkq7Zq0n6m0yhQkBRrqS8u7A run"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3mJtRkT2bcH3cH1m4JcU1E0a5Vn4E5sM8J3p2kq0aB other"
TIMEOUT = 1.0


def _stand_in() -> ModuleType:
    path = ROLE / "molecule" / "default" / "imds_stand_in.py"
    spec = importlib.util.spec_from_file_location("imds_stand_in", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def block(key: str, instance: str = INSTANCE, expires_in: float = 60) -> str:
    """One pushed key as the metadata serves it: fields, the key, the service's signature."""
    return (
        f"#Timestamp={int(time.time() + expires_in)}\n#Instance={instance}\n"
        "#Caller=arn:aws:sts::123456789012:assumed-role/deploy/pynet-deploy\n#Request=abc-123\n"
        f"{key}\nc2lnbmF0dXJl\nbGluZSB0d28=\n"
    )


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The stand-in serving FOLDER on 127.0.0.1: (its URL, FOLDER)."""
    folder = tmp_path / "imds"
    (folder / "keys").mkdir(parents=True)
    (folder / "instance-id").write_text(INSTANCE)
    server = _stand_in().serve("127.0.0.1", 0, folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()
        server.server_close()


def command(tmp_path: Path, url: str) -> Path:
    """The role's template rendered with URL and the defaults, as the role installs it."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    text = jinja2.Template(
        (ROLE / "templates" / "pynet-instance-connect-keys.j2").read_text(),
        keep_trailing_newline=True,
    ).render(
        {
            **defaults,
            "hardening_instance_connect_metadata_url": url,
            "hardening_instance_connect_timeout": TIMEOUT,
            "ansible_managed": "rendered by the test",
        }
    )
    path = tmp_path / "pynet-instance-connect-keys"
    path.write_text(text)
    return path


def run(path: Path, user: str = "admin") -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(path), user], capture_output=True, text=True, timeout=30, check=False
    )
    return proc, time.monotonic() - began


def test_prints_the_unexpired_keys_pushed_for_this_instance(
    tmp_path: Path, metadata: tuple[str, Path]
) -> None:
    url, folder = metadata
    (folder / "keys" / "admin").write_text(
        "\n".join(
            [
                block(KEY),
                block(OTHER, expires_in=-1),  # expired
                block(OTHER, instance="i-0another000000001"),  # pushed to another instance
            ]
        )
    )
    proc, _ = run(command(tmp_path, url))
    assert (proc.returncode, proc.stdout) == (0, KEY + "\n")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage\n\n\n",
        block(KEY).replace("#Instance", "#Other"),  # no instance named
        block(KEY).replace("#Timestamp", "#Other"),  # no expiry named
        block('command="sh" ' + KEY),  # options are not a key
        block(KEY + "\nssh-ed25519 AAAA smuggled").replace("#Timestamp=", "#Timestamp=x"),
    ],
)
def test_prints_nothing_for_anything_else(
    tmp_path: Path, metadata: tuple[str, Path], text: str
) -> None:
    url, folder = metadata
    (folder / "keys" / "admin").write_text(text)
    proc, _ = run(command(tmp_path, url))
    assert (proc.returncode, proc.stdout) == (0, "")


def test_nothing_pushed_for_the_user_is_no_key(tmp_path: Path, metadata: tuple[str, Path]) -> None:
    url, folder = metadata
    (folder / "keys" / "admin").write_text(block(KEY))
    proc, _ = run(command(tmp_path, url), user="deploy")  # 404 for that user
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_a_user_name_that_is_not_one_path_segment_is_refused(
    tmp_path: Path, metadata: tuple[str, Path]
) -> None:
    url, _ = metadata
    for user in ("..", "../admin", "a/b", "", "-x"):
        proc, _ = run(command(tmp_path, url), user=user)
        assert (proc.returncode, proc.stdout) == (2, ""), user


def test_no_metadata_service_is_no_key_at_once(tmp_path: Path) -> None:
    proc, took = run(command(tmp_path, f"http://127.0.0.1:{free_port()}"))
    assert (proc.returncode, proc.stdout) == (0, "")
    assert "no metadata service" in proc.stderr
    assert took < TIMEOUT + 1


def test_a_stalled_metadata_service_costs_at_most_the_timeout(
    tmp_path: Path, metadata: tuple[str, Path]
) -> None:
    url, folder = metadata
    (folder / "keys" / "admin").write_text(block(KEY))
    (folder / "hang").touch()
    proc, took = run(command(tmp_path, url))
    assert (proc.returncode, proc.stdout) == (0, "")
    assert took < TIMEOUT + 1.5, f"took {took:.1f} s"
