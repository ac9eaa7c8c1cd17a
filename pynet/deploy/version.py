"""The release version of a source tree: the short git commit, `-dirty-HASH` when it has changes.

The contract (docs/design.md) names images `pynet-chat:VERSION`. A dirty tree gets a content hash
too, so two different uncommitted states never share a tag (a redeploy after an edit must not be
mistaken for "already there"), while the same state always maps to the same tag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NO_COMMIT = "0000000"


class VersionError(RuntimeError):
    """The source tree is not something we can name a release after."""


def _git(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False, env=env
    )


def tree_hash(repo: Path) -> str:
    """Git's tree hash of the working tree (tracked and untracked, minus .gitignore'd files).

    Staged through a throwaway copy of the index, so the user's index is never touched.
    """
    index = Path(_git(repo, "rev-parse", "--git-path", "index").stdout.strip())
    if not index.is_absolute():
        index = repo / index
    with tempfile.TemporaryDirectory(prefix="pynet-index-") as tmp:
        tmp_index = Path(tmp) / "index"
        if index.exists():
            shutil.copy(index, tmp_index)
        env = {**os.environ, "GIT_INDEX_FILE": str(tmp_index)}
        added = _git(repo, "add", "--all", env=env)
        tree = _git(repo, "write-tree", env=env)
    if added.returncode or tree.returncode:
        why = (added.stderr or tree.stderr).strip()
        raise VersionError(f"cannot hash the tree in {repo}: {why}")
    return tree.stdout.strip()


def source_version(repo: Path) -> str:
    """`abc1234`, or `abc1234-dirty-1f2e3d4c` for uncommitted changes."""
    if _git(repo, "rev-parse", "--git-dir").returncode:
        raise VersionError(f"{repo} is not a git repository: pass --version to name the release")
    head = _git(repo, "rev-parse", "--short=7", "HEAD")
    sha = head.stdout.strip() if head.returncode == 0 else NO_COMMIT
    dirty = bool(_git(repo, "status", "--porcelain").stdout.strip()) or sha == NO_COMMIT
    return f"{sha}-dirty-{tree_hash(repo)[:8]}" if dirty else sha


def repo_root(start: Path) -> Path:
    """The git work tree holding START (the build context by default), or START itself."""
    top = _git(start, "rev-parse", "--show-toplevel")
    return Path(top.stdout.strip()) if top.returncode == 0 else start
