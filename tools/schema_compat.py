"""Breaking changes between two JSON Schemas of one `schema_version`, for subscribers.

`breaking(old, new)` lists what a subscriber written against `old` could trip over in records
that match `new`. Within one schema_version only additions are allowed: a new optional
property, a new enum value, a looser `additionalProperties`. Everything else is listed:

- a removed property (a rename is a removal plus an addition);
- a changed type, narrowing included (["string", "null"] -> "string"), or a changed `const`;
- a property newly required, or no longer required (a subscriber may rely on its presence);
- a removed enum value;
- `additionalProperties` tightened (absent or true -> false, or -> a schema);
- a changed `pattern`, `format`, `$ref`, a raised minimum or lowered maximum;
- a removed `oneOf` / `anyOf` branch (branches are compared by position).

Snapshots live in schemas/snapshots/<schema stem>.v<schema_version>.json; write a new one with
`python -m tools.schema_compat --snapshot` after a bump (tests/test_schema_compat.py says when).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
SNAPSHOTS = SCHEMAS / "snapshots"

Schema = dict[str, Any]


def _types(node: Schema) -> frozenset[str] | None:
    """The JSON types a node allows, when it says (`type`); None when it does not."""
    declared = node.get("type")
    if declared is None:
        return None
    return frozenset([declared] if isinstance(declared, str) else declared)


def _enum(node: Schema) -> list[Any] | None:
    values = node.get("enum")
    return None if values is None else list(values)


def breaking(old: Schema, new: Schema, path: str = "$") -> list[str]:
    """Every breaking difference from `old` to `new`, each as "at <path>: <what>"."""
    found: list[str] = []

    def say(where: str, what: str) -> None:
        found.append(f"at {where}: {what}")

    if _types(old) != _types(new):
        say(path, f"type {_show(old.get('type'))} -> {_show(new.get('type'))}")
    if "const" in old and ("const" not in new or old["const"] != new["const"]):
        say(path, f"const {_show(old['const'])} -> {_show(new.get('const', '(none)'))}")
    old_enum, new_enum = _enum(old), _enum(new)
    if old_enum is not None and new_enum is not None:
        for value in old_enum:
            if value not in new_enum:
                say(path, f"enum value {_show(value)} removed")
    elif new_enum is not None:
        say(path, f"enum {_show(new_enum)} added: values narrowed")
    # (an enum dropped altogether allows more values: like a new enum value, not breaking)
    for word in ("pattern", "format", "$ref"):
        if old.get(word) != new.get(word):
            say(path, f"{word} {_show(old.get(word))} -> {_show(new.get(word))}")
    for word, tighter in (("minimum", max), ("exclusiveMinimum", max)):
        _bound(old, new, word, tighter, path, say)
    for word, tighter in (("maximum", min), ("exclusiveMaximum", min)):
        _bound(old, new, word, tighter, path, say)

    old_props: Schema = old.get("properties", {})
    new_props: Schema = new.get("properties", {})
    for name, old_prop in old_props.items():
        if name not in new_props:
            say(f"{path}.{name}", "property removed (or renamed)")
        else:
            found.extend(breaking(old_prop, new_props[name], f"{path}.{name}"))
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    for name in sorted(new_required - old_required):
        say(f"{path}.{name}", "newly required")
    for name in sorted(old_required - new_required):
        if name in new_props:
            say(f"{path}.{name}", "no longer required")

    if _tightened(old.get("additionalProperties", True), new.get("additionalProperties", True)):
        say(path, "additionalProperties tightened")

    for word in ("oneOf", "anyOf", "allOf"):
        old_branches, new_branches = old.get(word, []), new.get(word, [])
        if word == "allOf" and len(new_branches) > len(old_branches):
            say(path, "allOf gained a branch: values narrowed")
        if len(new_branches) < len(old_branches):
            say(path, f"{word} lost {len(old_branches) - len(new_branches)} branch(es)")
        for index, (a, b) in enumerate(zip(old_branches, new_branches, strict=False)):
            found.extend(breaking(a, b, f"{path}.{word}[{index}]"))
    if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
        found.extend(breaking(old["items"], new["items"], f"{path}[]"))
    elif "items" in new and "items" not in old:
        say(path, "items schema added: values narrowed")
    return found


def _bound(old: Schema, new: Schema, word: str, tighter: Any, path: str, say: Any) -> None:
    if word not in new:
        return
    if word not in old or tighter(old[word], new[word]) != old[word]:
        say(path, f"{word} {_show(old.get(word))} -> {_show(new[word])}")


def _tightened(old: Any, new: Any) -> bool:
    """additionalProperties: true (or absent) is loosest, a schema tighter, false tightest."""
    if new is True:
        return False
    if new is False:
        return old is not False
    return old is True or (isinstance(old, dict) and old != new)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def schema_version(schema: Schema) -> int:
    """The schema_version a schema file pins (its `schema_version` property's const)."""
    version = schema["properties"]["schema_version"]["const"]
    assert isinstance(version, int)
    return version


def snapshot_path(schema_file: Path, version: int, snapshots: Path = SNAPSHOTS) -> Path:
    stem = schema_file.name.removesuffix(".schema.json")
    return snapshots / f"{stem}.v{version}.json"


def problems(schema_file: Path, snapshots: Path = SNAPSHOTS) -> list[str]:
    """Why `schema_file` may not ship as it is: no snapshot for its schema_version (it was
    bumped: write one), or its breaking changes against that snapshot. Empty when fine."""
    schema = json.loads(schema_file.read_text())
    version = schema_version(schema)
    target = snapshot_path(schema_file, version, snapshots)
    if not target.exists():
        return [
            f"{schema_file.name}: schema_version {version} has no snapshot {target.name} in "
            f"{snapshots}; write it with `python -m tools.schema_compat --snapshot`"
        ]
    old = json.loads(target.read_text())
    return [f"{schema_file.name} v{version}: {p}" for p in breaking(old, schema)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check schemas/*.schema.json against snapshots.")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="first write a snapshot for every schema whose schema_version has none",
    )
    args = parser.parse_args(argv)
    found: list[str] = []
    for schema_file in sorted(SCHEMAS.glob("*.schema.json")):
        target = snapshot_path(schema_file, schema_version(json.loads(schema_file.read_text())))
        if args.snapshot and not target.exists():
            target.parent.mkdir(exist_ok=True)
            target.write_text(schema_file.read_text())
            print(f"wrote {target.relative_to(ROOT)}")
        found += problems(schema_file)
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
