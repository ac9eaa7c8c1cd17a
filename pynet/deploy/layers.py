"""Ship only the image layers the host lacks, without a registry.

Measured on Docker 20.10 and 26: `docker load` accepts a `docker save` archive from which layer
tars are missing, as long as the host already holds the image's chain of layers up to that point
(the loader looks each chain ID up before it opens the layer file). So a code-only change ships
the config, the manifest and the top layer or two: kilobytes, not the base image. When the host
lacks a layer we left out, `docker load` fails with "no such file or directory" and the caller
retries with every layer.

`docker save` writes one of two layouts, and both name each layer's file in `manifest.json`:
- Docker 20.10 (and earlier): a directory per layer (`<id>/layer.tar`, `json`, `VERSION`); a
  layer is left out by leaving out its directory.
- Docker 25+: the OCI layout (`index.json`, `oci-layout`, every file a `blobs/sha256/<digest>`);
  a layer is left out by leaving out exactly its blob. The config and manifest blobs live in the
  same folder and always ship.

What the archive identifies as the image is its config digest (the sha256 of the config file):
a classic image store reports it as the image ID, while the containerd image store reports the
manifest's digest instead. `ArchiveImage.ids` holds both, so an ID reported by either kind of
store on the host is recognised as this image.

This beats the alternative of a host-side cache of layer tars (`/var/lib/pynet-deploy/layers/`):
no second copy of every layer on the host's disk and nothing to keep in sync with what docker
itself already stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pynet.deploy.remote import human

#: `uname -m` (and Go's GOARCH spellings) to the architecture names of image configs.
MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def image_arch(machine: str) -> str:
    """The image architecture (`amd64`, `arm64`) that runs natively on a `uname -m` MACHINE."""
    name = machine.strip()
    return MACHINES.get(name, name)


def parse_layer_lists(text: str) -> list[list[str]]:
    """One JSON list of diff IDs per line (the output of `commands.host_layers()`)."""
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("[")]


def shared_prefix(layers: Sequence[str], present: Iterable[Sequence[str]]) -> int:
    """How many leading layers of LAYERS the host already has as the same chain.

    A layer counts only with everything below it: docker identifies a layer in a stack by its
    chain (the layer and all its parents), so the same diff ID on a different base is not reuse.
    """
    chains = {tuple(stack[:k]) for stack in present for k in range(1, len(stack) + 1)}
    n = 0
    while n < len(layers) and tuple(layers[: n + 1]) in chains:
        n += 1
    return n


@dataclass(frozen=True)
class ArchiveImage:
    """What a `docker save` archive holds, read from the archive itself."""

    layers: tuple[str, ...]  # each layer's file in the archive, bottom first
    config: str  # sha256:<digest of the config file>: the image ID of a classic store
    manifests: frozenset[str]  # OCI index/manifest digests: IDs a containerd store reports
    os: str
    architecture: str
    diff_ids: tuple[str, ...] = ()  # the config's rootfs: what `.RootFS.Layers` reports
    created: str = ""

    @property
    def ids(self) -> frozenset[str]:
        """Every image ID an engine may report for this image after loading it."""
        return self.manifests | {self.config}

    @property
    def content(self) -> str:
        """What `commands.image_content()` prints for this image on any engine and store: a
        containerd store that loads a classic archive names the image by a manifest it makes
        itself, which no digest in the archive predicts."""
        return f"{json.dumps(list(self.diff_ids), separators=(',', ':'))} {self.created}"

    @property
    def platform(self) -> str:
        return f"{self.os}/{self.architecture}"


def _where(tar: tarfile.TarFile) -> str:
    return os.fsdecode(tar.name) if tar.name else "the archive"


def member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    """The bytes of the regular file NAME: no link is followed (one to itself never ends)."""
    try:
        member = tar.getmember(name)
    except KeyError:
        raise ValueError(f"{_where(tar)}: {name} is missing: not a `docker save` archive") from None
    data = tar.extractfile(member) if member.isfile() else None
    if data is None:  # a directory or a link of that name
        raise ValueError(f"{_where(tar)}: {name} is not a file")
    return data.read()


def image_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    """The first image `manifest.json` lists: its `Config` and `Layers` files."""
    manifest = json.loads(member_bytes(tar, "manifest.json"))
    if not (isinstance(manifest, list) and manifest and isinstance(manifest[0], dict)):
        raise ValueError(f"{_where(tar)}: manifest.json lists no image")
    return manifest[0]


def _oci_digests(tar: tarfile.TarFile) -> set[str]:
    """The digests index.json points at, following nested indexes (containerd's layout)."""
    names = set(tar.getnames())
    if "index.json" not in names:
        return set()
    found: set[str] = set()
    todo = [json.loads(member_bytes(tar, "index.json"))]
    while todo:
        for entry in todo.pop().get("manifests", []):
            digest = str(entry.get("digest", ""))
            if not digest or digest in found:
                continue
            found.add(digest)
            blob = "blobs/" + digest.replace(":", "/", 1)
            if entry.get("mediaType") in (OCI_INDEX, DOCKER_LIST) and blob in names:
                todo.append(json.loads(member_bytes(tar, blob)))
    return found


def read_archive(saved: Path) -> ArchiveImage:
    """The layers, identity and platform of the image in the `docker save` archive SAVED."""
    with tarfile.open(saved) as tar:
        manifest = image_manifest(tar)
        raw = member_bytes(tar, str(manifest["Config"]))
        config = json.loads(raw)
        return ArchiveImage(
            layers=tuple(manifest.get("Layers") or ()),
            config="sha256:" + hashlib.sha256(raw).hexdigest(),
            manifests=frozenset(_oci_digests(tar)),
            os=str(config.get("os", "")),
            architecture=str(config.get("architecture", "")),
            diff_ids=tuple((config.get("rootfs") or {}).get("diff_ids") or ()),
            created=str(config.get("created", "")),
        )


def _left_out(layer_paths: Sequence[str], skip: int) -> set[str]:
    """Archive members that belong only to the first SKIP layers.

    A classic layer is its directory (`<id>/layer.tar` with `json` and `VERSION` beside it); an
    OCI layer is exactly its blob. A file shared with a kept layer (the same blob twice in a
    stack) stays.
    """
    keep = set(layer_paths[skip:])
    return {p for p in layer_paths[:skip] if p not in keep}


@dataclass(frozen=True)
class Shipment:
    """What a slim archive carries: the truth for the `shipping N of M layers` line."""

    size: int  # bytes of the gzip archive: what goes over the wire
    layers: int  # layers in the image
    shipped: int  # layers whose files are in the archive
    layer_bytes: int  # bytes of those layer files, before gzip

    def describe(self) -> str:
        return (
            f"shipping {self.shipped} of {self.layers} layers ({human(self.size)} compressed, "
            f"{self.layers - self.shipped} already on the host)"
        )


def slim_archive(saved: Path, out: Path, skip: int, compresslevel: int = 1) -> Shipment:
    """Rewrite the `docker save` archive SAVED as gzip OUT without its first SKIP layers.

    Level 1: measured on this 154 MB image, 62 MB in 2 s against 56 MB in 12 s at level 6; the
    CPU time costs more than the 10% it saves on the wire.
    """
    with tarfile.open(saved) as src:
        layer_paths = [str(p) for p in image_manifest(src).get("Layers") or ()]
        files = _left_out(layer_paths, skip)
        dirs = {posixpath.dirname(p) for p in files if posixpath.basename(p) == "layer.tar"}
        dirs -= {posixpath.dirname(p) for p in layer_paths[skip:]}
        members = src.getmembers()
        candidates = {m.name for m in members if m.name in files or m.name.split("/", 1)[0] in dirs}
        dropped = candidates - _link_targets(m for m in members if m.name not in candidates)
        layer_bytes = 0
        with tarfile.open(out, "w:gz", compresslevel=compresslevel) as dst:
            for member in members:
                if member.name in dropped:
                    continue
                if member.name in layer_paths and member.isfile():
                    layer_bytes += member.size
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    shipped = sum(1 for p in layer_paths if p not in dropped)
    return Shipment(out.stat().st_size, len(layer_paths), shipped, layer_bytes)


def _link_targets(members: Iterable[tarfile.TarInfo]) -> set[str]:
    """What kept links point at: Docker 20.10 links a repeated layer to its first copy."""
    return {link_target(m) for m in members if m.issym() or m.islnk()}


def link_target(member: tarfile.TarInfo) -> str:
    """The archive member a symbolic or hard link MEMBER stands for."""
    if member.islnk():
        return member.linkname
    return posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))


class Scratch:
    """A temporary folder for one deploy's archives, removed on `close` or leaving a `with`:
    what `release.Built` and `codelayer.Assembled` write their shipments into."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="pynet-ship-")
        self.dir = Path(self._tmp.name)

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
