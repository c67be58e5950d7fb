"""schemas/asyncapi.yaml: the AsyncAPI project's own parser accepts it (and rejects a broken
copy), every topic has its channel, and every value schema it names is a file in schemas/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from cfn.config import topic_names
from cfn.topics import topic_config
from tests.contract import DOCUMENT, INTERNAL_ROLES, ROOT, SCHEMAS, channels, document

VALIDATE = ROOT / "tools" / "asyncapi" / "validate.cjs"
LOCKFILE = ROOT / "tools" / "asyncapi" / "package-lock.json"


def npm_prefix() -> Path:
    return Path(os.environ.get("CFN_NPM_CACHE", Path.home() / ".cache" / "cfn" / "npm"))


def parse(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run the AsyncAPI parser on `path`: its exit code and its JSON lines (the diagnostics,
    then a summary). A missing Node or parser fails the test with what to run: never a skip."""
    node = shutil.which("node")
    assert node, "node is not on PATH: run tools/install-deps test"
    parser = npm_prefix() / "node_modules" / "@asyncapi" / "parser" / "package.json"
    assert parser.exists(), f"{parser} is missing: run tools/install-deps test"
    wanted = json.loads(LOCKFILE.read_text())["packages"]["node_modules/@asyncapi/parser"]
    installed = json.loads(parser.read_text())["version"]
    assert installed == wanted["version"], "stale npm cache: run tools/install-deps test"
    result = subprocess.run(
        [node, str(VALIDATE), str(path), str(npm_prefix())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def errors(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("error")]


def test_the_asyncapi_parser_accepts_the_document() -> None:
    code, lines = parse(DOCUMENT)
    assert errors(lines) == [] and code == 0, lines
    summary = lines[-1]
    assert summary["parsed"] and summary["parser"] == "3.6.6"
    assert sorted(summary["channels"]) == sorted(channels())


def _broken_copy(tmp_path: Path, edit: str) -> Path:
    """A copy of the document (and the schema files it refers to) with one defect."""
    for schema in SCHEMAS.glob("*.schema.json"):
        shutil.copy(schema, tmp_path / schema.name)
    doc = yaml.safe_load(DOCUMENT.read_text())
    if edit == "no info.title":
        del doc["info"]["title"]
    elif edit == "a value schema file that is not there":
        payload = doc["components"]["messages"]["incident"]["payload"]
        payload["schema"]["$ref"] = "./gone.schema.json"
    elif edit == "a bad cleanup.policy":
        config = doc["channels"]["incident-state"]["bindings"]["kafka"]["topicConfiguration"]
        config["cleanup.policy"] = ["compacted"]
    elif edit == "a value schema that is no JSON Schema":
        events = tmp_path / "events.schema.json"
        schema = json.loads(events.read_text())
        schema["properties"]["ts"]["type"] = "integr"
        events.write_text(json.dumps(schema))
    path = tmp_path / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ("no info.title", "info"),
        ("a value schema file that is not there", "components.messages.incident.payload"),
        ("a bad cleanup.policy", "channels.incident-state.bindings.kafka"),
        (
            "a value schema that is no JSON Schema",
            "channels.events.messages.event.payload.schema.properties.ts.type",
        ),
    ],
)
def test_the_parser_rejects_a_broken_copy(tmp_path: Path, edit: str, where: str) -> None:
    """The check cannot pass vacuously: the same parser, on a copy with one defect, fails."""
    code, lines = parse(_broken_copy(tmp_path, edit))
    assert code == 1
    assert any(e["path"].startswith(where) for e in errors(lines)), lines


def test_every_topic_role_has_its_channel() -> None:
    names = topic_names("cfn.")
    documented = channels()
    public = {role for role in names if role not in INTERNAL_ROLES}
    assert set(documented) == public
    for role, channel in documented.items():
        assert channel.address == names[role]
        assert channel.spec["bindings"]["kafka"]["topic"] == names[role]
    for role in INTERNAL_ROLES:  # left out, and the document says so
        assert f"cfn.{role}" in document()["info"]["description"]


def test_every_value_schema_is_a_file_in_schemas() -> None:
    for role, channel in channels().items():
        if role == "raw":  # the exact bytes Cloudflare sent: only "a JSON object", inline
            assert channel.value_file is None and channel.value_schema["type"] == "object"
            continue
        assert channel.value_file is not None, f"{role}: no value schema reference"
        assert channel.value_file.parent == SCHEMAS and channel.value_file.is_file(), role
        Draft202012Validator.check_schema(json.loads(channel.value_file.read_text()))
    by_role = {role: c.value_file.name for role, c in channels().items() if c.value_file}
    assert by_role["incident-state"] == by_role["incidents"] == "incidents.schema.json"


def test_each_channel_has_a_key_schema_and_the_topic_config_cfn_creates() -> None:
    for role, channel in channels().items():
        assert channel.key_schema.get("type") == "string", role
        documented = channel.spec["bindings"]["kafka"].get("topicConfiguration", {})
        created = topic_config(role, 1)
        for name, value in documented.items():
            text = ",".join(value) if isinstance(value, list) else str(value)
            assert created.get(name) == text, (role, name)
    state = channels()["incident-state"].spec
    assert state["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]
    assert state["x-cfn-segment-ms"] == int(topic_config("incident-state", 1)["segment.ms"])
