"""Which layers a shipment leaves out, and the slim archive itself (no Docker needed)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from pynet.deploy.layers import parse_layer_lists, shared_prefix, slim_archive
from tests.deploy.fakes import fake_docker_save


def test_shared_prefix_counts_whole_chains_only() -> None:
    present = [["base", "deps", "code1"], ["other"]]
    assert shared_prefix(["base", "deps", "code2"], present) == 2
    assert shared_prefix(["base", "deps", "code1"], present) == 3
    assert shared_prefix(["new-base", "deps", "code1"], present) == 0
    # The same layer on another base is a different chain: it must be shipped.
    assert shared_prefix(["other-base", "deps"], [["base", "deps"]]) == 0
    assert shared_prefix(["base"], []) == 0


def test_parse_layer_lists_skips_noise() -> None:
    text = '["sha256:a","sha256:b"]\n\n["sha256:c"]\nWARNING: something\n'
    assert parse_layer_lists(text) == [["sha256:a", "sha256:b"], ["sha256:c"]]


def test_slim_archive_drops_the_layers_the_host_has(tmp_path: Path) -> None:
    fake_docker_save(tmp_path / "full.tar")
    size = slim_archive(tmp_path / "full.tar", tmp_path / "slim.tar.gz", skip=1)
    with tarfile.open(tmp_path / "slim.tar.gz") as tar:
        names = sorted(tar.getnames())
        layer = tar.extractfile("bbb/layer.tar")
        assert layer
        assert layer.read() == b"y" * 100
    assert names == [
        "bbb/VERSION",
        "bbb/json",
        "bbb/layer.tar",
        "cfg.json",
        "manifest.json",
        "repositories",
    ]
    assert size == (tmp_path / "slim.tar.gz").stat().st_size


def test_slim_archive_with_nothing_to_skip_keeps_everything(tmp_path: Path) -> None:
    fake_docker_save(tmp_path / "full.tar")
    slim_archive(tmp_path / "full.tar", tmp_path / "all.tar.gz", skip=0)
    with tarfile.open(tmp_path / "all.tar.gz") as tar:
        assert "aaa/layer.tar" in tar.getnames()
