"""`docker build` as `fab deploy` runs it: output streamed as it comes, a failure in docker's words.

A stand-in `docker` (a shell script) prints what each builder prints, so these run without an
engine; tests/deploy/test_e2e_engines.py fails a real build on Docker 26.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from pynet.deploy.remote import DeployError, Local

PROCESS = 'process "/bin/sh -c python3 -c \\"import pynet_missing\\""'
BUILDKIT_FAILURE = f"""\
#5 [2/3] COPY chat /app/chat
#5 DONE 0.0s
#6 [3/3] RUN python3 -c "import pynet_missing"
#6 0.211 ModuleNotFoundError: No module named 'pynet_missing'
#6 ERROR: {PROCESS} did not complete successfully: exit code: 1
------
 > [3/3] RUN python3 -c "import pynet_missing":
------
ERROR: failed to solve: {PROCESS} did not complete successfully: exit code: 1
"""
CLASSIC_FAILURE = """\
Step 3/3 : RUN python3 -c "import pynet_missing"
 ---> Running in 0123456789ab
ModuleNotFoundError: No module named 'pynet_missing'
\x1b[0mThe command '/bin/sh -c python3 -c "import pynet_missing"' returned a non-zero code: 1
"""


def _docker(tmp_path: Path, output: str, code: int, pause: float = 0.0) -> str:
    script = tmp_path / "docker"
    lines = output.splitlines()
    body = "\n".join(
        f"printf '%s\\n' {_sh(line)}" + (f"\nsleep {pause}" if i == 0 and pause else "")
        for i, line in enumerate(lines)
    )
    script.write_text(f"#!/bin/sh\n{body}\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.parametrize(
    ("output", "headline"),
    [
        (
            BUILDKIT_FAILURE,
            'ERROR: failed to solve: process "/bin/sh -c python3 -c \\"import pynet_missing\\"" '
            "did not complete successfully: exit code: 1",
        ),
        (
            CLASSIC_FAILURE,
            "The command '/bin/sh -c python3 -c \"import pynet_missing\"' returned a non-zero "
            "code: 1",
        ),
    ],
    ids=["buildkit", "classic-builder"],
)
def test_a_failed_build_says_docker_s_error_and_what_led_to_it(
    tmp_path: Path, output: str, headline: str
) -> None:
    out = io.StringIO()
    local = Local(out=out)
    with pytest.raises(DeployError) as caught:
        local.stream([_docker(tmp_path, output, 1)], what="docker build of pynet-chat:v1")
    message = str(caught.value)
    first, _, rest = message.partition("\n")
    assert first == f"docker build of pynet-chat:v1 failed (exit 1): {headline}"
    assert "ModuleNotFoundError: No module named 'pynet_missing'" in rest  # the step's own error
    assert out.getvalue().count("pynet_missing") >= 2  # streamed as well


def test_build_output_is_streamed_while_it_runs(tmp_path: Path) -> None:
    """Each line reaches the terminal when docker prints it, not when the build ends."""

    class Stamped(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[tuple[float, str]] = []

        def write(self, text: str) -> int:
            if text.strip():
                self.times.append((time.monotonic(), text.strip()))
            return super().write(text)

    out = Stamped()
    docker = _docker(tmp_path, "#1 [1/2] FROM base\n#2 [2/2] RUN slow\n", 0, pause=1.0)
    Local(out=out).stream([docker], what="docker build")
    (first_at, first), (second_at, second) = out.times
    assert (first, second) == ("#1 [1/2] FROM base", "#2 [2/2] RUN slow")
    assert second_at - first_at > 0.8


def test_a_missing_docker_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"^`/nonexistent/docker` not found here"):
        Local(out=io.StringIO()).stream(["/nonexistent/docker"], what="docker build")
