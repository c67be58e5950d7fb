"""cfn's version, for `cfn --version` and the `cfn_build_info` metric of every process."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

UNKNOWN = "unknown"
# A source tree that was never installed: pyproject.toml beside the cfn/ folder.
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def version(pyproject: Path = _PYPROJECT) -> str:
    """The installed cfn's version, else the one in the source tree's pyproject.toml.

    Args:
        pyproject: where to look when cfn is not installed (a test passes its own).

    Returns:
        The version string, or "unknown" when neither says.
    """
    try:
        return metadata.version("cfn")
    except metadata.PackageNotFoundError:
        pass
    return _from_pyproject(pyproject)


def _from_pyproject(pyproject: Path) -> str:
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return UNKNOWN
    # Another project's pyproject.toml (cfn vendored into a tree) does not say cfn's version.
    if project.get("name") != "cfn" or not isinstance(project.get("version"), str):
        return UNKNOWN
    return str(project["version"])


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """`cfn_build_info{version="..."} 1` on `registry`: which version a process runs, so a
    dashboard or an alert can see two versions side by side."""
    # One series, always 1: the information is in the label (Prometheus's *_info convention).
    gauge = Gauge(
        "cfn_build_info", "The cfn version this process runs.", ["version"], registry=registry
    )
    gauge.labels(version=version()).set(1)
    return gauge
