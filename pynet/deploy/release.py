"""Deploy and rollback: one code path that makes a release serve and proves it.

`deploy` = build here, ship what the host lacks, then `activate`. `rollback` = `activate` with a
release already on the host (Kamal's rule: rollback is a deploy of an older version, not a second
code path). `activate` starts the release's own unit next to the serving one; the new process
takes the listener and every client connection over (chat.takeover), so no client is cut. It
waits for the health check and the new release's switch record, moves "enabled at boot" and the
`pynet-chat:current` tag, and on failure hands the connections back to the previous release,
records the outcome and raises with the reason and the last log lines.
"""

from __future__ import annotations

import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pynet.deploy import codelayer
from pynet.deploy import commands as cmd
from pynet.deploy.layers import (
    ArchiveImage,
    Scratch,
    Shipment,
    image_arch,
    parse_layer_lists,
    read_archive,
    shared_prefix,
    slim_archive,
)
from pynet.deploy.lock import DeployLock, utcnow, whoami
from pynet.deploy.remote import DeployError, Local, Remote, human

HEALTH_TIMEOUT = 60.0
KEEP = 5
CRASH_RESTARTS = 3  # automatic restarts after which waiting longer is pointless
POLL = 0.3


@dataclass(frozen=True)
class ReleaseImage:
    """A `pynet-chat:TAG` image on the host."""

    tag: str
    id: str
    created: str


@dataclass(frozen=True)
class Outcome:
    version: str
    shipped_bytes: int = 0
    previous: str | None = None
    switch: dict[str, object] = field(default_factory=dict)


# --- reading host state -----------------------------------------------------------------------


def parse_images(text: str) -> list[ReleaseImage]:
    images = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] != "<none>":
            images.append(ReleaseImage(*parts))
    return images


def parse_history(text: str) -> list[dict[str, object]]:
    """releases.jsonl, oldest first; a torn or foreign line is skipped, not fatal."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def name_of(
    image_id: str | None, images: Sequence[ReleaseImage], history: Sequence[dict[str, object]] = ()
) -> str | None:
    """The version tag of IMAGE_ID (not `current`); the most recently deployed if several."""
    tags = [i.tag for i in images if i.id == image_id and i.tag != "current"]
    if not tags:
        return None
    recent = [str(e.get("version")) for e in reversed(history)]
    return min(tags, key=lambda t: recent.index(t) if t in recent else len(recent))


def plan_prune(
    images: Sequence[ReleaseImage],
    history: Sequence[dict[str, object]],
    keep: int,
    protect: set[str],
) -> list[str]:
    """Version tags to delete: all but the KEEP most recently deployed, never a protected ID.

    Recency is the last time a version appears in the history; versions never deployed by us
    (the role's seed) rank after those, newest image first (the order `docker image ls` gives).
    """
    versions = [i for i in images if i.tag != "current"]
    recent = [str(e.get("version")) for e in reversed(history)]

    def rank(i: ReleaseImage) -> tuple[int, int]:
        return (recent.index(i.tag), 0) if i.tag in recent else (len(recent), versions.index(i))

    ordered = sorted(versions, key=rank)
    return [i.tag for i in ordered[keep:] if i.id not in protect]


@dataclass
class HostState:
    images: list[ReleaseImage]
    history: list[dict[str, object]]
    current_id: str | None

    @classmethod
    def read(cls, remote: Remote) -> HostState:
        images = parse_images(remote.output(cmd.release_images(), check=False))
        history = parse_history(remote.output(cmd.read_releases(), check=False))
        current = remote.run(cmd.image_id(cmd.CURRENT), check=False)
        return cls(images, history, current.stdout.strip() if current.ok else None)

    def id_of(self, version: str) -> str | None:
        return next((i.id for i in self.images if i.tag == version), None)

    @property
    def current(self) -> str | None:
        return name_of(self.current_id, self.images, self.history)

    def previous_release(self) -> str | None:
        """The newest successful release in the history that is not current and is still here."""
        current = self.current
        for e in reversed(self.history):
            v = str(e.get("version"))
            if e.get("result") == "ok" and v != current and self.id_of(v):
                return v
        others = [i.tag for i in self.images if i.tag not in ("current", current)]
        return others[0] if others else None


@dataclass
class Snapshot:
    """The host as one round trip (`commands.snapshot`) saw it: what a deploy decides from."""

    machine: str
    layers: list[list[str]]
    state: HostState
    units: Instances
    labels: dict[str, str] = field(default_factory=dict)  # handover label of images we loaded

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        parts: list[list[str]] = [[] for _ in range(6)]
        i = 0
        for line in text.splitlines():
            if line.strip() == cmd.SECTION:
                i = min(i + 1, len(parts) - 1)
            else:
                parts[i].append(line)
        machine, layers, images, history, current, units = ("\n".join(p) for p in parts)
        return cls(
            machine.strip(),
            parse_layer_lists(layers),
            HostState(parse_images(images), parse_history(history), current.strip() or None),
            Instances.parse(units),
        )

    @classmethod
    def read(cls, remote: Remote, layers: bool = True) -> Snapshot:
        return cls.parse(remote.output(cmd.snapshot(layers), check=False))

    @property
    def arch(self) -> str | None:
        return image_arch(self.machine) if self.machine else None

    def loaded(self, version: str, image_id: str, label: str) -> None:
        """VERSION is on the host now (we loaded it): decide from that without reading again."""
        self.state.images = [
            ReleaseImage(version, image_id, ""),
            *(i for i in self.state.images if i.tag != version),
        ]
        self.labels[version] = label


@dataclass
class Phases:
    """Seconds per phase of one deploy: the breakdown `fab deploy` ends with (and the bench reads).

    build and save happen here once for every host; ship (bytes over SSH), load (`docker load`
    on the host), start (from `systemctl start` until the new release has taken over) and switch
    (health gate, old release stopped, enabled at boot, `current`, history) per host.
    """

    started: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)

    NAMES = ("build", "save", "ship", "load", "start", "switch")

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - began)

    def copy(self) -> Phases:
        return Phases(self.started, dict(self.seconds))

    def describe(self, shipped: int) -> str:
        """`build 0.5s, save 0.7s, ship 0.0s (97.7 kB), load 0.2s, start 0.6s, switch 0.4s`."""
        parts = [f"{name} {self.seconds.get(name, 0.0):.2f}s" for name in self.NAMES]
        parts[2] += f" ({human(shipped)})"
        return ", ".join(parts)

    @property
    def total(self) -> float:
        return time.monotonic() - self.started


# --- building and shipping --------------------------------------------------------------------


def host_arch(remote: Remote) -> str | None:
    """The image architecture the host runs natively (`uname -m` there); None in a dry run.

    On EC2 this is what the instance type says (Graviton families such as t4g, m7g, c7g are
    arm64, the rest amd64); asking the host also covers `-H` hosts and local ones.
    """
    machine = remote.output(cmd.host_machine(), check=False)
    return image_arch(machine) if machine and not remote.dry_run else None


def build_platform(arches: Sequence[str | None]) -> str | None:
    """`linux/ARCH` to build for the hosts' architectures; one image serves them all, so mixed
    architectures are refused (deploy them separately, with -H or one inventory each)."""
    known = sorted({a for a in arches if a})
    if len(known) > 1:
        raise DeployError(
            f"the hosts run different architectures ({', '.join(known)}): one image cannot "
            "serve them; deploy each group separately (-H, or an inventory per architecture)"
        )
    return f"linux/{known[0]}" if known else None


def build(
    local: Local,
    docker: str,
    version: str,
    context: Path,
    base_image: str | None,
    dockerfile: str | None = None,
    build_args: dict[str, str] | None = None,
    platform: str | None = None,
) -> None:
    """`docker build`, its output streamed as it comes; a failure raises with docker's error."""
    if not local.dry_run:
        target = f" for {platform}" if platform else ""
        print(
            f"[local] building {cmd.image(version)}{target} from {context}",
            file=local.out,
            flush=True,
        )
    local.stream(
        cmd.local_build(
            docker, version, str(context), base_image, dockerfile, build_args, platform
        ),
        cwd=context,
        what=f"docker build of {cmd.image(version)}",
    )


def check_platform(image: ArchiveImage, version: str, arch: str | None) -> None:
    """Refuse, before shipping, an image the host cannot run ("exec format error" there)."""
    if arch and image.architecture and image.architecture != arch:
        raise DeployError(
            f"{cmd.image(version)} is built for {image.platform} but the host runs linux/{arch}: "
            f"rebuild it for linux/{arch} (is the base image {image.architecture}-only?)"
        )


def same_image(version: str, image: ArchiveImage, on_host: str, content: str) -> None:
    """Raise unless the host's `pynet-chat:VERSION` (ON_HOST its ID, CONTENT what
    `commands.image_content` prints) is IMAGE, whatever store either end uses.

    A classic store reports the config digest as the image ID, the containerd store the
    manifest's (or index's) digest: the archive holds both. A containerd store that loaded a
    classic archive makes a manifest of its own, so then the layers and creation time decide.
    """
    if on_host in image.ids or (image.diff_ids and content == image.content):
        return
    raise DeployError(
        f"{cmd.image(version)} on the host ({on_host}) differs from the one built here "
        f"({image.config})"
    )


@dataclass(frozen=True)
class Recipe:
    """What the image is built from, for the code-only path (`pynet.deploy.codelayer`)."""

    context: Path
    plan: codelayer.Plan
    fingerprint: str

    @property
    def folder(self) -> Path:
        return codelayer.cache_dir(self.context)


def recipe(
    local: Local,
    docker: str,
    context: Path,
    dockerfile: Path | None,
    base_image: str | None,
    platform: str | None,
) -> Recipe | None:
    """The recipe of this build, or None when its code layer cannot be made here (then
    `docker build` makes everything, as always)."""
    if local.dry_run or not codelayer.enabled():
        return None
    path = dockerfile or context / "Dockerfile"
    if path.with_name(f"{path.name}.dockerignore").exists():  # BuildKit's own ignore file
        return None
    try:
        text = path.read_bytes()
    except OSError:
        return None
    args = {"BASE_IMAGE": base_image} if base_image else {}
    plan = codelayer.plan(text.decode("utf-8", "replace"), context, args)
    if isinstance(plan, str):
        return None
    base_id, _, onbuild = (
        local.run(cmd.local_image_id(docker, plan.base), check=False).stdout.strip().partition(" ")
    )
    if not base_id:  # not on this engine: `docker build` pulls it
        return None
    if onbuild.strip() not in ("", "null", "[]"):  # steps of the base image's that may read files
        return None
    try:
        fingerprint = codelayer.fingerprint(context, text, plan, base_id, args, platform)
    except OSError:  # a file it cannot read (.dockerignore may keep it out of docker build)
        return None
    return Recipe(context, plan, fingerprint)


def unchanged(
    before: Recipe | None,
    local: Local,
    docker: str,
    dockerfile: Path | None,
    base_image: str | None,
    platform: str | None,
) -> Recipe | None:
    """BEFORE, if the recipe is still the same after `docker build` ran (a file edited while
    Docker read it would pair this build's archive with a fingerprint it was not made from)."""
    if before is None:
        return None
    after = recipe(local, docker, before.context, dockerfile, base_image, platform)
    return before if after is not None and after.fingerprint == before.fingerprint else None


def assemble(recipe: Recipe, version: str) -> codelayer.Assembled | None:
    """VERSION's image with only its code layer made here, when the last full build of the
    same recipe is cached; else None (build it with Docker)."""
    cached = codelayer.Cached.read(recipe.folder)
    if cached is None:
        return None
    try:
        if cached.fingerprint != recipe.fingerprint:
            raise codelayer.NotAssemblable("the layers below changed since the last build")
        layer = codelayer.code_layer(
            recipe.context, recipe.plan, codelayer.DockerIgnore.read(recipe.context)
        )
        return codelayer.Assembled(cached, layer, cmd.image(version))
    except (codelayer.NotAssemblable, OSError):
        cached.close()
        return None


class Built(Scratch):
    """The image built here, as `docker save` wrote it: saved once, shipped to every host."""

    def __init__(
        self, local: Local, docker: str, version: str, recipe: Recipe | None = None
    ) -> None:
        super().__init__()
        self.saved = self.dir / "image.tar"
        inspect = local.run(cmd.local_layers(docker, version)).stdout.strip()
        _, _, layers = inspect.partition(" ")
        self.layers: list[str] = json.loads(layers or "[]")
        local.run(cmd.local_save(docker, version, str(self.saved)))
        self.image: ArchiveImage | None = None
        if not local.dry_run:
            try:
                self.image = read_archive(self.saved)
            except (ValueError, tarfile.TarError) as exc:
                self.close()
                raise DeployError(f"`docker save` wrote an archive we cannot read: {exc}") from None
            if recipe is not None:  # the next code-only change builds on this one
                codelayer.Cached.keep(recipe.folder, self.saved, recipe.fingerprint)

    def slim(self, out: Path, skip: int) -> Shipment:
        return slim_archive(self.saved, out, skip)


def _loaded(stdout: str) -> tuple[str, str, str]:
    """(image ID, handover label, content) from the line `commands.load_stdin` ends with."""
    last = (stdout.strip().splitlines() or [""])[-1]
    fields = last.split(" ", 3)
    if len(fields) < 4:
        return "", "", ""
    ident, layers, created, label = fields
    return ident, label.removeprefix("label="), f"{layers} {created}"


def ship(
    remote: Remote,
    local: Local,
    docker: str,
    version: str,
    snap: Snapshot | None = None,
    phases: Phases | None = None,
    built: Built | codelayer.Assembled | None = None,
) -> int:
    """Make `pynet-chat:VERSION` exist on the host, sending only missing layers. Returns bytes.

    The archive goes into `docker load`'s stdin over the open SSH connection, and the same
    round trip reports what was loaded (identity, handover label): SNAP learns of it.
    """
    snap = snap or Snapshot.read(remote)
    phases = phases or Phases()
    if not remote.dry_run and snap.state.id_of(version):
        remote.say(f"{cmd.image(version)} is already on the host: nothing to ship")
        return 0
    arch = None if remote.dry_run else snap.arch
    own = built is None
    if built is None:
        with phases.timing("save"):
            built = Built(local, docker, version)
    try:
        if built.image is not None:
            check_platform(built.image, version, arch)
        skip = shared_prefix(built.layers, snap.layers)
        archive = built.dir / f"{version}.tar.gz"
        size = 0
        for attempt_skip in dict.fromkeys((skip, 0)):  # a full archive when the slim one fails
            with phases.timing("save"):
                if local.dry_run:
                    remote.say("shipping the layers the host lacks")
                else:
                    shipment = built.slim(archive, attempt_skip)
                    size = shipment.size
                    remote.say(shipment.describe())
            fed = remote.feed(cmd.load_stdin(version), archive)
            phases.add("ship", fed.sending)
            phases.add("load", fed.after)
            loaded = fed.result
            if loaded.ok:
                break
            # A layer we left out is missing after all (pruned in between): send them all.
            if attempt_skip == 0 or "no such file or directory" not in loaded.stderr:
                raise DeployError(f"docker load failed on the host: {loaded.stderr.strip()}")
            remote.say("the host lacks a layer it was expected to have; sending all layers")
        if built.image is not None:
            ident, label, content = _loaded(loaded.stdout)
            same_image(version, built.image, ident, content)
            snap.loaded(version, ident, label)
        return size
    finally:
        if own:
            built.close()


# --- activating a release ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instances:
    """The per-release units on the host: which run now, which start at boot."""

    active: list[str]
    enabled: list[str]

    @classmethod
    def parse(cls, text: str) -> Instances:
        units, _, enabled = text.partition("--")
        return cls(
            [
                _version_of(f[0])
                for f in map(str.split, units.splitlines())
                if len(f) >= 3 and f[2] in ("active", "activating", "reloading")
            ],
            [_version_of(f[0]) for f in map(str.split, enabled.splitlines()) if f],
        )

    @classmethod
    def read(cls, remote: Remote) -> Instances:
        return cls.parse(remote.output(cmd.instances(), check=False))


def _version_of(unit: str) -> str:
    return unit.removeprefix(cmd.UNIT_PREFIX).removesuffix(".service")


def read_switch(remote: Remote) -> dict[str, object]:
    """The serving release's own record of how it took over (`last-switch.json`)."""
    try:
        record = json.loads(remote.output(cmd.switch_record(), check=False) or "{}")
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def describe_switch(switch: dict[str, object]) -> str:
    """One line for people: `handover of 20 sessions from v1 in 28 ms`, or why not."""
    how = switch.get("how")
    if how == "handover":
        return (
            f"handover of {switch.get('sessions')} sessions from {switch.get('from')} "
            f"in {switch.get('ms')} ms"
        )
    if how == "fallback":
        return f"overlap without handover ({switch.get('reason')})"
    if how == "restart":
        return f"restart ({switch.get('reason')})"
    if how == "fresh":
        return "fresh start (nothing was serving)"
    return str(how) if how else "no switch record"


def _restarts(remote: Remote, version: str) -> int:
    text = remote.output(cmd.unit_show(version), check=False)
    for line in text.splitlines():
        if line.startswith("NRestarts="):
            return int(line.split("=", 1)[1] or 0)
    return 0


def wait_healthy(
    remote: Remote,
    version: str,
    image_id: str,
    timeout: float,
    since: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    limit: float | None = None,
) -> str | None:
    """None once VERSION serves IMAGE_ID, answers the health check and has recorded taking
    over (its switch record, written at or after SINCE on the host's clock); else why not.

    A real wait (the host starts the container), so the pause between polls is SLEEP: unit
    tests pass a fake clock and sleep and run it without waiting. LIMIT: the time the reason
    names, when part of it went by before this wait.
    """
    if remote.dry_run:
        remote.run(cmd.health(version, image_id))  # activate reads the switch record next
        return None
    deadline = clock() + timeout
    baseline = _restarts(remote, version)
    while True:
        if remote.ok(cmd.health(version, image_id)):
            switch = read_switch(remote)
            if not switch or (
                switch.get("release") == version and float(str(switch.get("time", 0))) >= since
            ):
                return None
        crashes = _restarts(remote, version) - baseline
        if crashes >= CRASH_RESTARTS:
            return f"the service crashed {crashes} times in a row after the start"
        if clock() > deadline:
            return f"the health check did not pass within {limit or timeout:.0f}s"
        sleep(POLL)


@dataclass
class Started:
    """How a start went: None or why it is not healthy, and the new release's switch record."""

    reason: str | None
    switch: dict[str, object] = field(default_factory=dict)


def _start(
    remote: Remote,
    version: str,
    image_id: str,
    timeout: float,
    restart: bool,
    capable: bool = True,
    phases: Phases | None = None,
) -> Started:
    """Start VERSION's unit (it takes over from whatever serves) and wait until it serves.

    One round trip starts it (with the host's clock), one waits on the host until it has
    taken over (its switch record, polled there every 50 ms), one runs the health check.
    """
    phases = phases or Phases()
    began = time.monotonic()
    # A reload that could not hand over leaves the running container serving: the health
    # check below says so (it checks the image), and the deploy rolls back.
    started = remote.run(cmd.start_clocked(version, running=restart), check=not restart)
    first = (started.stdout or "").split()
    since = float(first[0]) if first and first[0].isdigit() else 0.0
    result = Started(None)
    if capable:
        waited = remote.run(cmd.wait_switch(version, since, timeout), check=False)
        phases.add("start", time.monotonic() - began)
        gate = time.monotonic()
        if waited.exited == cmd.CRASHED:
            crashes = waited.stdout.split()[-1] if waited.stdout.split() else str(CRASH_RESTARTS)
            result = Started(f"the service crashed {crashes} times in a row after the start")
        elif waited.exited == cmd.SWITCHED and remote.ok(cmd.health(version, image_id)):
            result = Started(None, _record(waited.stdout))
        else:  # not healthy yet (or no record): the plain wait, for what is left of the time
            left = max(0.0, timeout - (time.monotonic() - began))
            result = Started(wait_healthy(remote, version, image_id, left, since, limit=timeout))
        phases.add("switch", time.monotonic() - gate)
    else:
        result = Started(wait_healthy(remote, version, image_id, timeout, since))
        phases.add("start", time.monotonic() - began)
    if not remote.dry_run:
        remote.say(f"{version} serving after {time.monotonic() - began:.1f}s")
    return result


def _record(text: str) -> dict[str, object]:
    try:
        record = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def handover_capable(remote: Remote, version: str) -> bool:
    """Releases built before the handover carry no label: they must be started after the old
    one stopped (they cannot share the port)."""
    return remote.dry_run or bool(remote.output(cmd.handover_label(version), check=False))


def activate(
    remote: Remote,
    version: str,
    action: str,
    timeout: float = HEALTH_TIMEOUT,
    keep: int = KEEP,
    snap: Snapshot | None = None,
    phases: Phases | None = None,
) -> Outcome:
    """Make VERSION serve, taking over every connection, or put the previous release back.

    SNAP: the host as the deploy read it under its lock (and updated with what it loaded);
    read here in one round trip when not given (a rollback).
    """
    snap = snap or Snapshot.read(remote, layers=False)
    phases = phases or Phases()
    state, units = snap.state, snap.units
    target = state.id_of(version) or ("sha256:<id>" if remote.dry_run else None)
    if target is None:
        have = ", ".join(i.tag for i in state.images if i.tag != "current") or "none"
        raise DeployError(f"{cmd.image(version)} is not on the host (releases there: {have})")
    previous_id, previous = state.current_id, state.current
    if previous_id == target and version in units.active and remote.ok(cmd.health(version, target)):
        remote.say(f"{version} is already current and healthy")
        return Outcome(version, previous=version)
    remote.say(f"{action}: {previous or previous_id or 'nothing'} -> {version}")
    entry = {"action": action, "version": version, "previous": previous, "user": whoami()}
    others = [v for v in units.active if v != version]
    label = snap.labels.get(version)
    capable = handover_capable(remote, version) if label is None else bool(label)
    if not capable and others:
        remote.say(f"{version} predates the handover: stopping {', '.join(others)} first")
        remote.run(cmd.stop(*others))
    started = _start(remote, version, target, timeout, version in units.active, capable, phases)
    if started.reason is None:
        with phases.timing("switch"):
            switch = (started.switch or read_switch(remote)) if capable else {}
            if not capable:
                switch = {"how": "restart", "reason": "the release predates the handover"}
            still = [v for v in Instances.read(remote).active if v != version]
            if still:  # an overlap without handover: the old one says BYE restarting and stops
                remote.run(cmd.stop(*still))
            done: dict[str, object] = {
                **entry,
                "time": utcnow(),
                "result": "ok",
                "switch": _brief(switch),
            }
            state.history.append(done)
            state.current_id = target
            doomed = plan_prune(state.images, state.history, keep, {target, previous_id or target})
            finish = cmd.finish(version, {*units.enabled, *units.active}, done)
            if doomed:
                remote.say(f"pruning old releases: {', '.join(doomed)}")
                finish = cmd.seq(finish, cmd.remove_images(doomed))
            remote.run(finish, check=not doomed)
            remote.say(f"{version} is serving: {describe_switch(switch)}")
        return Outcome(version, previous=previous, switch=switch)
    reason = started.reason
    logs = remote.output(cmd.journal(20, unit=cmd.unit(version)), check=False)
    if previous and previous != version and state.id_of(previous):
        remote.say(f"{version} failed ({reason}); rolling back to {previous}")
        # The previous release takes the connections back if VERSION holds them, then VERSION
        # stops: the same path in the other direction.
        if previous in Instances.read(remote).active:  # it never let go: only prove it
            again = wait_healthy(remote, previous, state.id_of(previous) or "", timeout)
        else:
            again = _start(
                remote, previous, state.id_of(previous) or "", timeout, restart=False
            ).reason
        remote.run(cmd.stop(version))
        if again is None:
            remote.run(cmd.enable_only(previous, {*units.enabled, version}))
        result = "rolled-back" if again is None else "failed"
        after = (
            f"rolled back to {previous}, which is serving"
            if again is None
            else f"the rollback to {previous} failed too: {again}"
        )
    else:
        result, after = "failed", "there was no previous release to go back to"
    remote.run(cmd.record({**entry, "time": utcnow(), "result": result, "reason": reason}))
    raise DeployError(
        f"{action} of {version} failed: {reason}; {after}.\n"
        f"Last lines of `journalctl -u {cmd.unit(version)}`:\n{logs}"
    )


def _brief(switch: dict[str, object]) -> dict[str, object]:
    keys = ("how", "sessions", "ms", "from", "reason")
    return {k: switch[k] for k in keys if k in switch}


# --- the two entry points ---------------------------------------------------------------------


def deploy(
    remote: Remote,
    local: Local,
    docker: str,
    version: str,
    timeout: float = HEALTH_TIMEOUT,
    keep: int = KEEP,
    prepared: Prepared | None = None,
    built: Built | codelayer.Assembled | None = None,
    phases: Phases | None = None,
) -> Outcome:
    """Ship VERSION (built already) and activate it, under the host's deploy lock.

    PREPARED: the lock taken and the host read while the image was built (`Preparing`);
    BUILT: the image saved once for every host. Without them this takes both itself.
    """
    phases = phases.copy() if phases else Phases()
    with prepared or Prepared.take(remote, version) as ready:
        shipped = ship(remote, local, docker, version, ready.snap, phases, built)
        outcome = activate(remote, version, "deploy", timeout, keep, ready.snap, phases)
        remote.say(f"deployed {version} in {phases.total:.1f}s: {phases.describe(shipped)}")
        return Outcome(version, shipped, outcome.previous, outcome.switch)


@dataclass
class Prepared:
    """One host locked for a deploy, and what it looked like once locked."""

    lock: DeployLock
    snap: Snapshot

    @classmethod
    def take(cls, remote: Remote, version: str) -> Prepared:
        lock = DeployLock(remote, "deploy", version)
        lock.__enter__()
        try:
            return cls(lock, Snapshot.read(remote))
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    def __enter__(self) -> Prepared:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.__exit__(exc_type, exc, tb)


class Preparing:
    """Lock every host and read it (`Prepared.take`) in threads while the image builds here:
    those round trips then cost no time. `with Preparing(...) as p:` releases every lock
    taken when the block fails before a deploy took it over; `p.get(i)` waits for host I.
    A dry run prepares each host when asked, so its transcript stays in order.
    """

    def __init__(self, remotes: Sequence[Remote], version: str) -> None:
        self.remotes, self.version = list(remotes), version
        self.results: list[Prepared | BaseException | None] = [None] * len(self.remotes)
        self.threads: list[threading.Thread] = []

    def _take(self, i: int) -> None:
        try:
            self.results[i] = Prepared.take(self.remotes[i], self.version)
        except BaseException as exc:  # handed to the caller by get()
            self.results[i] = exc

    def __enter__(self) -> Preparing:
        for i, remote in enumerate(self.remotes):
            if not remote.dry_run:
                thread = threading.Thread(target=self._take, args=(i,), daemon=True)
                thread.start()
                self.threads.append(thread)
        return self

    def get(self, i: int) -> Prepared:
        if self.remotes[i].dry_run and self.results[i] is None:
            self._take(i)
        for thread in self.threads:
            thread.join()
        found = self.results[i]
        if isinstance(found, BaseException):
            raise found
        assert found is not None
        return found

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for thread in self.threads:
            thread.join()
        for found in self.results:
            if isinstance(found, Prepared):
                found.lock.__exit__(None, None, None)  # releases only a lock still held


def rollback(
    remote: Remote, to: str | None = None, timeout: float = HEALTH_TIMEOUT, keep: int = KEEP
) -> Outcome:
    """Activate TO (default: the release before the current one), under the deploy lock."""
    with DeployLock(remote, "rollback", to or "previous"):
        snap = Snapshot.read(remote, layers=False)
        version = to or snap.state.previous_release()
        if version is None:
            raise DeployError("no earlier release on the host to roll back to (see `fab releases`)")
        return activate(remote, version, "rollback", timeout, keep, snap)
