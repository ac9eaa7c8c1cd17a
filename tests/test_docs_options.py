"""The README and docs/ name the options, flags and variables the code really has.

Read from the code: the server's option table (chat/config.py), the client's parser, the `fab`
tasks' arguments and the variables the tasks read (pynet/tasks/options.py). A new option without
a row, a row for an option that is gone, or a `PYNET_*` name no code reads, fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.collection import Collection

import fabfile
from chat import client, config
from pynet.aws.requests import DEFAULT_OS, SSH_USERS
from pynet.tasks.options import ENVIRONMENT

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_SPAN = re.compile(r"`([^`]+)`")
VARIABLE = re.compile(r"\bPYNET_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def rows(path: Path, header: str) -> list[list[str]]:
    """The cells of every table in PATH whose header row starts with HEADER."""
    found, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == header:
            inside = True
        elif inside and not set(cells[0]) <= {"-", " "}:
            found.append(cells)
    return found


def spans(cell: str) -> list[str]:
    return CODE_SPAN.findall(cell)


# --- the server -------------------------------------------------------------------------------


def test_server_table_matches_the_options() -> None:
    documented: list[tuple[str, str]] = []
    for cells in rows(REPO / "README.md", "flag"):
        flags, variables = spans(cells[0]), spans(cells[1])
        assert len(flags) == len(variables), cells
        documented += zip(flags, variables, strict=True)
    real = [(option.flag, option.env) for option in config.OPTIONS]
    assert len(documented) == len(set(documented)), "a server option has two rows"
    assert sorted(documented) == sorted(real)


# --- the client -------------------------------------------------------------------------------


def test_client_table_matches_the_parser() -> None:
    table = rows(REPO / "README.md", "argument")
    documented = {spans(cells[0])[0]: spans(cells[1]) for cells in table}
    parser = client.build_parser()
    real = {
        (action.option_strings[-1] if action.option_strings else action.dest)
        for action in parser._actions
        if action.dest != "help"
    }
    assert set(documented) == real
    assert documented["port"] == ["PYNET_PORT"]  # the one the client reads from the environment


# --- the tasks --------------------------------------------------------------------------------


def task_flags() -> dict[str, set[str]]:
    collection = Collection.from_module(fabfile)
    return {
        name: {f"--{arg.names[0]}" for arg in collection[name].get_arguments()}
        for name in collection.task_names
    }


TASKS = task_flags()


def task_rows() -> list[tuple[Path, str, list[str]]]:
    """(file, task, options) for every `| fab TASK | options |` row in the README and docs/."""
    found = []
    for path in DOCS:
        for cells in rows(path, "task"):
            match = re.fullmatch(r"`fab ([a-z-]+)`", cells[0])
            if match and ("--" in cells[1] or cells[1] == "(none)"):
                found.append((path, match.group(1), spans(cells[1])))
    return found


def test_every_task_has_an_options_row_in_the_readme() -> None:
    in_readme = {task for path, task, _ in task_rows() if path.name == "README.md"}
    assert in_readme == set(TASKS)


@pytest.mark.parametrize(
    ("path", "task", "options"), task_rows(), ids=lambda x: getattr(x, "name", x)
)
def test_task_row_matches_the_task(path: Path, task: str, options: list[str]) -> None:
    assert task in TASKS, f"{path.name}: no task {task}"
    assert set(options) == TASKS[task], f"{path.name}: fab {task}"


def test_fab_commands_in_the_docs_use_real_options() -> None:
    """Every `fab TASK --flag` written anywhere in the docs (code spans and code blocks)."""
    core = {"-H", "-i", "--list", "--help", "-l"}
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        commands = CODE_SPAN.findall(text) + [
            line.strip() for line in text.splitlines() if line.strip().startswith("fab ")
        ]
        segments = [part for c in commands for part in re.split(r"&&|\|\||;|\|", c.split("#")[0])]
        for command in segments:
            words = command.split()
            tasks = [w for w in words if w in TASKS]
            if not words or words[0] != "fab" or not tasks:
                continue
            flags = {w.split("=")[0] for w in words if w.startswith("-")}
            unknown = flags - TASKS[tasks[0]] - core
            assert not unknown, f"{path.name}: `{command}` uses {unknown}"


def test_the_default_os_is_the_one_the_docs_and_help_name() -> None:
    """`fab launch`'s default image (Debian 13) is said in docs/aws.md and in `fab --help`."""
    text = (REPO / "docs" / "aws.md").read_text(encoding="utf-8")
    assert re.findall(r"`--os (\w+)` \(default", text) == [DEFAULT_OS]
    assert set(re.findall(r"`--os (\w+)`", text)) == set(SSH_USERS)
    collection = Collection.from_module(fabfile)
    fab = Path(sys.executable).parent / "fab"
    for name in ("launch", "launch-cluster"):
        [os_arg] = [arg for arg in collection[name].get_arguments() if arg.name == "os"]
        assert os_arg.default == DEFAULT_OS, name
        shown = subprocess.run(
            [str(fab), "--help", name], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
        assert re.search(rf"--os=STRING +{DEFAULT_OS} \(default\)", shown), shown


# --- the environment --------------------------------------------------------------------------


def test_task_variables_table_matches_the_code() -> None:
    table = rows(REPO / "README.md", "variable")
    documented = [spans(cells[0])[0] for cells in table]
    assert sorted(documented) == sorted(ENVIRONMENT)
    read = set()
    for package in ("pynet/tasks", "pynet/deploy", "pynet/aws"):
        for source in (REPO / package).glob("*.py"):
            read |= set(VARIABLE.findall(source.read_text(encoding="utf-8")))
    read |= set(VARIABLE.findall((REPO / "pynet" / "inventory.py").read_text(encoding="utf-8")))
    # The server's own variables (PYNET_PORT in a remote command) are documented with the server.
    undocumented = read - set(ENVIRONMENT) - {option.env for option in config.OPTIONS}
    assert not undocumented, f"read by the tasks but not documented: {undocumented}"


def test_every_variable_the_docs_name_exists() -> None:
    """Catches a variable documented after the code stopped reading it (PYNET_HISTORY_FLUSH)."""
    code = ""
    patterns = (
        "chat/*.py",
        "pynet/**/*.py",
        "bench/*.py",
        "roles/**/*.yml",
        "inventory/*.yml",
        ".github/**/*.yml",
    )
    for pattern in (*patterns, "Makefile"):
        for source in REPO.glob(pattern):
            code += source.read_text(encoding="utf-8")
    known = set(VARIABLE.findall(code))
    for path in DOCS:
        named = set(VARIABLE.findall(path.read_text(encoding="utf-8")))
        assert named <= known, f"{path.name} names {named - known}, which no code reads"
