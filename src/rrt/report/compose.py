"""The report's sections in reading order, each from its table and figure modules, and writing
them (atomically) to the report folder: report.md, report.html, tables/*.csv and plots/*.png."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rrt.io import MARKER, atomic_path, write_text
from rrt.report.context import Context
from rrt.report.document import Bullets, Figure, Section, render
from rrt.report.figures import exits as exits_figure
from rrt.report.figures import loss, size
from rrt.report.figures import throughput as throughput_figure
from rrt.report.results import load
from rrt.report.tables import claims, exits, init, kd, models, provenance, rank, throughput
from rrt.report.tables import uptraining as before_after


@dataclass
class Report:
    """A compiled report: its sections, and the files written beside report.md and .html."""

    title: str
    sections: list[Section]
    data: dict[str, pl.DataFrame]  # tables/NAME.csv
    figures: dict[str, bytes]  # plots/NAME.png
    metrics: dict[str, Any] = field(default_factory=dict)


def compose(results_dir: str | Path, alpha: float) -> Report:
    """The report of one results folder; nothing is written (``write`` does)."""
    ctx = Context(load(results_dir), alpha)
    found = claims.claims(ctx)
    exit_section, throughput_section = exits.section(ctx), throughput.section(ctx)
    exits_figure.add(exit_section, ctx)
    throughput_figure.add(throughput_section)
    sections = [
        claims.section(ctx, found),
        models.section(ctx),
        size.section(ctx),
        init.section(ctx),
        rank.section(ctx),
        before_after.section(ctx),
        kd.section(ctx),
        exit_section,
        loss.section(ctx),
        throughput_section,
        provenance.section(ctx.results),
        method(alpha),
    ]
    data = {name: frame for s in sections for name, frame in s.data.items()}
    data["comparisons"] = ctx.comparisons_frame()
    figures = {b.id: b.png for s in sections for b in s.blocks if isinstance(b, Figure)}
    tested = [c for c in found if c.checks]
    metrics = {
        "models": len(ctx.models),
        "missing_results": len(ctx.gaps),
        "claims_tested": len(tested),
        "claims_reproduced": sum(c.outcome == "reproduced" for c in tested),
    }
    return Report(f"rrt report: {ctx.results.experiment}", sections, data, figures, metrics)


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by rrt report: a rerun may replace it\n")
    with atomic_path(out / "tables") as tmp:
        tmp.mkdir()
        for name, frame in sorted(report.data.items()):
            frame.write_csv(tmp / f"{name}.csv")
    with atomic_path(out / "plots") as tmp:
        tmp.mkdir()
        for name, png in sorted(report.figures.items()):
            (tmp / f"{name}.png").write_bytes(png)
    for form in ("md", "html"):
        write_text(out / f"report.{form}", render(report.title, report.sections, form))


def method(alpha: float) -> Section:
    """How the numbers are computed, in words."""
    items = [
        "Accuracy: lm-eval's headline metric of each task (acc_norm where the task has it, acc for "
        "LAMBADA and WinoGrande), averaged over the suite's tasks; the average's stderr adds the "
        "tasks' stderrs in quadrature.",
        "Paired tests use the per-sample files (`eval/*.samples.jsonl`): items are matched by "
        "document id and hash. One task: McNemar's exact test on the items the two models "
        "disagree on. Suite average: a z test of the mean of per-task differences, each task's "
        "variance from its per-item differences. Perplexity tasks: Student's t on per-document "
        "log-likelihood. Where a per-sample file is missing the test falls back to the unpaired "
        "stderrs and says so in `tables/comparisons.csv`.",
        f"Significance: two-sided p < {alpha:g} per comparison (report.alpha), with no correction "
        "for the number of comparisons.",
        "Held-out CE: cross-entropy in nats per token on the validation split, measured at the "
        "end of training (each model's metrics.json); the per-loop values at each exit likewise.",
        "Matched tokens: the reduced-size baseline of the same depth whose training tokens equal "
        "the model's uptraining tokens.",
        "Data: `tables/*.csv` hold every table's and plot's numbers in long form (models, scores, "
        "comparisons, checks, size, init, rank, kd, exits, loss, throughput, gaps, as the "
        "experiment has them).",
    ]
    return Section("method", "How the numbers are computed", [Bullets(items)])
