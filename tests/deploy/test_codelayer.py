"""The code layer made without Docker (`pynet.deploy.codelayer`): what may be assembled, the
layer's bytes, the recipe's fingerprint, the cache, and the archive `docker load` gets.

The comparison with a real `docker build` is `test_codelayer_docker.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pynet.deploy import codelayer
from pynet.deploy.codelayer import Assembled, Cached, DockerIgnore, Plan, code_layer, plan
from pynet.deploy.layers import read_archive
from tests.deploy.fakes import (
    BASE,
    CONFIG,
    LINKED_CONFIG,
    FakeEngine,
    _write,
    fake_classic_with_link,
    fake_docker_save,
    fake_oci_save,
)

REPO = Path(__file__).resolve().parents[2]
PLAN = Plan("chat", "app/chat", "python:3.11-slim", ("wheels/SHA256SUMS",))


# --- .dockerignore -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("README.md", True),
        ("chat", False),
        ("chat/server.py", False),
        ("chat/__pycache__", True),
        ("chat/__pycache__/server.cpython-311.pyc", True),
        ("chat/sub/__pycache__/x.pyc", True),
        ("chat/x.pyc", True),
        ("wheels/SHA256SUMS", False),
        ("wheels/redis-5.0.0-py3-none-any.whl", False),
        ("wheels/notes.txt", True),
        (".git/config", True),
    ],
)
def test_the_projects_dockerignore_read_as_docker_reads_it(path: str, excluded: bool) -> None:
    assert DockerIgnore.read(REPO).excluded(path) is excluded


def test_dockerignore_patterns() -> None:
    rules = DockerIgnore("# a comment\n\n*.md\n!README.md\ndocs/**/*.png\n/build\ntmp?\n[ab].txt\n")
    assert rules.excluded("notes.md")
    assert not rules.excluded("README.md")  # the later exception wins
    assert not rules.excluded("sub/notes.md")  # `*` stays in one folder
    assert rules.excluded("docs/x.png")
    assert rules.excluded("docs/a/b/x.png")
    assert rules.excluded("build/out.o")  # a folder's contents go with it
    assert rules.excluded("tmp1")
    assert not rules.excluded("tmp12")
    assert rules.excluded("a.txt")
    assert not rules.excluded("c.txt")
    assert not DockerIgnore("").excluded("anything")


# --- the Dockerfile ----------------------------------------------------------------------------


def test_the_projects_dockerfile_can_be_assembled() -> None:
    found = plan((REPO / "Dockerfile").read_text(), REPO, {})
    assert found == Plan(
        "chat", "app/chat", "python:3.11-slim", ("wheels/SHA256SUMS", "wheels/*.whl")
    )
    assert isinstance(plan((REPO / "Dockerfile").read_text(), REPO, {"BASE_IMAGE": "b:1"}), Plan)
    assert plan((REPO / "Dockerfile").read_text(), REPO, {"BASE_IMAGE": "b:1"}).base == "b:1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        ("FROM a\nCOPY chat/ /app/chat/\nCMD x\n", "its last instruction is not COPY"),
        ("FROM a\nADD x.tgz /\nCOPY chat/ /app/chat/\n", "it uses ADD"),
        ("FROM a AS b\nFROM c\nCOPY chat/ /app/chat/\n", "it has several stages"),
        ("FROM a\nCOPY --chown=1:1 chat/ /app/chat/\n", "is not `COPY <folder>/ <folder>/`"),
        ("FROM a\nCOPY chat/ wheels/ /app/\n", "is not `COPY <folder>/ <folder>/`"),
        ("FROM a\nCOPY *.py /app/\n", "does not copy one folder"),
        ("FROM a\nCOPY missing/ /app/m/\n", "does not copy one folder"),
        ("FROM a\nCOPY chat/ /app/chat\n", "does not copy one folder"),
        ("FROM a\nCOPY chat/ /$X/\n", "not a plain path"),
        ("FROM a\nCOPY --from=b /x /x\nCOPY chat/ /app/chat/\n", "another stage"),
        ("FROM a\nRUN --mount=type=bind,target=/w make\nCOPY chat/ /app/chat/\n", "RUN --mount"),
        ("FROM a\nRUN <<EOF\nmake\nEOF\nCOPY chat/ /app/chat/\n", "here-document"),
        ("# escape=`\nFROM a\nCOPY chat/ /app/chat/\n", "escape character"),
        ("# syntax=docker/dockerfile:1\nFROM a\nCOPY chat/ /app/chat/\n", "BuildKit frontend"),
    ],
)
def test_a_dockerfile_the_assembly_cannot_vouch_for_is_built(dockerfile: str, reason: str) -> None:
    found = plan(dockerfile, REPO, {})
    assert isinstance(found, str)
    assert reason in found


def test_continuations_and_comments() -> None:
    steps = codelayer.instructions("# c\nfrom a\nRUN x \\\n  && y\n\n# c\ncopy chat/ /app/chat/\n")
    assert [(s.keyword, s.args) for s in steps] == [
        ("FROM", "a"),
        ("RUN", "x  && y"),
        ("COPY", "chat/ /app/chat/"),
    ]


# --- the code layer ----------------------------------------------------------------------------


def _context(tmp_path: Path) -> Path:
    (tmp_path / "chat" / "sub").mkdir(parents=True)
    (tmp_path / "chat" / "__pycache__").mkdir()
    (tmp_path / "chat" / "a.py").write_text("A = 1\n")
    (tmp_path / "chat" / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "chat" / "run.sh").chmod(0o700)
    (tmp_path / "chat" / "sub" / "b.py").write_text("B = 2\n")
    (tmp_path / "chat" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "chat" / "c.pyc").write_bytes(b"\0")
    (tmp_path / ".dockerignore").write_text("*\n!chat/\nchat/**/__pycache__\nchat/**/*.pyc\n")
    for path in (tmp_path / "chat").rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    return tmp_path


def _members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_code_layer_is_what_copy_lays_out(tmp_path: Path) -> None:
    context = _context(tmp_path)
    layer = code_layer(context, PLAN, DockerIgnore.read(context))
    members = _members(layer)
    assert sorted(members) == [
        "app/chat",
        "app/chat/a.py",
        "app/chat/run.sh",
        "app/chat/sub",
        "app/chat/sub/b.py",
    ]
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())  # COPY without --chown
    assert members["app/chat/run.sh"].mode == 0o700  # modes kept
    assert members["app/chat/a.py"].mtime == 1_700_000_000  # times kept
    assert members["app/chat/sub"].isdir()
    assert members["app/chat"].isdir()
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.extractfile("app/chat/sub/b.py").read() == b"B = 2\n"  # type: ignore[union-attr]
    # The same code makes the same bytes: the same diff ID, every time.
    assert code_layer(context, PLAN, DockerIgnore.read(context)) == layer


def test_a_symlink_in_the_code_is_left_to_docker(tmp_path: Path) -> None:
    context = _context(tmp_path)
    (context / "chat" / "link.py").symlink_to("a.py")
    with pytest.raises(codelayer.NotAssemblable, match=r"link\.py"):
        code_layer(context, PLAN, DockerIgnore.read(context))


# --- the fingerprint ---------------------------------------------------------------------------


def _fingerprint(context: Path, dockerfile: bytes = b"FROM a\n", **kw: object) -> str:
    args = {"base_id": "sha256:base", "build_args": {}, "platform": None, **kw}
    return codelayer.fingerprint(context, dockerfile, PLAN, **args)  # type: ignore[arg-type]


def test_the_fingerprint_follows_what_the_lower_layers_are_made_of(tmp_path: Path) -> None:
    context = _context(tmp_path)
    (context / "wheels").mkdir()
    (context / "wheels" / "SHA256SUMS").write_text("abc  x.whl\n")
    first = _fingerprint(context)
    (context / "chat" / "a.py").write_text("A = 2\n")  # the code: not part of it
    assert _fingerprint(context) == first
    assert _fingerprint(context, b"FROM b\n") != first
    assert _fingerprint(context, base_id="sha256:other") != first  # the base image was pulled
    assert _fingerprint(context, build_args={"BASE_IMAGE": "x"}) != first
    assert _fingerprint(context, platform="linux/arm64") != first
    (context / "wheels" / "SHA256SUMS").write_text("def  x.whl\n")  # a pin changed
    assert _fingerprint(context) != first
    second = _fingerprint(context)
    (context / ".dockerignore").write_text("*\n")
    assert _fingerprint(context) != second


# --- the cache and the assembled archive -------------------------------------------------------


@pytest.mark.parametrize("layout", ["classic", "oci", "classic-link"])
def test_assembled_archive_replaces_only_the_code_layer(tmp_path: Path, layout: str) -> None:
    saved = tmp_path / "saved.tar"
    if layout == "classic-link":
        fake_classic_with_link(saved, LINKED_CONFIG)
    elif layout == "oci":
        fake_oci_save(saved)
    else:
        fake_docker_save(saved)
    folder = tmp_path / "cache"
    Cached.keep(folder, saved, "f1")
    cached = Cached.read(folder)
    assert cached is not None
    assert cached.fingerprint == "f1"
    layer = b"new code layer"
    image = Assembled(cached, layer, "pynet-chat:v3", when=1_800_000_000)
    base_ids = list(cached.config["rootfs"]["diff_ids"][:-1])
    assert image.layers == [*base_ids, "sha256:" + hashlib.sha256(layer).hexdigest()]
    assert image.image.created == "2027-01-15T08:00:00Z"

    # The host has everything below: the config, the manifest and the code layer ship.
    slim = image.slim(tmp_path / "slim.tar.gz", len(image.layers) - 1)
    assert (slim.layers, slim.shipped) == (len(image.layers), 1)
    with tarfile.open(tmp_path / "slim.tar.gz") as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config_raw = tar.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
        assert tar.extractfile(image.layer_path).read() == layer  # type: ignore[union-attr]
    assert names == {"manifest.json", manifest["Config"], image.layer_path}
    assert manifest["RepoTags"] == ["pynet-chat:v3"]
    assert "sha256:" + hashlib.sha256(config_raw).hexdigest() == image.image.config
    assert json.loads(config_raw)["rootfs"]["diff_ids"] == image.layers
    # What the archive says of itself is what the deploy checks the host against.
    assert read_archive(tmp_path / "slim.tar.gz").config == image.image.config

    # The host lacks the layers below: every layer ships, read from the cached archive.
    full = image.slim(tmp_path / "full.tar.gz", 0)
    assert full.shipped == len(set(image.paths))
    with tarfile.open(tmp_path / "full.tar.gz") as tar:
        assert tar.extractfile(manifest["Layers"][0]).read() == BASE  # type: ignore[union-attr]
    image.close()
    assert not image.dir.exists()


def test_a_cache_that_cannot_be_read_is_none(tmp_path: Path) -> None:
    assert Cached.read(tmp_path / "nothing") is None
    fake_classic_with_link(tmp_path / "odd.tar")  # three layers, a config that names two
    Cached.keep(tmp_path / "odd", tmp_path / "odd.tar", "f")
    assert Cached.read(tmp_path / "odd") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "recipe.json").write_text('{"format": 1, "fingerprint": "x"}')
    (tmp_path / "bad" / "image.tar").write_bytes(b"not a tar")
    assert Cached.read(tmp_path / "bad") is None
    (tmp_path / "bad" / "recipe.json").write_text('{"format": 0, "fingerprint": "x"}')
    assert Cached.read(tmp_path / "bad") is None


def test_the_cache_folder_is_per_context_and_can_be_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(codelayer.CACHE_ENV, str(tmp_path))
    assert codelayer.cache_dir(REPO).parent == tmp_path
    assert codelayer.cache_dir(REPO) != codelayer.cache_dir(REPO / "chat")
    monkeypatch.delenv(codelayer.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert codelayer.cache_dir(REPO).parent == tmp_path / "xdg" / "pynet" / "deploy"


def test_only_the_latest_contexts_stay_cached(tmp_path: Path) -> None:
    saved = tmp_path / "saved.tar"
    fake_docker_save(saved)
    root = tmp_path / "cache"
    for i in range(codelayer.KEEP_CONTEXTS + 2):
        Cached.keep(root / f"{i:016x}", saved, f"f{i}")  # named as cache_dir names them
        os.utime(root / f"{i:016x}", (1_700_000_000 + i, 1_700_000_000 + i))
    kept = sorted(p.name for p in root.iterdir())
    assert kept == [f"{i:016x}" for i in range(2, codelayer.KEEP_CONTEXTS + 2)]


def test_off_builds_everything_with_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynet.deploy import release
    from pynet.deploy.remote import Local

    monkeypatch.setenv(codelayer.CACHE_ENV, "off")
    assert not codelayer.enabled()
    assert release.recipe(Local(), "docker", REPO, None, None, None) is None  # no docker asked
    monkeypatch.setenv(codelayer.CACHE_ENV, "/somewhere")
    assert codelayer.enabled()


def test_a_dockerfile_with_its_own_ignore_file_is_built(tmp_path: Path) -> None:
    from pynet.deploy import release

    context = _context(tmp_path)
    (context / "Dockerfile").write_text("FROM a\nCOPY chat/ /app/chat/\n")
    assert release.recipe(FakeEngine(), "docker", context, None, None, None) is not None
    (context / "Dockerfile.dockerignore").write_text("*\n")  # BuildKit reads it, not ours
    assert release.recipe(FakeEngine(), "docker", context, None, None, None) is None


# --- review: what `docker build` (Docker 20.10, checked by hand) does that the assembly must too


def test_double_star_inside_a_name_matches_as_docker_matches_it() -> None:
    # Docker turns `**` not followed by `/` into "any folders, then": `chat/**.pyc` keeps
    # chat/x.pyc in the build (a real build copied it) and leaves chat/.pyc out.
    rules = DockerIgnore("chat/**.pyc\n")
    assert not rules.excluded("chat/x.pyc")
    assert rules.excluded("chat/.pyc")
    assert rules.excluded("chat/sub/.pyc")
    assert DockerIgnore("**\n").excluded("a/b/c")  # `**` at the end: everything


def test_a_file_taken_back_under_an_excluded_folder_is_left_to_docker(tmp_path: Path) -> None:
    # `chat/sub` then `!chat/sub/keep.py`: Docker still looks into chat/sub (an exception names
    # a path under it) and copies keep.py; the assembly must not silently leave it out.
    context = _context(tmp_path)
    (context / "chat" / "sub" / "keep.py").write_text("K = 1\n")
    (context / ".dockerignore").write_text("*\n!chat/\nchat/sub\n!chat/sub/keep.py\n")
    try:
        members = _members(code_layer(context, PLAN, DockerIgnore.read(context)))
    except codelayer.NotAssemblable:
        return  # left to docker build: fine
    assert "app/chat/sub/keep.py" in members


def test_an_excluded_folder_no_exception_reaches_is_still_left_out(tmp_path: Path) -> None:
    context = _context(tmp_path)
    (context / ".dockerignore").write_text("*\n!chat/\nchat/sub\n!chat/*/keep.py\n")
    members = _members(code_layer(context, PLAN, DockerIgnore.read(context)))
    assert "app/chat/sub" not in members  # Docker does not look into it either


def test_dockerignore_with_a_byte_order_mark_or_latin_1_is_read_as_docker_reads_it(
    tmp_path: Path,
) -> None:
    # Docker drops a UTF-8 byte order mark and reads the rest as bytes; a deploy whose first
    # full build worked must not fail with UnicodeDecodeError on the next, code-only one.
    (tmp_path / ".dockerignore").write_bytes(b"\xef\xbb\xbfchat/x.pyc\n")
    assert DockerIgnore.read(tmp_path).excluded("chat/x.pyc")
    (tmp_path / ".dockerignore").write_bytes(b"# r\xe9sum\xe9 of what stays out\nchat/x.pyc\n")
    assert DockerIgnore.read(tmp_path).excluded("chat/x.pyc")


def test_a_relative_destination_lands_under_the_workdir_and_is_left_to_docker() -> None:
    # `WORKDIR /app` + `COPY chat/ chat/` puts the code in /app/chat, not /chat.
    found = plan("FROM a\nWORKDIR /app\nCOPY chat/ chat/\n", REPO, {})
    assert isinstance(found, str) or found.dest == "app/chat"


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM a\nCOPY wheels/* /w/\nCOPY chat/ /app/chat/\n",  # `*` takes hidden files too
        "FROM a\nCOPY\twheels/ /w/\nCOPY chat/ /app/chat/\n",  # a tab after the keyword
        "FROM a\nCOPY /wheels/ /w/\nCOPY chat/ /app/chat/\n",  # `/` is the context's root
        "FROM a\nCOPY wheels/ \\\n\n   /w/\nCOPY chat/ /app/chat/\n",  # an empty continuation
        "FROM a\nARG W=wheels\nCOPY $W/ /w/\nCOPY chat/ /app/chat/\n",  # a variable
        "FROM a\nCOPY link/ /w/\nCOPY chat/ /app/chat/\n",  # COPY follows a symlink it names
    ],
)
def test_the_fingerprint_sees_every_file_an_earlier_copy_reads(
    tmp_path: Path, dockerfile: str
) -> None:
    context = _context(tmp_path)
    (context / "wheels").mkdir()
    (context / "wheels" / ".pins").write_text("a\n")
    (context / "link").symlink_to("wheels")
    found = plan(dockerfile, context, {})
    if isinstance(found, str):
        return  # left to docker build: fine
    first = codelayer.fingerprint(context, dockerfile.encode(), found, "sha256:b", {}, None)
    (context / "wheels" / ".pins").write_text("b\n")
    assert codelayer.fingerprint(context, dockerfile.encode(), found, "sha256:b", {}, None) != first


def test_the_fingerprint_sees_folders_an_earlier_copy_copies(tmp_path: Path) -> None:
    context = _context(tmp_path)
    (context / "conf" / "d").mkdir(parents=True)
    dockerfile = b"FROM a\nCOPY conf/ /conf/\nCOPY chat/ /app/chat/\n"
    found = plan(dockerfile.decode(), context, {})
    assert isinstance(found, Plan)
    first = codelayer.fingerprint(context, dockerfile, found, "sha256:b", {}, None)
    (context / "conf" / "empty").mkdir()  # docker build copies an empty folder
    second = codelayer.fingerprint(context, dockerfile, found, "sha256:b", {}, None)
    assert second != first
    (context / "conf" / "d").chmod(0o700)  # and a folder's mode
    assert codelayer.fingerprint(context, dockerfile, found, "sha256:b", {}, None) != second


def test_a_fingerprint_that_cannot_be_read_builds_with_docker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file an earlier COPY names that cannot be read here (another user's, a socket) that
    # .dockerignore keeps out: docker build works, so the deploy must too.
    from pynet.deploy import release

    context = _context(tmp_path)
    (context / "wheels").mkdir()
    (context / "wheels" / "x").write_text("x")
    (context / "Dockerfile").write_text("FROM a\nCOPY wheels/ /w/\nCOPY chat/ /app/chat/\n")

    def unreadable(*_: object, **__: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(codelayer, "_file_digest", unreadable)
    assert release.recipe(FakeEngine(), "docker", context, None, None, None) is None


# --- review: the cache under two terminals, a full disk, other users -------------------------


def test_a_full_build_kept_meanwhile_does_not_change_an_assembled_image(tmp_path: Path) -> None:
    # Terminal 1 assembles from the cache; terminal 2's full build of the same context replaces
    # the cached archive before terminal 1 ships (or retries with every layer).
    fake_docker_save(tmp_path / "one.tar")
    fake_oci_save(tmp_path / "two.tar", layers=(b"other base", b"other code"))
    folder = tmp_path / "cache"
    Cached.keep(folder, tmp_path / "one.tar", "f1")
    cached = Cached.read(folder)
    assert cached is not None
    image = Assembled(cached, b"code", "pynet-chat:v3")
    Cached.keep(folder, tmp_path / "two.tar", "f2")
    image.slim(tmp_path / "all.tar.gz", 0)
    with tarfile.open(tmp_path / "all.tar.gz") as tar:
        assert tar.extractfile(image.paths[0]).read() == BASE  # type: ignore[union-attr]
    image.close()


def test_two_full_builds_kept_at_once_never_pair_a_recipe_with_the_other_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two terminals deploy the same context (wheels changed in between): terminal 2 keeps its
    # build between terminal 1's archive and terminal 1's recipe.
    other = json.dumps({**json.loads(CONFIG), "created": "2027-01-01T00:00:00Z"}).encode()
    fake_docker_save(tmp_path / "one.tar")
    fake_docker_save(tmp_path / "two.tar", other)
    folder = tmp_path / "cache"
    real = os.replace
    calls = []

    def replace(src: str | Path, dst: str | Path) -> None:
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # terminal 1's archive is in place
            Cached.keep(folder, tmp_path / "two.tar", "f2")

    monkeypatch.setattr(codelayer.os, "replace", replace)
    Cached.keep(folder, tmp_path / "one.tar", "f1")
    monkeypatch.undo()
    cached = Cached.read(folder)
    if cached is not None:  # what a recipe says is what its archive holds
        assert cached.config == json.loads({"f1": CONFIG, "f2": other}[cached.fingerprint])
        cached.close()


def test_a_cache_that_cannot_be_written_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_docker_save(tmp_path / "saved.tar")
    folder = tmp_path / "cache"

    def full(src: str | Path, dst: str | Path) -> None:
        Path(dst).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(codelayer.shutil, "copyfile", full)
    Cached.keep(folder, tmp_path / "saved.tar", "f1")  # best effort: no exception
    assert sorted(p.name for p in folder.iterdir()) == []  # no half-written archive left
    assert Cached.read(folder) is None


def test_a_corrupt_cache_is_none_not_a_crash(tmp_path: Path) -> None:
    config = json.dumps({"os": "linux", "rootfs": {"diff_ids": ["sha256:a", "sha256:b"]}})
    name = hashlib.sha256(config.encode()).hexdigest() + ".json"
    manifest = [{"Config": name, "Layers": ["gone/layer.tar", "top/layer.tar"]}]
    files = {name: config.encode(), "manifest.json": json.dumps(manifest).encode()}
    _write(tmp_path / "missing.tar", files)  # a layer below the code is not in the archive
    Cached.keep(tmp_path / "a", tmp_path / "missing.tar", "f")
    assert Cached.read(tmp_path / "a") is None  # else the retry with every layer crashes

    manifest = [{"Config": "c.json", "Layers": ["l"]}]
    files = {"manifest.json": json.dumps(manifest).encode()}
    _write(tmp_path / "loop.tar", files, {"c.json": "c.json"})  # a link to itself
    folder = tmp_path / "b"
    folder.mkdir(mode=0o700)
    (folder / "image.tar").write_bytes((tmp_path / "loop.tar").read_bytes())
    recipe = {"format": codelayer.FORMAT, "fingerprint": "f"}
    (folder / "recipe.json").write_text(json.dumps(recipe))
    assert Cached.read(folder) is None  # not a RecursionError


def test_a_cache_folder_others_can_write_to_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whoever can write the cache chooses the image the next code-only deploy ships.
    import stat

    fake_docker_save(tmp_path / "saved.tar")
    folder = tmp_path / "cache"
    Cached.keep(folder, tmp_path / "saved.tar", "f1")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    cached = Cached.read(folder)
    assert cached is not None
    Assembled(cached, b"code", "pynet-chat:v3").close()
    folder.chmod(0o777)
    assert Cached.read(folder) is None
    folder.chmod(0o700)
    me = os.geteuid()
    monkeypatch.setattr(codelayer.os, "geteuid", lambda: me + 1)  # someone else's folder
    assert Cached.read(folder) is None


def test_pruning_removes_only_deploy_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PYNET_DEPLOY_CACHE=~/.cache: the other programs' folders there are not ours to remove.
    root = tmp_path / "dot-cache"
    for name in ("pip", "mozilla", "fontconfig", "JetBrains", "0123456789abcdef"):
        (root / name).mkdir(parents=True)
    monkeypatch.setenv(codelayer.CACHE_ENV, str(root))
    fake_docker_save(tmp_path / "saved.tar")
    Cached.keep(codelayer.cache_dir(REPO), tmp_path / "saved.tar", "f1")
    assert {"pip", "mozilla", "fontconfig", "JetBrains"} <= {p.name for p in root.iterdir()}


def test_the_retry_with_every_layer_ships_an_assembled_image(tmp_path: Path) -> None:
    """ship(): the host lacks a layer the slim archive left out; the full one is assembled too."""
    from pynet.deploy import release
    from tests.deploy.test_release_flow import ScriptedHost, ScriptedLocal

    fake_docker_save(tmp_path / "saved.tar")
    Cached.keep(tmp_path / "cache", tmp_path / "saved.tar", "f1")
    cached = Cached.read(tmp_path / "cache")
    assert cached is not None
    image = Assembled(cached, b"code", "pynet-chat:v3")
    shipped: list[set[str]] = []

    class Host(ScriptedHost):
        def feed(self, argv: list[str], local: Path, progress: bool = True) -> Any:
            with tarfile.open(local) as tar:
                shipped.append(set(tar.getnames()))
            return super().feed(argv, local, progress)

    loads = iter(
        [
            ("open /var/lib/docker/tmp/x/aaa/layer.tar: no such file or directory", 1),
            (f"Loaded image: pynet-chat:v3\n{image.image.config} x y label=3\n", 0),
        ]
    )
    host = Host(
        [
            ("sudo -n docker image ls --quiet", ('["sha256:base"]\n', 0)),
            ("sudo -n docker load", lambda _: next(loads)),
        ]
    )
    with image:
        release.ship(host, ScriptedLocal([]), "docker", "v3", built=image)
    assert "aaa/layer.tar" not in shipped[0]
    assert {"aaa/layer.tar", image.layer_path, image.config_path} <= shipped[1]


def test_a_base_image_with_onbuild_steps_is_built_with_docker(tmp_path: Path) -> None:
    """ONBUILD steps run in every build FROM the image, and may read the context."""
    from pynet.deploy import release

    context = _context(tmp_path)
    (context / "Dockerfile").write_text("FROM a\nCOPY chat/ /app/chat/\n")
    for none in ("sha256:base null", "sha256:base []", "sha256:base"):
        assert release.recipe(FakeEngine(none), "docker", context, None, None, None) is not None
    onbuild = 'sha256:base ["COPY . /src"]'
    assert release.recipe(FakeEngine(onbuild), "docker", context, None, None, None) is None


def test_a_recipe_that_changed_during_the_build_is_not_cached(tmp_path: Path) -> None:
    from pynet.deploy import release

    context = _context(tmp_path)
    (context / "wheels").mkdir()
    (context / "wheels" / "pins").write_text("a==1\n")
    (context / "Dockerfile").write_text("FROM a\nCOPY wheels/ /w/\nCOPY chat/ /app/chat/\n")
    before = release.recipe(FakeEngine(), "docker", context, None, None, None)
    assert before is not None
    assert release.unchanged(before, FakeEngine(), "docker", None, None, None) is before
    (context / "chat" / "a.py").write_text("A = 3\n")  # the code may change: it is not cached
    assert release.unchanged(before, FakeEngine(), "docker", None, None, None) is before
    (context / "wheels" / "pins").write_text("a==2\n")  # edited while Docker read it
    assert release.unchanged(before, FakeEngine(), "docker", None, None, None) is None
    assert release.unchanged(None, FakeEngine(), "docker", None, None, None) is None
