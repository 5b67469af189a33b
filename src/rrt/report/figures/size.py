"""Accuracy and perplexity against non-embedding parameters, every evaluated model labelled (the
shape of the paper's fig. 1), and its data (tables/size.csv)."""

import math

import polars as pl
from adjustText import adjust_text
from matplotlib.axes import Axes

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import TEXT, Figure, Section, frame
from rrt.report.figures import new, png
from rrt.report.results import Name, parse_name

COLUMNS = (
    "model", "kind", "non_embedding_params", "suite_average", "suite_average_stderr",
    "perplexity", "perplexity_measure",
)  # fmt: skip
STYLE = {  # colour, marker, legend label of each group
    "full-size": ("#222222", "s", "full-size"),
    "reduced": ("#8c8c8c", "v", "reduced-size (from scratch)"),
    "recursive": ("#1f77b4", "o", "recursive"),
    "relaxed": ("#ff7f0e", "D", "relaxed (LoRA)"),
    "early exit": ("#2ca02c", "*", "relaxed/recursive + early exit"),
    "other": ("#9467bd", "X", "other"),
}
LEGEND = [label for _, _, label in STYLE.values()]
TITLES = {
    "suite_average": "Accuracy against size (higher is better)",
    "perplexity": "Perplexity against size (lower is better)",
}


def section(ctx: Context) -> Section:
    """Every model's size, suite average and perplexity: the word perplexity task where the suite
    has one, else exp(held-out CE) per token."""
    if task := ctx.perplexity_task:
        label = f"{task[1].replace('_', ' ')} ({task[0]})"
    else:
        label = "held-out token perplexity (exp CE)"
    rows = []
    for row in map(ctx.facts, ctx.models):
        ppl = ctx.perplexity(ctx.evaluation(row["model"]))
        if not task and row["held_out_ce"] is not None:
            ppl = math.exp(row["held_out_ce"])
        rows.append(row | {"perplexity": ppl, "perplexity_measure": label})
    data = frame(rows, COLUMNS)
    image = plot(data.filter(pl.col("suite_average").is_not_null()), label)
    block = (
        Figure("size", TEXT["size"]["caption"], image) if image else "No evaluated model to plot."
    )
    return Section("size", TEXT["size"]["title"], [block], {"size": data})


def short_label(name: Name, several_loops: bool) -> str:
    loops = f"B{name.loops} " if several_loops and name.loops else ""
    if name.kind == "full-size":
        return "source, uptrained" if name.uptrained else "source"
    if name.kind == "reduced":
        return f"reduced {loops}({name.budget} tokens)"
    if name.kind == "recursive":
        text = f"{loops}{name.init}"
    elif name.kind == "relaxed":
        text = f"{loops}{name.init} r={name.rank}"
    else:
        return name.name
    return text + (" + exit" if name.early_exit else "")


def plot(points: pl.DataFrame, perplexity_label: str) -> bytes | None:
    """``points``: model, non_embedding_params, suite_average, suite_average_stderr, perplexity."""
    points = points.filter(pl.col("non_embedding_params").is_not_null())
    if points.is_empty():
        return None
    unit_scale, unit = fmt.unit(max(points["non_embedding_params"], default=1.0))
    names = [parse_name(m) for m in points["model"]]
    several = len({n.loops for n in names if n.loops}) > 1
    panels = [("suite_average", "suite average accuracy (%)", 100.0)]
    if points["perplexity"].is_not_null().any():
        panels.append(("perplexity", perplexity_label, 1.0))
    figure, axes = new(5.4 * len(panels) + 0.6, 5.0, len(panels))
    placements = []
    for ax, (column, ylabel, factor) in zip(axes, panels, strict=True):
        drawn: set[str] = set()
        labels = []
        for row, name in zip(points.iter_rows(named=True), names, strict=True):
            if row[column] is None:
                continue
            color, marker, legend = STYLE[group := "early exit" if name.early_exit else name.kind]
            x, y = row["non_embedding_params"] / unit_scale, row[column] * factor
            err = row["suite_average_stderr"] if column == "suite_average" else None
            ax.errorbar(
                x, y, yerr=None if err is None else err * factor, fmt=marker, color=color,
                markersize=9 if marker == "*" else 6, capsize=2,
                label=None if group in drawn else legend, zorder=3,
            )  # fmt: skip
            drawn.add(group)
            labels.append((x, y, short_label(name, several)))
        xlabel = f"non-embedding parameters ({unit})" if unit else "non-embedding parameters"
        ax.set(xlabel=xlabel, ylabel=ylabel, title=TITLES[column])
        _pad_limits(ax, labels)
        placements.append((ax, labels))
    handles = zip(*axes[0].get_legend_handles_labels(), strict=True)
    pairs = sorted(handles, key=lambda pair: LEGEND.index(pair[1]))  # in the order of STYLE
    legend = {"loc": "outside lower center", "ncols": min(5, len(pairs)), "frameon": False}
    figure.legend(*zip(*pairs, strict=True), **legend)
    figure.draw_without_rendering()  # the final layout, so label spacing is in real pixels
    for ax, labels in placements:
        _place_labels(ax, labels)
    return png(figure)


def _pad_limits(ax: Axes, labels: list[tuple[float, float, str]]) -> None:
    """Room right of the points for their labels, and a margin above and below."""
    if not labels:
        return
    xs = [x for x, _, _ in labels]
    ys = [y for _, y, _ in labels]
    span_x = (max(xs) - min(xs)) or max(abs(max(xs)), 1e-9)
    span_y = (max(ys) - min(ys)) or max(abs(max(ys)), 1e-9)
    ax.set_xlim(min(xs) - 0.08 * span_x, max(xs) + 0.45 * span_x)
    ax.set_ylim(min(ys) - 0.12 * span_y, max(ys) + 0.12 * span_y)


def _place_labels(ax: Axes, labels: list[tuple[float, float, str]]) -> None:
    """Labels right of their points, moved apart where they would overlap (adjustText), with a
    leader line from each point whose label moved. Call once the layout is final."""
    texts = [ax.text(x, y, f"  {text}", fontsize=8, va="center") for x, y, text in labels]
    adjust_text(
        texts,
        x=[x for x, _, _ in labels],
        y=[y for _, y, _ in labels],
        ax=ax,
        only_move={"text": "y", "static": "y", "explode": "y", "pull": "y"},
        arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.5},
        iter_lim=200,  # not adjustText's default of a second's work: the same bytes each time
    )
