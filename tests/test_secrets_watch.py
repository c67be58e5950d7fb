"""ingest.watch: the secrets file is reloaded when it changes, with no signal; and the
secrets file's "cloudflare" entries (ingest.auth)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cfn.ingest.auth import CloudflareAccount, SecretIndex, SecretsError
from cfn.ingest.watch import FileWatch
from cfn.schemas import jsonio
from tests.payloads import alert, encode
from tests.services import request, start_ingest

OLD, NEW = "acme-old-secret-0123456789", "acme-new-secret-0123456789"
TOKEN = "cf-api-token-never-shown-0123456789"


# ---- the "cloudflare" entry ------------------------------------------------------------------


def test_a_tenant_may_name_its_cloudflare_account_and_the_token_is_read_when_used(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "acme.token"
    index = SecretIndex.from_mapping(
        {
            "acme": {
                "secrets": [NEW],
                "cloudflare": {"account_id": "a" * 32, "api_token_file": str(token_file)},
            },
            "globex": ["globex-only-0123456789"],
        }
    )
    account = index.cloudflare["acme"]
    assert account == CloudflareAccount("a" * 32, token_file)
    assert list(index.cloudflare) == ["acme"]
    with pytest.raises(SecretsError, match=r"acme\.token: No such file"):
        account.token()
    token_file.write_text(TOKEN + "\n")
    assert account.token() == TOKEN
    assert TOKEN not in repr(account) and TOKEN not in repr(index)
    token_file.write_text("  \n")
    with pytest.raises(SecretsError, match="is empty"):
        account.token()


@pytest.mark.parametrize(
    ("cloudflare", "message"),
    [
        ("x", r"'cloudflare' must be an object .* got a string"),
        ({"account_id": "a"}, r"'api_token_file' must be a non-empty string, got null"),
        ({"account_id": "", "api_token_file": "f"}, r"'account_id' must be a non-empty string"),
        (
            {"account_id": "a", "api_token_file": "f", "acount_id": "b"},
            r"unknown field 'acount_id' \(did you mean 'account_id'\?\)",
        ),
        (
            {"account_id": "a", "api_token_file": "f", TOKEN: "x"},
            r"an unknown field \(its name is not shown\)",
        ),
    ],
)
def test_a_malformed_cloudflare_entry_is_refused_naming_the_field_never_a_token(
    cloudflare: object, message: str
) -> None:
    with pytest.raises(SecretsError, match=message) as caught:
        SecretIndex.from_mapping({"acme": {"secrets": [NEW], "cloudflare": cloudflare}})
    assert TOKEN not in str(caught.value)
    assert "tenant 'acme'" in str(caught.value)


def test_an_unknown_tenant_field_lists_cloudflare_among_the_fields() -> None:
    with pytest.raises(SecretsError, match=r"did you mean 'cloudflare'\?.*'burst', 'cloudflare'"):
        SecretIndex.from_mapping({"acme": {"secrets": [NEW], "cloudflair": {}}})


# ---- FileWatch -------------------------------------------------------------------------------


def test_a_write_in_place_a_rename_and_a_symlink_swap_are_each_one_change(tmp_path: Path) -> None:
    target = tmp_path / "secrets.json"
    target.write_text("{}")
    files = FileWatch(target)
    assert not files.changed()
    target.write_text('{"a": 1}')  # in place: size and mtime
    assert files.changed()
    assert not files.changed()  # reported once
    fresh = tmp_path / "fresh.json"
    fresh.write_text('{"a": 2}')
    os.replace(fresh, target)  # a rename: a new inode (what cfn cloudflare does)
    assert files.changed()
    assert not files.changed()


def test_a_kubernetes_style_symlink_swap_is_seen_through_the_path(tmp_path: Path) -> None:
    # A mounted Secret: secrets.json -> ..data/secrets.json, ..data -> ..2026_01_01_v1
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "secrets.json").write_text("{}")
    (tmp_path / "..data").symlink_to("..v1")
    path = tmp_path / "secrets.json"
    path.symlink_to("..data/secrets.json")
    files = FileWatch(path)
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "secrets.json").write_text("{}")  # same size, same content
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert files.changed()


def test_a_missing_file_is_no_change_and_its_return_is_one(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("{}")
    files = FileWatch(path)
    path.unlink()
    assert not files.changed()
    path.write_text("{}")
    assert files.changed()


# ---- a real ingest ---------------------------------------------------------------------------


def _write(path: Path, value: object) -> None:
    """Replace the file the way cfn cloudflare does: a new file renamed over the old."""
    fresh = path.with_suffix(".tmp")
    fresh.write_bytes(jsonio.dumps(value))
    os.replace(fresh, path)


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.broker
def test_the_ingest_reloads_a_changed_secrets_file_without_a_signal(
    tmp_path: Path, kafka: str, unique: Callable[[str], str]
) -> None:
    secrets = tmp_path / "secrets.json"
    _write(secrets, {"acme": [OLD]})
    process = start_ingest(
        tmp_path, kafka, unique("w") + ".", {"CFN_INGEST_SECRETS_FILE": str(secrets)}
    )
    body = encode(alert())

    def status(secret: str) -> int:
        headers = {"cf-webhook-auth": secret, "content-type": "application/json"}
        return request(process.port, "POST", "/webhooks/cloudflare", body, headers).status

    try:
        assert status(OLD) == 202
        assert status(NEW) == 401
        _write(secrets, {"acme": [OLD, NEW]})  # a second secret beside the first
        took = _until(lambda: status(NEW) == 202, "the new secret was never accepted")
        assert took < 5
        assert status(OLD) == 202
        # A bad version keeps the configuration in force and is logged once.
        _write(secrets, {"acme": ["short"]})
        _until(lambda: "secrets reload failed" in process.output, "the bad file was not logged")
        time.sleep(2.5)  # two more looks at the unchanged bad file
        assert process.output.count("secrets reload failed") == 1
        assert status(OLD) == 202 and status(NEW) == 202
        _write(secrets, {"acme": [NEW]})  # the old one retired
        _until(lambda: status(OLD) == 401, "the retired secret still works")
        assert status(NEW) == 202
    finally:
        process.stop()
    for secret in (OLD, NEW):
        assert secret not in process.output
