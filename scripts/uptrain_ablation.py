"""Uptraining ablation on the embedded default: model x budget x distillation weight x seed.

Runs `rrt uptrain` for every combination, and optionally early-exit post-training of each
result (`--early-exit-tokens`). Finished runs are skipped, so it can be stopped and started
again. Polars then compiles held-out CE and per-loop next-token accuracy: one CSV row per run
(runs.csv), and a summary over seeds (summary.csv, printed) with the paired difference of each
KD weight against w = 0 where that was run.

    python scripts/uptrain_ablation.py --results results/embedded --out results/ablation \
        --models recursive --tokens 131072 262144 --kd-weights 0 0.5 1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

Job = tuple[str, int, float, int]  # model, tokens, kd weight, seed


def run_name(model: str, tokens: int, kd_weight: float, seed: int) -> str:
    return f"{model}-t{tokens}-kd{kd_weight:g}-s{seed}"


def early_exit_name(job: Job, tokens: int) -> str:
    return f"{run_name(*job)}-ee{tokens}"


def rrt_uptrain(out: Path, name: str, args: list[str], threads: int) -> str:
    target = out / name
    if (target / "metrics.json").is_file():
        return f"{name}: done before"
    command = [sys.executable, "-m", "rrt", "uptrain", "--out", str(target), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}); see {log.name}")
    return f"{name}: {time.perf_counter() - started:.0f} s"


def uptrain_args(results: Path, model: Path, tokens: int, kd_weight: float, seed: int) -> list[str]:
    args = [
        "--model", str(model), "--corpus", str(results / "corpus"),
        "--tokens", str(tokens), "--kd-weight", str(kd_weight), "--seed", str(seed),
    ]  # fmt: skip
    return [*args, "--teacher", str(results / "source")] if kd_weight > 0 else args


def collect(out: Path) -> pl.DataFrame:
    rows = []
    for path in sorted(out.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        run = metrics["run"]
        early_exit = run["loss"]["early_exit"]
        parent = json.loads((Path(run["model"]) / "metrics.json").read_text()) if early_exit else {}
        base = parent or metrics
        row = {
            "run": path.parent.name,
            "model": Path(base["run"]["model"]).name,
            "tokens": base["tokens"],
            "kd_weight": base["run"]["loss"]["kd_weight"] if base["run"]["teacher"] else 0.0,
            "seed": base["config"]["seed"],
            "early_exit_tokens": metrics["tokens"] if early_exit else 0,
            "held_out_ce": metrics["validation"]["ce"],
            "tokens_per_second": metrics["tokens_per_second"],
        }
        row.update(metrics.get("held_out_exits", {}))
        rows.append(row)
    return pl.DataFrame(rows).sort("model", "tokens", "kd_weight", "early_exit_tokens", "seed")


def summarize(runs: pl.DataFrame) -> pl.DataFrame:
    keys = ["model", "tokens", "seed", "early_exit_tokens"]
    baseline = runs.filter(pl.col("kd_weight") == 0).select(*keys, ce_without_kd="held_out_ce")
    paired = runs.join(baseline, on=keys, how="left").with_columns(
        kd_minus_ce=pl.col("held_out_ce") - pl.col("ce_without_kd")
    )
    loops = sorted(c for c in runs.columns if c.startswith("acc_loop"))
    return (
        paired.group_by("model", "tokens", "kd_weight", "early_exit_tokens")
        .agg(
            seeds=pl.len(),
            held_out_ce=pl.col("held_out_ce").mean(),
            ce_std=pl.col("held_out_ce").std(),
            minus_no_kd_mean=pl.col("kd_minus_ce").mean(),
            minus_no_kd_max=pl.col("kd_minus_ce").max(),
            **{loop: pl.col(loop).mean() for loop in loops},
        )
        .sort("model", "tokens", "kd_weight", "early_exit_tokens")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/embedded"))
    parser.add_argument("--out", type=Path, default=Path("results/ablation"))
    parser.add_argument("--models", nargs="+", default=["recursive"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[262144])
    parser.add_argument("--kd-weights", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--early-exit-tokens",
        nargs="*",
        type=int,
        default=[],
        help="budgets of early-exit post-training of every run (same teacher and KD weight)",
    )
    parser.add_argument("--early-exit-lr", type=float, default=5e-4)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each if > 1)")
    args = parser.parse_args()
    for name in ("corpus", "source", *args.models):
        if not (args.results / name).exists():
            raise SystemExit(f"{args.results / name} is missing: run scripts/embedded_default.sh")
    out, results = args.out, args.results
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.jobs > 1 else 0
    jobs = list(itertools.product(args.models, args.tokens, args.kd_weights, args.seeds))
    uptrains = [(run_name(*job), uptrain_args(results, results / job[0], *job[1:])) for job in jobs]
    early_exits = [
        (
            early_exit_name(job, tokens),
            [
                *uptrain_args(results, out / run_name(*job), tokens, *job[2:]),
                "--early-exit",
                "--lr",
                str(args.early_exit_lr),
            ],
        )  # fmt: skip
        for job in jobs
        for tokens in args.early_exit_tokens
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        for stage in (uptrains, early_exits):  # post-training starts from finished uptraining
            for message in pool.map(lambda run: rrt_uptrain(out, *run, threads), stage):
                print(message, flush=True)
    runs = collect(out)
    runs.write_csv(out / "runs.csv")
    summary = summarize(runs)
    summary.write_csv(out / "summary.csv")
    with pl.Config(tbl_rows=100, tbl_cols=20, float_precision=4, tbl_width_chars=250):
        print(summary)


if __name__ == "__main__":
    main()
