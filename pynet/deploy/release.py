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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pynet.deploy import commands as cmd
from pynet.deploy.layers import (
    ArchiveImage,
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


def same_image(remote: Remote, version: str, image: ArchiveImage) -> None:
    """Raise unless the host's `pynet-chat:VERSION` is IMAGE, whatever store either end uses.

    A classic store reports the config digest as the image ID, the containerd store the
    manifest's (or index's) digest: the archive holds both. A containerd store that loaded a
    classic archive makes a manifest of its own, so then the layers and creation time decide.
    """
    on_host = remote.output(cmd.image_id(cmd.image(version)))
    if on_host in image.ids:
        return
    content = remote.output(cmd.image_content(cmd.image(version)), check=False)
    if image.diff_ids and content == image.content:
        return
    raise DeployError(
        f"{cmd.image(version)} on the host ({on_host}) differs from the one built here "
        f"({image.config})"
    )


def ship(remote: Remote, local: Local, docker: str, version: str) -> int:
    """Make `pynet-chat:VERSION` exist on the host, sending only missing layers. Returns bytes."""
    if not remote.dry_run and remote.ok(cmd.image_id(cmd.image(version))):
        remote.say(f"{cmd.image(version)} is already on the host: nothing to ship")
        return 0
    arch = host_arch(remote)
    inspect = local.run(cmd.local_layers(docker, version)).stdout.strip()
    _, _, layers = inspect.partition(" ")
    layer_list: list[str] = json.loads(layers or "[]")
    present = parse_layer_lists(remote.output(cmd.host_layers(), check=False))
    skip = shared_prefix(layer_list, present)
    remote_path = f"{cmd.ARCHIVE_DIR}/{version}.tar.gz"
    size, image = 0, None
    with tempfile.TemporaryDirectory(prefix="pynet-ship-") as tmp:
        saved, archive = Path(tmp) / "image.tar", Path(tmp) / f"{version}.tar.gz"
        local.run(cmd.local_save(docker, version, str(saved)))
        if not local.dry_run:
            try:
                image = read_archive(saved)
            except (ValueError, tarfile.TarError) as exc:
                raise DeployError(f"`docker save` wrote an archive we cannot read: {exc}") from None
            check_platform(image, version, arch)
        for attempt_skip in dict.fromkeys((skip, 0)):  # a full archive when the slim one fails
            if local.dry_run:
                remote.say("shipping the layers the host lacks")
            else:
                shipment = slim_archive(saved, archive, attempt_skip)
                size = shipment.size
                remote.say(shipment.describe())
            remote.upload(archive, remote_path)
            loaded = remote.run(cmd.load(remote_path), check=False)
            if loaded.ok:
                break
            remote.run(["rm", "-f", remote_path], check=False)
            # A layer we left out is missing after all (pruned in between): send them all.
            if attempt_skip == 0 or "no such file or directory" not in loaded.stderr:
                raise DeployError(f"docker load failed on the host: {loaded.stderr.strip()}")
            remote.say("the host lacks a layer it was expected to have; sending all layers")
    if image is not None:
        same_image(remote, version, image)
    return size


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
) -> str | None:
    """None once VERSION serves IMAGE_ID, answers the health check and has recorded taking
    over (its switch record, written at or after SINCE on the host's clock); else why not.

    A real wait (the host starts the container), so the pause between polls is SLEEP: unit
    tests pass a fake clock and sleep and run it without waiting.
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
            return f"the health check did not pass within {timeout:.0f}s"
        sleep(POLL)


def _start(
    remote: Remote, version: str, image_id: str, timeout: float, restart: bool
) -> str | None:
    """Start VERSION's unit (it takes over from whatever serves) and wait until it serves."""
    since = float(remote.output(cmd.host_clock(), check=False) or 0) if not remote.dry_run else 0
    began = time.monotonic()
    # A reload that could not hand over leaves the running container serving: the health
    # check below says so (it checks the image), and the deploy rolls back.
    remote.run(cmd.restart(version) if restart else cmd.start(version), check=not restart)
    reason = wait_healthy(remote, version, image_id, timeout, since)
    if not remote.dry_run:
        remote.say(f"{version} serving after {time.monotonic() - began:.1f}s")
    return reason


def handover_capable(remote: Remote, version: str) -> bool:
    """Releases built before the handover carry no label: they must be started after the old
    one stopped (they cannot share the port)."""
    return remote.dry_run or bool(remote.output(cmd.handover_label(version), check=False))


def activate(
    remote: Remote, version: str, action: str, timeout: float = HEALTH_TIMEOUT, keep: int = KEEP
) -> Outcome:
    """Make VERSION serve, taking over every connection, or put the previous release back."""
    state = HostState.read(remote)
    target = state.id_of(version) or ("sha256:<id>" if remote.dry_run else None)
    if target is None:
        have = ", ".join(i.tag for i in state.images if i.tag != "current") or "none"
        raise DeployError(f"{cmd.image(version)} is not on the host (releases there: {have})")
    units = Instances.read(remote)
    previous_id, previous = state.current_id, state.current
    if previous_id == target and version in units.active and remote.ok(cmd.health(version, target)):
        remote.say(f"{version} is already current and healthy")
        return Outcome(version, previous=version)
    remote.say(f"{action}: {previous or previous_id or 'nothing'} -> {version}")
    entry = {"action": action, "version": version, "previous": previous, "user": whoami()}
    others = [v for v in units.active if v != version]
    capable = handover_capable(remote, version)
    if not capable and others:
        remote.say(f"{version} predates the handover: stopping {', '.join(others)} first")
        remote.run(cmd.stop(*others))
    reason = _start(remote, version, target, timeout, restart=version in units.active)
    if reason is None:
        switch = read_switch(remote) if capable else {}
        if not capable:
            switch = {"how": "restart", "reason": "the release predates the handover"}
        still = [v for v in Instances.read(remote).active if v != version]
        if still:  # an overlap without handover: the old one says BYE restarting and stops
            remote.run(cmd.stop(*still))
        remote.run(cmd.enable_only(version, {*units.enabled, *units.active}))
        remote.run(cmd.tag_current(cmd.image(version)))
        remote.run(
            cmd.record({**entry, "time": utcnow(), "result": "ok", "switch": _brief(switch)})
        )
        remote.say(f"{version} is serving: {describe_switch(switch)}")
        prune(remote, keep, protect={target, previous_id or target})
        return Outcome(version, previous=previous, switch=switch)
    logs = remote.output(cmd.journal(20, unit=cmd.unit(version)), check=False)
    if previous and previous != version and state.id_of(previous):
        remote.say(f"{version} failed ({reason}); rolling back to {previous}")
        # The previous release takes the connections back if VERSION holds them, then VERSION
        # stops: the same path in the other direction.
        if previous in Instances.read(remote).active:  # it never let go: only prove it
            again = wait_healthy(remote, previous, state.id_of(previous) or "", timeout)
        else:
            again = _start(remote, previous, state.id_of(previous) or "", timeout, restart=False)
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


def prune(remote: Remote, keep: int, protect: set[str]) -> None:
    state = HostState.read(remote)
    doomed = plan_prune(state.images, state.history, keep, protect | {state.current_id or ""})
    if doomed:
        remote.say(f"pruning old releases: {', '.join(doomed)}")
        remote.run(cmd.remove_images(doomed), check=False)


# --- the two entry points ---------------------------------------------------------------------


def deploy(
    remote: Remote,
    local: Local,
    docker: str,
    version: str,
    timeout: float = HEALTH_TIMEOUT,
    keep: int = KEEP,
) -> Outcome:
    """Ship VERSION (built already) and activate it, under the host's deploy lock."""
    with DeployLock(remote, "deploy", version):
        started = time.monotonic()
        shipped = ship(remote, local, docker, version)
        shipped_at = time.monotonic()
        outcome = activate(remote, version, "deploy", timeout, keep)
        done = time.monotonic()
        remote.say(
            f"deployed {version} in {done - started:.1f}s: ship {shipped_at - started:.1f}s "
            f"({human(shipped)}), switch {done - shipped_at:.1f}s"
        )
        return Outcome(version, shipped, outcome.previous, outcome.switch)


def rollback(
    remote: Remote, to: str | None = None, timeout: float = HEALTH_TIMEOUT, keep: int = KEEP
) -> Outcome:
    """Activate TO (default: the release before the current one), under the deploy lock."""
    with DeployLock(remote, "rollback", to or "previous"):
        version = to or HostState.read(remote).previous_release()
        if version is None:
            raise DeployError("no earlier release on the host to roll back to (see `fab releases`)")
        return activate(remote, version, "rollback", timeout, keep)
