"""processors/identity.py: a worker id per slot, kept across restarts, never shared by two live
workers; and how `cfn worker` chooses between it, CFN_WORKER_ID and a random id."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.processors import identity
from cfn.processors.settings import WorkerSettings
from cfn.processors.worker import claim_identity


@pytest.fixture
def ids() -> Iterator[str]:
    return (f"id{n}" for n in itertools.count())


def test_a_first_claim_writes_a_new_id_into_slot_zero(tmp_path: Path, ids: Iterator[str]) -> None:
    claim = identity.claim(tmp_path / "state", "cfn", lambda: next(ids))
    assert (claim.worker_id, claim.slot, claim.reused) == ("id0", 0, False)
    assert claim.path.read_text() == "id0\n"
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert claim.path.stat().st_mode & 0o777 == 0o600
    claim.release()


def test_a_held_slot_is_skipped_and_a_released_one_comes_back_with_its_id(
    tmp_path: Path, ids: Iterator[str]
) -> None:
    first = identity.claim(tmp_path, "cfn", lambda: next(ids))
    second = identity.claim(tmp_path, "cfn", lambda: next(ids))
    assert (first.slot, second.slot) == (0, 1)
    assert first.worker_id != second.worker_id
    first.release()
    again = identity.claim(tmp_path, "cfn", lambda: next(ids))
    assert (again.slot, again.worker_id, again.reused) == (0, first.worker_id, True)
    other_app = identity.claim(tmp_path, "other/app", lambda: next(ids))
    assert (other_app.slot, other_app.path.name) == (0, "other_app.0.id")
    for claim in (second, again, other_app):
        claim.release()


def test_a_killed_process_leaves_its_slot_and_id_to_the_next(tmp_path: Path) -> None:
    """The kernel drops a SIGKILLed holder's lock: its successor gets its id."""
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from cfn.processors import identity; "
            f"c = identity.claim(pathlib.Path({str(tmp_path)!r}), 'cfn'); "
            "print(c.worker_id, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        held = holder.stdout.readline().strip()
        beside = identity.claim(tmp_path, "cfn")  # while the holder lives: another slot
        assert beside.slot == 1 and beside.worker_id != held
        holder.kill()
        holder.wait()
    after = identity.claim(tmp_path, "cfn")
    assert (after.slot, after.worker_id, after.reused) == (0, held, True)
    beside.release()
    after.release()


def test_a_slot_without_a_valid_id_gets_a_new_one(tmp_path: Path, ids: Iterator[str]) -> None:
    (tmp_path / "cfn.0.id").write_text("not an id, with spaces\n")
    claim = identity.claim(tmp_path, "cfn", lambda: next(ids))
    assert (claim.slot, claim.worker_id, claim.reused) == (0, "id0", False)
    assert claim.path.read_text() == "id0\n"
    claim.release()


def test_refusals_say_why(
    tmp_path: Path, ids: Iterator[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "MAX_SLOTS", 2)
    held = [identity.claim(tmp_path, "cfn", lambda: next(ids)) for _ in range(2)]
    with pytest.raises(identity.IdentityError, match="all 2 slots of cfn"):
        identity.claim(tmp_path, "cfn")
    for claim in held:
        claim.release()
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)
    with pytest.raises(identity.IdentityError, match="belongs to another user"):
        identity.claim(tmp_path, "cfn")
    monkeypatch.undo()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(identity.IdentityError, match="a-file"):
        identity.claim(blocker / "state", "cfn")


def test_cfn_worker_takes_the_given_id_else_a_kept_one_else_a_random_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cfn.worker")
    given = WorkerSettings(worker_id="pod-0", state_dir=str(tmp_path))
    assert claim_identity(given) == (given, None)
    per_partition = WorkerSettings(transactions="partition", state_dir=str(tmp_path))
    assert claim_identity(per_partition) == (per_partition, None)

    settings, claim = claim_identity(WorkerSettings(state_dir=str(tmp_path)))
    assert claim is not None and settings.worker_id == claim.worker_id
    assert f"worker id {claim.worker_id} (new in slot 0 of {tmp_path})" in caplog.text
    claim.release()
    again, claim = claim_identity(WorkerSettings(state_dir=str(tmp_path)))
    assert claim is not None and again.worker_id == settings.worker_id
    assert f"worker id {claim.worker_id} (kept in slot 0 of {tmp_path})" in caplog.text
    claim.release()

    (tmp_path / "file").write_text("")
    unusable, claim = claim_identity(WorkerSettings(state_dir=str(tmp_path / "file" / "x")))
    assert claim is None and len(unusable.worker_id) == 12
    assert unusable.worker_id != settings.worker_id
    assert "random: " in caplog.text and "set CFN_STATE_DIR or CFN_WORKER_ID" in caplog.text


def test_settings_read_the_id_and_the_directory() -> None:
    settings = WorkerSettings.from_env({"CFN_STATE_DIR": "/var/lib/cfn"})
    assert (settings.transactions, settings.worker_id, settings.state_dir) == (
        "worker",
        "",
        "/var/lib/cfn",
    )
    assert WorkerSettings.from_env({"CFN_WORKER_ID": "pod-1"}).worker_id == "pod-1"
    assert WorkerSettings.from_env({}).state_dir.endswith("/cfn")
