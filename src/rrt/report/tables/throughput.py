"""Throughput (paper sec. 3.8, app. K): each benchmark file's systems, their speed against
vanilla's, latencies, agreement with full-depth decoding and, where counted, the roofline."""

from typing import Any

import polars as pl

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import Section, Table, table
from rrt.report.fmt import finite
from rrt.report.results import Benchmark

ORDER = ("vanilla", "hf_continuous", "sequence_continuous", "recursive_sequence", "depthwise")
LABELS = {
    "vanilla": "full-size, static batching (HF generate)",
    "hf_continuous": "full-size, HF continuous batching",
    "sequence_continuous": "full-size, continuous sequence-wise",
    "recursive_sequence": "recursive, continuous sequence-wise",
    "depthwise": "recursive, continuous depth-wise",
    "simulated": "depth-wise, simulated (paper's oracle)",
}
NUMBERS = (
    "latency_p50_s", "latency_p99_s", "ttft_p50_s", "mean_exit_loop", "agreement", "peak_mem_mb",
    "flops_per_token", "bytes_per_token", "roofline_tokens_per_s", "roofline_fraction",
    "decode_step_ms", "decode_gb_per_s", "decode_bandwidth_fraction", "decode_gflop_per_s",
    "decode_compute_fraction",
)  # fmt: skip
# header, field, digits (None: a share, in percent)
SYSTEM = (
    ("latency p50 (s)", "latency_p50_s", 3), ("latency p99 (s)", "latency_p99_s", 3),
    ("TTFT p50 (s)", "ttft_p50_s", 3), ("mean exit loop", "mean_exit_loop", 2),
    ("agreement", "agreement", None), ("peak memory (MB)", "peak_mem_mb", 0),
)  # fmt: skip
ROOFLINE = (
    ("% of roofline", "roofline_fraction", None), ("decode step (ms)", "decode_step_ms", 2),
    ("decode GB/s", "decode_gb_per_s", 2), ("% of bandwidth", "decode_bandwidth_fraction", None),
    ("decode GFLOP/s", "decode_gflop_per_s", 1), ("% of matmul", "decode_compute_fraction", None),
)  # fmt: skip


def _cells(values: dict[str, Any], spec: tuple[tuple[str, str, int | None], ...]) -> dict[str, str]:
    shown = {}
    for header, key, digits in spec:
        value = finite(values.get(key))
        shown[header] = fmt.pct(value) if digits is None else fmt.number(value, digits)
    return shown


def _order(item: tuple[str, dict[str, Any]]) -> tuple:
    system, values = item
    if system in ORDER:
        return (ORDER.index(system), 0.0, "", system)
    if system.startswith("depthwise_exit"):
        return (
            len(ORDER),
            finite(values.get("threshold")) or 0.0,
            str(values.get("kv_fill")),
            system,
        )
    return (len(ORDER) + 1, 0.0, "", system)


def _kv(values: dict[str, Any]) -> str | None:
    """How an early-exit system computed exited tokens' deeper KV (ride, propagate)."""
    kv = values.get("kv_fill")
    return str(kv) if kv is not None else None


def _label(system: str, values: dict[str, Any]) -> str:
    if system.startswith("depthwise_exit") and system not in LABELS:
        threshold = finite(values.get("threshold"))
        shown = f"{threshold:.3g}" if threshold is not None else "?"
        return f"depth-wise, confidence exit ≥ {shown}, KV of exited tokens: {_kv(values) or '?'}"
    return LABELS.get(system, system)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def section(ctx: Context) -> Section:
    section = Section("throughput", "Throughput (paper sec. 3.8, app. K)")
    missing = [g for g in ctx.gaps if g.path.startswith("benchmarks/")]
    section.blocks += [f"Missing {gap.path}: {gap.reason}." for gap in missing]
    if not ctx.results.benchmarks:
        if not missing:
            section.blocks.append(
                "No throughput results: the results folder holds no benchmarks/*.json "
                "(written by rrt benchmark)."
            )
        return section
    data = []
    for benchmark in ctx.results.benchmarks:
        vanilla = (benchmark.systems.get("vanilla") or {}).get("tokens_per_s")
        rows, roofline = [], []
        for system, values in sorted(benchmark.systems.items(), key=_order):
            speed = finite(values.get("tokens_per_s"))
            ratio = speed / vanilla if speed is not None and vanilla else None
            failed = values.get("error")
            rows.append(
                {
                    "system": system,
                    "what it is": _label(system, values)
                    + (f" (missing: this system failed: {failed})" if failed else ""),
                    "tokens/s": f"{speed:,.1f}" if speed is not None else fmt.DASH,
                    "× vanilla": fmt.number(ratio, 2),
                    **_cells(values, SYSTEM),
                }
            )
            data.append(
                {
                    "benchmark": benchmark.name,
                    "system": system,
                    "threshold": finite(values.get("threshold")),
                    "kv_fill": _kv(values),
                    "tokens_per_s": speed,
                    "ratio_to_vanilla": ratio,
                    **{k: finite(values.get(k)) for k in NUMBERS},
                    "error": failed,
                }
            )
            flops, size = (finite(values.get(f"{k}_per_token")) for k in ("flops", "bytes"))
            if flops is not None and size is not None:
                roof = finite(values.get("roofline_tokens_per_s"))
                roofline.append(
                    {
                        "system": system,
                        "MFLOP/token": fmt.number(flops / 1e6, 2),
                        "KB/token": fmt.number(size / 1e3, 1),
                        "roofline tokens/s": f"{roof:,.0f}" if roof is not None else fmt.DASH,
                        "bound": str(values.get("roofline_bound") or fmt.DASH),
                        **_cells(values, ROOFLINE),
                    }
                )
        section.blocks += _tables(benchmark, rows, roofline)
    section.data["throughput"] = pl.DataFrame(data, infer_schema_length=None)
    return section


def _tables(
    benchmark: Benchmark, rows: list[dict[str, str]], roofline: list[dict[str, str]]
) -> list[Table]:
    """The benchmark's systems, and their roofline where the benchmark measured the machine."""
    workload = ", ".join(f"{k} {v}" for k, v in sorted(benchmark.workload.items()))
    hardware = ", ".join(f"{k} {v}" for k, v in sorted(benchmark.hardware.items()) if k != "peaks")
    served = f" (serving {benchmark.model})" if benchmark.model else ""
    tables = [
        table(
            f"throughput-{_slug(benchmark.name)}",
            f"Throughput: benchmarks/{benchmark.name}.json{served}",
            rows,
            [
                f"Workload: {workload or 'not recorded'}. Hardware: {hardware or 'not recorded'}.",
                "Agreement: share of generated tokens equal to full-depth decoding (in percent). "
                "Paper (Gemma, simulated, oracle exit): sequence-wise ×1.41, recursive B=2 "
                "depth-wise ×2.66, relaxed r=64..512 ×2.00..×1.59.",
            ],
        )
    ]
    peaks = benchmark.hardware.get("peaks")
    if roofline and isinstance(peaks, dict):
        note = (
            "FLOPs and bytes each output token needed (every linear a row ran, attention over "
            "the keys it may see, the exit head; weights read once a layer call, keys and values "
            "read and written), and the tokens/s the machine's measured ceilings allow at those "
            f"counts: {finite(peaks.get('memory_gb_per_s')) or 0:,.1f} GB/s memory, "
            f"{finite(peaks.get('matmul_gflop_per_s')) or 0:,.1f} GFLOP/s matmul "
            f"({peaks.get('measured_by', 'not recorded')}). Decode columns: steps with no prompt "
            "chunk, their counts over their measured time."
        )
        caption = f"Roofline: benchmarks/{benchmark.name}.json"
        tables.append(table(f"roofline-{_slug(benchmark.name)}", caption, roofline, [note]))
    return tables
