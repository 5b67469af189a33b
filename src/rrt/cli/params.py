"""``rrt params``: the command line of :mod:`rrt.model.sizes`."""

from __future__ import annotations

import argparse
import json

from rrt import store
from rrt.model.sizes import build_on_meta, count_parameters


def _params_cli(args: argparse.Namespace) -> dict:
    config = store.load_config(args.path)
    counts = count_parameters(build_on_meta(config, args.loops, args.rank))
    print(json.dumps(counts, indent=2))
    return counts


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model directory, or a config JSON (source or recursive)")
    p.add_argument("--loops", type=int, help="count the recursive model with B loops")
    p.add_argument("--rank", help="LoRA rank of the relaxed model: R or attention=R1,mlp=R2")
    p.set_defaults(func=_params_cli)
