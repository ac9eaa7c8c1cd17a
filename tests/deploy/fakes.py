"""Stand-ins shared by the fast deploy tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def fake_docker_save(path: Path) -> None:
    """The shape of a Docker 20.10 `docker save`: a dir per layer, config, manifest."""
    files = {
        "aaa/layer.tar": b"x" * 50_000,
        "aaa/json": b"{}",
        "aaa/VERSION": b"1.0",
        "bbb/layer.tar": b"y" * 100,
        "bbb/json": b"{}",
        "bbb/VERSION": b"1.0",
        "cfg.json": b"{}",
        "manifest.json": json.dumps(
            [
                {
                    "Config": "cfg.json",
                    "RepoTags": ["pynet-chat:v2"],
                    "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
                }
            ]
        ).encode(),
        "repositories": b"{}",
    }
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
