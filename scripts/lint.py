"""The project's lint, in one place: `make lint`, tests/test_lint.py and pre-commit run these.

    python scripts/lint.py            # every check
    python scripts/lint.py mypy ruff  # some of them

Each check is a plain command a user can run by hand from the repository root, with the tools of
the interpreter's environment (the .venv's). Exit status: 0 when every check passed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CHECKS: dict[str, list[str]] = {
    "ruff": ["ruff", "check", "."],
    "ruff-format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy"],  # what and how strictly: [tool.mypy] in pyproject.toml
    "yamllint": ["yamllint", "--strict", "."],
    # Configured by .ansible-lint (production profile, offline) and ansible.cfg: no flags needed.
    "ansible-lint": ["ansible-lint"],
    # The GitHub workflows' audit (template injection, unpinned actions...), without network.
    "zizmor": ["zizmor", "--offline", "--no-progress", ".github/workflows"],
    # The workflows against GitHub's schema (vendored in check-jsonschema: no network).
    "workflow-schema": [
        "check-jsonschema",
        "--builtin-schema",
        "vendor.github-workflows",
        ".github/workflows/deploy.yml",
        ".github/workflows/tests.yml",
    ],
    # The IAM identity policies the docs tell users to attach (the trust policy is not one).
    "parliament": [
        "parliament",
        "--files",
        "iam/operator-policy.json,iam/deploy-role-policy.json",
    ],
}


def argv(name: str) -> list[str]:
    """The check's command with the tool from this environment (as on PATH when it is absent)."""
    tool, *args = CHECKS[name]
    path = BIN / tool
    return [str(path) if path.exists() else tool, *args]


def run(name: str) -> subprocess.CompletedProcess[str]:
    # stdin closed: parliament reads a policy from a stdin that is not a terminal.
    return subprocess.run(
        argv(name),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"unknown check {unknown[0]!r}: expected one of {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or list(CHECKS):
        started = time.monotonic()
        proc = run(name)
        verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"{name}: {verdict} in {time.monotonic() - started:.1f} s", flush=True)
        if proc.returncode:
            failed.append(name)
            print(proc.stdout + proc.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
