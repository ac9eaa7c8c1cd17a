"""What a handover's sessions cost on the wire: the compact rows of handover 3 against the
JSON objects of handover 2 (kept here as the baseline), for 10,000 idle named sessions.

    .venv/bin/python -m bench.handover_wire [--sessions 10000] [--rounds 5]

Prints the best of ROUNDS for encoding (sessions to frames), decoding (frames to checked
sessions) and the bytes. The pre-copy moves this work out of the pause; this says what it is.
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable
from typing import Any

from chat import handover
from chat.handover import FrameReader, HandoverError, Session


def as_object(key: int, s: Session) -> dict[str, Any]:
    """Handover 2's form of a session: one JSON object of named fields."""
    return {
        "key": key,
        "state": s.state,
        "nick": s.nick,
        "peer": s.peer,
        "connected_age": s.connected_age,
        "tokens": s.tokens,
        "stamp_age": s.stamp_age,
        "partial": base64.b64encode(s.partial).decode(),
        "discarding": s.discarding,
        "unsent": base64.b64encode(s.unsent).decode(),
        "allowance": s.allowance,
        "closing": s.closing,
        "extra": {"last_seen_age": s.last_seen_age, "partial_age": s.partial_age, **s.extra},
    }


def from_object(item: dict[str, Any]) -> tuple[int, Session]:
    """Handover 2's checks, field by field, of one session object."""

    def typed(key: str, kind: type | tuple[type, ...]) -> Any:
        value = item.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise HandoverError(f"a session whose {key!r} is {value!r}")
        return value

    extra = typed("extra", dict)
    return typed("key", int), Session(
        typed("state", str),
        item.get("nick") if item.get("nick") is None else typed("nick", str),
        typed("peer", str),
        float(typed("connected_age", (int, float))),
        float(extra.get("last_seen_age", 0.0)),
        extra.get("partial_age"),
        float(typed("tokens", (int, float))),
        float(typed("stamp_age", (int, float))),
        base64.b64decode(typed("partial", str), validate=True),
        typed("discarding", bool),
        base64.b64decode(typed("unsent", str), validate=True),
        typed("allowance", int),
        typed("closing", bool),
        {},
    )


def best(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    session = Session("named", "h1234", "127.0.0.1:45678", 12.5, 1.2, None, 19.0, 3.2, b"",
                      False, b"", 0, False, {})  # fmt: skip
    items = [(key, session) for key in range(args.sessions)]
    size = handover.SESSIONS_PER_MESSAGE
    batches = [items[i : i + size] for i in range(0, len(items), size)]

    def rows() -> list[bytes]:
        return [handover.frame(handover.sessions(batch)) for batch in batches]

    def objects() -> list[bytes]:
        return [
            handover.frame({"t": "sessions", "items": [as_object(k, s) for k, s in batch]})
            for batch in batches
        ]

    def decode(frames: list[bytes], parse: Callable[[dict[str, Any]], object]) -> None:
        reader = FrameReader()
        for data in frames:
            for message in reader.feed(data):
                parse(message)

    def parse_objects(message: dict[str, Any]) -> object:
        return [from_object(item) for item in message["items"]]

    print(f"{args.sessions} idle named sessions, best of {args.rounds}:")
    for name, encode, parse in (
        ("handover 2, objects (baseline)", objects, parse_objects),
        ("handover 3, rows", rows, handover.parse_sessions),
    ):
        frames = encode()
        enc = best(args.rounds, encode)
        dec = best(args.rounds, lambda f=frames, p=parse: decode(f, p))  # type: ignore[misc]
        total = sum(map(len, frames))
        print(
            f"  {name:32} encode {enc * 1000:6.1f} ms  decode {dec * 1000:6.1f} ms  "
            f"{total / 1e6:5.2f} MB  ({(enc + dec) / args.sessions * 1e6:.1f} us a session)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
