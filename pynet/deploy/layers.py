"""Ship only the image layers the host lacks, without a registry.

Measured on Docker 20.10: `docker load` accepts a `docker save` archive from which layer tars
are missing, as long as the host already holds the image's chain of layers up to that point
(the loader looks each chain ID up before it opens the layer file). So a code-only change ships
the config, the manifest and the top layer or two: kilobytes, not the base image. When the host
lacks a layer we left out, `docker load` fails with "no such file or directory" and the caller
retries with every layer.

This beats the alternative of a host-side cache of layer tars (`/var/lib/pynet-deploy/layers/`):
no second copy of every layer on the host's disk and nothing to keep in sync with what docker
itself already stores.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path


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


def slim_archive(saved: Path, out: Path, skip: int, compresslevel: int = 1) -> int:
    """Rewrite the `docker save` archive SAVED as gzip OUT without its first SKIP layers.

    Returns the size of OUT in bytes. Level 1: measured on this 154 MB image, 62 MB in 2 s
    against 56 MB in 12 s at level 6; the CPU time costs more than the 10% it saves on the wire.
    """
    with tarfile.open(saved) as src:
        listing = src.extractfile("manifest.json")
        if listing is None:  # a directory or link of that name: not a `docker save` archive
            raise ValueError(f"{saved}: manifest.json is not a file")
        manifest = json.load(listing)
        layer_paths: list[str] = manifest[0]["Layers"]
        keep = {posixpath.dirname(p) for p in layer_paths[skip:]}
        drop = {posixpath.dirname(p) for p in layer_paths[:skip]} - keep
        with tarfile.open(out, "w:gz", compresslevel=compresslevel) as dst:
            for member in src:
                if member.name.split("/", 1)[0] in drop:
                    continue
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.stat().st_size
