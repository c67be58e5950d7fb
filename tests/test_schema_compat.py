"""Schema evolution: every value schema matches its snapshot for its schema_version with no
breaking change, a bumped version needs a new snapshot, and the comparer finds what it must."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cfn.schemas.records import SCHEMA_VERSION
from tests.contract import SCHEMAS, channels
from tools.schema_compat import SNAPSHOTS, breaking, problems, schema_version, snapshot_path

SCHEMA_FILES = sorted(SCHEMAS.glob("*.schema.json"))
Schema = dict[str, Any]


def test_every_schema_the_contract_names_is_checked() -> None:
    named = {c.value_file for c in channels().values() if c.value_file is not None}
    assert named and named <= set(SCHEMA_FILES)


@pytest.mark.parametrize("schema_file", SCHEMA_FILES, ids=lambda p: p.name)
def test_no_breaking_change_against_the_snapshot_of_its_schema_version(schema_file: Path) -> None:
    assert problems(schema_file) == []


@pytest.mark.parametrize("schema_file", SCHEMA_FILES, ids=lambda p: p.name)
def test_the_schema_pins_the_version_the_records_carry(schema_file: Path) -> None:
    assert schema_version(json.loads(schema_file.read_text())) == SCHEMA_VERSION


def test_a_bumped_version_needs_its_own_snapshot(tmp_path: Path) -> None:
    """A breaking change with the version bumped is not compared with the old snapshot: the
    new version must have a snapshot of its own, and then passes."""
    current = json.loads((SCHEMAS / "incidents.schema.json").read_text())
    bumped = copy.deepcopy(current)
    del bumped["properties"]["late_end"]
    bumped["required"].remove("late_end")
    bumped["properties"]["schema_version"]["const"] = SCHEMA_VERSION + 1
    schema_file = tmp_path / "incidents.schema.json"
    schema_file.write_text(json.dumps(bumped))
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    old = snapshot_path(SCHEMAS / "incidents.schema.json", SCHEMA_VERSION, SNAPSHOTS)
    (snapshots / old.name).write_text(old.read_text())
    (missing,) = problems(schema_file, snapshots)
    assert f"incidents.v{SCHEMA_VERSION + 1}.json" in missing
    snapshot_path(schema_file, SCHEMA_VERSION + 1, snapshots).write_text(json.dumps(bumped))
    assert problems(schema_file, snapshots) == []
    # ...while the same removal without the bump is caught against the old snapshot:
    bumped["properties"]["schema_version"]["const"] = SCHEMA_VERSION
    schema_file.write_text(json.dumps(bumped))
    assert any("late_end: property removed" in p for p in problems(schema_file, snapshots))


# ---- the comparer ---------------------------------------------------------------------------


def base() -> Schema:
    return {
        "type": "object",
        "required": ["id", "state", "note"],
        "properties": {
            "id": {"type": "string", "pattern": "^x_[0-9a-f]+$"},
            "state": {"enum": ["open", "closed"]},
            "note": {"type": ["string", "null"]},
            "count": {"type": "integer", "minimum": 0},
            "meta": {
                "oneOf": [
                    {"type": "null"},
                    {"type": "object", "properties": {"k": {"type": "string"}}},
                ]
            },
            "schema_version": {"const": 1},
        },
    }


def edit(change: Callable[[Schema], None]) -> Schema:
    schema = base()
    change(schema)
    return schema


def _rename(s: Schema) -> None:
    s["properties"]["identifier"] = s["properties"].pop("id")
    s["required"] = ["identifier", "state", "note"]


BREAKING: dict[str, tuple[Callable[[Schema], None], str]] = {
    "removed property": (lambda s: s["properties"].pop("count"), "$.count: property removed"),
    "renamed property": (_rename, "$.id: property removed"),
    "changed type": (lambda s: s["properties"]["count"].update(type="number"), "$.count: type"),
    "narrowed type": (lambda s: s["properties"]["note"].update(type="string"), "$.note: type"),
    "widened type": (lambda s: s["properties"]["id"].update(type=["string", "null"]), "$.id"),
    "newly required": (lambda s: s["required"].append("count"), "$.count: newly required"),
    "no longer required": (lambda s: s["required"].remove("note"), "$.note: no longer"),
    "removed enum value": (
        lambda s: s["properties"]["state"].update(enum=["open"]),
        'enum value "closed" removed',
    ),
    "additionalProperties tightened": (
        lambda s: s.update(additionalProperties=False),
        "$: additionalProperties tightened",
    ),
    "nested type in a oneOf branch": (
        lambda s: s["properties"]["meta"]["oneOf"][1]["properties"]["k"].update(type="integer"),
        "$.meta.oneOf[1].k: type",
    ),
    "removed oneOf branch": (
        lambda s: s["properties"]["meta"]["oneOf"].pop(0),
        "$.meta: oneOf lost 1",
    ),
    "changed const": (
        lambda s: s["properties"]["schema_version"].update(const=2),
        "$.schema_version: const",
    ),
    "changed pattern": (
        lambda s: s["properties"]["id"].update(pattern="^y_"),
        "$.id: pattern",
    ),
    "raised minimum": (lambda s: s["properties"]["count"].update(minimum=1), "$.count: minimum"),
}


@pytest.mark.parametrize("name", sorted(BREAKING))
def test_the_comparer_finds_a_breaking_change(name: str) -> None:
    change, expected = BREAKING[name]
    found = breaking(base(), edit(change))
    assert any(expected in line for line in found), found


def _add_optional(s: Schema) -> None:
    s["properties"]["extra"] = {"type": "string"}


NOT_BREAKING: dict[str, Callable[[Schema], None]] = {
    "nothing": lambda s: None,
    "an added optional property": _add_optional,
    "an added enum value": lambda s: s["properties"]["state"]["enum"].append("muted"),
    "a description": lambda s: s["properties"]["id"].update(description="the id"),
    "required in another order": lambda s: s["required"].reverse(),
    "additionalProperties loosened": lambda s: s.update(additionalProperties=True),
    "a lowered minimum": lambda s: s["properties"]["count"].update(minimum=-1),
    "a property added in a nested object": (
        lambda s: s["properties"]["meta"]["oneOf"][1]["properties"].update(v={"type": "integer"})
    ),
}


@pytest.mark.parametrize("name", sorted(NOT_BREAKING))
def test_the_comparer_allows_an_addition(name: str) -> None:
    assert breaking(base(), edit(NOT_BREAKING[name])) == []


def test_tightening_a_real_schema_is_caught() -> None:
    """On a real file too: a nullable field made non-null in the incidents schema."""
    current = json.loads((SCHEMAS / "incidents.schema.json").read_text())
    narrowed = copy.deepcopy(current)
    narrowed["properties"]["account_id"]["type"] = "string"
    narrowed["properties"]["catalog"]["oneOf"][1]["properties"]["plan"]["type"] = "string"
    assert breaking(current, narrowed) == [
        'at $.account_id: type ["string", "null"] -> "string"',
        'at $.catalog.oneOf[1].plan: type ["string", "null"] -> "string"',
    ]
