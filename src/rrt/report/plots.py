"""The report's figures (matplotlib, Agg, no pyplot state): accuracy and perplexity against
non-embedding parameters (the shape of the paper's fig. 1), accuracy per exit loop, the
uptraining loss curves, and throughput against the early-exit threshold.

PNG bytes are reproducible: the same data gives the same file (no software or date metadata;
fonts are matplotlib's own).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rrt.report.results import Name, parse_name

DPI = 110
STYLE = {
    "full-size": {"color": "#222222", "marker": "s", "label": "full-size"},
    "reduced": {"color": "#8c8c8c", "marker": "v", "label": "reduced-size (from scratch)"},
    "recursive": {"color": "#1f77b4", "marker": "o", "label": "recursive"},
    "relaxed": {"color": "#ff7f0e", "marker": "D", "label": "relaxed (LoRA)"},
    "early exit": {"color": "#2ca02c", "marker": "*", "label": "relaxed/recursive + early exit"},
    "other": {"color": "#9467bd", "marker": "X", "label": "other"},
}
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "rrt",
}


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.rcParams.update(RC)
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def group(name: Name) -> str:
    return "early exit" if name.early_exit else name.kind


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


def _scale(values: Iterable[float]) -> tuple[float, str]:
    top = max(values, default=1.0)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if top >= scale:
            return scale, unit
    return 1.0, ""


# --- accuracy and perplexity against parameters -------------------------------------------


def parameters_plot(points: pl.DataFrame, perplexity_label: str) -> bytes | None:
    """``points``: model, non_embedding_params, suite_average, suite_average_stderr, perplexity."""
    points = points.filter(pl.col("non_embedding_params").is_not_null())
    if points.is_empty():
        return None
    scale, unit = _scale(points["non_embedding_params"].to_list())
    names = [parse_name(m) for m in points["model"]]
    several = len({n.loops for n in names if n.loops}) > 1
    panels = [("suite_average", "suite average accuracy (%)", 100.0)]
    if points["perplexity"].is_not_null().any():
        panels.append(("perplexity", perplexity_label, 1.0))
    figure, axes = _figure(5.4 * len(panels) + 0.6, 5.0, len(panels))
    placements = []
    for ax, (column, ylabel, factor) in zip(axes, panels, strict=True):
        drawn: set[str] = set()
        labels = []
        for row, name in zip(points.iter_rows(named=True), names, strict=True):
            if row[column] is None:
                continue
            style = STYLE[group(name)]
            x = row["non_embedding_params"] / scale
            y = row[column] * factor
            err = row["suite_average_stderr"] if column == "suite_average" else None
            ax.errorbar(
                x, y, yerr=None if err is None else err * factor, fmt=style["marker"],
                color=style["color"], markersize=9 if style["marker"] == "*" else 6,
                capsize=2, label=None if group(name) in drawn else style["label"], zorder=3,
            )  # fmt: skip
            drawn.add(group(name))
            labels.append((x, y, short_label(name, several)))
        ax.set_xlabel(f"non-embedding parameters ({unit})" if unit else "non-embedding parameters")
        ax.set_ylabel(ylabel)
        _pad_limits(ax, labels)
        placements.append((ax, labels))
    axes[0].set_title("Accuracy against size (higher is better)")
    if len(axes) > 1:
        axes[1].set_title("Perplexity against size (lower is better)")
    handles, texts = axes[0].get_legend_handles_labels()
    order = sorted(range(len(texts)), key=lambda i: list(STYLE).index(_group_of(texts[i])))
    figure.legend(
        [handles[i] for i in order], [texts[i] for i in order], loc="outside lower center",
        ncols=min(5, len(order)), frameon=False,
    )  # fmt: skip
    figure.draw_without_rendering()  # the final layout, so label spacing is in real pixels
    for ax, labels in placements:
        _place_labels(ax, labels)
    return png(figure)


def _group_of(label: str) -> str:
    return next(k for k, v in STYLE.items() if v["label"] == label)


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
    """Labels to the right of their points. Labels that would overlap horizontally form a column
    right of the column's rightmost point, stacked in the order of their points' heights, with a
    leader line from each point whose label moved. Call once the layout is final (pixels)."""
    renderer = ax.figure.canvas.get_renderer()
    measured = []
    for x, y, text in labels:
        probe = ax.annotate(text, (x, y), xytext=(8, 0), textcoords="offset points", fontsize=8)
        box = probe.get_window_extent(renderer)
        probe.remove()
        measured.append(
            (box.x0, box.width, ax.transData.transform((x, y))[1], box.height, x, y, text)
        )
    columns: list[list[tuple]] = []
    anchors: list[float] = []
    for item in sorted(measured):
        if columns and item[0] < anchors[-1] + max(i[1] for i in columns[-1]):
            columns[-1].append(item)
            anchors[-1] = max(anchors[-1], item[0])
        else:
            columns.append([item])
            anchors.append(item[0])
    frame = ax.get_window_extent(renderer)
    for column, anchor in zip(columns, anchors, strict=True):
        column.sort(key=lambda item: (item[2], item[6]))
        spread = _spread(column, frame.y0, frame.y1)
        for y, (x0, _, py, _, x, y0, text) in zip(spread, column, strict=True):
            dx = 8 + (anchor - x0) * 72.0 / DPI + (10 if len(column) > 1 else 0)
            dy = (y - py) * 72.0 / DPI
            moved = abs(dy) > 2 or dx > 9
            ax.annotate(
                text, (x, y0), xytext=(dx, dy), textcoords="offset points", va="center",
                fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.5, "shrinkA": 0,
                            "shrinkB": 4} if moved else None,
            ).set_in_layout(False)  # fmt: skip


def _spread(column: list[tuple], low: float, high: float) -> list[float]:
    """Label centres (pixels) as near their points as they can be without overlapping: clusters
    of overlapping labels merge and centre on their points' mean, inside [low, high]."""
    clusters = [[i] for i in range(len(column))]
    heights = [item[3] + 1.0 for item in column]

    def place(cluster: list[int]) -> tuple[float, float]:  # bottom and top of a cluster
        size = sum(heights[i] for i in cluster)
        centre = sum(column[i][2] for i in cluster) / len(cluster)
        bottom = min(max(centre - size / 2, low), high - size)
        return bottom, bottom + size

    merged = True
    while merged:
        merged = False
        for k in range(len(clusters) - 1):
            if place(clusters[k])[1] > place(clusters[k + 1])[0]:
                clusters[k : k + 2] = [clusters[k] + clusters[k + 1]]
                merged = True
                break
    out = []
    for cluster in clusters:
        y = place(cluster)[0]
        for i in cluster:
            out.append(y + heights[i] / 2)
            y += heights[i]
    return out


# --- early exit ----------------------------------------------------------------------------


def exits_plot(
    data: pl.DataFrame,
    reference: tuple[str, float] | None,
    before: list[tuple[str, float, float | None]],
) -> bytes | None:
    """``data``: tables/exits.csv (model, exit_loop, measure, value, stderr); ``reference``: the
    full-size model's suite average; ``before``: each model's before post-training."""
    if data.is_empty():
        return None
    average = data.filter(pl.col("measure") == "average")
    held_out = data.filter(pl.col("measure").str.starts_with("held-out acc"))
    panels = [p for p in (average, held_out) if not p.is_empty()]
    figure, axes = _figure(5.2 * len(panels) + 0.4, 4.0, len(panels))
    models = sorted(set(data["model"].to_list()))
    colors = ["#2ca02c", "#1f77b4", "#d62728", "#9467bd"]
    ax_iter = iter(axes)
    loops = sorted(set(data["exit_loop"].to_list()))
    if not average.is_empty():
        ax = next(ax_iter)
        for i, model in enumerate(models):
            rows = average.filter(pl.col("model") == model).sort("exit_loop")
            ax.errorbar(
                rows["exit_loop"].to_list(), [v * 100 for v in rows["value"].to_list()],
                yerr=[(s or 0) * 100 for s in rows["stderr"].to_list()], marker="o",
                color=colors[i % len(colors)], capsize=3, label=f"{model} (after post-training)",
            )  # fmt: skip
        for i, (model, value, stderr) in enumerate(before):
            ax.errorbar(
                [max(loops) + 0.04], [value * 100], yerr=[(stderr or 0) * 100], marker="o",
                markerfacecolor="white", color=colors[i % len(colors)], capsize=3, linestyle="",
                label=f"{model} (before post-training)",
            )  # fmt: skip
        if reference is not None:
            ax.axhline(
                reference[1] * 100, color="#222222", linestyle="--", linewidth=1,
                label=f"{reference[0]} (full-size)",
            )  # fmt: skip
        ax.set_xlabel("exit after loop")
        ax.set_ylabel("suite average accuracy (%)")
        ax.set_title("Few-shot accuracy at each exit")
        ax.set_xticks(loops)
        ax.legend(loc="best")
    if not held_out.is_empty():
        ax = next(ax_iter)
        for i, model in enumerate(models):
            for stage, style in (("before", "--"), ("after", "-")):
                rows = held_out.filter(
                    (pl.col("model") == model) & pl.col("measure").str.contains(f"({stage})")
                ).sort("exit_loop")
                if rows.is_empty():
                    continue
                ax.plot(
                    rows["exit_loop"].to_list(), [v * 100 for v in rows["value"].to_list()],
                    linestyle=style, marker="o", color=colors[i % len(colors)],
                    label=f"{model.removesuffix('.ee')}: {stage} post-training",
                )  # fmt: skip
        ax.set_xlabel("exit after loop")
        ax.set_ylabel("held-out next-token accuracy (%)")
        ax.set_title("Next-token accuracy at each exit")
        ax.set_xticks(loops)
        ax.legend(loc="best")
    return png(figure)


# --- loss curves ---------------------------------------------------------------------------

CURVE_PANELS = (
    ("uptraining", "Uptraining (recursive, relaxed, full-size)"),
    ("scratch", "From scratch (source, reduced-size)"),
    ("early exit", "Early-exit post-training"),
)


def curve_panel(name: Name) -> str | None:
    if name.sweep is not None:
        return None
    if name.early_exit:
        return "early exit"
    if name.uptrained:
        return "uptraining"
    if name.kind in ("full-size", "reduced"):
        return "scratch"
    return None


def loss_plot(curves: pl.DataFrame) -> bytes | None:
    """``curves``: tables/loss.csv (model, step, tokens, series, value)."""
    if curves.is_empty():
        return None
    chosen = []
    for key, title in CURVE_PANELS:
        models = sorted(
            {m for m in curves["model"].to_list() if curve_panel(parse_name(m)) == key},
            key=lambda m: parse_name(m).order,
        )
        if models:
            chosen.append((key, title, models))
    if not chosen:
        return None
    figure, axes = _figure(5.0 * len(chosen) + 1.0, 4.6, len(chosen))
    scale, unit = _scale(curves["tokens"].drop_nulls().to_list())
    for ax, (key, title, models) in zip(axes, chosen, strict=True):
        palette = _palette(len(models))
        for color, model in zip(palette, models, strict=True):
            rows = curves.filter(pl.col("model") == model)
            series = ["ce", "ce_loop1"] if key == "early exit" else ["ce"]
            for s in series:
                part = rows.filter(pl.col("series") == s).sort("step")
                if part.is_empty():
                    part = rows.filter(pl.col("series") == "loss").sort("step")
                    if s != "ce" or part.is_empty():
                        continue
                x = [t / scale for t in part["tokens"].to_list()]
                y = part["value"].to_list()
                ax.plot(x, y, color=color, alpha=0.18, linewidth=0.8)
                label = model if s == "ce" else f"{model}: exit after loop 1"
                if key == "early exit" and s == "ce":
                    label = f"{model}: full depth"
                ax.plot(
                    x, _smooth(y), color=color, linewidth=1.6, label=label,
                    linestyle="--" if s == "ce_loop1" else "-",
                )  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel(f"tokens seen ({unit})" if unit else "tokens seen")
        ax.set_ylabel("training cross-entropy (nats/token)")
        ax.legend(loc="upper right", fontsize=7)
        plotted = pl.col("series").is_in(["ce", "ce_loop1"] if key == "early exit" else ["ce"])
        _clip_start(ax, curves.filter(pl.col("model").is_in(models) & plotted))
    return png(figure)


def _clip_start(ax: Axes, rows: pl.DataFrame) -> None:
    """Keep the first steps' high loss from flattening the curves: the y range is the smoothed
    curves' range after the first tenth of training, with a margin."""
    values = []
    for _, part in rows.group_by(["model", "series"], maintain_order=True):
        part = part.sort("step")
        smooth = _smooth(part["value"].to_list())
        values += smooth[len(smooth) // 10 :]
    if values:
        low, high = min(values), max(values)
        pad = (high - low) * 0.15 or 0.05
        ax.set_ylim(low - pad, high + pad)


def _smooth(values: list[float], window: int | None = None) -> list[float]:
    """A trailing mean over about a twentieth of the run."""
    window = window or max(1, len(values) // 20)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _palette(n: int) -> list[str]:
    base = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ]  # fmt: skip
    return [base[i % len(base)] for i in range(n)]


# --- throughput ----------------------------------------------------------------------------


def throughput_plot(rows: pl.DataFrame, benchmark: str) -> bytes | None:
    """``rows``: tables/throughput.csv of one benchmark file."""
    exits = rows.filter(
        pl.col("threshold").is_not_null() & pl.col("system").str.starts_with("depthwise_exit")
    )
    if exits.is_empty():
        return None
    figure, (ax,) = _figure(7.2, 4.4)
    right = ax.twinx()
    right.grid(False)
    modes = sorted({str(m) for m in exits["kv_mode"].to_list()})
    palette = _palette(len(modes))
    lines: list[Any] = []
    for color, mode in zip(palette, modes, strict=False):
        part = exits.filter(pl.col("kv_mode").cast(pl.String) == mode).sort("threshold")
        x = part["threshold"].to_list()
        lines += ax.plot(x, part["tokens_per_s"].to_list(), marker="o", color=color,
                         label=f"tokens/s, KV of exited tokens: {mode}")  # fmt: skip
        agreement = [None if a is None else a * 100 for a in part["agreement"].to_list()]
        lines += right.plot(x, agreement, marker="s", linestyle=":", color=color,
                            label=f"agreement, KV: {mode}")  # fmt: skip
    for system, style, color in (("vanilla", "--", "#222222"), ("depthwise", "-.", "#8c8c8c")):
        value = rows.filter(pl.col("system") == system)["tokens_per_s"].to_list()
        if value and value[0] is not None:
            lines.append(ax.axhline(value[0], linestyle=style, color=color, linewidth=1,
                                    label=f"{system} (no early exit): tokens/s"))  # fmt: skip
    ax.set_xlabel("early-exit confidence threshold (max softmax probability)")
    speeds = [v for v in rows["tokens_per_s"].to_list() if v]
    if speeds and max(speeds) > 10 * min(speeds):  # systems an order of magnitude apart
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("throughput (generated tokens/s, log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("throughput (generated tokens/s)")
    right.set_ylabel("agreement with full-depth decoding (%)")
    agreements = [a * 100 for a in exits["agreement"].to_list() if a is not None]
    right.set_ylim(max(0.0, min(agreements, default=0.0) - 5.0), 100.5)
    ax.set_title(f"Throughput and agreement against the exit threshold ({benchmark})")
    figure.legend(handles=lines, loc="outside lower center", ncols=2, frameon=False)
    return png(figure)
