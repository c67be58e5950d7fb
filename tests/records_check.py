"""Every record the tests read from a cfn topic is validated against its JSON Schema."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from cfn.schemas import jsonio


@cache
def validator(role: str) -> Draft202012Validator:
    text = resources.files("cfn.schemas").joinpath(f"{role}.schema.json").read_bytes()
    schema = jsonio.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def checked(role: str, values: list[bytes]) -> list[dict[str, Any]]:
    """Decode and validate each value; raises with the schema's message on the first misfit."""
    out = []
    for value in values:
        record = jsonio.loads(value)
        validator(role).validate(record)
        out.append(record)
    return out
