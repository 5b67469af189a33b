"""The report's sections in reading order, and writing them (atomically) to the report folder:
report.md, report.html, tables/*.csv and plots/*.png."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rrt.io import MARKER, atomic_path, write_text
from rrt.report.context import Context
from rrt.report.document import TEXT, Figure, Section, render
from rrt.report.figures import loss, size
from rrt.report.results import load
from rrt.report.tables import claims, exits, init, kd, models, provenance, rank, throughput
from rrt.report.tables import uptraining as before_after

# after the summary of claims, each module's section(ctx), in reading order
SECTIONS = (models, size, init, rank, before_after, kd, exits, loss, throughput, provenance)


@dataclass
class Report:
    """A compiled report: its sections, and the files written beside report.md and .html."""

    title: str
    sections: list[Section]
    data: dict[str, pl.DataFrame]  # tables/NAME.csv
    figures: dict[str, bytes]  # plots/NAME.png
    metrics: dict[str, Any]


def compose(results_dir: str | Path, alpha: float) -> Report:
    """The report of one results folder; nothing is written (``write`` does)."""
    ctx = Context(load(results_dir), alpha)
    found = claims.claims(ctx)
    method = [item.format(alpha=alpha) for item in TEXT["method"]["items"]]
    sections = [claims.section(ctx, found), *(module.section(ctx) for module in SECTIONS)]
    sections.append(Section("method", TEXT["method"]["title"], [method]))
    data = {name: frame for s in sections for name, frame in s.data.items()}
    data["comparisons"] = ctx.comparisons_frame()
    figures = {b.id: b.png for s in sections for b in s.blocks if isinstance(b, Figure)}
    tested = [c for c in found if c.checks]
    metrics = {
        "models": len(ctx.models),
        "missing_results": len(ctx.results.gaps),
        "claims_tested": len(tested),
        "claims_reproduced": sum(c.outcome == "reproduced" for c in tested),
    }
    return Report(f"rrt report: {ctx.results.experiment}", sections, data, figures, metrics)


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by rrt report: a rerun may replace it\n")
    tables = {f"{name}.csv": frame.write_csv().encode() for name, frame in report.data.items()}
    plots = {f"{name}.png": png for name, png in report.figures.items()}
    for folder, files in (("tables", tables), ("plots", plots)):
        with atomic_path(out / folder) as tmp:
            tmp.mkdir()
            for name, content in sorted(files.items()):
                (tmp / name).write_bytes(content)
    for form in ("md", "html"):
        write_text(out / f"report.{form}", render(report.title, report.sections, form))
