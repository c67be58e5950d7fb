"""Cloudflare's published contract for the alerting paths (tests/data/cloudflare/), as JSON Schema
validators of requests, query strings and answers."""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

from cfn.schemas import jsonio

DATA = Path(__file__).parent / "data" / "cloudflare"
DOCUMENTS = ("alerting-openapi.json", "silences-openapi.json")
FAILURE = "#/components/schemas/aaa_schemas-api-response-common-failure"


def _nullable(value: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's type list, and `oneOf` read as `anyOf`
    (the document's branches overlap: a webhook id is both a uuid and "the email address")."""
    if isinstance(value, dict):
        out = {
            ("anyOf" if k == "oneOf" else k): _nullable(v)
            for k, v in value.items()
            if k != "nullable"
        }
        if value.get("nullable") is True and isinstance(value.get("type"), str):
            out["type"] = [value["type"], "null"]
        return out
    if isinstance(value, list):
        return [_nullable(v) for v in value]
    return value


@functools.cache
def document() -> dict[str, Any]:
    """The vendored documents merged: their paths and components."""
    merged: dict[str, Any] = {"paths": {}, "components": {"schemas": {}}}
    for name in DOCUMENTS:
        part = _nullable(jsonio.loads((DATA / name).read_bytes()))
        merged["paths"].update(part["paths"])
        for kind, items in part["components"].items():
            merged["components"].setdefault(kind, {}).update(items)
    return merged


_formats = jsonschema.FormatChecker()


@_formats.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if isinstance(value, str):
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def _errors(schema: dict[str, Any], instance: Any) -> list[str]:
    root = {**schema, "components": document()["components"]}
    validator = jsonschema.Draft4Validator(root, format_checker=_formats)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def operation(method: str, template: str) -> dict[str, Any]:
    operation: dict[str, Any] = document()["paths"][template][method.lower()]
    return operation


def request_errors(method: str, template: str, body: Any) -> list[str]:
    """What is wrong with a request body, by the operation's requestBody schema."""
    spec = operation(method, template).get("requestBody")
    if spec is None:
        return [] if body is None else ["a body where the operation takes none"]
    schema = spec["content"]["application/json"]["schema"]
    return _errors(schema, body)


def query_errors(method: str, template: str, query: dict[str, str]) -> list[str]:
    """What is wrong with a query string, by the operation's query parameters."""
    params = {
        p["name"]: p["schema"]
        for p in operation(method, template).get("parameters", [])
        if p["in"] == "query"
    }
    problems: list[str] = []
    for name, text in query.items():
        schema = params.get(name)
        if schema is None:
            problems.append(f"{name}: not a parameter of {method} {template}")
            continue
        resolved = schema
        if "$ref" in schema:
            resolved = document()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        value: Any = float(text) if resolved.get("type") == "number" else text
        problems += [f"{name}: {e}" for e in _errors(schema, value)]
    return problems


def response_errors(method: str, template: str, status: int, body: Any) -> list[str]:
    """What is wrong with an answer, by the operation's response schema. A 4XX is checked
    against the failure envelope alone (the document's 4XX allOf is unsatisfiable), as are the
    429 and 5xx answers the document does not list."""
    responses = operation(method, template)["responses"]
    if 200 <= status < 300:
        spec = responses.get(str(status))
        if spec is None:
            return [f"status {status} is not in the document ({sorted(responses)})"]
        return _errors(spec["content"]["application/json"]["schema"], body)
    return _errors({"$ref": FAILURE}, body)
