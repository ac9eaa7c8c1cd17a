"""docs/protocol.md (the contract) and the code must list the same words.

The protocol is written down twice: as prose and tables in docs/protocol.md, and as tables in
chat/protocol.py and chat/events.py. These tests read the document and fail when the two
disagree, in either direction, so a code added to one without the other cannot go unnoticed.
"""

from __future__ import annotations

import re

from chat import events
from chat import protocol as p
from tests.chat.fakes import ROOT

DOC = (ROOT / "docs" / "protocol.md").read_text()
README = (ROOT / "README.md").read_text()
TICKED = re.compile(r"`([^`]+)`")


def section(title: str) -> str:
    """The text under `## title`, up to the next heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"docs/protocol.md has no section {title!r}"
    return match.group(1)


def first_cells(text: str) -> list[str]:
    """The first cell of every table row except the header and the rule."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows[2:]]


def documented_error_codes(text: str, lead: str) -> set[str]:
    """The backticked words of the sentence that starts with `lead`."""
    match = re.search(rf"{re.escape(lead)}(.*?)(?:\.\s|\.?\Z)", text, re.S)
    assert match, f"no paragraph starting {lead!r}"
    return {word for word in TICKED.findall(match.group(1)) if re.fullmatch(r"[a-z-]+", word)}


def test_error_codes_match_the_contract() -> None:
    assert documented_error_codes(DOC, "Error codes:") == p.ERROR_CODES


def test_readme_lists_the_same_error_codes() -> None:
    assert documented_error_codes(README, "with CODE one of") == p.ERROR_CODES


def test_client_commands_match_the_contract() -> None:
    words = set()
    for cell in first_cells(section("Client to server")):
        match = re.fullmatch(r"`/([a-z]+)[^`]*`", cell)
        if match:
            words.add(match.group(1))
    assert words == set(p._COMMANDS)
    assert "`//TEXT`" in first_cells(section("Client to server"))


def test_commands_allowed_before_nick_match_the_contract() -> None:
    nick_row = first_cells(section("Client to server"))[0]
    assert nick_row.startswith("`/nick")
    text = section("Client to server")
    match = re.search(r"Must come before anything else except ([^.]*)\.", text)
    assert match
    allowed = {word.lstrip("/") for word in TICKED.findall(match.group(1))}
    assert allowed | {"nick"} == p.ALLOWED[p.State.CONNECTED]


def test_server_replies_match_the_contract() -> None:
    words = set()
    for cell in first_cells(section("Server to client")):
        for ticked in TICKED.findall(cell):
            words.add(ticked.split(" ")[0])
    assert words == set(events._REPLIES)


def test_the_contract_is_version_1_1() -> None:
    assert "# PyNet chat protocol, version 1.1" in DOC
    assert "`ERR bad-text ...`" in section("Framing")
