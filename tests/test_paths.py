"""Nothing points outside the repository, and every repository path a file names exists.

Comments and docs are read by people who have only this repository: a path they name must be
here (or be one the tools write, listed below), and nothing may point at the machine it was
written on.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".yml", ".yaml", ".j2", ".cfg", ".toml", ".sh", ".conf", ".txt", ""}
NAMED = {"Makefile", "Dockerfile", ".gitignore", ".dockerignore"}
#: Files the tools write, named before they exist: `fab launch` writes the inventory and the
#: pinned host keys; the ignore files name build leftovers.
WRITTEN = {"inventory/hosts.yml", "inventory/known_hosts", "inventory/known_hosts*"}
IGNORE_FILES = {".gitignore", ".dockerignore"}
#: Files whose paths are patterns or made-up trees: the `.dockerignore` reader's tests.
PATTERN_FILES = {"tests/deploy/test_codelayer.py"}
TOP = "chat|pynet|tests|roles|playbooks|docs|bench|scripts|inventory|\\.github|\\.ci"
REPO_PATH = re.compile(rf"(?<![\w./~$-])((?:{TOP})/[\w.@*/-]*[\w*])")
OUTSIDE = re.compile(r"/work/|\bshared/(?:PROTOCOL|HARNESS|FINDINGS|STYLE)\.md")
MARKDOWN_NAME = re.compile(r"(?<![\w./-])([A-Z][A-Za-z_-]*\.md)\b")


def text_files() -> dict[str, str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    files = {}
    for name in listed:
        path = REPO / name
        if (path.suffix in TEXT or path.name in NAMED) and path.is_file():
            try:
                files[name] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    return files


def exists(path: str) -> bool:
    try:
        return any(REPO.glob(path)) if "*" in path else (REPO / path).exists()
    except ValueError:  # not a pattern pathlib takes (`a/**.py`): nothing it names exists
        return False


def test_nothing_points_outside_the_repository() -> None:
    found = [
        f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for name, text in text_files().items()
        if name != "tests/test_paths.py"
        for m in OUTSIDE.finditer(text)
    ]
    assert found == []


def test_every_repository_path_named_exists() -> None:
    missing = sorted(
        f"{name}: {path}"
        for name, text in text_files().items()
        if name not in IGNORE_FILES | PATTERN_FILES
        for path in {m.group(1).rstrip(".") for m in REPO_PATH.finditer(text)}
        if path not in WRITTEN and not exists(path)
    )
    assert missing == []


def test_every_markdown_file_named_exists() -> None:
    """A Markdown file named without its folder must be one of the repository's."""
    here = {path.name for path in REPO.rglob("*.md") if ".venv" not in path.parts}
    missing = sorted(
        f"{name}: {m.group(1)}"
        for name, text in text_files().items()
        for m in MARKDOWN_NAME.finditer(text)
        if m.group(1) not in here
    )
    assert missing == []
