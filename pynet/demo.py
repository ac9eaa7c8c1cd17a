"""`make demo`: the whole journey rehearsed on one machine, with the same commands as on AWS.

Only two things are local stand-ins: `moto_server` on 127.0.0.1 plays AWS, and a container that
boots systemd and sshd plays the EC2 instance that `fab launch` created. Everything after that
(Ansible over SSH, `fab deploy` over SSH, the chat client over TCP) is what a user runs for real.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pynet import inventory
from pynet.local import engine, host, images
from pynet.local.aws import moto_server

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK = REPO / ".cache" / "demo"
NAME = "demo"
HOST_CONTAINER = "pynet-demo-host"


class DemoFailed(RuntimeError):
    """A step failed; the message says which and why."""


class Journey:
    """Runs numbered steps, echoing each command and timing each step."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.number = 0
        self.started = time.monotonic()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.number += 1
        print(f"\n\033[1m[{self.number}] {title}\033[0m", flush=True)
        began = time.monotonic()
        yield
        print(f"    ({time.monotonic() - began:.1f} s)", flush=True)

    def run(
        self, *argv: str, check: bool = True, quiet: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        print(f"    $ {shlex.join(argv)}", flush=True)
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=self.env,
            text=True,
            input=stdin,
            capture_output=quiet,
            check=False,
        )
        if check and proc.returncode != 0:
            detail = (proc.stdout + proc.stderr)[-2000:] if quiet else ""
            raise DemoFailed(f"`{shlex.join(argv)}` exited {proc.returncode}\n{detail}")
        return proc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chat_exchange(port: int, lines: Sequence[str], expect: str, timeout: float = 10.0) -> str:
    """Say LINES to the chat on 127.0.0.1:PORT and return what came back up to EXPECT."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall("".join(f"{line}\n" for line in lines).encode())
        received = b""
        deadline = time.monotonic() + timeout
        while expect.encode() not in received and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    text = received.decode(errors="replace")
    if expect not in text:
        raise DemoFailed(f"the chat did not answer {expect!r}; it said:\n{text}")
    return text


def wait_serving(port: int, timeout: float = 30.0) -> float:
    """Seconds until the chat on 127.0.0.1:PORT answers /ping with PONG."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with contextlib.suppress(OSError, DemoFailed):
            chat_exchange(port, ["/ping"], "PONG", timeout=1.0)
            return time.monotonic() - began
        time.sleep(0.05)
    raise DemoFailed(f"the chat on 127.0.0.1:{port} did not come back within {timeout:.0f} s")


def second_version_tree() -> Path:
    """A copy of the sources with one code change: the 'next version' to deploy."""
    tree = Path(tempfile.mkdtemp(prefix="pynet-v2-", dir=WORK))
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(tree)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    banner = tree / "chat" / "__init__.py"
    banner.write_text(banner.read_text().replace('__version__ = "', '__version__ = "2.0.0.dev+'))
    subprocess.run(
        ["git", "commit", "-qam", "demo: the next version"],
        cwd=tree,
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "demo",
            "GIT_AUTHOR_EMAIL": "demo@localhost",
            "GIT_COMMITTER_NAME": "demo",
            "GIT_COMMITTER_EMAIL": "demo@localhost",
        },
    )
    return tree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pynet.demo", description=__doc__)
    parser.add_argument(
        "--keep", action="store_true", help="leave the host, moto and the inventory up at the end"
    )
    args = parser.parse_args(argv)

    WORK.mkdir(parents=True, exist_ok=True)
    inv = WORK / "hosts.yml"
    inv.unlink(missing_ok=True)
    key, public_key = host.make_keypair(REPO / ".cache" / "ssh" / "id_ed25519")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYNET_INVENTORY": str(inv),
        "PYNET_BASE_IMAGE": images.BASE_IMAGE,
        "ANSIBLE_INVENTORY": str(inv),
        "ANSIBLE_FORCE_COLOR": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        env.pop(name, None)
    journey = Journey(env)
    fab = str(BIN / "fab")
    v2: Path | None = None
    try:
        with journey.step("A Docker engine (started if installed but not running)"):
            engine.ensure_engine()
            print(f"    docker: {engine.DOCKER}")
        with journey.step("Local images: Debian 12 base and the EC2-like host (cached)"):
            print(f"    {images.ensure_base_image()}\n    {images.ensure_host_image()}")
        with (
            journey.step("AWS: moto_server on 127.0.0.1 plays the EC2 API"),
            moto_server(_free_port()) as endpoint,
        ):
            env["AWS_ENDPOINT_URL"] = endpoint
            print(f"    AWS_ENDPOINT_URL={endpoint}")
            return _journey(journey, fab, inv, key, public_key, args.keep, v2)
    except (DemoFailed, engine.EngineError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            host.stop_host(HOST_CONTAINER)
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=False, capture_output=True)


def _journey(
    journey: Journey, fab: str, inv: Path, key: Path, public_key: Path, keep: bool, v2: Path | None
) -> int:
    with journey.step("fab launch: key pair, security group, instance (found again by tag)"):
        launch = (
            fab,
            "launch",
            "--name",
            NAME,
            "--ssh-cidr",
            "127.0.0.1/32",
            "--key",
            str(public_key),
            "--wait-timeout",
            "60",
        )
        journey.run(*launch)
        print("    launching again finds the same instance:")
        journey.run(*launch)
        journey.run(fab, "hosts")
    with journey.step("The local EC2-like host stands in for that instance"):
        local = host.start_host(HOST_CONTAINER, public_key)
        inventory.upsert_host(
            inventory.Host(
                name=NAME,
                address="127.0.0.1",
                user=local.user,
                port=local.ssh_port,
                key_file=str(key),
            ),
            inv,
        )
        print(
            f"    ssh -p {local.ssh_port} -i {key} admin@127.0.0.1   (chat on 127.0.0.1:"
            f"{local.app_port})"
        )
    with journey.step("ansible-playbook playbooks/site.yml: Docker, the chat unit, hygiene"):
        journey.run(str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/site.yml")
    with journey.step("fab deploy: build, ship only new layers, restart, health-check"):
        journey.run(fab, "deploy")
        journey.run(fab, "status")
    with journey.step("The chat answers from outside: two clients talk"):
        text = chat_exchange(local.app_port, ["/nick ada", "hello from the demo", "/who"], "WHO")
        print("    " + text.strip().replace("\n", "\n    "))
    with journey.step("Kill the chat container: systemd brings it back"):
        journey.run(
            str(engine.DOCKER), "exec", HOST_CONTAINER, "docker", "kill", "pynet-chat", quiet=True
        )
        print(f"    serving again after {wait_serving(local.app_port):.2f} s")
    with journey.step("Deploy a second version (a code change: only the code layer ships)"):
        v2 = second_version_tree()
        journey.run(fab, "-r", str(v2), "deploy")
        print("    " + chat_exchange(local.app_port, [], "HELLO").strip())
    with journey.step("fab rollback: back to the first version, same path as deploy"):
        journey.run(fab, "rollback")
        journey.run(fab, "releases")
        print("    " + chat_exchange(local.app_port, [], "HELLO").strip())
    if keep:
        print(f"\nleft running: host {HOST_CONTAINER}, inventory {inv}")
        return 0
    with journey.step("Tear down: fab destroy, the local host"):
        journey.run(fab, "destroy", "--name", NAME, "--yes")
        journey.run(fab, "destroy", "--name", NAME, "--yes")
        host.stop_host(HOST_CONTAINER)
    if v2 is not None:
        shutil.rmtree(v2, ignore_errors=True)
    total = time.monotonic() - journey.started
    print(
        f"\ndone in {total:.0f} s: the same commands, without the local parts, run on AWS "
        "(README: 'The real AWS path')."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
