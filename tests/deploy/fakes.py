"""Stand-ins and helpers shared by the fast deploy tests.

The end-to-end rig (a provisioned host over real SSH) is in rigs.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

from pynet.deploy.remote import Local

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))


def fab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `fab` CLI from the repository root (`PYNET_DOCKER=docker`, no base image set)."""
    full_env = {**os.environ, "PYNET_DOCKER": "docker", **(env or {})}
    full_env.pop("PYNET_BASE_IMAGE", None)
    return subprocess.run(
        [FAB, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        check=False,
    )


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BASE, CODE = b"x" * 50_000, b"y" * 100  # two layers: a big base and a small code layer
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-12-07T02:10:00.123456789Z",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:base", "sha256:code"]},
    }
).encode()
#: The image ID a classic store reports for the fake image: its config digest.
CONFIG_ID = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


def fake_docker_save(path: Path, config: bytes = CONFIG) -> None:
    """The shape of a Docker 20.10 `docker save`: a dir per layer, config, manifest."""
    name = f"{_sha(config)}.json"
    files = {
        "aaa/layer.tar": BASE,
        "aaa/json": b"{}",
        "aaa/VERSION": b"1.0",
        "bbb/layer.tar": CODE,
        "bbb/json": b"{}",
        "bbb/VERSION": b"1.0",
        name: config,
        "manifest.json": json.dumps(
            [
                {
                    "Config": name,
                    "RepoTags": ["pynet-chat:v2"],
                    "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
                }
            ]
        ).encode(),
        "repositories": b"{}",
    }
    _write(path, files)


def fake_oci_save(
    path: Path, layers: tuple[bytes, ...] = (BASE, CODE), nested: bool = False
) -> str:
    """The shape of a Docker 25+ `docker save` (OCI layout): every file a blob, index.json,
    oci-layout and a manifest.json whose Layers point into blobs/. NESTED: the containerd
    store's shape, where index.json points at an image index that points at the manifest.

    Returns the digest the containerd store reports as the image ID (the top index/manifest).
    """
    blobs = {_sha(data): data for data in (*layers, CONFIG)}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": f"sha256:{_sha(CONFIG)}", "size": len(CONFIG)},
            "layers": [{"digest": f"sha256:{_sha(d)}", "size": len(d)} for d in layers],
        }
    ).encode()
    blobs[_sha(manifest)] = manifest
    top = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{_sha(manifest)}",
    }
    if nested:
        index = json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()
        blobs[_sha(index)] = index
        top = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": f"sha256:{_sha(index)}",
        }
    files = {f"blobs/sha256/{digest}": data for digest, data in blobs.items()}
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{_sha(CONFIG)}",
                "RepoTags": ["pynet-chat:v2"],
                "Layers": [f"blobs/sha256/{_sha(d)}" for d in layers],
            }
        ]
    ).encode()
    files["repositories"] = b"{}"
    _write(path, files)
    return top["digest"]


def fake_classic_with_link(path: Path, config: bytes = CONFIG) -> None:
    """Docker 20.10 saving an image whose top layer repeats its bottom one: the second layer's
    layer.tar is a symlink to the first's."""
    name = f"{_sha(config)}.json"
    files = {
        "aaa/layer.tar": BASE,
        "aaa/json": b"{}",
        "bbb/layer.tar": CODE,
        "bbb/json": b"{}",
        "ccc/json": b"{}",
        name: config,
        "manifest.json": json.dumps(
            [{"Config": name, "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"]}]
        ).encode(),
    }
    _write(path, files, {"ccc/layer.tar": "../aaa/layer.tar"})


#: A config whose three layers match `fake_classic_with_link`'s manifest.
LINKED_CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-12-07T02:10:00Z",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:base", "sha256:code", "sha256:base"]},
    }
).encode()


class FakeEngine(Local):
    """A laptop engine that holds every base image: `docker image inspect` (all that
    `release.recipe` asks of it) answers INSPECT, the ID and the ONBUILD steps."""

    def __init__(self, inspect: str = "sha256:base null") -> None:
        super().__init__()
        self.inspect = inspect

    def run(self, argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, self.inspect + "\n", "")
