"""The code layer made here is the one `docker build` makes: both built for real and compared.

A full build of the repository's Dockerfile (on the local Debian base) is cached; the code then
changes (a file edited, one added, one removed, a byte-compiled file that .dockerignore keeps
out); the image assembled from the cache is loaded into the engine and compared with a real
`docker build` of the same tree: the runtime config, the layers below the code, and every
path under /app with its mode, owner, size, modification time and content.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pynet.deploy import release
from pynet.deploy.remote import Local
from pynet.local.engine import DOCKER, docker
from pynet.local.images import BASE_IMAGE
from pynet.local.provision import build_context_copy

pytestmark = pytest.mark.e2e

LIST = (
    "cd /app && find . -printf '%p %y %m %U %G %s\\n' | sort"
    " && find . -type f -printf '%p %TY-%Tm-%Td %TH:%TM:%.2TS\\n' | sort"
    " && find . -type f -exec md5sum {} + | sort"
)


def _listing(image: str) -> str:
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", LIST).stdout


def _inspect(image: str, what: str) -> str:
    return docker("image", "inspect", "--format", what, image).stdout.strip()


@pytest.fixture
def context(tmp_path: Path, chat_image: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the build context, and a deploy cache of its own. (CHAT_IMAGE: the base
    image and the engine exist.)"""
    monkeypatch.setenv("PYNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    return build_context_copy(tmp_path / "src")


def test_the_assembled_image_is_what_docker_build_makes(context: Path, tmp_path: Path) -> None:
    local = Local(out=open("/dev/null", "w"))  # noqa: SIM115 - the builds' progress is noise here
    tags = ["cl-first", "cl-assembled", "cl-built"]
    try:
        recipe = release.recipe(local, DOCKER, context, None, BASE_IMAGE, None)
        assert recipe is not None
        assert release.assemble(recipe, "cl-assembled") is None  # nothing cached yet
        release.build(local, DOCKER, "cl-first", context, BASE_IMAGE)
        release.Built(local, DOCKER, "cl-first", recipe).close()  # the full build, cached

        init = context / "chat" / "__init__.py"
        init.write_text(init.read_text() + "\nASSEMBLED = True\n")
        (context / "chat" / "added.py").write_text("X = 1\n")
        (context / "chat" / "window.py").unlink()
        (context / "chat" / "__pycache__").mkdir(exist_ok=True)
        (context / "chat" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"\0" * 8)

        again = release.recipe(local, DOCKER, context, None, BASE_IMAGE, None)
        assert again is not None
        assert again.fingerprint == recipe.fingerprint
        assembled = release.assemble(again, "cl-assembled")
        assert assembled is not None
        with assembled:
            archive = tmp_path / "assembled.tar.gz"
            assembled.slim(archive, 0)  # every layer: this engine loads it as a host would
            docker("load", "-i", str(archive))
            assert _inspect("pynet-chat:cl-assembled", "{{.Id}}") == assembled.image.config
        release.build(local, DOCKER, "cl-built", context, BASE_IMAGE)

        mine, theirs = "pynet-chat:cl-assembled", "pynet-chat:cl-built"
        assert _inspect(mine, "{{json .Config}}") == _inspect(theirs, "{{json .Config}}")
        assert _inspect(mine, "{{.Os}}/{{.Architecture}}") == _inspect(
            theirs, "{{.Os}}/{{.Architecture}}"
        )
        lower = "{{json .RootFS.Layers}}"
        assert _inspect(mine, lower)[:-80] == _inspect(theirs, lower)[:-80]  # all but the top
        listing = _listing(mine)
        assert "./chat/added.py f 644 0 0" in listing
        assert "window.py" not in listing
        assert "__pycache__" not in listing
        assert listing == _listing(theirs)
    finally:
        for tag in tags:
            docker("image", "rm", "-f", f"pynet-chat:{tag}", check=False)
