"""Every command `fab deploy` and friends run, as data: pure functions that return argv lists.

Kamal's lesson: when commands are lists of words built by small functions, tests can assert the
exact text, `--dry-run` is free, and the tasks only run and check. `render()` quotes every word
(`shlex.quote`) except `Op` tokens (`&&`, `|`, `>>`, `$(`...), which the remote shell must see as
they are; as in Kamal, combinators splice those between commands. Remote commands run in the
login shell sshd starts (POSIX sh or bash on every cloud image we target).

Names and paths here are the contract with the `chat` role (docs/design.md).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping

from chat import PORT


class Op(str):
    """A shell operator, rendered unquoted."""

    __slots__ = ()


Argv = list[str]
AND, OR, PIPE, SEMI = Op("&&"), Op("||"), Op("|"), Op(";")

IMAGE = "pynet-chat"
CURRENT = f"{IMAGE}:current"
UNIT_PREFIX = "pynet-chat@"
UNITS = f"{UNIT_PREFIX}*.service"
CONTAINER_PREFIX = "pynet-chat-"
APP_PORT = PORT
METRICS_PORT = 9050  # the chat server's --metrics-port default (chat/config.py)
HANDOVER_DIR = "/run/pynet"
SWITCH_RECORD = f"{HANDOVER_DIR}/last-switch.json"
STATE_DIR = "/var/lib/pynet-deploy"
ARCHIVE_DIR = f"{STATE_DIR}/archives"
LOCK_DIR = f"{STATE_DIR}/lock"
LOCK_OWNER = f"{LOCK_DIR}/owner.json"
LOCK_HEARTBEAT = f"{LOCK_DIR}/heartbeat"
RELEASES_FILE = f"{STATE_DIR}/releases.jsonl"
HANDOVER_LABEL_NAME = "io.pynet.handover"
SECTION = "--pynet-section--"
"""The line between the parts of a batched command's output (`snapshot`)."""


# --- combinators ------------------------------------------------------------------------------


def render(argv: Argv) -> str:
    """The one way an argv becomes a command line (what runs and what --dry-run prints)."""
    return " ".join(w if isinstance(w, Op) else shlex.quote(w) for w in argv)


def _join(op: Op, cmds: tuple[Argv, ...]) -> Argv:
    out: Argv = []
    for c in cmds:
        out += [op, *c] if out else c
    return out


def chain(*cmds: Argv) -> Argv:
    """`a && b && ...`: stop at the first failure."""
    return _join(AND, cmds)


def pipe(*cmds: Argv) -> Argv:
    return _join(PIPE, cmds)


def either(*cmds: Argv) -> Argv:
    """`a || b`: the first that succeeds."""
    return _join(OR, cmds)


def seq(*cmds: Argv) -> Argv:
    """`a ; b`: run all, whatever each returns."""
    return _join(SEMI, cmds)


def write(path: str, text: str, append: bool = False) -> Argv:
    """TEXT plus a newline into PATH (printf: echo would interpret backslashes)."""
    return ["printf", "%s\\n", text, Op(">>" if append else ">"), path]


def quiet(argv: Argv) -> Argv:
    """Drop stderr: for probes whose failure is an expected answer."""
    return [*argv, Op("2>/dev/null")]


def output_of(argv: Argv) -> Argv:
    """`"$(ARGV)"`: a command's output as one word."""
    return [Op('"$('), *argv, Op(')"')]


def sudo(argv: Argv) -> Argv:
    """`-n`: fail at once instead of waiting for a password prompt nobody will answer."""
    return ["sudo", "-n", *argv]


def image(version: str) -> str:
    return f"{IMAGE}:{version}"


def unit(version: str) -> str:
    """The systemd instance that runs VERSION (the role installs the template)."""
    return f"{UNIT_PREFIX}{version}.service"


def container(version: str) -> str:
    return f"{CONTAINER_PREFIX}{version}"


# --- local (the laptop) -----------------------------------------------------------------------


def local_build(
    docker: str,
    version: str,
    context: str,
    base_image: str | None = None,
    dockerfile: str | None = None,
    build_args: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> Argv:
    """`docker build`; BASE_IMAGE only when asked, so users get the Dockerfile's default.

    PLATFORM (`linux/amd64`, `linux/arm64`): the hosts' architecture, so an Apple Silicon
    laptop builds an image an x86_64 instance can run.
    """
    argv = [docker, "build", "-t", image(version)]
    if platform:
        argv += ["--platform", platform]
    if dockerfile:
        argv += ["-f", dockerfile]
    args = dict(build_args or {})
    if base_image:
        args["BASE_IMAGE"] = base_image
    for key in sorted(args):
        argv += ["--build-arg", f"{key}={args[key]}"]
    return [*argv, context]


def local_layers(docker: str, version: str) -> Argv:
    return [
        docker,
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RootFS.Layers}}",
        image(version),
    ]


def local_image_id(docker: str, ref: str) -> Argv:
    """The ID of REF on this machine's engine (the base image a build starts from), and its
    ONBUILD instructions (JSON), which a build of an image FROM it runs too."""
    return [docker, "image", "inspect", "--format", "{{.Id}} {{json .Config.OnBuild}}", ref]


def local_save(docker: str, version: str, path: str) -> Argv:
    return [docker, "save", "-o", path, image(version)]


# --- remote: docker -------------------------------------------------------------------------


def docker(*args: str) -> Argv:
    """Remote docker always through sudo: the deploy user need not be in the `docker` group."""
    return sudo(["docker", *args])


def host_machine() -> Argv:
    """The host's CPU architecture as the kernel names it (`x86_64`, `aarch64`)."""
    return ["uname", "-m"]


def image_id(ref: str) -> Argv:
    return docker("image", "inspect", "--format", "{{.Id}}", ref)


def image_content(ref: str) -> Argv:
    """The layers and creation time of REF: the same on every engine and image store."""
    return docker("image", "inspect", "--format", "{{json .RootFS.Layers}} {{.Created}}", ref)


def host_layers() -> Argv:
    """Layer lists (diff IDs) of every image on the host: what a shipment can leave out."""
    return pipe(
        docker("image", "ls", "--quiet", "--no-trunc"),
        ["xargs", "-r", *docker("image", "inspect", "--format", "{{json .RootFS.Layers}}")],
    )


def release_images() -> Argv:
    """`TAG ID CREATED` for every pynet-chat image, newest first."""
    return docker("image", "ls", "--no-trunc", "--format", "{{.Tag}} {{.ID}} {{.CreatedAt}}", IMAGE)


def load(archive: str) -> Argv:
    """`docker load` reads gzip itself; the archive is removed once loaded (it is partial)."""
    return chain(docker("load", "--input", archive), ["rm", "-f", archive])


#: After a load, one line: the ID, what `image_content` prints (layers, creation time) and the
#: handover version the image speaks (`label=`, empty for releases that predate it).
LOADED = (
    "{{.Id}} {{json .RootFS.Layers}} {{.Created}} "
    f'label={{{{index .Config.Labels "{HANDOVER_LABEL_NAME}"}}}}'
)


def load_stdin(version: str) -> Argv:
    """`docker load` of the archive the deploy writes into this command's stdin (no upload
    to a file, no second round trip), then what the deploy checks of the loaded image."""
    return chain(docker("load"), docker("image", "inspect", "--format", LOADED, image(version)))


def tag_current(ref: str) -> Argv:
    """Point the service at REF (a version's image or an image id): what the unit runs next."""
    return docker("tag", ref, CURRENT)


def remove_images(versions: Iterable[str]) -> Argv:
    return docker("image", "rm", *(image(v) for v in versions))


def running_container(version: str) -> Argv:
    """Image ID and start time of VERSION's chat container."""
    return docker(
        "container",
        "inspect",
        "--format",
        "{{.Image}} {{.State.StartedAt}}",
        container(version),
    )


def health(version: str, image_id_: str) -> Argv:
    """Healthy = VERSION's container runs the expected image AND answers /ping.

    The container's own `PYNET_PORT` says where it listens (host networking), so the check takes
    no port. Checking the image too matters: a container of that name may be a leftover.
    """
    running = output_of(
        docker("container", "inspect", "--format", "{{.Image}}", container(version))
    )
    return chain(
        ["test", *running, "=", image_id_],
        docker("exec", container(version), "python3", "-m", "chat.healthcheck"),
    )


HANDOVER_LABEL = HANDOVER_LABEL_NAME
"""Image label: the handover protocol version a release speaks (Dockerfile, chat.handover)."""


def handover_label(version: str) -> Argv:
    """The handover version VERSION's image speaks; empty for releases that predate it."""
    return docker(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{HANDOVER_LABEL}"}}}}',
        image(version),
    )


def switch_record() -> Argv:
    """How the serving release took over (written by chat.server beside the handover socket)."""
    return either(quiet(sudo(["cat", SWITCH_RECORD])), ["echo", "{}"])


def host_clock() -> Argv:
    return ["date", "+%s"]


#: Runs on the host (its python3, which Ansible needs anyway), under sudo: the switch record is
#: in a directory only the chat user may enter. Waits, polling every 50 ms, until RELEASE's
#: record (written once it took over, at or after SINCE on the host's clock) is there: prints
#: it and exits 0; exits 3 (printing `crashed N`) once the unit restarted 3 times; 4 after
#: TIMEOUT seconds. One round trip instead of a poll over SSH every few hundred ms.
_WAIT_SWITCH = """\
import json, subprocess, sys, time
path, release, unit, since, timeout = sys.argv[1:4] + [float(a) for a in sys.argv[4:6]]
def restarts():
    out = subprocess.run(["systemctl", "show", unit, "--property", "NRestarts", "--value"],
                         capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() else 0
base, deadline, polls = restarts(), time.monotonic() + timeout, 0
while True:
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    fresh = isinstance(record, dict) and float(record.get("time") or 0) >= since
    if fresh and record.get("release") == release:
        print(json.dumps(record))
        sys.exit(0)
    polls += 1
    crashes = restarts() - base if polls % 4 == 0 else 0
    if crashes >= 3:
        print(f"crashed {crashes}")
        sys.exit(3)
    if time.monotonic() > deadline:
        sys.exit(4)
    time.sleep(0.05)
"""
SWITCHED, CRASHED, NOT_YET = 0, 3, 4


def wait_switch(version: str, since: float, timeout: float) -> Argv:
    """Wait on the host until VERSION has taken over (its switch record), or crash-loops."""
    return sudo(
        [
            "python3",
            "-c",
            _WAIT_SWITCH,
            SWITCH_RECORD,
            version,
            unit(version),
            f"{since:.0f}",
            f"{timeout:.1f}",
        ]
    )


def start_clocked(version: str, running: bool = False) -> Argv:
    """The host's clock (first line: switch records older than it are not this start's),
    then the start (a reload when VERSION is RUNNING already) in the same round trip."""
    return seq(host_clock(), restart(version) if running else start(version))


def sessions(port: int = APP_PORT) -> Argv:
    """Established TCP connections on the chat port: the sessions the host serves right now."""
    return ["ss", "-Htn", "state", "established", f"( sport = :{port} )"]


#: Fetch a URL with the host's python3 (every image we target has it, for Ansible); no curl.
_FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
)


def scrape_metrics(port: int = METRICS_PORT) -> Argv:
    """The chat server's /metrics, read on the host itself: the containers share the host's
    network, and the endpoint listens on 127.0.0.1 only (`fab top`, `fab status`)."""
    return ["python3", "-c", _FETCH, f"http://127.0.0.1:{port}/metrics"]


# --- remote: systemd --------------------------------------------------------------------------


def start(version: str) -> Argv:
    """Start VERSION's instance next to the serving one (it takes the connections over).

    reset-failed first (quiet: a new instance has nothing to reset): a unit that hit its start
    limit refuses a plain start.
    """
    return seq(
        quiet(sudo(["systemctl", "reset-failed", unit(version)])),
        sudo(["systemctl", "start", unit(version)]),
    )


def restart(version: str) -> Argv:
    """A new container of VERSION takes over from the running one (a deploy of the release
    already running, e.g. `-dirty` rebuilt): the unit's reload is a handover (roles/chat);
    an instance that is not running is started."""
    return seq(
        quiet(sudo(["systemctl", "reset-failed", unit(version)])),
        sudo(["systemctl", "reload-or-restart", unit(version)]),
    )


def stop(*versions: str) -> Argv:
    """Stop instances (a graceful stop: BYE restarting, in batches)."""
    return sudo(["systemctl", "stop", *(unit(v) for v in versions)])


def enable_only(version: str, others: Iterable[str]) -> Argv:
    """VERSION starts at boot, and none of OTHERS does."""
    enable = sudo(["systemctl", "enable", "--quiet", unit(version)])
    rest = sorted(set(others) - {version})
    if not rest:
        return enable
    return chain(enable, sudo(["systemctl", "disable", "--quiet", *(unit(v) for v in rest)]))


def snapshot(layers: bool = True) -> Argv:
    """What a deploy or rollback reads of the host, in one round trip, parts separated by
    SECTION lines: the architecture, every image's layers (LAYERS), the releases, the history,
    the current image's ID (empty when none) and the units (`instances`)."""
    parts = [
        host_machine(),
        quiet(host_layers()) if layers else ["true"],
        release_images(),
        read_releases(),
        either(quiet(image_id(CURRENT)), ["true"]),
        instances(),
    ]
    out: Argv = []
    for part in parts:
        out = seq(out, ["echo", SECTION], part) if out else part
    return out


def finish(version: str, others: Iterable[str], entry: Mapping[str, object]) -> Argv:
    """After the new release passed the health gate: it (alone) starts at boot, `current`
    points at it, the history says so; one round trip."""
    return chain(enable_only(version, others), tag_current(image(version)), record(entry))


def instances() -> Argv:
    """`UNIT LOAD ACTIVE SUB ...` of every loaded instance, and `UNIT STATE` of enabled ones."""
    return seq(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", UNITS],
        ["echo", "--"],
        enabled_instances(),
    )


BOOT_WANTS = "/etc/systemd/system/multi-user.target.wants"


def enabled_instances() -> Argv:
    """The instances enabled at boot: the symlinks `systemctl enable` made (list-unit-files
    shows a template, never its enabled instances)."""
    return quiet(["find", BOOT_WANTS, "-maxdepth", "1", "-name", UNITS, "-printf", "%f\\n"])


def unit_show(version: str) -> Argv:
    return [
        "systemctl",
        "show",
        unit(version),
        "--property",
        "LoadState,ActiveState,SubState,NRestarts,ActiveEnterTimestamp,ExecMainStatus",
    ]


def journal(lines: int = 20, follow: bool = False, unit: str = UNITS) -> Argv:
    """Every release's log by default (a deploy moves from one unit to the next)."""
    argv = sudo(
        [
            "journalctl",
            "--unit",
            unit,
            "--lines",
            str(lines),
            "--no-pager",
            "--output",
            "short-iso",
        ]
    )
    return [*argv, "--follow"] if follow else argv


# --- remote: deploy state (lock, history) -----------------------------------------------------


def ensure_state_dir(user: str) -> Argv:
    """Uploads, the lock and the history need no sudo when the user can write the state dir.

    The chat role makes it `root:docker 2775` (the SSH user is in `docker`): leave that alone.
    Only a host the role never ran on gets one owned by the deploy user.
    """
    return either(
        ["test", "-w", ARCHIVE_DIR],
        sudo(["install", "-d", "-o", user, "-m", "0755", STATE_DIR, ARCHIVE_DIR]),
    )


def lock_acquire(owner: Mapping[str, object]) -> Argv:
    """mkdir is atomic: exactly one of two racing deploys creates the directory."""
    return chain(
        ["mkdir", LOCK_DIR],
        write(LOCK_OWNER, json.dumps(owner, sort_keys=True)),
        ["touch", LOCK_HEARTBEAT],
    )


def lock_info() -> Argv:
    """Three lines: the host's clock, the last heartbeat (host clock too: no skew), the owner.

    Exit 3 when there is no lock. The heartbeat falls back to the directory's own mtime when a
    deploy died between mkdir and writing its files.
    """
    return seq(
        either(["test", "-d", LOCK_DIR], ["exit", "3"]),
        ["date", "+%s"],
        either(quiet(["stat", "-c", "%Y", LOCK_HEARTBEAT]), ["stat", "-c", "%Y", LOCK_DIR]),
        either(quiet(["cat", LOCK_OWNER]), ["echo", "{}"]),
    )


def lock_heartbeat() -> Argv:
    return ["touch", LOCK_HEARTBEAT]


def lock_release(token: str) -> Argv:
    """Only the holder's token releases: a deploy never removes a lock someone else took."""
    return chain(["grep", "-qF", token, LOCK_OWNER], ["rm", "-rf", LOCK_DIR])


def lock_break() -> Argv:
    """sudo: the lock may have been left by another account."""
    return sudo(["rm", "-rf", LOCK_DIR])


def record(entry: Mapping[str, object]) -> Argv:
    return write(RELEASES_FILE, json.dumps(entry, sort_keys=True), append=True)


def read_releases() -> Argv:
    return either(quiet(["cat", RELEASES_FILE]), ["true"])


# --- remote: doctor's probes ------------------------------------------------------------------


def port_listening(port: int = APP_PORT) -> Argv:
    return ["ss", "-Hltn", f"sport = :{port}"]


def disk_usage(path: str = "/var/lib/docker") -> Argv:
    """Falls back to / when docker's directory is not readable or not there yet."""
    return either(quiet(["df", "-Pk", path]), ["df", "-Pk", "/"])


def memory() -> Argv:
    return ["grep", "-E", "^(MemTotal|MemAvailable):", "/proc/meminfo"]
