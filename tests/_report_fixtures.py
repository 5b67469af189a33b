"""A small synthetic results folder in the shape the workflow writes: evaluations with per-sample
files, trained models' metrics.json and steps.jsonl, an uptraining sweep, an early-exit model,
a benchmark, the experiment's record, and one configuration that failed (its log says why)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from rrt.contracts import BenchmarkResult, EvaluationReport, TrainingMetrics
from rrt.report.record import config_hash

ITEMS = 300  # per accuracy task
DOCS = 40  # perplexity documents
WORDS = 50  # words per document
TASKS = {"embedded_cloze": "acc", "embedded_qa": "acc_norm"}
PPL = "embedded_perplexity"

# name -> (skill: the share of items it gets right, held-out CE, non-embedding, lora, tokens)
MODELS = {
    "source": (0.62, 1.05, 1_000_000, 0, 40_000),
    "source.up": (0.63, 1.04, 1_000_000, 0, 4096),
    "reduced-B2-uptrain": (0.40, 1.40, 500_000, 0, 4096),
    "recursive-B2-stepwise.up": (0.55, 1.10, 500_000, 0, 4096),
    "recursive-B2-average.up": (0.52, 1.12, 500_000, 0, 4096),
    "relaxed-B2-average-r8.up": (0.58, 1.07, 600_000, 100_000, 4096),
    "relaxed-B2-average-r32.up": (0.60, 1.06, 900_000, 400_000, 4096),
    "relaxed-B2-average-r8.up.ee": (0.58, 1.07, 600_000, 100_000, 2048),
}
MISSING = "relaxed-B2-average-r16.up"  # its uptraining failed
SWEEP = {  # recursive-B2-stepwise.up-t4096-wW-sS -> held-out CE
    (0.0, 0): 1.112, (0.0, 1): 1.114, (0.5, 0): 1.104, (0.5, 1): 1.107,
}  # fmt: skip


def _difficulty() -> list[float]:
    rng = random.Random(1234)  # the same items for every model: that is what pairs them
    return [rng.random() for _ in range(ITEMS)]


def _sample_rows(skill: float, seed: int) -> tuple[list[dict], dict]:
    """Per-sample rows and the task reports: an item is right when its difficulty is below the
    model's skill (a few flipped at random), so models differ mostly on the same items."""
    rng = random.Random(seed)
    difficulty = _difficulty()
    rows, tasks = [], {}
    for t, (task, metric) in enumerate(TASKS.items()):
        correct = [(d < skill) != (rng.random() < 0.03) for d in difficulty]
        for i, right in enumerate(correct):
            rows.append(
                {
                    "task": task, "doc_id": i, "doc_hash": f"{t}-{i}", "prompt_hash": f"p{i}",
                    "target": 0, "loglikelihoods": [-1.0, -2.0], "is_greedy": [right, False],
                    "correct": right, "metrics": {metric: float(right)},
                }
            )  # fmt: skip
        acc = sum(correct) / ITEMS
        tasks[task] = _task(metric, acc, math.sqrt(acc * (1 - acc) / (ITEMS - 1)), True)
    lls = []
    for i in range(DOCS):
        ll = -WORDS * (1.0 + 0.5 * (1 - skill)) - rng.random()
        lls.append(ll)
        rows.append(
            {
                "task": PPL, "doc_id": i, "doc_hash": f"ppl-{i}", "prompt_hash": f"q{i}",
                "target": "text", "loglikelihoods": [ll], "correct": None,
                "metrics": {"word_perplexity": [ll, WORDS]},
            }
        )  # fmt: skip
    word_ppl = math.exp(-sum(lls) / (DOCS * WORDS))
    tasks[PPL] = _task("word_perplexity", word_ppl, None, False)
    return rows, tasks


def _task(metric: str, value: float, stderr: float | None, higher: bool) -> dict:
    return {
        "metrics": {metric: value},
        "stderr": {metric: stderr},
        "higher_is_better": {metric: higher},
        "headline": {"metric": metric, "value": value},
        "num_fewshot": 0,
        "samples": {"original": ITEMS, "effective": ITEMS},
        "version": 1.0,
        "output_type": "multiple_choice",
    }


def write_evaluation(
    root: Path, name: str, skill: float, params: tuple[int, int], exit_loop: int | None = None
) -> Path:
    seed = sum(map(ord, name)) + (exit_loop or 0)
    rows, tasks = _sample_rows(skill, seed)
    stem = name if exit_loop is None else f"{name}-exit{exit_loop}"
    folder = root / "eval" / ("exits" if exit_loop is not None else "")
    folder.mkdir(parents=True, exist_ok=True)
    averaged = list(TASKS)
    report = {
        "tasks": tasks,
        "suites": {
            "embedded": {
                "tasks": {**TASKS, PPL: "word_perplexity"},
                "averaged": averaged,
                "average": sum(tasks[t]["headline"]["value"] for t in averaged) / len(averaged),
            }
        },
        "model": {
            "name_or_path": f"results/toy/models/{name}",
            "model_type": "rrt",
            "dtype": "float32",
            "device": "cpu",
            "num_loops": 2,
            "exit_loop": exit_loop,
            "parameters": {"non_embedding": params[0], "lora": params[1]},
        },
        "run": {"torch_threads": 1},
        "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "samples_file": f"{stem}.samples.jsonl",
    }
    (folder / f"{stem}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(EvaluationReport.from_dict(report, stem, strict=True).to_dict()))
    return path


def write_training(
    root: Path, name: str, ce: float, tokens: int, params: tuple[int, int], kd: float | None,
    exits: dict[int, tuple[float, float]] | None = None,
) -> None:  # fmt: skip
    folder = root / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    steps = tokens // 512
    lines = [
        {"step": s, "loss": ce + 2.0 / s, "ce": ce + 2.0 / s, "tokens": s * 512,
         "learning_rate": 1e-3}
        for s in range(1, steps + 1)
    ]  # fmt: skip
    if exits:
        for line in lines:
            line["ce_loop1"] = exits[1][0] + 1.0 / line["step"]
    (folder / "steps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics = {
        "steps": steps,
        "tokens": tokens,
        "train_seconds": tokens / 1000,
        "tokens_per_second": 1000.0,
        "processes": 1,
        "peak_memory_mb": 100.0,
        "validation": {"ce": ce},
        "config": {"tokens": tokens, "tokens_per_step": 512},
        "run": {
            "loss": None if kd is None else {"kd_weight": kd, "early_exit": False},
            "parameters": {"non_embedding": params[0], "lora": params[1]},
        },
    }
    if exits:
        metrics["held_out_exits"] = {
            f"{m}_loop{loop}": v
            for loop, (c, a) in exits.items()
            for m, v in (("ce", c), ("acc", a))
        }
    checked = TrainingMetrics.from_dict(metrics, f"{name}/metrics.json", strict=True)
    (folder / "metrics.json").write_text(json.dumps(checked.to_dict()))
    (folder / "provenance.json").write_text(
        json.dumps(
            {
                "git_commit": "0123456789abcdef0123456789abcdef01234567",
                "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
                "host": "toyhost",
                "hardware": {"cpu": "Toy CPU", "cores": 2, "memory_gb": 8},
            }
        )
    )


BENCHMARK = {
    "model": "results/toy/models/relaxed-B2-average-r8.up.ee",
    "baseline": "results/toy/models/source",
    "loops": 2,
    "calibration": None,
    "workload": {"requests": 16, "max_new_tokens": 32},
    "hardware": {"device": "cpu", "torch_threads": 1},
    "systems": {
        "vanilla": {"tokens_per_s": 100.0, "latency_p50_s": 1.0, "latency_p99_s": 2.0,
                    "ttft_p50_s": 0.1, "mean_exit_loop": None, "agreement": 1.0,
                    "peak_mem_mb": 50, "threshold": None},
        "sequence_continuous": {"tokens_per_s": 140.0, "latency_p50_s": 0.8,
                                "latency_p99_s": 1.5, "ttft_p50_s": 0.05, "agreement": 1.0,
                                "peak_mem_mb": 55, "threshold": None},
        "depthwise": {"tokens_per_s": 180.0, "latency_p50_s": 0.6, "latency_p99_s": 1.2,
                      "ttft_p50_s": 0.05, "mean_exit_loop": 2.0, "agreement": 1.0,
                      "peak_mem_mb": 40, "threshold": None},
        "depthwise_exit_0.9_ride": {"tokens_per_s": 230.0, "latency_p50_s": 0.5,
                                    "latency_p99_s": 1.0, "ttft_p50_s": 0.05,
                                    "mean_exit_loop": 1.4, "agreement": 0.97,
                                    "peak_mem_mb": 40, "threshold": 0.9, "kv_fill": "ride"},
        "depthwise_exit_0.7_ride": {"tokens_per_s": 260.0, "latency_p50_s": 0.45,
                                    "latency_p99_s": 0.9, "ttft_p50_s": 0.05,
                                    "mean_exit_loop": 1.2, "agreement": 0.92,
                                    "peak_mem_mb": 40, "threshold": 0.7, "kv_fill": "ride"},
        "depthwise_exit_0.9_propagate": {"tokens_per_s": 250.0, "latency_p50_s": 0.48,
                                         "latency_p99_s": 0.95, "ttft_p50_s": 0.05,
                                         "mean_exit_loop": 1.4, "agreement": 0.95,
                                         "peak_mem_mb": 40, "threshold": 0.9,
                                         "kv_fill": "propagate"},
        "hf_continuous": {"error": "RuntimeError: not supported here"},
    },
}  # fmt: skip


def make_results(root: Path, benchmark: bool = True) -> Path:
    """The folder ``root/results/toy`` (returned), as the workflow would leave it."""
    results = root / "results" / "toy"
    for name, (skill, ce, non_embedding, lora, tokens) in MODELS.items():
        params = (non_embedding, lora)
        write_evaluation(results, name, skill, params)
        kd = None if name == "source" else (0.0 if name == "source.up" else 0.5)
        exits = None
        if name == "relaxed-B2-average-r8.up":
            exits = {1: (1.60, 0.50), 2: (ce, 0.61)}
        if name.endswith(".ee"):
            exits = {1: (1.15, 0.59), 2: (ce, 0.61)}
            write_evaluation(results, name, skill - 0.02, params, exit_loop=1)
        write_training(results, name, ce, tokens, params, kd, exits)
    for (weight, seed), ce in SWEEP.items():
        name = f"recursive-B2-stepwise.up-t4096-w{weight}-s{seed}"
        write_training(results, name, ce, 4096, (500_000, 0), weight)
    (results / "models" / "relaxed-B2-average-r16").mkdir(parents=True)
    log = results / "logs" / "uptrain" / "relaxed-B2-average-r16.log"
    log.parent.mkdir(parents=True)
    log.write_text("loading\nrrt uptrain: error: CUDA out of memory (a toy failure)\n")
    if benchmark:
        (results / "benchmarks").mkdir()
        checked = BenchmarkResult.from_dict(BENCHMARK, "toy.json", strict=True)
        (results / "benchmarks" / "toy.json").write_text(json.dumps(checked.to_dict()))
    evaluated = [*MODELS, MISSING]
    config = {"experiment": "toy", "report": {"alpha": 0.05}}
    record = {
        "experiment": "toy",
        "config_sha256": config_hash(config),
        "config": config,
        "expected": {
            "evaluations": sorted(
                [f"eval/{n}.json" for n in evaluated]
                + ["eval/exits/relaxed-B2-average-r8.up.ee-exit1.json"]
            ),
            "models": sorted(f"models/{n}" for n in evaluated),
        },
        "workflow": {"git_commit": "0123456789abcdef", "versions": {}, "hardware": {}},
    }
    (results / "experiment.json").write_text(json.dumps(record, indent=2))
    return results
