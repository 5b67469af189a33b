"""``rrt tokenizer``: the command line of :mod:`rrt.stories.tokenizer`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrt import config as schema
from rrt.stories import tokenizer as library
from rrt.stories.tokenizer import TokenizerConfig, build_tokenizer

INPUTS = ("corpus",)  # the --out never is, holds or lies inside one


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__
    p.add_argument("--corpus", required=True, type=Path, help="folder written by `rrt corpus`")
    p.add_argument("--out", required=True, type=Path, help="output folder (save_pretrained)")
    schema.add_arguments(p, TokenizerConfig)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    config = schema.from_arguments(TokenizerConfig, args)
    out = build_tokenizer(args.corpus, args.out, config)
    print(f"tokenizer with {config.vocab_size} tokens written to {out}")
    return {"vocab_size": config.vocab_size}
