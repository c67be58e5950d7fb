"""The AsyncAPI contract (schemas/asyncapi.yaml) as the tests read it: channels by topic role,
and the schema it names for each channel's values, keys and headers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
DOCUMENT = SCHEMAS / "asyncapi.yaml"
# Topic roles of cfn.config.topic_names that the contract leaves out on purpose, and why.
INTERNAL_ROLES = {"rate-input": "the rate repartition topic; its shape may change in any release"}


@cache
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _local(ref: str) -> Any:
    """The node a `#/a/b` reference points to inside the document."""
    assert ref.startswith("#/"), ref
    node: Any = document()
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(node: Any) -> Any:
    while isinstance(node, dict) and set(node) == {"$ref"} and node["$ref"].startswith("#/"):
        node = _local(node["$ref"])
    return node


@dataclass(frozen=True)
class Channel:
    """One channel of the contract, resolved: what a record of its topic must look like."""

    role: str  # the channel id, which is the topic role (cfn.config.topic_names)
    address: str
    value_file: Path | None  # the JSON Schema file its values must match; None: inline schema
    value_schema: dict[str, Any]
    key_schema: dict[str, Any]
    headers_schema: dict[str, Any] | None
    spec: dict[str, Any]  # the channel object itself

    def value_validator(self) -> Draft202012Validator:
        return _validator(json.dumps(self.value_schema, sort_keys=True))

    def key_validator(self) -> Draft202012Validator:
        return _validator(json.dumps(self.key_schema, sort_keys=True))

    def headers_validator(self) -> Draft202012Validator | None:
        if self.headers_schema is None:
            return None
        return _validator(json.dumps(self.headers_schema, sort_keys=True))


@cache
def _validator(schema_text: str) -> Draft202012Validator:
    schema = json.loads(schema_text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def value_reference(message: dict[str, Any]) -> str | None:
    """The file a message's payload refers to (`schema: {$ref: ./x.schema.json}`), or None."""
    payload = message["payload"]
    schema = payload.get("schema", payload) if "schemaFormat" in payload else payload
    ref = schema.get("$ref")
    return ref if isinstance(ref, str) and not ref.startswith("#") else None


def channels() -> dict[str, Channel]:
    """Every channel of the document by id, each with its one message resolved."""
    out: dict[str, Channel] = {}
    for role, spec in document()["channels"].items():
        messages = list(spec["messages"].values())
        assert len(messages) == 1, f"{role}: one message per channel"
        message = _deref(messages[0])
        ref = value_reference(message)
        value_file = (DOCUMENT.parent / ref).resolve() if ref else None
        if value_file is not None:
            value_schema = json.loads(value_file.read_text())
        else:
            value_schema = _deref(message["payload"])
        key = _deref(message["bindings"]["kafka"]["key"])
        headers = _deref(message["headers"]) if "headers" in message else None
        out[role] = Channel(role, spec["address"], value_file, value_schema, key, headers, spec)
    return out
