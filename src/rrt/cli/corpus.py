"""``rrt corpus``: the command line of :mod:`rrt.stories.corpus`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrt import config as schema
from rrt.stories import corpus as library
from rrt.stories.corpus import CorpusConfig, write_corpus


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__
    p.add_argument("--out", required=True, type=Path, help="output folder")
    schema.add_arguments(p, CorpusConfig)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    meta = write_corpus(args.out, schema.from_arguments(CorpusConfig, args))
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['word_tokens']} word tokens")
    return {
        split: {k: info[k] for k in ("documents", "word_tokens")}
        for split, info in meta["splits"].items()
    }
