"""Throughput (paper sec. 3.8, app. K): each benchmark file's systems, their speed against
vanilla's, latencies, agreement with full-depth decoding and, where counted, the roofline; and
a figure of throughput and agreement against the early-exit threshold."""

from itertools import cycle
from pathlib import Path
from typing import Any

import polars as pl
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rrt.report import document, fmt
from rrt.report.context import Context
from rrt.report.document import Figure, Section, table
from rrt.report.figures import COLORS, new, png
from rrt.report.results import finite

ORDER = (
    "vanilla", "vanilla_compiled", "hf_continuous", "sequence_continuous", "recursive_sequence",
    "depthwise",
)  # fmt: skip
TEXT = document.TEXT["throughput"]
# header, field, digits (None: a share, in percent) or a format, scale
SYSTEM = (
    ("tokens/s", "tokens_per_s", ",.1f"), ("× vanilla", "ratio_to_vanilla", 2),
    ("latency p50 (s)", "latency_p50_s", 3), ("latency p99 (s)", "latency_p99_s", 3),
    ("TTFT p50 (s)", "ttft_p50_s", 3), ("mean exit loop", "mean_exit_loop", 2),
    ("agreement", "agreement", None), ("peak memory (MB)", "peak_mem_mb", 0),
)  # fmt: skip
ROOFLINE = (
    ("MFLOP/token", "flops_per_token", 2, 1e-6), ("KB/token", "bytes_per_token", 1, 1e-3),
    ("roofline tokens/s", "roofline_tokens_per_s", ",.0f"), ("bound", "roofline_bound", "s"),
    ("% of roofline", "roofline_fraction", None), ("decode step (ms)", "decode_step_ms", 2),
    ("decode GB/s", "decode_gb_per_s", 2), ("% of bandwidth", "decode_bandwidth_fraction", None),
    ("decode GFLOP/s", "decode_gflop_per_s", 1), ("% of matmul", "decode_compute_fraction", None),
)  # fmt: skip
# tables/throughput.csv: the numbers of both tables (not the bound, a word), and the error
NUMBERS = [key for _, key, *_ in SYSTEM + ROOFLINE if key != "roofline_bound"] + ["error"]


def _cells(values: dict[str, Any], spec: tuple[tuple, ...]) -> dict[str, str]:
    """Each field of a served system (every number finite: its contract's check) as ``spec``
    says: a share in percent, a number of ``digits``, or by a format (scaled first where given)."""
    cells = {}
    for header, key, digits, *scale in spec:
        value = values.get(key)
        if value is None or digits is None:
            cells[header] = fmt.pct(value)
        elif isinstance(digits, int):
            cells[header] = fmt.number(value * (scale or [1])[0], digits)
        else:
            cells[header] = format(value, digits)
    return cells


def _order(item: tuple[str, dict[str, Any]]) -> tuple:
    system, values = item
    if system.startswith("depthwise_exit"):
        return (len(ORDER), values.get("threshold") or 0.0, str(values.get("kv_fill")), system)
    return (ORDER.index(system) if system in ORDER else len(ORDER) + 1, 0.0, "", system)


def _label(system: str, values: dict[str, Any]) -> str:
    if not system.startswith("depthwise_exit"):
        return TEXT["systems"].get(system, system)
    threshold, kv = values.get("threshold"), values.get("kv_fill") or "?"
    shown = f"{threshold:.3g}" if threshold is not None else "?"
    return f"depth-wise, confidence exit ≥ {shown}, KV of exited tokens: {kv}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def section(ctx: Context) -> Section:
    section = Section("throughput", TEXT["title"])
    missing = [g for g in ctx.results.gaps if g.path.startswith("benchmarks/")]
    section.blocks += [f"Missing {gap.path}: {gap.reason}." for gap in missing]
    if not ctx.results.benchmarks and not missing:
        section.blocks.append(TEXT["none"])
    data = []
    for name, benchmark in ctx.results.benchmarks.items():
        systems = {system: s.to_dict() for system, s in benchmark.systems.items()}
        vanilla = systems.get("vanilla", {}).get("tokens_per_s")
        rows, roofline = [], []
        for system, values in sorted(systems.items(), key=_order):
            speed, failed = values.get("tokens_per_s"), values.get("error")
            values["ratio_to_vanilla"] = speed / vanilla if speed is not None and vanilla else None
            what = _label(system, values)
            what += f" (missing: this system failed: {failed})" if failed else ""
            rows.append({"system": system, "what it is": what} | _cells(values, SYSTEM))
            data.append(
                {"benchmark": name, "system": system}
                | {k: values.get(k) for k in ("threshold", "kv_fill", *NUMBERS)}
            )
            if None not in (values.get("flops_per_token"), values.get("bytes_per_token")):
                roofline.append({"system": system} | _cells(values, ROOFLINE))
        workload = ", ".join(f"{k} {v}" for k, v in sorted(benchmark.workload.items()))
        machine = [f"{k} {v}" for k, v in sorted(benchmark.hardware.items()) if k != "peaks"]
        served = Path(benchmark.model).name
        served = f" (serving {served})" if served else ""
        notes = [
            f"Workload: {workload or 'not recorded'}. "
            f"Hardware: {', '.join(machine) or 'not recorded'}.",
            TEXT["agreement"],
        ]
        caption = f"benchmarks/{name}.json"
        section.blocks.append(
            table(f"throughput-{_slug(name)}", f"Throughput: {caption}{served}", rows, notes)
        )
        if roofline and isinstance(peaks := benchmark.hardware.get("peaks"), dict):
            note = TEXT["roofline"].format(
                memory=finite(peaks.get("memory_gb_per_s")) or 0,
                matmul=finite(peaks.get("matmul_gflop_per_s")) or 0,
                by=peaks.get("measured_by", "not recorded"),
            )
            section.blocks.append(
                table(f"roofline-{_slug(name)}", f"Roofline: {caption}", roofline, [note])
            )
    if ctx.results.benchmarks:
        section.data["throughput"] = frame = pl.DataFrame(data, infer_schema_length=None)
        for name in ctx.results.benchmarks:
            if (image := figure(frame.filter(pl.col("benchmark") == name), name)) is not None:
                caption = TEXT["figure"].format(benchmark=name)
                section.blocks.append(Figure(f"throughput-{name}", caption, image))
    return section


def figure(rows: pl.DataFrame, benchmark: str) -> bytes | None:
    """Throughput and agreement against the early-exit threshold, of one benchmark's rows of
    tables/throughput.csv (None without early-exit systems)."""
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
    for color, mode in zip(cycle(COLORS), modes, strict=False):
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
    speeds = [v for v in rows["tokens_per_s"].to_list() if v]
    if speeds and max(speeds) > 10 * min(speeds):  # systems an order of magnitude apart
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("throughput (generated tokens/s, log scale)")
    else:
        ax.set(ylim=(0, None), ylabel="throughput (generated tokens/s)")
    ax.set_xlabel("early-exit confidence threshold (max softmax probability)")
    ax.set_title(f"Throughput and agreement against the exit threshold ({benchmark})")
    agreements = [a * 100 for a in exits["agreement"].to_list() if a is not None]
    bottom = max(0.0, min(agreements, default=0.0) - 5.0)
    right.set(ylabel="agreement with full-depth decoding (%)", ylim=(bottom, 100.5))
    figure.legend(handles=lines, loc="outside lower center", ncols=2, frameon=False)
    return png(figure)
