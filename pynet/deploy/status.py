"""What is true on a host right now: `fab status` and `fab releases`.

Read-only; each fact comes from the system that owns it (systemd for the unit, docker for the
running image, the host's history file for who deployed what), never from a cache of ours.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pynet.deploy import commands as cmd
from pynet.deploy.probe import ProbeError, chat_hello
from pynet.deploy.release import HostState, Instances, describe_switch, read_switch
from pynet.deploy.remote import Remote
from pynet.deploy.top import MetricsError, summary
from pynet.deploy.top import read as read_metrics
from pynet.tables import columns


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show` output (KEY=VALUE lines) as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def since(started: str, now: datetime | None = None) -> str:
    """`3m12s` from docker's RFC 3339 StartedAt (nanoseconds and all)."""
    try:
        stamp = datetime.fromisoformat(started[:19]).replace(tzinfo=UTC)
    except ValueError:
        return "?"
    seconds = int(((now or datetime.now(UTC)) - stamp).total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{u}" for n, u in parts if n][:2]
    return "".join(shown) or "0s"


def status(remote: Remote, app_port: int, metrics_port: int = cmd.METRICS_PORT) -> tuple[str, bool]:
    """A short report, and whether everything in it is fine. The figures come from the
    server's /metrics (docs/operating.md); a server without them is not unhealthy for that."""
    state = HostState.read(remote)
    units = Instances.read(remote)
    current = state.current
    lines = []
    healthy = True
    if not units.active:
        lines.append("unit       no pynet-chat@ release is running")
        healthy = False
    for version in units.active:
        unit = parse_show(remote.output(cmd.unit_show(version), check=False))
        boot = "enabled at boot" if version in units.enabled else "NOT enabled at boot"
        lines.append(
            f"unit       {cmd.unit(version)}: {unit.get('ActiveState', '?')} "
            f"({unit.get('SubState', '?')}), restarts {unit.get('NRestarts', '?')}, {boot}"
        )
        running = remote.run(cmd.running_container(version), check=False)
        if running.ok:
            image_id, _, started = running.stdout.strip().partition(" ")
            lines.append(f"version    {version} (up {since(started)}, started {started[:19]}Z)")
            if image_id != state.current_id:
                lines.append(
                    f"           not the current release ({current or '?'}): "
                    "a deploy is under way or was interrupted (`fab deploy` or `fab rollback`)"
                )
                healthy = False
        else:
            lines.append(f"version    {version}: its container is not running")
            healthy = False
    if len(units.active) > 1:
        lines.append("           more than one release runs: a deploy is under way")
    sessions = remote.output(cmd.sessions(app_port), check=False)
    lines.append(f"sessions   {len(sessions.splitlines())} connected")
    if units.active:
        try:
            lines.append(f"figures    {summary(read_metrics(remote, metrics_port))}")
        except MetricsError as exc:
            lines.append(f"figures    {exc}")
    switch = read_switch(remote)
    if switch:
        lines.append(f"switch     {switch.get('release', '?')}: {describe_switch(switch)}")
    try:
        hello = chat_hello(remote.conn.host, app_port)
        lines.append(f"port       {remote.conn.host}:{app_port} answers: {hello}")
    except ProbeError as exc:
        lines.append(f"port       {exc}")
        healthy = False
    return "\n".join(lines), healthy


def releases(remote: Remote) -> str:
    """The deploy history, newest last, `*` on the release that is current."""
    state = HostState.read(remote)
    current = state.current
    on_host = {i.tag for i in state.images}
    rows = [("", "VERSION", "WHEN", "BY", "ACTION", "RESULT", "SWITCH")]
    marked = False
    for entry in reversed(state.history):
        version = str(entry.get("version", "?"))
        mark = ""
        if not marked and version == current and entry.get("result") == "ok":
            mark, marked = "*", True
        result = str(entry.get("result", "?"))
        if version not in on_host:
            result += " (pruned)"
        rows.append(
            (
                mark,
                version,
                str(entry.get("time", "?")),
                str(entry.get("user", "?")),
                str(entry.get("action", "?")),
                result,
                describe_switch(switch) if isinstance(switch := entry.get("switch"), dict) else "",
            )
        )
    rows[1:] = reversed(rows[1:])
    table = columns(rows)
    others = [i.tag for i in state.images if i.tag != "current"]
    return (
        f"{table}\ncurrent: {current or state.current_id or 'none'}"
        f"{'' if marked or not current else ' (not deployed by fab: the seed release)'}\n"
        f"on the host: {', '.join(others) or 'none'}"
    )
