"""``rrt report``: an experiment's results compiled into the paper's tables and figures.

Reads only ``results/<experiment>/`` (evaluations and their per-sample files, each trained
model's metrics.json and steps.jsonl, benchmarks/*.json, the experiment's record) with Polars,
and writes ``report.md``, a self-contained ``report.html``, ``tables/*.csv`` (the long-form
data behind every table and plot) and ``plots/*.png``. The same results give the same bytes.

The package's modules are imported inside functions: the Snakefile imports
:mod:`rrt.report.record`, and must not pay for Polars and matplotlib.
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
