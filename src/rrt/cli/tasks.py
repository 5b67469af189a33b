"""``rrt tasks``: the command line of :mod:`rrt.stories.tasks`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrt import config as schema
from rrt.stories import tasks as library
from rrt.stories.tasks import GROUP, TasksConfig, write_tasks


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--corpus", required=True, type=Path, help="folder written by `rrt corpus`")
    p.add_argument("--out", required=True, type=Path, help="output folder (lm-eval include_path)")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="drop items longer than --max-tokens under this tokenizer",
    )
    schema.add_arguments(p, TasksConfig)
    p.set_defaults(func=_run)


INPUTS = ("corpus", "tokenizer")  # the --out never is, holds or lies inside one


def _run(args: argparse.Namespace) -> dict:
    config = schema.from_arguments(TasksConfig, args)
    info = write_tasks(args.corpus, args.out, config, args.tokenizer)
    counts = ", ".join(f"{t} {n}" for t, n in info["tasks"].items())
    print(f"wrote group {GROUP!r} to {args.out}: {counts}")
    return {"items": info["tasks"]}
