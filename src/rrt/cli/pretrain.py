"""``rrt pretrain``: the command line of :mod:`rrt.training.pretrain`."""

from __future__ import annotations

import argparse

from rrt import config as schema
from rrt import tracking as mlflow_tracking
from rrt.cli import add_paths
from rrt.training import pretrain as library
from rrt.training.objective import UptrainLoss
from rrt.training.pretrain import ModelShape, pretrain
from rrt.training.trainer import TrainConfig

INPUTS = ("corpus", "tokenizer", "teacher", "like")  # the --out never is, holds or lies inside one


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    required = {
        "corpus": "folder written by `rrt corpus`",
        "tokenizer": "folder written by `rrt tokenizer`",
        "out": "output model folder",
    }
    optional = {
        "teacher": "distil from this model (the reduced-size baseline learns from the source)",
        "like": "train the architecture of this model (a hub source's) with --layers layers, "
        "instead of the embedded Llama shape",
    }
    add_paths(p, required, optional)
    schema.add_setting(p, "threads")
    schema.add_arguments(
        p, UptrainLoss, skip=("early_exit", "exit_weight"), title="with --teacher: the loss"
    )
    schema.add_arguments(p, ModelShape, title="the model (source.embedded)")
    schema.add_arguments(p, TrainConfig, title="train")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    shape = schema.from_arguments(ModelShape, args)
    recipe = schema.from_arguments(TrainConfig, args)
    tracking = mlflow_tracking.from_arguments(args)
    loss = UptrainLoss(kd_weight=args.kd_weight, temperature=args.temperature)
    metrics = pretrain(
        args.corpus,
        args.tokenizer,
        args.out,
        shape,
        recipe,
        tracking,
        args.teacher,
        loss,
        args.like,
    )
    if not metrics:  # a data-parallel process other than the main one
        return
    validation = metrics.get("validation", {}).get("ce")  # with a teacher "loss" mixes in KD
    print(
        f"pretrained {metrics['run']['parameters']:,} parameters on {metrics['tokens']:,} tokens "
        f"in {metrics['train_seconds']:.0f} s ({metrics['tokens_per_second']:.0f} tokens/s); "
        f"validation CE {validation if validation is None else round(validation, 4)}; "
        f"saved to {args.out}"
    )
