"""The JSON Schema files and the Python record classes describe the same fields."""

from __future__ import annotations

import dataclasses

import pytest

from cfn.schemas.records import DlqRecord, EventRecord, IncidentRecord, RateRecord
from tests.records_check import validator


@pytest.mark.parametrize(
    ("role", "cls"),
    [
        ("events", EventRecord),
        ("incidents", IncidentRecord),
        ("rates", RateRecord),
        ("dlq", DlqRecord),
    ],
)
def test_schema_properties_match_record_fields(role: str, cls: type) -> None:
    schema = validator(role).schema
    fields = [f.name for f in dataclasses.fields(cls)]
    assert sorted(schema["properties"]) == sorted(fields)
    assert sorted(schema["required"]) == sorted(fields)
    assert schema["additionalProperties"] is False
