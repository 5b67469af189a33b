"""Training curves: the cross-entropy part of the loss against tokens seen, from each model's
steps.jsonl (tables/loss.csv), one panel per kind of training."""

import math
from itertools import cycle

import polars as pl

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import TEXT, Figure, Section
from rrt.report.figures import COLORS, new, png
from rrt.report.results import Name, parse_name

SERIES = ("loss", "ce", "kd", "learning_rate", "grad_norm")
SCHEMA = {"model": pl.String, "step": pl.Int64, "tokens": pl.Int64, "series": pl.String}
SCHEMA |= {"value": pl.Float64}
PANELS = {  # a kind of training -> its panel's title
    "uptraining": "Uptraining (recursive, relaxed, full-size)",
    "scratch": "From scratch (source, reduced-size)",
    "early exit": "Early-exit post-training",
}


def section(ctx: Context) -> Section:
    rows = []
    for name, training in sorted(ctx.results.trainings.items()):
        per_step = training.metrics.config.get("tokens_per_step")
        for step in training.steps:
            tokens = step.get("tokens")
            if not isinstance(tokens, int) and per_step:
                tokens = step["step"] * per_step
            for key, value in step.items():
                wanted = key in SERIES or key.startswith(("ce_loop", "sd_loop"))
                if wanted and isinstance(value, int | float) and math.isfinite(value):
                    rows.append((name, step["step"], tokens, key, float(value)))
    curves = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    caption = TEXT["training"]["caption"]
    if swept := sum(parse_name(n).sweep is not None for n in ctx.results.trainings):
        caption += f" The {swept} swept models' curves are in tables/loss.csv only."
    image = plot(curves)
    block = (
        Figure("loss", caption, image) if image else "No step logs (steps.jsonl) in the results."
    )
    return Section("training", TEXT["training"]["title"], [block], {"loss": curves})


def panel(name: Name) -> str | None:
    """The panel of a model's curve (a swept model's is in tables/loss.csv only)."""
    if name.sweep is not None:
        return None
    if name.early_exit:
        return "early exit"
    if name.uptrained:
        return "uptraining"
    return "scratch" if name.kind in ("full-size", "reduced") else None


def plot(curves: pl.DataFrame) -> bytes | None:
    """``curves``: tables/loss.csv (model, step, tokens, series, value)."""
    models = sorted(set(curves["model"]), key=lambda m: parse_name(m).order)
    chosen = {key: [m for m in models if panel(parse_name(m)) == key] for key in PANELS}
    chosen = {key: names for key, names in chosen.items() if names}
    if not chosen:
        return None
    figure, axes = new(5.0 * len(chosen) + 1.0, 4.6, len(chosen))
    unit_scale, unit = fmt.unit(max(curves["tokens"].drop_nulls(), default=1.0))
    for ax, (key, names) in zip(axes, chosen.items(), strict=True):
        series = ["ce", "ce_loop1"] if key == "early exit" else ["ce"]
        kept = []  # the smoothed curves after the first tenth of training (loss-only ones aside)
        for color, model in zip(cycle(COLORS), names, strict=False):
            rows = curves.filter(pl.col("model") == model)
            for s in series:
                part = rows.filter(pl.col("series") == s)
                logged = not part.is_empty()
                if not logged and s == "ce":  # a model that logs its loss only
                    part = rows.filter(pl.col("series") == "loss")
                if part.is_empty():
                    continue
                part = part.sort("step")
                x, y = [t / unit_scale for t in part["tokens"]], part["value"].to_list()
                ax.plot(x, y, color=color, alpha=0.18, linewidth=0.8)
                label = f"{model}: full depth" if key == "early exit" else model
                label = label if s == "ce" else f"{model}: exit after loop 1"
                smooth = _smooth(y)
                ax.plot(
                    x, smooth, color=color, linewidth=1.6, label=label,
                    linestyle="--" if s == "ce_loop1" else "-",
                )  # fmt: skip
                kept += smooth[len(smooth) // 10 :] if logged else []
        xlabel = f"tokens seen ({unit})" if unit else "tokens seen"
        ax.set(title=PANELS[key], xlabel=xlabel, ylabel="training cross-entropy (nats/token)")
        ax.legend(loc="upper right", fontsize=7)
        if kept:  # with a margin: the first steps' high loss would flatten the curves
            pad = (max(kept) - min(kept)) * 0.15 or 0.05
            ax.set_ylim(min(kept) - pad, max(kept) + pad)
    return png(figure)


def _smooth(values: list[float]) -> list[float]:
    """A trailing mean over about a twentieth of the run."""
    return pl.Series(values).rolling_mean(max(1, len(values) // 20), min_samples=1).to_list()
