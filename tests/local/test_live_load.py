"""The live load's counting (pynet/local/load.py), without a server: what it reports as lost
must be lost, not a line its reader cut in two."""

from __future__ import annotations

import socket
import types

import pytest

from pynet.local.load import LiveLoad, _Reader


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_line_split_between_two_reads_counts_once(cut: int) -> None:
    stream = b"MSG 1 ann one\nMSG 2 ann two\nJOIN bob\nMSG 3 bob three\n"
    load = types.SimpleNamespace(_last_line=0.0)
    with socket.socket() as sock:
        plain, sampled = _Reader(sock, "u0", False), _Reader(sock, "u1", True)
        for reader in (plain, sampled):
            LiveLoad._take(load, reader, stream[:cut])  # type: ignore[arg-type]
            LiveLoad._take(load, reader, stream[cut:])  # type: ignore[arg-type]
    assert plain.lines == sampled.lines == 3
    assert sampled.ids == [1, 2, 3]
