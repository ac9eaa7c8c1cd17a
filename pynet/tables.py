"""Aligned text columns: the tables of `fab hosts` and `fab releases`.

Not rich's Table, on purpose: these tables are read by scripts and grep as much as by people. One
row a line, columns split by spaces, no box characters, the same in a terminal, a pipe or a CI
log, never wrapped or cut at the terminal's width; the tests assert them as text. Where a
library does serve users better, the upload progress (rate, time left, the terminal's width),
rich draws it (pynet/deploy/remote.py).
"""

from __future__ import annotations

from collections.abc import Sequence


def columns(rows: Sequence[Sequence[str]]) -> str:
    """ROWS (the first is the header) as left-aligned columns two spaces apart."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
