"""The harness's decisions that need no Docker engine: clear errors and cache invalidation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pynet.local import engine, images


def test_no_engine_and_no_dockerd_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "engine_running", lambda: False)
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    with pytest.raises(engine.EngineError, match=r"apt-get install docker\.io"):
        engine.ensure_engine()


def test_engine_not_running_and_not_root_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "engine_running", lambda: False)
    monkeypatch.setattr(engine.shutil, "which", lambda name: "/usr/sbin/dockerd")
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)
    with pytest.raises(engine.EngineError, match=r"systemctl start docker"):
        engine.ensure_engine()


def test_base_image_build_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    with pytest.raises(images.EngineError, match=r"needs root.*sudo make demo"):
        images._debootstrap(tmp_path / "rootfs")
    assert not (tmp_path / "rootfs").exists()


def test_a_changed_recipe_invalidates_only_the_images_built_from_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in images.RECIPES[images.HOST_IMAGE]:
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(images, "FILES", tmp_path)
    base, host = images.recipe_digest(images.BASE_IMAGE), images.recipe_digest(images.HOST_IMAGE)
    assert base != host
    (tmp_path / "sshd-pynet.conf").write_text("PasswordAuthentication yes\n")
    assert images.recipe_digest(images.BASE_IMAGE) == base
    assert images.recipe_digest(images.HOST_IMAGE) != host
    assert images._archive(images.HOST_IMAGE).name.endswith(
        f"-{images.recipe_digest(images.HOST_IMAGE)}.tar.gz"
    )


def test_each_debian_release_has_its_own_images_and_cache() -> None:
    bookworm, trixie = images.host_image("bookworm"), images.host_image("trixie")
    assert (bookworm, trixie) == ("pynet-local/ec2-host:bookworm", "pynet-local/ec2-host:trixie")
    assert images.host_image() == bookworm  # the default: what every other test boots
    assert images.base_image() == images.base_image("bookworm")
    assert images.recipe_digest(trixie) != images.recipe_digest(bookworm)
    base = images.base_image("trixie")
    assert images.recipe_digest(base) != images.recipe_digest(images.base_image("bookworm"))
    assert images._archive(trixie).name.startswith("pynet-local_ec2-host_trixie-")


def test_an_unknown_debian_release_is_refused_in_one_line() -> None:
    with pytest.raises(images.EngineError) as refused:
        images.host_image("sid")
    message = str(refused.value)
    assert message == (
        "unknown Debian release 'sid' for a local host: choose bookworm (Debian 12), "
        "trixie (Debian 13)"
    )
