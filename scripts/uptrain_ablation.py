"""Uptraining ablation on the embedded default: budget x distillation weight x seed (x model).

Runs `rrt uptrain` for every combination (skipping finished ones, so it can be stopped and
started again), then compiles held-out CE and per-loop accuracy with Polars: one CSV row per
run, and a summary over seeds with the paired difference of each KD weight against w = 0.

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


def run_name(model: str, tokens: int, kd_weight: float, seed: int) -> str:
    return f"{model}-t{tokens}-kd{kd_weight:g}-s{seed}"


def uptrain(results: Path, out: Path, job: tuple[str, int, float, int], threads: int) -> str:
    model, tokens, kd_weight, seed = job
    target = out / run_name(*job)
    if (target / "metrics.json").is_file():
        return f"{target.name}: done before"
    command = [
        sys.executable, "-m", "rrt", "uptrain", "--model", str(results / model),
        "--corpus", str(results / "corpus"), "--out", str(target),
        "--tokens", str(tokens), "--kd-weight", str(kd_weight), "--seed", str(seed),
    ]  # fmt: skip
    if kd_weight > 0:
        command += ["--teacher", str(results / "source")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with open(out / f"{target.name}.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{target.name} failed ({done.returncode}); see {log.name}")
    return f"{target.name}: {time.perf_counter() - started:.0f} s"


def collect(out: Path) -> pl.DataFrame:
    rows = []
    for path in sorted(out.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        run = metrics["run"]
        row = {
            "model": Path(run["model"]).name,
            "tokens": metrics["tokens"],
            "kd_weight": run["loss"]["kd_weight"] if run["teacher"] else 0.0,
            "seed": metrics["config"]["seed"],
            "held_out_ce": metrics["validation"]["ce"],
            "tokens_per_second": metrics["tokens_per_second"],
        }
        row.update(metrics.get("held_out_exits", {}))
        rows.append(row)
    return pl.DataFrame(rows).sort("model", "tokens", "kd_weight", "seed")


def summarize(runs: pl.DataFrame) -> pl.DataFrame:
    keys = ["model", "tokens", "seed"]
    baseline = runs.filter(pl.col("kd_weight") == 0).select(*keys, ce_without_kd="held_out_ce")
    paired = runs.join(baseline, on=keys, how="left").with_columns(
        kd_minus_ce=pl.col("held_out_ce") - pl.col("ce_without_kd")
    )
    return (
        paired.group_by("model", "tokens", "kd_weight")
        .agg(
            seeds=pl.len(),
            held_out_ce=pl.col("held_out_ce").mean(),
            ce_std=pl.col("held_out_ce").std(),
            minus_no_kd_mean=pl.col("kd_minus_ce").mean(),
            minus_no_kd_max=pl.col("kd_minus_ce").max(),
        )
        .sort("model", "tokens", "kd_weight")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/embedded"))
    parser.add_argument("--out", type=Path, default=Path("results/ablation"))
    parser.add_argument("--models", nargs="+", default=["recursive"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[262144])
    parser.add_argument("--kd-weights", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 thread each if > 1)")
    args = parser.parse_args()
    for name in ("corpus", "source", *args.models):
        if not (args.results / name).exists():
            raise SystemExit(f"{args.results / name} is missing: run scripts/embedded_default.sh")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = list(itertools.product(args.models, args.tokens, args.kd_weights, args.seeds))
    threads = 1 if args.jobs > 1 else 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for message in pool.map(lambda j: uptrain(args.results, args.out, j, threads), jobs):
            print(message, flush=True)
    runs = collect(args.out)
    runs.write_csv(args.out / "runs.csv")
    summary = summarize(runs)
    summary.write_csv(args.out / "summary.csv")
    with pl.Config(tbl_rows=100, tbl_cols=20, float_precision=4, tbl_width_chars=200):
        print(summary)


if __name__ == "__main__":
    main()
