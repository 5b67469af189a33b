"""The report's sections, in reading order, and writing them (atomically) to the report folder."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from rrt.io import atomic_path, write_text
from rrt.report import claims as claims_module
from rrt.report import plots
from rrt.report.analysis import Analysis
from rrt.report.document import Bullets, Figure, Section
from rrt.report.record import RECORD
from rrt.report.render import to_html, to_markdown
from rrt.report.results import Results, load, parse_name


@dataclass
class Report:
    title: str
    sections: list[Section]
    data: dict[str, pl.DataFrame]
    figures: dict[str, bytes]
    metrics: dict[str, Any] = field(default_factory=dict)


def compose(results_dir: str | Path, alpha: float) -> Report:
    results = load(results_dir)
    analysis = Analysis(results, alpha)
    models = analysis.models_tables()
    found = claims_module.claims(analysis)
    checks, checks_data = claims_module.checks_table(found, alpha)
    figures: dict[str, bytes] = {}
    sections = [
        Section(
            "summary",
            "Summary: the paper's claims in this run",
            [
                _headline(results, analysis),
                claims_module.plainly(found),
                claims_module.summary_table(found, alpha),
                checks,
            ],
        ),
        Section("models", "Models", [*models, *analysis.gaps_block()]),
        _size_section(analysis, figures),
        analysis.init_section(),
        analysis.rank_section(),
        analysis.kd_section(),
        _with_figure(analysis.exit_section(), _exit_figure(analysis), figures, "exits"),
        _training_section(analysis, figures),
        _throughput(analysis, figures),
        _provenance(results),
        _method(alpha),
    ]
    analysis.data["checks"] = checks_data
    analysis.data["comparisons"] = analysis.comparisons_frame()
    tested = [c for c in found if c.checks]
    metrics = {
        "models": len(analysis.model_names()),
        "missing_results": len(analysis.gaps),
        "claims_tested": len(tested),
        "claims_reproduced": sum(c.outcome == "reproduced" for c in tested),
    }
    return Report(f"rrt report: {results.experiment}", sections, analysis.data, figures, metrics)


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tables") as tmp:
        tmp.mkdir()
        for name, frame in sorted(report.data.items()):
            frame.write_csv(tmp / f"{name}.csv")
    with atomic_path(out / "plots") as tmp:
        tmp.mkdir()
        for name, png in sorted(report.figures.items()):
            (tmp / f"{name}.png").write_bytes(png)
    write_text(out / "report.md", to_markdown(report.title, report.sections))
    write_text(out / "report.html", to_html(report.title, report.sections))


# --- sections ------------------------------------------------------------------------------


def _headline(results: Results, analysis: Analysis) -> str:
    record = results.record
    config = f"config sha256 `{record['config_sha256'][:16]}`" if record else "no experiment record"
    tasks = [t for t, _, averaged in analysis.tasks() if averaged]
    return (
        f"Experiment **{results.experiment}** ({config}): {len(analysis.model_names())} models, "
        f"{len(analysis.gaps)} missing results. Accuracy is the suite average over "
        f"{len(tasks)} tasks; every verdict below is computed from the numbers in this report "
        f"(paired tests at alpha {analysis.alpha:g}), none is written in by hand."
    )


def _size_section(analysis: Analysis, figures: dict[str, bytes]) -> Section:
    section = Section("size", "Accuracy and perplexity against size (paper fig. 1)")
    frame = analysis.data["models"]
    perplexity, label = _perplexity(analysis)
    points = frame.select(
        "model", "kind", "non_embedding_params", "suite_average", "suite_average_stderr"
    ).with_columns(pl.Series("perplexity", [perplexity.get(m) for m in frame["model"]]))
    points = points.with_columns(pl.lit(label).alias("perplexity_measure"))
    analysis.data["size"] = points
    png = plots.parameters_plot(points.filter(pl.col("suite_average").is_not_null()), label)
    if png is None:
        section.blocks.append("No evaluated model to plot.")
        return section
    figures["size"] = png
    section.blocks.append(
        Figure(
            "size",
            "Suite average (error bars: stderr) and perplexity against non-embedding "
            "parameters, every evaluated model labelled. Paper fig. 1: recursive and relaxed "
            "models sit between the reduced-size and the full-size model.",
            png,
        )
    )
    return section


def _perplexity(analysis: Analysis) -> tuple[dict[str, float], str]:
    """The word perplexity task where the suite has one, else exp(held-out CE) per token."""
    tasks = [(t, m) for t, m, averaged in analysis.tasks() if not averaged and "perplexity" in m]
    out: dict[str, float] = {}
    if tasks:
        task, metric = tasks[0]
        for (name, loop), evaluation in analysis.results.evaluations.items():
            score = evaluation.scores.get(task)
            if loop is None and score is not None and score.value is not None:
                out[name] = score.value
        return out, f"{metric.replace('_', ' ')} ({task})"
    for name in analysis.data["models"]["model"]:
        ce = analysis.ce(name)
        if ce is not None:
            out[name] = math.exp(ce)
    return out, "held-out token perplexity (exp CE)"


def _exit_figure(analysis: Analysis) -> Figure | None:
    data = analysis.data.get("exits")
    if data is None:
        return None
    full = analysis.full_size()
    reference = (full.name, full.average) if full and full.average is not None else None
    before = []
    for name in analysis.exit_models():
        evaluation = analysis.evaluation(name.name.removesuffix(".ee"))
        if evaluation is not None and evaluation.average is not None:
            before.append((evaluation.name, evaluation.average, evaluation.average_stderr))
    png = plots.exits_plot(data, reference, before)
    if png is None:
        return None
    return Figure(
        "exits",
        "Left: suite average with every token leaving after loop b (error bars: stderr), the "
        "model before post-training (hollow, full depth only) and the full-size model "
        "(dashed). Right: held-out next-token accuracy at each loop's exit "
        "before (dashed) and after (solid) early-exit post-training.",
        png,
    )


def _with_figure(
    section: Section, figure: Figure | None, figures: dict[str, bytes], name: str
) -> Section:
    if figure is not None:
        figures[name] = figure.png
        section.blocks.append(figure)
    return section


SERIES = ("loss", "ce", "kd", "learning_rate", "grad_norm")


def _training_section(analysis: Analysis, figures: dict[str, bytes]) -> Section:
    section = Section("training", "Training curves")
    rows = []
    for name, training in sorted(analysis.results.trainings.items()):
        for step in training.steps:
            tokens = step.get("tokens")
            if not isinstance(tokens, int) and training.tokens_per_step:
                tokens = step["step"] * training.tokens_per_step
            for key, value in step.items():
                wanted = key in SERIES or key.startswith(("ce_loop", "sd_loop"))
                if wanted and isinstance(value, int | float) and math.isfinite(value):
                    rows.append((name, step["step"], tokens, key, float(value)))
    frame = pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "step": pl.Int64,
            "tokens": pl.Int64,
            "series": pl.String,
            "value": pl.Float64,
        },  # fmt: skip
        orient="row",
    )
    analysis.data["loss"] = frame
    png = plots.loss_plot(frame)
    if png is None:
        section.blocks.append("No step logs (steps.jsonl) in the results.")
        return section
    figures["loss"] = png
    swept = sum(parse_name(n).sweep is not None for n in analysis.results.trainings)
    caption = (
        "The cross-entropy part of the training loss against tokens seen (thin: every step; "
        "thick: trailing mean over a twentieth of the run), from each model's steps.jsonl. The y "
        "range leaves out the first tenth of training."
    )
    if swept:
        caption += f" The {swept} swept models' curves are in tables/loss.csv only."
    section.blocks.append(Figure("loss", caption, png))
    return section


def _throughput(analysis: Analysis, figures: dict[str, bytes]) -> Section:
    section = analysis.throughput_section()
    data = analysis.data.get("throughput")
    if data is None:
        return section
    for benchmark in analysis.results.benchmarks:
        rows = data.filter(pl.col("benchmark") == benchmark.name)
        png = plots.throughput_plot(rows, benchmark.name)
        if png is None:
            continue
        name = f"throughput-{benchmark.name}"
        figures[name] = png
        section.blocks.append(
            Figure(
                name,
                f"Throughput (left axis, solid) and agreement with full-depth decoding (right "
                f"axis, dotted) of confidence-based early exit against its threshold "
                f"(benchmarks/{benchmark.name}.json); dashed lines: no early exit.",
                png,
            )
        )
    return section


def _provenance(results: Results) -> Section:
    section = Section("provenance", "Provenance")
    record = results.record or {}
    workflow = record.get("workflow") or {}
    commits: Counter[str] = Counter()
    versions: dict[str, Counter[str]] = defaultdict(Counter)
    hosts: Counter[str] = Counter()
    hardware: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    sources = [(e.git_commit, e.versions, None, None) for e in results.evaluations.values()] + [
        (
            t.provenance.get("git_commit"),
            t.provenance.get("versions") or {},
            t.provenance.get("host"),
            t.provenance.get("hardware"),
        )
        for t in results.trainings.values()
        if t.provenance
    ]
    for commit, libs, host, machine in sources:
        commits[str(commit or "not recorded")] += 1
        for lib, version in libs.items():
            versions[lib][str(version)] += 1
        if host:
            hosts[str(host)] += 1
        if machine:
            hardware[_machine(machine)] += 1
    for evaluation in results.evaluations.values():
        devices[
            f"{evaluation.device or '?'}, {evaluation.dtype or '?'}, "
            f"{evaluation.threads or '?'} torch threads"
        ] += 1
    root = f"{results.root.parent.name}/{results.root.name}"
    items = [
        f"Experiment: **{results.experiment}**, results read from `{root}/` only.",
        "Config: "
        + (
            f"sha256 `{record['config_sha256']}` (the resolved config is in `{root}/{RECORD}`)"
            if record
            else f"unknown: `{root}/{RECORD}` (written when the workflow starts) is missing"
        ),
        "Git commit of the results: " + _counted(commits, "result files"),
        "Git commit of the workflow run: " + str(workflow.get("git_commit") or "not recorded"),
        "Library versions: "
        + "; ".join(f"{lib} {_counted(v, 'files')}" for lib, v in sorted(versions.items())),
        "Hardware of the workflow run: "
        + (_machine(workflow["hardware"]) if workflow.get("hardware") else "not recorded"),
        "Hardware of the training jobs: " + (_counted(hardware, "models") or "not recorded"),
        "Hosts of the training jobs: " + (_counted(hosts, "models") or "not recorded"),
        "Evaluations ran on: " + (_counted(devices, "evaluations") or "no evaluations"),
        "Report built with: "
        + ", ".join(f"{lib} {metadata.version(lib)}" for lib in ("polars", "matplotlib")),
    ]
    section.blocks.append(Bullets(items))
    return section


def _machine(info: dict[str, Any]) -> str:
    parts = [str(info.get("cpu", "?")), f"{info.get('cores', '?')} cores"]
    if info.get("memory_gb"):
        parts.append(f"{info['memory_gb']} GB")
    if info.get("gpus"):
        parts.append("GPUs: " + ", ".join(map(str, info["gpus"])))
    return ", ".join(parts)


def _counted(counter: Counter[str], what: str) -> str:
    if len(counter) == 1:
        return next(iter(counter))
    return "; ".join(f"{k} ({n} {what})" for k, n in sorted(counter.items()))


def _method(alpha: float) -> Section:
    return Section(
        "method",
        "How the numbers are computed",
        [
            Bullets(
                [
                    "Accuracy: lm-eval's headline metric of each task (acc_norm where the task "
                    "has it, acc for LAMBADA and WinoGrande), averaged over the suite's tasks; "
                    "the average's stderr adds the tasks' stderrs in quadrature.",
                    "Paired tests use the per-sample files (`eval/*.samples.jsonl`): items are "
                    "matched by document id and hash. One task: McNemar's exact test on the "
                    "items the two models disagree on. Suite average: a z test of the mean of "
                    "per-task differences, each task's variance from its per-item differences. "
                    "Perplexity tasks: Student's t on per-document log-likelihood. Where a "
                    "per-sample file is missing the test falls back to the unpaired stderrs and "
                    "says so in `tables/comparisons.csv`.",
                    f"Significance: two-sided p < {alpha:g} per comparison (report.alpha), with "
                    "no correction for the number of comparisons.",
                    "Held-out CE: cross-entropy in nats per token on the validation split, "
                    "measured at the end of training (each model's metrics.json); the "
                    "per-loop values at each exit likewise.",
                    "Matched tokens: the reduced-size baseline of the same depth whose training "
                    "tokens equal the model's uptraining tokens.",
                    "Data: `tables/*.csv` hold every table's and plot's numbers in long form "
                    "(models, scores, comparisons, checks, size, init, rank, kd, exits, loss, "
                    "throughput, gaps, as the experiment has them).",
                ]
            )
        ],
    )
