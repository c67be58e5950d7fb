"""A copy of the repository's tracked files alone, with nothing beside it, builds the catalogue
and collects the suite: everything they read lives in the repository (vendor/README.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_files(root: Path) -> list[Path]:
    """The files git tracks under `root` (its index: what a commit of it would hold)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=60
    ).stdout
    return [Path(name) for name in listed.decode().split("\0") if name]


def copy_tracked(root: Path, target: Path) -> None:
    """Copy the tracked files of `root` into `target`, links as links (cfn/ingest -> ../ingest)."""
    for relative in tracked_files(root):
        source = root / relative
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the work tree and not yet committed
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            (target / relative).symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target / relative)


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's tracked files in an empty folder: no ../shared, no .venv beside them."""
    clone = tmp_path_factory.mktemp("alone") / "cfn"
    copy_tracked(ROOT, clone)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["cfn"]
    return clone


def _environ() -> dict[str, str]:
    """This environment less anything that points the build or the imports elsewhere."""
    dropped = {"CFN_CATALOG_SOURCES", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def test_the_catalogue_check_passes_in_a_copy_with_nothing_beside_it(alone: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.build_catalog", "--check"],
        cwd=alone,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{alone / 'schemas' / 'catalog.json'} is up to date" in proc.stdout


def test_the_suite_collects_in_a_copy_with_nothing_beside_it(alone: Path) -> None:
    """Collection imports every test module, and the modules read their data when imported."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=alone,
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # test_layout's ids carry the path of the module it found: the copy's, not this checkout's.
    assert f"[cfn.access-{alone}/cfn/access.py]" in proc.stdout
