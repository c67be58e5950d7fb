"""Every record the tests read from a cfn topic is validated against its JSON Schema."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class RawCheck:
    """How the 202 answers of a load test are found in cfn.raw, by the `cfn-request-id` header.

    `missing` breaks the ingest's promise (a 2xx for bytes Kafka does not hold) and `altered`
    its byte-for-byte copy. `repeated` is a 202 whose record was written more than once with the
    same bytes: librdkafka's idempotent producer can write a record twice when a leader changes
    under it (confluentinc/librdkafka#4953), which cfn.events' dedup absorbs as it absorbs the
    sender's own retries. Tests report it and do not fail on it.
    """

    missing: list[int]
    altered: list[int]
    repeated: list[int]


def raw_check(accepted: list[tuple[str, bytes]], raw: list[tuple[str, bytes]]) -> RawCheck:
    """Compare (request id, body) of each 202 with (request id, value) of each cfn.raw record."""
    by_id: dict[str, list[bytes]] = {}
    for request_id, value in raw:
        by_id.setdefault(request_id, []).append(value)
    missing, altered, repeated = [], [], []
    for index, (request_id, body) in enumerate(accepted):
        copies = by_id.get(request_id, [])
        if body not in copies:
            missing.append(index)
        if any(copy != body for copy in copies):
            altered.append(index)
        if len(copies) > 1:
            repeated.append(index)
    return RawCheck(missing, altered, repeated)
