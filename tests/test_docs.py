"""docs/operations.md against the code: every subcommand is listed, `tail`'s topics are the ones
it accepts, and the settings tables name exactly the variables the code reads."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from cfn.config import OUTPUT_ROLES
from cfn.shell.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
VARIABLE = re.compile(r"CFN_[A-Z0-9_]+")


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


def _variables_in_code() -> set[str]:
    """Every CFN_ variable name written in shipped code (the settings read them)."""
    names: set[str] = set()
    folders = [ROOT / "cfn", *(ROOT / f for f in ("ingest", "processors", "cloudflare", "schemas"))]
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                value = node.value if isinstance(node, ast.Constant) else None
                if isinstance(value, str) and VARIABLE.fullmatch(value):
                    names.add(value)
    return names


def _variables_in_tables() -> set[str]:
    """The variables the docs' settings tables name in their first column."""
    names: set[str] = set()
    for doc in (ROOT / "docs").glob("*.md"):
        for line in doc.read_text().splitlines():
            if line.startswith("| `CFN_"):
                names.update(VARIABLE.findall(line.split(" | ")[0]))
    return names


def test_the_settings_tables_name_every_variable_the_code_reads() -> None:
    code, tables = _variables_in_code(), _variables_in_tables()
    assert not code - tables, f"read by cfn, in no settings table: {sorted(code - tables)}"
    assert not tables - code, f"in a settings table, read by nothing: {sorted(tables - code)}"
