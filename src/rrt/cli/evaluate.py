"""``rrt evaluate``: the command line of :mod:`rrt.evaluation.evaluate`."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path

from rrt import config as schema
from rrt import store
from rrt.contracts import EvaluationReport
from rrt.errors import UserError
from rrt.evaluation.evaluate import EvaluateConfig, evaluate, write_evaluation
from rrt.evaluation.suites import load_suites

# the --out never is, holds or lies inside one of these
INPUTS = ("model", "tokenizer", "task_dir", "paper_data")
OWNED = EvaluationReport.owns  # an --out file rrt may replace: an earlier evaluation report


def run(args: argparse.Namespace) -> dict:
    # No network at run time: without these a missing hub dataset costs ~34 s of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not str(args.out).endswith(".json"):
        raise UserError(f"--out {args.out} must name a .json file")
    settings = schema.from_arguments(EvaluateConfig, args)
    model = store.load_model(args.model, dtype="auto", device=args.device)
    tokenizer = store.load_tokenizer(args.tokenizer or args.model)
    # Every setting of the evaluate section is an argument of evaluate() by the same name.
    evaluation = evaluate(
        model, tokenizer, task_dir=args.task_dir, exit_loop=args.exit_loop, **asdict(settings)
    )
    evaluation.report["model"]["dir"] = str(Path(args.model).resolve())
    samples = write_evaluation(evaluation, args.out)
    for name, suite in evaluation.report["suites"].items():
        print(f"{name}: average {suite['average']}")
    for name, task in evaluation.report["tasks"].items():
        head = task["headline"]
        print(f"{name}: {head['metric']} = {head['value']}")
    print(f"wrote {args.out} and {samples}")
    return {
        "suites": {name: suite["average"] for name, suite in evaluation.report["suites"].items()},
        "tasks": {
            name: {
                task["headline"]["metric"]: task["headline"]["value"],
                "stderr": task["stderr"].get(task["headline"]["metric"]),
            }
            for name, task in evaluation.report["tasks"].items()
        },
    }


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Evaluate a save_pretrained model directory on lm-eval tasks or suites "
        f"({', '.join(load_suites())}) and write one JSON plus per-sample JSONL."
    )
    p.add_argument("--model", required=True, help="save_pretrained model directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    p.add_argument("--out", required=True, type=Path, help="report JSON; samples go beside it")
    p.add_argument(
        "--task-dir",
        type=Path,
        action="append",
        help="directory of lm-eval task YAMLs (rrt tasks); repeat it for several",
    )
    p.add_argument("--exit-loop", type=int, help="recursive models: exit every token after loop b")
    schema.add_setting(p, "device")
    schema.add_setting(p, "threads")
    schema.add_arguments(p, EvaluateConfig)
    p.set_defaults(func=run)
