"""Release names from git: short sha, and a content hash for uncommitted trees."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pynet.deploy.version import VersionError, source_version


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "app.py").write_text("print(1)\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    return tmp_path


def test_clean_tree_is_the_short_sha(repo: Path) -> None:
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert source_version(repo) == head


def test_dirty_trees_differ_by_content_and_repeat_for_the_same_content(repo: Path) -> None:
    clean = source_version(repo)
    (repo / "app.py").write_text("print(2)\n")
    first = source_version(repo)
    (repo / "app.py").write_text("print(3)\n")
    second = source_version(repo)
    assert re.fullmatch(rf"{clean}-dirty-[0-9a-f]{{8}}", first)
    assert first != second
    (repo / "app.py").write_text("print(2)\n")
    assert source_version(repo) == first


def test_untracked_files_count_and_the_index_is_untouched(repo: Path) -> None:
    (repo / "new.py").write_text("x = 1\n")
    assert "-dirty-" in source_version(repo)
    status = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status == "?? new.py\n"


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(VersionError, match="not a git repository"):
        source_version(tmp_path)
