"""Throughput and agreement with full-depth decoding against the early-exit threshold, one figure
per benchmark file (from tables/throughput.csv)."""

from typing import Any

import polars as pl
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rrt.report.document import TEXT, Figure, Section
from rrt.report.figures import new, palette, png


def add(section: Section) -> None:
    """A figure for each benchmark of the section's table that has early-exit systems."""
    data = section.data.get("throughput")
    for benchmark in data["benchmark"].unique(maintain_order=True) if data is not None else []:
        image = plot(data.filter(pl.col("benchmark") == benchmark), benchmark)
        if image is not None:
            caption = TEXT["throughput"]["figure"].format(benchmark=benchmark)
            section.blocks.append(Figure(f"throughput-{benchmark}", caption, image))


def plot(rows: pl.DataFrame, benchmark: str) -> bytes | None:
    """``rows``: tables/throughput.csv of one benchmark file."""
    exits = rows.filter(
        pl.col("threshold").is_not_null() & pl.col("system").str.starts_with("depthwise_exit")
    )
    if exits.is_empty():
        return None
    figure, (ax,) = new(7.2, 4.4)
    right = ax.twinx()
    right.grid(False)
    modes = sorted({str(m) for m in exits["kv_fill"].to_list()})
    lines: list[Any] = []
    for color, mode in zip(palette(len(modes)), modes, strict=False):
        part = exits.filter(pl.col("kv_fill").cast(pl.String) == mode).sort("threshold")
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
