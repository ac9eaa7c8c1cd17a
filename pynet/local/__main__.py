"""`python -m pynet.local`: the local harness from the shell (used by `make demo` and by hand).

python -m pynet.local engine                     start a Docker engine if none runs
python -m pynet.local images [--debian S]        build or load the cached base and host images
python -m pynet.local chat-image VERSION         build pynet-chat:VERSION on the local base
python -m pynet.local host up NAME [--debian S]  boot an EC2-like host, print how to reach it (JSON)
python -m pynet.local host down NAME             remove it
python -m pynet.local host list                  list the harness's hosts
python -m pynet.local modern-engine up NAME [--containerd-store]
                                                 a Docker 26 engine in a container; prints the
                                                 PYNET_DOCKER setting that makes `fab deploy` use it
python -m pynet.local modern-engine down NAME

S is the host's Debian release: bookworm (Debian 12, the default) or trixie (Debian 13).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pynet.local import engine, host, images, modern

DEFAULT_KEY = images.REPO / ".cache" / "ssh" / "id_ed25519"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pynet.local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("engine", help="start a Docker engine if none is running")
    built = sub.add_parser("images", help="build or load the base and host images")
    built.add_argument("--debian", choices=sorted(images.SUITES), default=images.DEFAULT_SUITE)
    chat = sub.add_parser("chat-image", help="build the chat image on the local base")
    chat.add_argument("version")
    hosts = sub.add_parser("host", help="manage EC2-like hosts")
    hosts.add_argument("action", choices=["up", "down", "list"])
    hosts.add_argument("name", nargs="?", default="pynet-local")
    hosts.add_argument(
        "--key",
        type=Path,
        default=DEFAULT_KEY,
        help="private key whose .pub is authorized (made if missing)",
    )
    hosts.add_argument("--ssh-port", type=int, default=0)
    hosts.add_argument("--debian", choices=sorted(images.SUITES), default=images.DEFAULT_SUITE)
    hosts.add_argument("--app-port", type=int, default=0)
    engines = sub.add_parser("modern-engine", help="a Docker 26 engine for the laptop side")
    engines.add_argument("action", choices=["up", "down"])
    engines.add_argument("name", nargs="?", default="pynet-engine26")
    engines.add_argument("--containerd-store", action="store_true")
    args = parser.parse_args(argv)

    try:
        engine.ensure_engine()
        if args.command == "images":
            print(images.ensure_base_image(args.debian))
            print(images.ensure_host_image(args.debian))
        elif args.command == "chat-image":
            print(images.build_chat_image(args.version))
        elif args.command == "host":
            if args.action == "up":
                _, public = host.make_keypair(args.key)
                started = host.start_host(
                    args.name, public, args.ssh_port, args.app_port, suite=args.debian
                )
                print(started.as_json())
            elif args.action == "down":
                host.stop_host(args.name)
            else:
                print("\n".join(host.list_hosts()))
        elif args.command == "modern-engine":
            _modern_engine(args.action, args.name, args.containerd_store)
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _modern_engine(action: str, name: str, containerd_store: bool) -> None:
    folder = images.REPO / ".cache" / "engines" / name
    if action == "down":
        modern.stop_engine(name)
        return
    started = modern.start_engine(name, folder, containerd_store)
    started.copy_image(images.ensure_base_image())  # what PYNET_BASE_IMAGE names
    print(f"{name}: Docker {started.info()}")
    print(f"export PYNET_DOCKER={started.wrapper} PYNET_BASE_IMAGE={images.BASE_IMAGE}")


if __name__ == "__main__":
    sys.exit(main())
