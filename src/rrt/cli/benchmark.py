"""``rrt benchmark``: the command line of :mod:`rrt.benchmark.bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrt import config as schema
from rrt.benchmark.bench import BenchConfig, benchmark
from rrt.contracts import BenchmarkResult

INPUTS = ("model", "baseline", "data", "gguf")  # the --out never is, holds or lies inside one
OWNED = BenchmarkResult.owns  # an --out file rrt may replace: an earlier benchmark result


def run(args: argparse.Namespace) -> dict[str, float]:
    from rrt.io import write_json

    cfg = schema.from_arguments(BenchConfig, args)
    result = benchmark(
        args.model, args.baseline, args.data, cfg, device=args.device, gguf=args.gguf
    )
    BenchmarkResult.from_dict(result, str(args.out), strict=True)  # the readers' contract
    write_json(args.out, result)
    return {
        f"{name}.{key}": value
        for name, row in result["systems"].items()
        for key, value in row.items()
        if key in ("tokens_per_s", "agreement", "mean_exit_loop", "speedup_vs_vanilla")
        and isinstance(value, int | float)
    }


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve one held-out workload with every system (Hugging Face generate, transformers' "
        "continuous batching, the rrt engine sequence-wise, depth-wise, and depth-wise with real "
        "early exit) and write tokens/s, latency, exits and agreement to one JSON."
    )
    p.add_argument("--model", required=True, help="the recursive (early-exit) model directory")
    p.add_argument("--baseline", help="the full-size source model directory")
    p.add_argument(
        "--data", required=True, help="corpus folder: test prompts, validation calibration"
    )
    p.add_argument(
        "--gguf", help="the --baseline model's weights as a GGUF file (system llama_cpp)"
    )
    p.add_argument("--out", required=True, type=Path, help="the benchmark JSON")
    schema.add_setting(p, "device")
    schema.add_setting(p, "threads")
    schema.add_arguments(p, BenchConfig)
    p.set_defaults(func=run)
