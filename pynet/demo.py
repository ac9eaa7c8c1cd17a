"""`make demo`: the whole journey rehearsed on one machine, with the same commands as on AWS.

Only two things are local stand-ins: `moto_server` on 127.0.0.1 plays AWS, and a container that
boots systemd and sshd plays the EC2 instance that `fab launch` created. Everything after that
(Ansible over SSH, `fab deploy` over SSH, the chat client over TCP) is what a user runs for real.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import boto3

from chat import healthcheck
from pynet import inventory
from pynet.aws.userdata import host_key_of
from pynet.deploy.probe import ProbeError, chat_hello
from pynet.hostkeys import HostKeyPair, fingerprint, known_hosts_beside
from pynet.local import engine, host, images
from pynet.local.aws import moto_server, write_amis
from pynet.local.load import LiveLoad
from pynet.local.provision import build_context_copy, inventory_entry, playbook_argv
from pynet.wait import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK = REPO / ".cache" / "demo"
NAME = "demo"
HOST_CONTAINER = "pynet-demo-host"
#: The Debian release of the stand-in host: 13, what `fab launch` boots by default (`--os`).
HOST_SUITE = "trixie"


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


def wait_serving(port: int, timeout: float = 30.0) -> float:
    """Seconds until the chat on 127.0.0.1:PORT answers /ping with PONG (its health check)."""

    def answers() -> bool:
        try:
            healthcheck.check("127.0.0.1", port, timeout=1.0)
        except healthcheck.Unhealthy:
            return False
        return True

    began = time.monotonic()
    try:
        wait_until(answers, timeout, f"the chat on 127.0.0.1:{port} answering /ping")
    except WaitTimeout as error:
        raise DemoFailed(f"{error} (it did not come back)") from None
    return time.monotonic() - began


def second_version_tree() -> Path:
    """A copy of what the image is built from, with one code change: the next version."""
    tree = build_context_copy(WORK / "next-version")
    init = tree / "chat" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "2.0.0-next+'))
    return tree


def talk(journey: Journey, port: int) -> None:
    """Two real clients (`python -m chat.client`): bob listens while ada speaks."""
    client = (str(BIN / "python"), "-m", "chat.client", "127.0.0.1", str(port), "--raw")
    print(f"    $ {shlex.join((*client, '--nick', 'bob', '--stay'))} &")
    bob = subprocess.Popen(
        [*client, "--nick", "bob", "--stay"],
        cwd=REPO,
        env=journey.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def listen() -> None:
        for line in bob.stdout or ():
            lines.append(line)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    try:
        # Bob is in the room once the server has answered his /nick.
        wait_until(lambda: any(x.startswith("OK nick") for x in lines), 15, "bob joining")
        journey.run(
            *client, "--nick", "ada", stdin="hello bob, from the rehearsal\n/msg bob psst\n/who\n"
        )
        with contextlib.suppress(WaitTimeout):  # what is missing is named below
            wait_until(lambda: any(x.startswith("PRIV ada") for x in lines), 15, "ada's /msg")
    finally:
        bob.terminate()
        bob.wait(timeout=10)
        reader.join(timeout=10)
    heard = "".join(lines)
    print("    bob saw:\n      " + heard.strip().replace("\n", "\n      "))
    if "hello bob, from the rehearsal" not in heard:
        raise DemoFailed("bob did not receive ada's broadcast")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pynet.demo", description=__doc__)
    parser.add_argument(
        "--keep", action="store_true", help="leave the local host and its inventory in place"
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
    try:
        with journey.step("A Docker engine (started if installed but not running)"):
            engine.ensure_engine()
            print(f"    docker: {engine.DOCKER}")
        with journey.step("Local images: the chat image's base and a Debian 13 EC2-like host"):
            base, stand_in = images.ensure_base_image(), images.ensure_host_image(HOST_SUITE)
            print(f"    {base}\n    {stand_in}")
        with contextlib.ExitStack() as stack:
            with journey.step("AWS: moto_server on 127.0.0.1 plays the EC2 API"):
                amis = write_amis(WORK / "amis.json")
                endpoint = stack.enter_context(moto_server(amis, log=WORK / "moto.log"))
                env["AWS_ENDPOINT_URL"] = endpoint
                print(f"    AWS_ENDPOINT_URL={endpoint} (log: {WORK / 'moto.log'})")
            return _journey(journey, fab, inv, key, public_key, args.keep)
    except (RuntimeError, ProbeError) as exc:  # DemoFailed, EngineError, moto, a silent port
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            host.stop_host(HOST_CONTAINER, known_hosts_beside(inv))


def launched_host_key(env: dict[str, str]) -> HostKeyPair:
    """The host key in the user data of the instance `fab launch` made (moto keeps it)."""
    ec2 = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    filters = [{"Name": "tag:pynet:deployment", "Values": [NAME]}]
    [instance] = [
        i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]
    ]
    raw = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    pair = host_key_of(base64.b64decode(raw["UserData"]["Value"]).decode())
    if pair is None:
        raise DemoFailed("the launched instance's user data hands over no host key")
    return pair


def _journey(journey: Journey, fab: str, inv: Path, key: Path, public_key: Path, keep: bool) -> int:
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
        # It boots with the host key `fab launch` made and pinned: read from the instance's user
        # data and installed before sshd starts, as cloud-init does on EC2.
        pair = launched_host_key(journey.env)
        pins = known_hosts_beside(inv)
        local = host.start_host(
            HOST_CONTAINER, public_key, known_hosts=pins, host_key=pair, suite=HOST_SUITE
        )
        inventory.upsert_host(inventory_entry(local, name=NAME), inv)
        journey.run(
            engine.DOCKER,
            "exec",
            HOST_CONTAINER,
            "sh",
            "-c",
            '. /etc/os-release && echo "    $PRETTY_NAME"',
        )
        print(f"    host key {fingerprint(pair.public)} (from the user data), pinned in {pins}")
        print(f"    ssh -p {local.ssh_port} -i {key} admin@127.0.0.1")
        print(f"    chat: 127.0.0.1:{local.app_port} (port 5050 on the host)")
    with journey.step("ansible-playbook playbooks/site.yml: hygiene, Docker, the chat unit"):
        journey.run(*playbook_argv(inv))
    with journey.step("fab deploy: build, ship only missing layers, restart, health-check"):
        journey.run(fab, "deploy", "--version", "1.0.0")
        journey.run(fab, "status")
    with journey.step("The chat answers from outside: two clients talk"):
        talk(journey, local.app_port)
    with journey.step("Kill the chat container: systemd brings it back"):
        journey.run(
            engine.DOCKER,
            "exec",
            HOST_CONTAINER,
            "sh",
            "-c",
            "docker kill $(docker ps --quiet --filter name=^pynet-chat-)",
            quiet=True,
        )
        print(f"    serving again after {wait_serving(local.app_port):.2f} s")
    with journey.step(
        "Deploy a second version while 10 users chat: the new release takes every connection over"
    ):
        load = LiveLoad("127.0.0.1", local.app_port, clients=10, rate=20.0, prefix="demo").start()
        journey.run(fab, "deploy", "--context", str(second_version_tree()), "--version", "2.0.0")
        print("    " + chat_hello("127.0.0.1", local.app_port))
        report = load.stop()
        print(f"    users saw: {report.summary()}")
        if not report.ok():
            raise SystemExit(f"the deploy was noticed: {report.summary()}")
    with journey.step("fab rollback: back to the first version, the same path as deploy"):
        journey.run(fab, "rollback", "--to", "1.0.0")
        journey.run(fab, "releases")
        print("    " + chat_hello("127.0.0.1", local.app_port))
    if keep:
        print(f"\nleft running: host {HOST_CONTAINER}, inventory {inv}")
        return 0
    with journey.step("Tear down: fab destroy (twice: the second is a no-op), the local host"):
        journey.run(fab, "destroy", "--name", NAME, "--yes")
        journey.run(fab, "destroy", "--name", NAME, "--yes")
        host.stop_host(HOST_CONTAINER, known_hosts_beside(inv))
    print(
        f"\ndone in {time.monotonic() - journey.started:.0f} s. On AWS the same commands run "
        "without the local stand-ins (README: 'The real AWS path')."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
