"""Charts for the docs, drawn with matplotlib so that the same input gives the same file bytes.

matplotlib is in the `bench` extra, never a runtime dependency: only `python -m
tools.detection_plots` and the bench report (tests/bench/report.py) draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Met / missed / neutral, and the series of a chart, from the colour-blind-safe Okabe-Ito set.
MET = "#009E73"
MISSED = "#D55E00"
GREY = "#999999"
SERIES = ("#0072B2", "#E69F00", "#56B4E9", "#CC79A7", "#009E73", "#D55E00", "#F0E442")


@contextmanager
def style() -> Iterator[None]:
    """matplotlib's defaults plus fixed settings that every chart of the docs shares, whatever
    the user's matplotlibrc: the same bytes for the same data (no date, a fixed SVG id salt,
    text kept as text), and the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(
            {
                "svg.hashsalt": "cfn",
                "svg.fonttype": "none",
                "font.size": 9,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.grid": True,
                "grid.color": "#dddddd",
                "grid.linewidth": 0.6,
                "legend.frameon": False,
                "savefig.dpi": 110,
            }
        )
        yield


def save(figure: Figure, path: Path) -> Path:
    """Write `figure` as PNG or SVG (by the suffix) without the metadata that would change from
    one run to the next, and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".svg":
        metadata: dict[str, str | None] = {"Date": None, "Creator": None}
    else:
        metadata = {"Software": None}
    figure.savefig(path, metadata=metadata, bbox_inches="tight")
    plt.close(figure)
    return path
