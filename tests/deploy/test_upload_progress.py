"""The SFTP upload progress (rich): a live bar on a terminal, one summary line in a log."""

from __future__ import annotations

import io
import os

from pynet.deploy.remote import UploadProgress


def feed(bar: UploadProgress, total: int = 2_000_000) -> None:
    for sent in range(0, total + 1, total // 4):
        bar.update(sent, total)
    bar.done()


def test_in_a_log_one_summary_line_with_size_and_rate() -> None:
    out = io.StringIO()
    feed(UploadProgress(out, "sftp layers.tar.gz"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("  sftp layers.tar.gz: 2.0 MB in ")
    assert lines[0].endswith("/s)")
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_disabled_says_nothing() -> None:
    out = io.StringIO()
    feed(UploadProgress(out, "sftp x", enabled=False))
    assert out.getvalue() == ""


def test_on_a_terminal_a_bar_with_size_rate_and_time_left() -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        feed(UploadProgress(terminal, "sftp layers.tar.gz"))
    shown = b""
    while True:  # the terminal is closed: read what it was shown, until EOF (EIO on Linux)
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    text = shown.decode(errors="replace")
    assert "sftp layers.tar.gz" in text
    assert "2.0/2.0 MB" in text
    assert "━" in text  # the bar itself
