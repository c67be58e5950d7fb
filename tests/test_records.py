"""The JSON Schema files and the Python record classes describe the same fields."""

from __future__ import annotations

import dataclasses

import pytest

from cfn.schemas.records import (
    AnomalyRecord,
    DlqRecord,
    EventRecord,
    FlapRecord,
    IncidentRecord,
    RateRecord,
)
from tests.records_check import validator

# Fields added within a schema_version: always written, but not required, since records written
# before them lack them (making them required is a breaking change, see tools/schema_compat.py).
# `origin` absent reads as "webhook".
ADDED_LATER = {"incidents": {"flap_id"}, "events": {"origin"}}


@pytest.mark.parametrize(
    ("role", "cls"),
    [
        ("events", EventRecord),
        ("incidents", IncidentRecord),
        ("rates", RateRecord),
        ("anomalies", AnomalyRecord),
        ("flaps", FlapRecord),
        ("dlq", DlqRecord),
    ],
)
def test_schema_properties_match_record_fields(role: str, cls: type) -> None:
    schema = validator(role).schema
    fields = [f.name for f in dataclasses.fields(cls)]
    assert sorted(schema["properties"]) == sorted(fields)
    later = ADDED_LATER.get(role, set())
    assert sorted(schema["required"]) == sorted(set(fields) - later)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert all(defaults[name] is not dataclasses.MISSING for name in later)
    assert schema["additionalProperties"] is False
