"""Every record the tests read from a cfn topic is validated against its JSON Schema."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def read_checked(bootstrap: str, topic: str, role: str) -> list[dict[str, Any]]:
    """Every committed record of `topic`, decoded and validated against `role`'s schema."""
    from tests.kafka_util import read_to_end, run

    return checked(role, [r.value for r in run(read_to_end(bootstrap, topic))])


def wait_for_records(
    bootstrap: str,
    topic: str,
    role: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
) -> list[dict[str, Any]]:
    """`read_checked` again every half second until `done` holds (asserting within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = read_checked(bootstrap, topic, role)
        if done(found):
            return found
        assert time.monotonic() < deadline, f"{topic}: {found}"
        time.sleep(0.5)
