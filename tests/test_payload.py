"""schemas.payload: real body shapes parse, bad ones are rejected with a reason, never raised."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.schemas import jsonio
from cfn.schemas.payload import (
    STRING_FIELDS,
    TEST_PREFIX,
    TS_MAX,
    TS_MIN,
    Notification,
    Rejected,
    fingerprint,
    is_test_message,
    parse,
)
from tests.payloads import SAVE_AND_TEST, SSL_NESTED, STREAM_LIVE, alert, encode, seed_examples

TENANT = "acme"
RECEIVED_AT = 1_700_000_123_456  # epoch ms
REASONS = {"invalid_json", "not_an_object", "bad_ts", "bad_field"}


def accepted(raw: bytes | dict[str, Any], tenant: str = TENANT) -> Notification:
    result = parse(raw if isinstance(raw, bytes) else encode(raw), tenant, RECEIVED_AT)
    assert isinstance(result, Notification), result
    return result


def refused(raw: bytes | dict[str, Any]) -> Rejected:
    result = parse(raw if isinstance(raw, bytes) else encode(raw), TENANT, RECEIVED_AT)
    assert isinstance(result, Rejected), result
    return result


# ---- well-formed bodies ---------------------------------------------------------------------


def test_full_envelope_maps_every_field() -> None:
    body = alert(account="acc-9", correlation="corr-9", ts=1_700_000_050)
    n = accepted(body)
    assert n.kind == "alert"
    assert n.tenant == TENANT
    assert n.account_id == body["account_id"]
    assert n.policy_id == body["policy_id"]
    assert n.policy_name == body["policy_name"]
    assert n.alert_type == body["alert_type"]
    assert n.correlation_id == body["alert_correlation_id"]
    assert n.event == "start"
    assert n.ts == body["ts"]
    assert n.received_at == RECEIVED_AT
    assert n.name == body["name"]
    assert n.text == body["text"]
    assert n.data == body["data"]
    assert n.event_id == "ev_" + fingerprint(TENANT, body)


@pytest.mark.parametrize(
    ("alert_event", "expected"),
    [("ALERT_STATE_EVENT_START", "start"), ("ALERT_STATE_EVENT_END", "end")],
)
def test_start_and_end_are_normalised(alert_event: str, expected: str) -> None:
    assert accepted(alert(event=alert_event)).event == expected


@pytest.mark.parametrize(
    "alert_event", ["ALERT_STATE_EVENT_UPDATE", "ALERT_STATE_EVENT_RESOLVED", "firing", ""]
)
def test_other_alert_event_values_are_kept_as_received(alert_event: str) -> None:
    assert accepted(alert(event=alert_event)).event == alert_event


def test_missing_alert_event_is_none() -> None:
    assert accepted(alert(event=None)).event is None


@pytest.mark.parametrize("missing", ["account_id", "policy_id", "alert_type"])
def test_documented_optional_fields_may_be_absent(missing: str) -> None:
    body = alert()
    del body[missing]
    n = accepted(body)
    assert getattr(n, missing) is None
    present = {"account_id", "policy_id", "alert_type"} - {missing}
    for field in present:
        assert getattr(n, field) == body[field]
    assert n.correlation_id == body["alert_correlation_id"]


def test_stream_live_body_has_no_alert_fields() -> None:
    n = accepted(STREAM_LIVE)
    assert n.kind == "alert"
    assert (n.account_id, n.policy_id, n.alert_type) == (None, None, None)
    assert (n.correlation_id, n.event, n.policy_name) == (None, None, None)
    assert n.ts == STREAM_LIVE["ts"]
    assert n.name == STREAM_LIVE["name"]
    assert n.text == STREAM_LIVE["text"]
    assert n.data == STREAM_LIVE["data"]


def test_ssl_lifecycle_nested_data_is_kept_whole_and_string_ts_converted() -> None:
    n = accepted(SSL_NESTED)
    assert n.data == SSL_NESTED["data"]
    assert n.data["metadata"]["event"]["type"] == "ssl.certificate.validation.failed"
    assert n.data["data"]["hostname"] == "example.com"
    assert n.ts == int(str(SSL_NESTED["ts"]))
    assert n.alert_type == SSL_NESTED["alert_type"]


@pytest.mark.parametrize("field", [*STRING_FIELDS, "alert_correlation_id", "alert_event"])
@pytest.mark.parametrize("number", [12345, 1.5, 0])
def test_numbers_in_string_fields_become_strings(field: str, number: int | float) -> None:
    body = alert()
    body[field] = number
    n = accepted(body)
    attribute = {"alert_correlation_id": "correlation_id", "alert_event": "event"}.get(field, field)
    assert getattr(n, attribute) == str(number)


def test_numbers_as_strings_inside_data_stay_as_received() -> None:
    data = {"max_rate": "800", "packets_per_second": "12", "target_port": 443}
    n = accepted(alert(data=data))
    assert n.data == data
    assert isinstance(n.data["max_rate"], str)


def test_unknown_alert_type_flows_through() -> None:
    n = accepted(alert(alert_type="brand_new_type_2031"))
    assert n.alert_type == "brand_new_type_2031"
    assert n.kind == "alert"


def test_empty_correlation_id_is_treated_as_absent() -> None:
    assert accepted(alert(correlation="")).correlation_id is None


@pytest.mark.parametrize("body", list(seed_examples()))
def test_every_documented_example_parses(body: bytes) -> None:
    source = jsonio.loads(body)
    n = accepted(body)
    assert n.kind == "alert"
    assert n.ts == source["ts"]
    assert n.account_id == source.get("account_id")
    assert n.alert_type == source.get("alert_type")
    assert n.correlation_id == source.get("alert_correlation_id")
    assert n.data == source["data"]
    assert n.event_id == "ev_" + fingerprint(TENANT, source)
    if source.get("alert_event") == "ALERT_STATE_EVENT_START":
        assert n.event == "start"
    else:  # the schema template's "string" placeholder is kept as an opaque value
        assert n.event == source.get("alert_event")


def test_documented_examples_are_distinct_events() -> None:
    ids = [accepted(body).event_id for body in seed_examples()]
    assert len(set(ids)) == len(ids)


# ---- Save and Test ---------------------------------------------------------------------------


def test_save_and_test_message_is_kind_test_stamped_with_received_time() -> None:
    n = accepted(SAVE_AND_TEST)
    assert n.kind == "test"
    assert n.text is not None and n.text.startswith(TEST_PREFIX)
    assert n.ts == RECEIVED_AT // 1000  # the body has no ts
    assert (n.alert_type, n.correlation_id, n.event, n.account_id) == (None, None, None, None)


def test_save_and_test_other_wording_is_still_a_test() -> None:
    body = {"text": TEST_PREFIX + ". If you can see this, your webhook is configured correctly."}
    assert is_test_message(body)
    assert accepted(body).kind == "test"


@pytest.mark.parametrize(
    "extra", [{"alert_type": "health_check_status_notification"}, {"alert_correlation_id": "c"}]
)
def test_greeting_with_alert_fields_is_an_alert(extra: dict[str, str]) -> None:
    body = {"text": TEST_PREFIX + ". Hi.", **extra}
    assert not is_test_message(body)
    assert accepted(body).kind == "alert"


@pytest.mark.parametrize("text", ["Hello World!", "hello world! this is a test message", None, 42])
def test_other_texts_are_not_test_messages(text: object) -> None:
    assert not is_test_message({"text": text})


# ---- timestamps ------------------------------------------------------------------------------


def test_ts_as_numeric_string_is_converted() -> None:
    assert accepted(alert(ts="1700000100")).ts == 1_700_000_100
    assert accepted(alert(ts=" 1700000100 ")).ts == 1_700_000_100


@pytest.mark.parametrize("seconds", [TS_MIN, 1_700_000_100, TS_MAX - 1])
def test_ts_in_milliseconds_is_normalised_to_seconds(seconds: int) -> None:
    assert accepted(alert(ts=seconds)).ts == seconds
    assert accepted(alert(ts=seconds * 1000)).ts == seconds
    assert accepted(alert(ts=seconds * 1000 + 999)).ts == seconds
    assert accepted(alert(ts=str(seconds * 1000))).ts == seconds


def test_fractional_ts_is_truncated_to_whole_seconds() -> None:
    body = alert()
    body["ts"] = 1_700_000_100.75
    assert accepted(body).ts == 1_700_000_100


def test_missing_or_null_ts_uses_received_at() -> None:
    body = alert()
    del body["ts"]
    assert accepted(body).ts == RECEIVED_AT // 1000
    assert accepted({**body, "ts": None}).ts == RECEIVED_AT // 1000


@pytest.mark.parametrize(
    "ts",
    [
        TS_MIN - 1,
        TS_MAX,
        0,
        -1,
        TS_MAX * 1000,  # past the millisecond range too
        "soon",
        "",
        "nan",
        True,
        False,
        [1_700_000_000],
        {"s": 1_700_000_000},
    ],
)
def test_bad_ts_is_rejected(ts: object) -> None:
    body = alert()
    body["ts"] = ts
    rejected = refused(body)
    assert rejected.reason == "bad_ts"
    assert "$.ts" in rejected.detail


@pytest.mark.parametrize("ts", ["inf", "-Infinity", "1e999"])
def test_non_finite_ts_string_is_rejected_not_raised(ts: str) -> None:
    """Python's float() accepts these spellings; int() of the result must not escape parse."""
    body = alert()
    body["ts"] = ts
    rejected = refused(body)
    assert rejected.reason == "bad_ts"
    assert "$.ts" in rejected.detail


# ---- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe{}", b'{"a":1}{"b":2}', b'{"ts":1e999}']
)
def test_invalid_json_is_rejected(raw: bytes) -> None:
    rejected = refused(raw)
    assert rejected.reason == "invalid_json"
    assert rejected.detail


@pytest.mark.parametrize(
    ("raw", "type_name"),
    [
        (b"[]", "list"),
        (b'[{"ts":1700000000}]', "list"),
        (b'"text"', "str"),
        (b"42", "int"),
        (b"null", "NoneType"),
        (b"true", "bool"),
    ],
)
def test_json_that_is_not_an_object_is_rejected(raw: bytes, type_name: str) -> None:
    rejected = refused(raw)
    assert rejected.reason == "not_an_object"
    assert type_name in rejected.detail


@pytest.mark.parametrize("field", [*STRING_FIELDS, "alert_correlation_id", "alert_event"])
@pytest.mark.parametrize("value", [True, ["x"], {"x": 1}])
def test_non_string_field_is_rejected_naming_it(field: str, value: object) -> None:
    body = alert()
    body[field] = value
    rejected = refused(body)
    assert rejected.reason == "bad_field"
    assert f"$.{field}" in rejected.detail


@pytest.mark.parametrize("depth", [254, 1000])
def test_deeply_nested_data_that_parses_is_never_raised(depth: int) -> None:
    """orjson reads up to 1024 levels but writes only ~254: fingerprinting must not escape."""
    raw = b'{"data":' + b"[" * depth + b"]" * depth + b"}"
    result = parse(raw, TENANT, RECEIVED_AT)
    assert isinstance(result, Notification | Rejected)
    if isinstance(result, Rejected):
        assert result.reason in REASONS


# ---- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_ignores_key_order_at_every_depth() -> None:
    body = alert(data={"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": None}})
    reordered = {k: body[k] for k in reversed(list(body))}
    reordered["data"] = {"a": {"x": None, "y": [1, {"p": 2, "q": 1}]}, "b": 1}
    assert list(reordered) != list(body)
    assert fingerprint(TENANT, reordered) == fingerprint(TENANT, body)


def test_redelivery_with_other_spacing_gets_the_same_event_id() -> None:
    body = alert()
    compact = encode(body)
    spaced = "{\n  " + ",\n  ".join(f'"{k}": {encode(v).decode()}' for k, v in body.items())
    spaced += "\n}"
    assert compact != spaced.encode()
    assert accepted(compact).event_id == accepted(spaced.encode()).event_id


def test_renotification_with_new_ts_is_a_new_event() -> None:
    first, again = alert(ts=1_700_000_000), alert(ts=1_700_000_300)
    assert fingerprint(TENANT, first) != fingerprint(TENANT, again)
    assert accepted(first).event_id != accepted(again).event_id


def test_same_body_for_another_tenant_is_another_event() -> None:
    body = alert()
    assert fingerprint("acme", body) != fingerprint("globex", body)
    assert accepted(body, "acme").event_id != accepted(body, "globex").event_id


def test_value_types_count_in_the_fingerprint() -> None:
    assert fingerprint(TENANT, alert(data={"n": "800"})) != fingerprint(
        TENANT, alert(data={"n": 800})
    )


def test_fingerprint_is_a_stable_hex_digest() -> None:
    body = alert()
    digest = fingerprint(TENANT, body)
    assert digest == fingerprint(TENANT, dict(body))
    assert len(digest) == 32
    int(digest, 16)


# ---- never raises ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Spellings Python's float() reads besides plain digits: a ts string may be any of them.
FLOAT_SPELLINGS = ("inf", "-inf", "Infinity", "nan", "NaN", "1e999", "-1e999", "1_700_000_000")
ts_like = (
    json_values
    | st.sampled_from(FLOAT_SPELLINGS)
    | st.integers().map(str)
    | st.floats().map(str)
    | st.integers(min_value=TS_MIN, max_value=TS_MAX * 1000)
)
envelope_fields = {
    key: json_values for key in (*STRING_FIELDS, "alert_correlation_id", "alert_event", "data")
}
envelopes = st.fixed_dictionaries({"ts": ts_like}, optional=envelope_fields)


def check_outcome(raw: bytes, result: Notification | Rejected) -> None:
    if isinstance(result, Rejected):
        assert result.reason in REASONS
        assert result.detail
        return
    assert isinstance(result, Notification)
    assert result.kind in ("alert", "test")
    assert TS_MIN <= result.ts < TS_MAX
    assert result.event_id == "ev_" + fingerprint(TENANT, jsonio.loads(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_never_raises_for_any_bytes(raw: bytes) -> None:
    check_outcome(raw, parse(raw, TENANT, RECEIVED_AT))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_never_raises_for_any_json_value(value: Any) -> None:
    raw = jsonio.dumps(value)
    result = parse(raw, TENANT, RECEIVED_AT)
    check_outcome(raw, result)
    if not isinstance(value, dict):
        assert isinstance(result, Rejected) and result.reason == "not_an_object"


@settings(max_examples=300, deadline=None)
@given(envelopes)
def test_parse_never_raises_for_any_envelope(body: dict[str, Any]) -> None:
    raw = jsonio.dumps(body)
    check_outcome(raw, parse(raw, TENANT, RECEIVED_AT))
