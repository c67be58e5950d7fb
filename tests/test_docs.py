"""docs/operations.md's command line section against the parser: every subcommand is listed, and
`tail`'s topics are the ones it accepts."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from cfn.config import OUTPUT_ROLES
from cfn.shell.cli import build_parser

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _section(title: str) -> str:
    text = OPERATIONS.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = (
        a
        for a in build_parser()._actions  # argparse has no public way to list subcommands
        if isinstance(a, argparse._SubParsersAction)
    )
    return dict(sub.choices)


def test_every_subcommand_is_listed() -> None:
    section = _section("Command line")
    # Each one begins a code span: `worker`, `replay`, `acls --principal ...`.
    missing = sorted(n for n in _subcommands() if not re.search(rf"`{n}[` ]", section))
    assert not missing, f"docs/operations.md, Command line, lacks {missing}"
    assert "`cfn --version`" in section


def test_tail_lists_the_topics_it_accepts() -> None:
    (documented,) = re.findall(r"`tail <([a-z|-]+)>`", _section("Command line"))
    assert tuple(documented.split("|")) == OUTPUT_ROLES
    (topic,) = (a for a in _subcommands()["tail"]._actions if a.dest == "topic")
    assert tuple(topic.choices or ()) == OUTPUT_ROLES
