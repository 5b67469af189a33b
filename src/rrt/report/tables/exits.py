"""Early exit (paper sec. 3.7): each early-exit model with every token leaving after loop b, its
accuracy against full depth and the held-out CE and accuracy at each exit before and after
post-training, and their figure."""

import polars as pl

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import TEXT, Figure, Section, frame, one_table
from rrt.report.figures import new, png
from rrt.report.results import Name

DATA = ["model", "exit_loop", "measure", "metric", "value", "stderr"]
CE, ACC = "held-out CE before → after post-training", "next-token acc before → after"
COLORS = ["#2ca02c", "#1f77b4", "#d62728", "#9467bd"]


def models(ctx: Context) -> list[Name]:
    """The early-exit models (post-trained), in the report's order."""
    return [n for n in ctx.models if n.early_exit]


def section(ctx: Context) -> Section:
    rows, data = [], []
    for name in models(ctx):
        full, loops = ctx.evaluation(name.name), name.loops or 1
        trainings = [ctx.training(name.name.removesuffix(".ee")), ctx.training(name.name)]
        for loop in range(1, loops + 1):
            at = None if loop == loops else loop  # the last loop's exit is the full depth
            evaluation = ctx.evaluation(name.name, at)
            result = ctx.compare(evaluation, full, "vs full depth") if at is not None else None
            ce_before, ce_after = ((t.exits.get(loop) or {}) if t else {} for t in trainings)
            average = (evaluation.average, evaluation.average_stderr) if evaluation else (None,)
            rows.append(
                {"model": name.name, "exit after loop": str(loop)}
                | ctx.task_cells(evaluation, averaged=True)
                | ctx.task_cells(evaluation, averaged=False)
                | {
                    "average": fmt.pct(*average),
                    "Δ avg vs full depth": fmt.delta(result, ctx.alpha),
                    CE: f"{fmt.number(ce_before.get('ce'))} → {fmt.number(ce_after.get('ce'))}",
                    ACC: f"{fmt.pct(ce_before.get('acc'))} → {fmt.pct(ce_after.get('acc'))}",
                    "status": ctx.status(name.name, at),
                }
            )
            scores = evaluation.scores.values() if evaluation else []
            measures = [(s.task, s.metric, s.value, s.stderr) for s in scores]
            if evaluation is not None:
                measures.append(("average", "suite average", *average))
            for stage, values in (("before", ce_before), ("after", ce_after)):
                measures += [(f"held-out {m} ({stage})", m, v, None) for m, v in values.items()]
            data += [dict(zip(DATA, (name.name, loop, *m), strict=True)) for m in measures]
    section = one_table("exits", table := frame(data, DATA), rows, alpha=ctx.alpha)
    if data:
        section.blocks.append(Figure("exits", TEXT["exits"]["figure"], figure(ctx, table)))
    return section


def figure(ctx: Context, data: pl.DataFrame) -> bytes:
    """Suite average at each exit (tables/exits.csv), each model before post-training and the
    full-size model; held-out next-token accuracy at each exit before and after post-training."""
    full = ctx.full_size()
    before = [ctx.evaluation(n.name.removesuffix(".ee")) for n in models(ctx)]
    average = data.filter(pl.col("measure") == "average")
    held_out = data.filter(pl.col("measure").str.starts_with("held-out acc"))
    panels = [p for p in (average, held_out) if not p.is_empty()]
    figure, axes = new(5.2 * len(panels) + 0.4, 4.0, len(panels))
    names = sorted(set(data["model"].to_list()))
    ax_iter = iter(axes)
    loops = sorted(set(data["exit_loop"].to_list()))
    if not average.is_empty():
        ax = next(ax_iter)
        for i, model in enumerate(names):
            rows = average.filter(pl.col("model") == model).sort("exit_loop")
            ax.errorbar(
                rows["exit_loop"].to_list(), (rows["value"] * 100).to_list(),
                yerr=(rows["stderr"].fill_null(0) * 100).to_list(), marker="o",
                color=COLORS[i % len(COLORS)], capsize=3, label=f"{model} (after post-training)",
            )  # fmt: skip
        for i, e in enumerate(e for e in before if e and e.average is not None):
            ax.errorbar(
                [max(loops) + 0.04], [e.average * 100], yerr=[(e.average_stderr or 0) * 100],
                marker="o", markerfacecolor="white", color=COLORS[i % len(COLORS)], capsize=3,
                linestyle="", label=f"{e.name} (before post-training)",
            )  # fmt: skip
        if full and full.average is not None:
            ax.axhline(
                full.average * 100, color="#222222", linestyle="--", linewidth=1,
                label=f"{full.name} (full-size)",
            )  # fmt: skip
        ax.set(xlabel="exit after loop", ylabel="suite average accuracy (%)", xticks=loops)
        ax.set_title("Few-shot accuracy at each exit")
        ax.legend(loc="best")
    if not held_out.is_empty():
        ax = next(ax_iter)
        for i, model in enumerate(names):
            for stage, style in (("before", "--"), ("after", "-")):
                rows = held_out.filter(
                    (pl.col("model") == model) & pl.col("measure").str.contains(f"({stage})")
                ).sort("exit_loop")
                if rows.is_empty():
                    continue
                ax.plot(
                    rows["exit_loop"].to_list(), (rows["value"] * 100).to_list(),
                    linestyle=style, marker="o", color=COLORS[i % len(COLORS)],
                    label=f"{model.removesuffix('.ee')}: {stage} post-training",
                )  # fmt: skip
        ax.set(xlabel="exit after loop", ylabel="held-out next-token accuracy (%)", xticks=loops)
        ax.set_title("Next-token accuracy at each exit")
        ax.legend(loc="best")
    return png(figure)
