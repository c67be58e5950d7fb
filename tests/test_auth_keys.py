"""ingest.auth (tenants by secret, rotation, no secret in errors) and schemas.keys (record keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfn.ingest.auth import DEFAULT_TENANT, SecretIndex, SecretsError
from cfn.schemas import jsonio
from cfn.schemas.keys import incident_key, incident_record_key
from tests.payloads import STREAM_LIVE, alert, seed_examples

OLD, NEW, OTHER = "acme-old-4f1e9c-0123", "acme-new-77d2a0-0123", "globex-only-0b3c55"


# ---- SecretIndex -----------------------------------------------------------------------------


def test_rotation_keeps_both_secrets_of_a_tenant_valid() -> None:
    index = SecretIndex.from_mapping({"acme": [OLD, NEW], "globex": [OTHER]})
    assert index.tenant_for(OLD.encode()) == "acme"
    assert index.tenant_for(NEW.encode()) == "acme"
    assert index.tenant_for(OTHER.encode()) == "globex"
    assert index.tenants == frozenset({"acme", "globex"})
    # Rotation done: the old secret is dropped from the configuration and stops working.
    rotated = SecretIndex.from_mapping({"acme": [NEW], "globex": [OTHER]})
    assert rotated.tenant_for(OLD.encode()) is None
    assert rotated.tenant_for(NEW.encode()) == "acme"


@pytest.mark.parametrize(
    "presented",
    [b"", NEW[:-1].encode(), (NEW + "\n").encode(), NEW.upper().encode(), b"acme", b"\x00"],
)
def test_anything_but_an_exact_secret_resolves_to_no_tenant(presented: bytes) -> None:
    index = SecretIndex.from_mapping({"acme": [OLD, NEW]})
    assert index.tenant_for(presented) is None


def test_a_single_string_is_a_one_item_list() -> None:
    index = SecretIndex.from_mapping({"acme": NEW})
    assert index.tenant_for(NEW.encode()) == "acme"
    assert len(index.by_digest) == 1


def test_the_plain_secrets_are_not_kept() -> None:
    index = SecretIndex.from_mapping({"acme": [OLD, NEW]})
    assert len(index.by_digest) == 2
    for digest in index.by_digest:
        assert len(digest) == 32  # sha256
        assert OLD.encode() not in digest and NEW.encode() not in digest
    assert OLD not in repr(index) and NEW not in repr(index)


def test_repeating_a_secret_within_one_tenant_is_allowed() -> None:
    index = SecretIndex.from_mapping({"acme": [NEW, NEW]})
    assert index.tenant_for(NEW.encode()) == "acme"


def test_two_tenants_sharing_a_secret_are_refused_without_showing_it() -> None:
    with pytest.raises(SecretsError) as caught:
        SecretIndex.from_mapping({"acme": [OLD, NEW], "globex": [OTHER, NEW]})
    message = str(caught.value)
    assert "'acme'" in message and "'globex'" in message
    for secret in (OLD, NEW, OTHER):
        assert secret not in message


@pytest.mark.parametrize(
    "secrets",
    [[], [NEW, ""], "", [NEW, 12345], {"s": NEW}, None, [NEW, None]],
)
def test_unusable_secret_lists_are_refused_without_showing_secrets(secrets: object) -> None:
    with pytest.raises(SecretsError) as caught:
        SecretIndex.from_mapping({"acme": secrets})
    message = str(caught.value)
    assert "'acme'" in message
    assert NEW not in message and "12345" not in message


def test_secrets_error_is_a_value_error() -> None:
    assert issubclass(SecretsError, ValueError)


def write(path: Path, value: object) -> Path:
    path.write_bytes(jsonio.dumps(value))
    return path


def test_load_from_env_secret_only_is_the_default_tenant() -> None:
    index = SecretIndex.load(NEW, None)
    assert index.tenant_for(NEW.encode()) == DEFAULT_TENANT
    assert index.tenants == frozenset({DEFAULT_TENANT})


def test_load_with_nothing_configured_resolves_nobody() -> None:
    index = SecretIndex.load(None, None)
    assert index.tenants == frozenset()
    assert index.tenant_for(b"") is None


def test_load_merges_the_file_and_the_env_secret(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.json", {"acme": [OLD, NEW], DEFAULT_TENANT: OTHER})
    index = SecretIndex.load("env-secret-19ab-0123", path)
    assert index.tenant_for(b"env-secret-19ab-0123") == DEFAULT_TENANT
    assert index.tenant_for(OTHER.encode()) == DEFAULT_TENANT  # the file's default is kept
    assert index.tenant_for(OLD.encode()) == index.tenant_for(NEW.encode()) == "acme"


def test_load_refuses_an_env_secret_that_another_tenant_uses(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.json", {"acme": [NEW]})
    with pytest.raises(SecretsError) as caught:
        SecretIndex.load(NEW, path)
    assert NEW not in str(caught.value)


def test_load_reports_a_missing_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(SecretsError, match="CFN_INGEST_SECRETS_FILE") as caught:
        SecretIndex.load(NEW, path)
    assert str(path) in str(caught.value)
    assert NEW not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"acme": ["' + NEW.encode() + b'",', "not valid JSON"),
        (b'["' + NEW.encode() + b'"]', "expected an object"),
        (b'"' + NEW.encode() + b'"', "expected an object"),
    ],
)
def test_load_reports_a_malformed_file_without_its_content(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(content)
    with pytest.raises(SecretsError, match=fragment) as caught:
        SecretIndex.load(None, path)
    assert NEW not in str(caught.value)


# ---- incident_key ----------------------------------------------------------------------------


def test_start_and_end_of_one_incident_share_the_key() -> None:
    start = alert(event="ALERT_STATE_EVENT_START", ts=1_700_000_000)
    end = alert(event="ALERT_STATE_EVENT_END", ts=1_700_000_900, text="recovered")
    renotify = alert(event="ALERT_STATE_EVENT_START", ts=1_700_000_600)
    keys = {incident_key("acme", body) for body in (start, end, renotify)}
    assert keys == {f"acme|{start['account_id']}|{start['alert_correlation_id']}".encode()}


def test_key_separates_tenants_accounts_and_incidents() -> None:
    base = incident_key("acme", alert())
    assert incident_key("globex", alert()) != base
    assert incident_key("acme", alert(account="acc-2")) != base
    assert incident_key("acme", alert(correlation="corr-2")) != base


def test_fallback_key_without_correlation_is_stable() -> None:
    body = alert(correlation=None, alert_type="one_off_type")
    again = {k: body[k] for k in reversed(list(body))}  # same content, other key order
    again["ts"] = body["ts"] + 60  # and another sending of it
    expected = f"acme|{body['account_id']}|-|one_off_type|{body['policy_id']}".encode()
    assert incident_key("acme", body) == incident_key("acme", again) == expected
    assert incident_key("acme", {**body, "alert_correlation_id": ""}) == expected


def test_fallback_key_spreads_by_account_type_and_policy() -> None:
    body = alert(correlation=None)
    base = incident_key("acme", body)
    assert incident_key("acme", {**body, "account_id": "acc-2"}) != base
    assert incident_key("acme", {**body, "alert_type": "other"}) != base
    assert incident_key("acme", {**body, "policy_id": "pol-2"}) != base


def test_fallback_key_for_bodies_without_alert_fields() -> None:
    assert incident_key("acme", STREAM_LIVE) == b"acme||-||"
    assert incident_key("acme", {"text": "Hello"}) == b"acme||-||"


def test_key_stringifies_numbers() -> None:
    body = alert(account="x")
    body["account_id"] = 12345
    body["alert_correlation_id"] = 678
    assert incident_key("acme", body) == b"acme|12345|678"


@pytest.mark.parametrize("raw", list(seed_examples()))
def test_documented_examples_get_their_correlation_key(raw: bytes) -> None:
    body = jsonio.loads(raw)
    expected = f"t|{body['account_id']}|{body['alert_correlation_id']}".encode()
    assert incident_key("t", body) == expected


def test_the_incident_key_from_fields_is_the_key_of_every_body() -> None:
    """cfn.incidents records are keyed like their notifications in cfn.raw, computed once."""
    for account in ("acc", None, ""):
        body = {"account_id": account, "alert_correlation_id": "c-1", "alert_type": "x"}
        assert incident_record_key("t", account, "c-1") == incident_key("t", body)
