"""cfn/version.py: the version lookup, its fallback for a source tree, `cfn --version` and
the cfn_build_info metric."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cfn.shell.cli import main
from cfn.version import UNKNOWN, register_build_info, version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """importlib.metadata knows no cfn, as in a source tree that was never installed."""

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)


def test_the_installed_version() -> None:
    assert version() == metadata.version("cfn")


@pytest.mark.usefixtures("not_installed")
def test_a_source_tree_reads_its_pyproject(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "cfn"\nversion = "9.8.7"\n')
    assert version(pyproject) == "9.8.7"
    # The repository's own, by default.
    assert version() != UNKNOWN


@pytest.mark.usefixtures("not_installed")
@pytest.mark.parametrize(
    "text",
    [
        None,  # no file
        '[project]\nname = "other"\nversion = "1.0"\n',  # another project's
        '[project]\nname = "cfn"\ndynamic = ["version"]\n',  # no static version
        "[project\n",  # not TOML
    ],
    ids=["missing", "other-project", "no-version", "malformed"],
)
def test_unknown_when_nothing_says(tmp_path: Path, text: str | None) -> None:
    pyproject = tmp_path / "pyproject.toml"
    if text is not None:
        pyproject.write_text(text)
    assert version(pyproject) == UNKNOWN


def test_cfn_version_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"cfn {version()}\n"


def test_build_info_is_one_series_labelled_with_the_version() -> None:
    registry = CollectorRegistry()
    register_build_info(registry)
    assert registry.get_sample_value("cfn_build_info", {"version": version()}) == 1.0
    samples = [s for m in registry.collect() for s in m.samples if m.name == "cfn_build_info"]
    assert len(samples) == 1
