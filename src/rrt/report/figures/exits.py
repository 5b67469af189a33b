"""Accuracy at each early exit (tables/exits.csv), against the model before post-training and the
full-size model, and held-out next-token accuracy at each exit before and after post-training."""

import polars as pl

from rrt.report.context import Context
from rrt.report.document import TEXT, Figure, Section
from rrt.report.figures import new, png
from rrt.report.tables.exits import models

COLORS = ["#2ca02c", "#1f77b4", "#d62728", "#9467bd"]


def add(section: Section, ctx: Context) -> None:
    """The figure of the section's table (tables/exits.csv: model, exit_loop, measure, value,
    stderr), with each model before post-training and the full-size model, where it has one."""
    if (data := section.data.get("exits")) is None or data.is_empty():
        return
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
    section.blocks.append(Figure("exits", TEXT["exits"]["figure"], png(figure)))
