"""Which layers a shipment leaves out, and the slim archive itself (no Docker needed).

Both layouts of `docker save`: Docker 20.10's directory per layer and Docker 25+'s OCI layout
(where an archive that only knew directories used to ship every layer).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from pynet.deploy.layers import (
    image_arch,
    parse_layer_lists,
    read_archive,
    shared_prefix,
    slim_archive,
)
from tests.deploy.fakes import (
    BASE,
    CODE,
    CONFIG_ID,
    _sha,
    fake_classic_with_link,
    fake_docker_save,
    fake_oci_save,
)


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


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_slim_archive_drops_the_layers_the_host_has(tmp_path: Path) -> None:
    fake_docker_save(tmp_path / "full.tar")
    shipment = slim_archive(tmp_path / "full.tar", tmp_path / "slim.tar.gz", skip=1)
    with tarfile.open(tmp_path / "slim.tar.gz") as tar:
        layer = tar.extractfile("bbb/layer.tar")
        assert layer
        assert layer.read() == CODE
    assert _names(tmp_path / "slim.tar.gz") == sorted(
        [
            "bbb/VERSION",
            "bbb/json",
            "bbb/layer.tar",
            CONFIG_ID.removeprefix("sha256:") + ".json",
            "manifest.json",
            "repositories",
        ]
    )
    assert shipment.size == (tmp_path / "slim.tar.gz").stat().st_size
    assert (shipment.layers, shipment.shipped, shipment.layer_bytes) == (2, 1, len(CODE))


def test_slim_archive_with_nothing_to_skip_keeps_everything(tmp_path: Path) -> None:
    fake_docker_save(tmp_path / "full.tar")
    shipment = slim_archive(tmp_path / "full.tar", tmp_path / "all.tar.gz", skip=0)
    assert "aaa/layer.tar" in _names(tmp_path / "all.tar.gz")
    assert (shipment.shipped, shipment.layer_bytes) == (2, len(BASE) + len(CODE))


def test_slim_oci_archive_drops_exactly_the_blobs_of_the_layers_the_host_has(
    tmp_path: Path,
) -> None:
    """Docker 25+: the layers, config and manifest all live in blobs/sha256/; only the base
    layer's blob goes, and the output's count and bytes say so."""
    fake_oci_save(tmp_path / "full.tar")
    full = _names(tmp_path / "full.tar")
    shipment = slim_archive(tmp_path / "full.tar", tmp_path / "slim.tar.gz", skip=1)
    assert _names(tmp_path / "slim.tar.gz") == sorted(set(full) - {f"blobs/sha256/{_sha(BASE)}"})
    assert (shipment.layers, shipment.shipped, shipment.layer_bytes) == (2, 1, len(CODE))
    assert shipment.size < len(BASE) // 10  # the 50 kB base stayed home
    assert shipment.describe().startswith("shipping 1 of 2 layers (")
    assert shipment.describe().endswith(" compressed, 1 already on the host)")


def test_slim_oci_archive_keeps_a_blob_a_kept_layer_shares(tmp_path: Path) -> None:
    """The same layer twice in a stack is one blob: leaving out the lower one must not take
    the upper one's file away."""
    fake_oci_save(tmp_path / "full.tar", layers=(BASE, CODE, BASE))
    shipment = slim_archive(tmp_path / "full.tar", tmp_path / "slim.tar.gz", skip=1)
    assert f"blobs/sha256/{_sha(BASE)}" in _names(tmp_path / "slim.tar.gz")
    assert shipment.shipped == 3


def test_slim_classic_archive_keeps_what_a_kept_symlink_points_at(tmp_path: Path) -> None:
    fake_classic_with_link(tmp_path / "full.tar")
    slim_archive(tmp_path / "full.tar", tmp_path / "slim.tar.gz", skip=1)
    names = _names(tmp_path / "slim.tar.gz")
    assert "aaa/layer.tar" in names  # ccc/layer.tar links to it
    assert "aaa/json" not in names
    assert "ccc/layer.tar" in names


def test_read_archive_names_the_config_digest_in_both_layouts(tmp_path: Path) -> None:
    fake_docker_save(tmp_path / "classic.tar")
    classic = read_archive(tmp_path / "classic.tar")
    assert classic.config == CONFIG_ID
    assert classic.ids == {CONFIG_ID}
    assert classic.platform == "linux/amd64"
    assert classic.layers == ("aaa/layer.tar", "bbb/layer.tar")
    top = fake_oci_save(tmp_path / "oci.tar", nested=True)
    oci = read_archive(tmp_path / "oci.tar")
    assert oci.config == CONFIG_ID  # the same image, whichever layout carried it
    # The containerd store reports the top index (or manifest) digest as the image ID.
    assert top in oci.ids
    assert CONFIG_ID in oci.ids
    assert len(oci.manifests) == 2  # the index and the manifest it points at


def test_read_archive_refuses_what_docker_save_did_not_write(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "other.tar", "w"):
        pass
    with pytest.raises(ValueError, match=r"manifest\.json is missing: not a `docker save` archive"):
        read_archive(tmp_path / "other.tar")


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"), ("s390x", "s390x")],
)
def test_image_arch_of_uname(machine: str, arch: str) -> None:
    assert image_arch(machine + "\n") == arch
