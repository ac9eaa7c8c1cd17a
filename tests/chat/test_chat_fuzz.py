"""Property test: any bytes from a peer give events or listed ERR replies, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.protocol import ERROR_CODES, ClientConnection, Refused, ServerConnection

MAX_LINE = 64
FRAGMENTS = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"/", b"//", b"/nick ", b"/msg ", b"/since ", b"/quit", b"/who",
     b"/ping", b"ann ", b"\xff", b"\xc3", b"\xa9", b"\xf0\x9f\x98", b"x" * 70, b" "]
)  # fmt: skip
CHUNKS = st.lists(st.one_of(st.binary(max_size=40), FRAGMENTS), max_size=40)


@settings(max_examples=250, deadline=None)
@given(chunks=CHUNKS, named=st.booleans(), limited=st.booleans())
def test_server_side_never_raises_and_stays_bounded(
    chunks: list[bytes], named: bool, limited: bool
) -> None:
    clock = iter(range(10**6)).__next__
    conn = ServerConnection(max_line=MAX_LINE, rate=0.5 if limited else 0, burst=2, clock=clock)
    if named:
        conn.accept_nick("ann")
        conn.data_to_send()
    for chunk in chunks:
        conn.receive_data(chunk)
        events = list(conn.events_received())
        assert conn.buffered < MAX_LINE
        out = conn.data_to_send()
        for line in out.split(b"\n")[:-1]:
            word, _, rest = line.partition(b" ")
            assert word in {b"ERR", b"PONG", b"BYE"}
            if word == b"ERR":
                assert rest.split(b" ")[0].decode() in ERROR_CODES
        assert out == b"" or out.endswith(b"\n")
        refusals = [e for e in events if isinstance(e, Refused)]
        assert len(refusals) == out.count(b"ERR ")


@settings(max_examples=120, deadline=None)
@given(chunks=CHUNKS)
def test_client_side_never_raises(chunks: list[bytes]) -> None:
    conn = ClientConnection(max_line=MAX_LINE)
    for chunk in chunks:
        conn.receive_data(chunk)
        conn.events_received()
        assert conn._split.buffered < MAX_LINE
