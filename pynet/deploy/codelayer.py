"""A code-only change without `docker build` or `docker save`: the image's code layer made here.

The Dockerfile copies the code last (`COPY chat/ /app/chat/`), so a change to the code alone
changes one layer. Docker has no command that exports one layer: `docker save` writes all of
them (1.75 s of a 3.7 s deploy for this 160 MB image on Docker 20.10, and it grows with the base
image, not with the change). So, as Jib and ko build images without a Docker daemon, the deploy
makes that layer itself when nothing above it changed since the last full build:

- a full build leaves its `docker save` archive in a cache (`cache_dir()`), with the recipe it was
  built from: the Dockerfile, the files its earlier `COPY`s read, `.dockerignore`, the base
  image's ID on this engine, the build arguments and the platform (`Recipe.fingerprint`). Only
  a folder of this user's that no one else can write is read: whoever writes the cache chooses
  the image the next deploy ships;
- the next deploy with the same fingerprint writes the code layer as the classic builder's
  `COPY` lays it out (root-owned, modes and modification times kept, `.dockerignore` applied),
  puts its diff ID in place of the old one in a copy of the cached config, and ships the config,
  the manifest and that layer: what `docker load` needs when the host holds the layers below.

Anything the assembly cannot vouch for builds with Docker as before: a Dockerfile whose last
instruction is not a plain `COPY` of one directory, `ADD`, several stages, a base image this
engine does not hold, a symlink in the code, a dry run. The result is the image `docker build`
would make but for the code layer's tar bytes (the same files, modes, owners and times;
`tests/deploy/test_codelayer_docker.py` builds both and compares them).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pynet.deploy.layers import (
    ArchiveImage,
    Scratch,
    Shipment,
    image_manifest,
    link_target,
    member_bytes,
)

CACHE_ENV = "PYNET_DEPLOY_CACHE"
RECIPE_FILE = "recipe.json"
ARCHIVE_FILE = "image.tar"
KEEP_CONTEXTS = 3  # build contexts whose last full build stays cached (each about an image)
FORMAT = 2  # of recipe.json: a cache written by another format is rebuilt, never misread
CONTEXT_NAME = re.compile(r"[0-9a-f]{16}")  # a folder `cache_dir` names: the only ones pruned


def enabled() -> bool:
    """`PYNET_DEPLOY_CACHE=off` builds every release with Docker (no cache kept or read)."""
    return os.environ.get(CACHE_ENV, "").strip().lower() != "off"


def cache_dir(context: Path) -> Path:
    """Where the last full build of CONTEXT is kept: `$PYNET_DEPLOY_CACHE`, else the user's
    cache folder (`$XDG_CACHE_HOME`, `~/.cache`), one folder per build context."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pynet", "deploy"
    )
    return Path(root) / hashlib.sha256(str(context.resolve()).encode()).hexdigest()[:16]


# --- .dockerignore ---------------------------------------------------------------------------


class DockerIgnore:
    """`.dockerignore` as Docker reads it: the last pattern that matches a path (or one of its
    parent folders) decides, `!` makes an exception, `**` spans folders, `*` and `?` do not."""

    def __init__(self, text: str = "") -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        self.exceptions: list[str] = []  # the `!` patterns, as Docker keeps them
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if keep else line).lstrip("/")
            if pattern in ("", "."):
                continue
            self.rules.append((keep, re.compile(_regex(pattern))))
            if keep:
                self.exceptions.append(pattern)

    @classmethod
    def read(cls, context: Path) -> DockerIgnore:
        """Docker drops a UTF-8 byte order mark and matches bytes: any other byte is kept as
        the file name it stands for (os.walk's names use the same escape)."""
        path = context / ".dockerignore"
        data = path.read_bytes() if path.is_file() else b""
        return cls(data.decode("utf-8-sig", "surrogateescape"))

    def excluded(self, path: str) -> bool:
        """Whether PATH (relative to the context, with `/`) stays out of the build."""
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        out = False
        for keep, rule in self.rules:
            if any(rule.fullmatch(c) for c in candidates):
                out = not keep
        return out

    def looked_into(self, folder: str) -> bool:
        """Whether Docker still walks the excluded FOLDER: an exception names a path under it
        (Docker's own test, on the pattern as written), and may take files there back."""
        return any(f"{pattern}/".startswith(f"{folder}/") for pattern in self.exceptions)


def _regex(pattern: str) -> str:
    """A `.dockerignore` pattern as a regular expression (Go's filepath.Match, plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):  # as Docker reads it: `**/` is `**`, which matches
            i += 2  # any folders (or none) before the rest, or everything at the end
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(?:.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(ch)
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith("^") else body
                out += f"[{body}]"
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return out


# --- the Dockerfile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):  # Docker skips both inside a continuation
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        found.append(_instruction(pending + stripped))
        pending = ""
    if pending.strip():
        found.append(_instruction(pending))
    return found


def _instruction(line: str) -> Instruction:
    """The keyword ends at any white space, a tab too (Docker's parser)."""
    keyword, *args = line.split(None, 1)
    return Instruction(keyword.upper(), args[0].strip() if args else "")


@dataclass(frozen=True)
class Plan:
    """A Dockerfile whose code layer can be made here: what it copies last, and what the
    layers below are made from."""

    source: str  # the folder the last COPY copies, relative to the context (`chat`)
    dest: str  # where it lands in the image, without the leading `/` (`app/chat`)
    base: str  # the FROM image, build arguments substituted
    inputs: tuple[str, ...]  # the source patterns of the earlier COPYs


def plan(dockerfile: str, context: Path, build_args: Mapping[str, str]) -> Plan | str:
    """The Plan for DOCKERFILE's text, or why its code layer must come from `docker build`."""
    if re.search(r"^#\s*escape\s*=", dockerfile, re.M | re.I):
        return "it sets another escape character"
    if re.search(r"^#\s*syntax\s*=", dockerfile, re.M | re.I):
        return "it names a BuildKit frontend (# syntax=), whose instructions this cannot read"
    steps = instructions(dockerfile)
    if not steps or steps[-1].keyword != "COPY":
        return "its last instruction is not COPY"
    if any(s.keyword == "ADD" for s in steps):
        return "it uses ADD"
    if any("--mount" in s.args for s in steps):
        return "a RUN mounts files of the context (RUN --mount)"
    if any("<<" in s.args for s in steps):
        return "it uses a here-document"
    froms = [s for s in steps if s.keyword == "FROM"]
    if len(froms) != 1:
        return "it has several stages"
    last = steps[-1].args.split()
    if len(last) != 2 or last[0].startswith("--") or last[0].startswith("["):
        return "its last COPY is not `COPY <folder>/ <folder>/`"
    source = os.path.normpath(last[0]).strip("/")
    if source in ("", ".") or any(ch in source for ch in "*?[$") or source.startswith(".."):
        return "its last COPY does not copy one folder of the context"
    if not (context / source).is_dir() or not last[1].endswith("/"):
        return "its last COPY does not copy one folder of the context"
    dest = os.path.normpath(last[1]).strip("/")
    if "$" in dest or dest in ("", "."):
        return "its last COPY's destination is not a plain path"
    if not last[1].startswith("/"):  # Docker puts it under the WORKDIR
        return "its last COPY's destination is relative"
    inputs: list[str] = []
    for step in steps[:-1]:
        if step.keyword != "COPY":
            continue
        words = step.args.split()
        if any(w.startswith("--from") for w in words) or step.args.lstrip().startswith("["):
            return "an earlier COPY reads from another stage or uses the JSON form"
        if "$" in step.args:  # the files it reads depend on a variable
            return "an earlier COPY uses a variable"
        inputs += [w.lstrip("/") for w in words[:-1] if not w.startswith("--")]  # `/`: the context
    args = _arg_defaults(steps)
    args.update(build_args)
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), froms[0].args.split()[0])
    return Plan(source, dest, base, tuple(inputs))


def _arg_defaults(steps: Sequence[Instruction]) -> dict[str, str]:
    defaults = {}
    for step in steps:
        if step.keyword == "ARG" and "=" in step.args:
            key, _, value = step.args.partition("=")
            defaults[key.strip()] = value.strip().strip("\"'")
    return defaults


# --- the recipe ------------------------------------------------------------------------------


def fingerprint(
    context: Path,
    dockerfile: bytes,
    the_plan: Plan,
    base_id: str,
    build_args: Mapping[str, str],
    platform: str | None,
) -> str:
    """A digest of everything the layers below the code layer are made from."""
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            digest.update(len(data).to_bytes(8, "big") + data)

    add(FORMAT, dockerfile, base_id, platform or "", json.dumps(dict(build_args), sort_keys=True))
    ignore = context / ".dockerignore"
    add(ignore.read_bytes() if ignore.is_file() else b"")
    add(the_plan.source, the_plan.dest)
    for pattern in the_plan.inputs:
        add("input", pattern)
        # Go's `*` matches a name that starts with a dot, Python's only when told to.
        for path in sorted(glob.glob(str(context / pattern), recursive=True, include_hidden=True)):
            for file in _files_under(Path(path)):
                named = file == Path(path)  # COPY follows a symlink it names, not one inside
                info = file.stat() if named else file.lstat()
                rel = file.relative_to(context).as_posix()
                add(rel, info.st_mode, _file_digest(file, follow=named))
    return digest.hexdigest()


def _files_under(path: Path) -> Iterator[Path]:
    """PATH and, for a folder, everything in it, folders too (an empty one is copied as well,
    and a folder's mode)."""
    yield path
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in [*dirs, *sorted(files)]:
                yield Path(root) / name


def _file_digest(path: Path, follow: bool = False) -> str:
    if path.is_symlink() and not follow:
        return "link:" + os.readlink(path)
    if path.is_dir():
        return "folder"
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# --- the code layer --------------------------------------------------------------------------


class NotAssemblable(Exception):
    """The code cannot be laid out here (a symlink, a special file): `docker build` it."""


def code_layer(context: Path, the_plan: Plan, ignore: DockerIgnore) -> bytes:
    """The code folder as one layer tar, laid out as the classic builder's `COPY` lays it out:
    the destination folder, then every file and folder the build would copy, owned by root,
    with their modes and modification times. Sorted, so the same code makes the same bytes."""
    root = context / the_plan.source
    entries: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel_folder = Path(folder).relative_to(context).as_posix()
        dirs[:] = [d for d in dirs if not _left_out(f"{rel_folder}/{d}", ignore)]
        for name in [*dirs, *files]:
            rel = f"{rel_folder}/{name}"
            if not ignore.excluded(rel):
                entries.append((rel, Path(folder) / name))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = tarfile.TarInfo(the_plan.dest + "/")
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, int(root.stat().st_mtime)
        tar.addfile(top)
        for rel, path in sorted(entries):
            info = path.lstat()
            member = tarfile.TarInfo(the_plan.dest + rel[len(the_plan.source) :])
            member.mode, member.mtime = stat.S_IMODE(info.st_mode), int(info.st_mtime)
            member.uid = member.gid = 0
            if stat.S_ISDIR(info.st_mode):
                member.type, member.name = tarfile.DIRTYPE, member.name + "/"
                tar.addfile(member)
            elif stat.S_ISREG(info.st_mode):
                member.size = info.st_size
                with path.open("rb") as file:
                    tar.addfile(member, file)
            else:
                raise NotAssemblable(f"{rel} is not a plain file or folder")
    return buffer.getvalue()


def _left_out(folder: str, ignore: DockerIgnore) -> bool:
    """Whether FOLDER stays out of the build. An excluded folder Docker still walks (an
    exception may take files under it back, laid out by its own extraction) is Docker's."""
    if not ignore.excluded(folder):
        return False
    if ignore.looked_into(folder):
        raise NotAssemblable(f"{folder} is excluded but an exception (!) may take files back")
    return True


# --- the cache and the assembled image -------------------------------------------------------


@dataclass(frozen=True)
class Cached:
    """The last full build's archive and what it was built from. FILE: that archive, open, so
    that a full build another terminal keeps meanwhile cannot change what this deploy ships."""

    folder: Path
    fingerprint: str
    layers: tuple[str, ...]  # each layer's file in the archive, bottom first
    config: dict[str, Any]
    file: IO[bytes]

    def close(self) -> None:
        self.file.close()

    @classmethod
    def read(cls, folder: Path) -> Cached | None:
        """The cache in FOLDER, or None when there is none, it cannot be read, or another user
        could have written it (whoever writes it chooses the image a deploy ships)."""
        if not _private(folder):
            return None
        try:
            file = (folder / ARCHIVE_FILE).open("rb")
        except OSError:
            return None
        cached = cls._load(folder, file)
        if cached is None:
            file.close()
        return cached

    @classmethod
    def _load(cls, folder: Path, file: IO[bytes]) -> Cached | None:
        try:
            recipe = json.loads((folder / RECIPE_FILE).read_text(encoding="utf-8"))
            with tarfile.open(fileobj=file) as tar:
                layers, raw = _image(tar)
                for path in layers[:-1]:  # what a shipment with every layer reads
                    _layer(tar, path)
            config = json.loads(raw)
            if recipe.get("format") != FORMAT or recipe.get("image") != _digest(raw):
                return None  # another format, or the recipe of another build's archive
            if len(layers) != len(config["rootfs"]["diff_ids"]) or not layers:
                return None  # not an archive this module can vouch for
            return cls(folder, str(recipe["fingerprint"]), layers, config, file)
        except (OSError, ValueError, KeyError, IndexError, TypeError, tarfile.TarError):
            return None

    @staticmethod
    def keep(folder: Path, saved: Path, fingerprint_: str) -> None:
        """Keep SAVED (a `docker save` archive) as the cache of FOLDER's next code-only
        builds. Best effort: a cache that cannot be written only makes the next build slower.

        The recipe names the image (its config digest) of the archive it goes with: two
        deploys keeping at once may leave either's files, never one's recipe as the other's."""
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if folder.lstat().st_uid == os.geteuid():
                folder.chmod(0o700)  # one an earlier version made with the umask's mode
            if not _private(folder):
                return
            with tarfile.open(saved) as tar:
                image = _digest(_image(tar)[1])
            (folder / RECIPE_FILE).unlink(missing_ok=True)  # never a recipe beside another archive
            _write_new(folder / ARCHIVE_FILE, lambda tmp: shutil.copyfile(saved, tmp))
            recipe = json.dumps({"format": FORMAT, "fingerprint": fingerprint_, "image": image})
            _write_new(folder / RECIPE_FILE, lambda tmp: tmp.write_text(recipe, encoding="utf-8"))
        except (OSError, ValueError, KeyError, IndexError, TypeError, tarfile.TarError):
            return
        _prune(folder.parent, keep=KEEP_CONTEXTS)


def _private(folder: Path) -> bool:
    """Whether FOLDER is a folder of this user's that no one else can write to."""
    try:
        info = folder.lstat()
    except OSError:
        return False
    mine = stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
    return mine and not info.st_mode & 0o022


def _write_new(path: Path, write: Callable[[Path], object]) -> None:
    """Write PATH through a temporary file of its own, renamed over it: two deploys at once
    never write into the same file, and a failed write (a full disk) leaves nothing behind."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _prune(root: Path, keep: int) -> None:
    """Only the KEEP most recently built contexts keep their (image-sized) cache. Only this
    module's folders: PYNET_DEPLOY_CACHE may name a folder other programs use too."""
    try:
        folders = sorted(
            (p for p in root.iterdir() if _context_folder(p)), key=lambda p: p.stat().st_mtime
        )
    except OSError:
        return
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _context_folder(path: Path) -> bool:
    if not CONTEXT_NAME.fullmatch(path.name) or not _private(path):
        return False
    return (path / RECIPE_FILE).exists() or (path / ARCHIVE_FILE).exists()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image(tar: tarfile.TarFile) -> tuple[tuple[str, ...], bytes]:
    """The layers' files and the config (its bytes) of the image a `docker save` archive holds."""
    manifest = image_manifest(tar)
    return tuple(str(p) for p in manifest["Layers"]), member_bytes(tar, str(manifest["Config"]))


def _layer(tar: tarfile.TarFile, path: str) -> tarfile.TarInfo:
    """The member holding layer PATH: Docker 20.10 links a repeated layer to its first copy."""
    member = tar.getmember(path)
    if member.issym() or member.islnk():
        member = tar.getmember(link_target(member))
    if not member.isfile():
        raise ValueError(f"{path} is not a layer file")
    return member


class Assembled(Scratch):
    """The new image: the cached build's layers below, the code layer made here on top. Used
    where `release.Built` (a `docker save` archive) is: `layers` (diff IDs), `image`, `slim`."""

    def __init__(self, cached: Cached, layer: bytes, version_tag: str, when: float | None = None):
        super().__init__()
        self.cached, self.layer, self.tag = cached, layer, version_tag
        self.reading = threading.Lock()  # one shipment at a time reads the cached archive
        diff_id = _digest(layer)
        config = json.loads(json.dumps(cached.config))
        diff_ids = list(config["rootfs"]["diff_ids"])
        diff_ids[-1] = diff_id
        config["rootfs"]["diff_ids"] = diff_ids
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        config["created"] = created
        history = config.get("history") or []
        for entry in reversed(history):  # the last entry that made a layer is the code's
            if not entry.get("empty_layer"):
                entry["created"] = created
                entry["created_by"] = "COPY (the code layer, made by fab deploy)"
                break
        self.config_bytes = json.dumps(config, separators=(",", ":")).encode()
        image_id = _digest(self.config_bytes)
        self.layer_path = f"{diff_id.removeprefix('sha256:')}/layer.tar"
        self.config_path = f"{image_id.removeprefix('sha256:')}.json"
        self.paths = [*cached.layers[:-1], self.layer_path]  # each layer's file in the archive
        self.layers = diff_ids
        self.image = ArchiveImage(
            layers=tuple(self.paths),
            config=image_id,
            manifests=frozenset(),
            os=str(config.get("os", "")),
            architecture=str(config.get("architecture", "")),
            diff_ids=tuple(diff_ids),
            created=created,
        )

    def slim(self, out: Path, skip: int, compresslevel: int = 1) -> Shipment:
        """Write OUT (gzip), the archive `docker load` takes, without the first SKIP layers:
        the ones below come from the cached archive, the code layer from memory."""
        manifest = [{"Config": self.config_path, "RepoTags": [self.tag], "Layers": self.paths}]
        shipped = self.paths[skip:]
        layer_bytes = 0
        with (
            self.reading,
            tarfile.open(out, "w:gz", compresslevel=compresslevel) as dst,
            self._cached_archive() as src,
        ):
            _add(dst, "manifest.json", json.dumps(manifest).encode())
            _add(dst, self.config_path, self.config_bytes)
            written = set()
            for path in shipped[:-1]:
                if path in written:
                    continue
                written.add(path)
                member = _layer(src, path)
                copy = tarfile.TarInfo(path)
                copy.size, copy.mode, copy.mtime = member.size, 0o644, 0
                dst.addfile(copy, src.extractfile(member))
                layer_bytes += member.size
            if skip < len(self.paths):
                _add(dst, self.layer_path, self.layer)
                layer_bytes += len(self.layer)
        return Shipment(out.stat().st_size, len(self.paths), len(set(shipped)), layer_bytes)

    def close(self) -> None:
        super().close()
        self.cached.close()

    def _cached_archive(self) -> tarfile.TarFile:
        self.cached.file.seek(0)
        return tarfile.open(fileobj=self.cached.file)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
