"""``rrt report``: an experiment's results compiled into the paper's tables and figures.

Reads only ``results/<experiment>/`` with Polars and writes ``report.md``, a self-contained
``report.html``, ``tables/*.csv`` (the data behind every table and plot) and ``plots/*.png``: the
same results give the same bytes. Modules are imported inside functions, as the Snakefile imports
:mod:`rrt.report.record` and must not pay for Polars and matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrt.config import section


@section("report")
class ReportConfig:
    """How the report judges differences (``report`` in the config schema)."""

    alpha: float


def build(results_dir: str | Path, out: str | Path, settings: ReportConfig) -> dict[str, Any]:
    """Compile the report of ``results_dir`` into ``out``; what it found, as metrics."""
    from rrt.report.compose import compose, write

    report = compose(results_dir, settings.alpha)
    write(report, Path(out))
    return report.metrics
