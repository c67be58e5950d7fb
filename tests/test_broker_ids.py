"""cfn.shell.broker's cluster ids: never one the storage tool would read as an option."""

from __future__ import annotations

import uuid

import pytest

from cfn.shell import broker


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    dashed = uuid.UUID(bytes=b"\xf8" + b"\x00" * 15)  # base64 "-AAA...": an option to argparse
    plain = uuid.UUID(bytes=b"\x00" * 16)
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    cluster_id = broker._cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert next(draws, None) is None  # both dashed draws were refused
