"""``rrt uptrain``: the command line of :mod:`rrt.training.uptrain`."""

from __future__ import annotations

import argparse

from rrt import config as schema
from rrt import tracking as mlflow_tracking
from rrt.cli import add_paths
from rrt.training import uptrain as library
from rrt.training.objective import UptrainLoss
from rrt.training.trainer import TrainConfig, uptrain_recipe
from rrt.training.uptrain import uptrain

INPUTS = ("model", "corpus", "teacher", "tokenizer")  # the --out never is, holds or lies inside one


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    required = {
        "model": "model folder to start from",
        "corpus": "corpus folder (rrt corpus, rrt download corpus)",
        "out": "output model folder",
    }
    optional = {
        "teacher": "full-size teacher model folder (KD)",
        "tokenizer": "tokenizer folder (default: the model's)",
    }
    add_paths(p, required, optional)
    schema.add_setting(p, "threads")
    schema.add_arguments(p, UptrainLoss, title="uptrain.loss")
    schema.add_arguments(p, TrainConfig, uptrain_recipe(), title="uptrain (the train recipe)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    loss = schema.from_arguments(UptrainLoss, args)
    recipe = schema.from_arguments(TrainConfig, args)
    tracking = mlflow_tracking.from_arguments(args)
    metrics = uptrain(
        args.model, args.corpus, args.out, recipe, loss, args.teacher, args.tokenizer, tracking
    )
    if not metrics:  # a data-parallel process other than the main one
        return
    held_out = "no held-out evaluation (--eval-tokens 0)"
    if "held_out_exits" in metrics:
        accuracy = [v for k, v in metrics["held_out_exits"].items() if k.startswith("acc")]
        held_out = (
            f"held-out CE {metrics['validation']['ce']:.4f}; per-loop next-token accuracy "
            + ", ".join(f"{v:.3f}" for v in accuracy)
        )
    peak = metrics.get("peak_memory_mb")
    memory = f", peak memory {peak:,.0f} MiB" if peak is not None else ""
    print(
        f"uptrained on {metrics['tokens']:,} tokens in {metrics['train_seconds']:.0f} s "
        f"({metrics['tokens_per_second']:.0f} tokens/s{memory}); {held_out}; saved to {args.out}"
    )
