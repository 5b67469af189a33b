"""``rrt tasks``: the command line of :mod:`rrt.stories.tasks` (embedded) and
:mod:`rrt.evaluation.text_tasks` (text)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rrt import config as schema
from rrt.evaluation import text_tasks
from rrt.stories import tasks as library
from rrt.stories.tasks import EMBEDDED, TasksConfig, write_tasks

SUITES = {"embedded": EMBEDDED, "text": text_tasks.TEXT}  # --suite: its tasks


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = f"{library.__doc__}\n\n{text_tasks.__doc__}"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--suite",
        choices=list(SUITES),
        default="embedded",
        help="embedded: the story tasks, from a corpus `rrt corpus` generated (default); text: "
        "cloze, next-sentence and perplexity tasks from the test split of any corpus folder "
        "(real text), whose long contexts and documents are cut to --max-tokens, not dropped",
    )
    p.add_argument(
        "--corpus",
        required=True,
        type=Path,
        help="corpus folder: written by `rrt corpus` (embedded), or any (text)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (lm-eval include_path)")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="fit items into --max-tokens under this tokenizer (embedded: drop longer ones; "
        "text: cut them; without one, text counts words as tokens)",
    )
    schema.add_arguments(p, TasksConfig)
    p.set_defaults(func=_run)


INPUTS = ("corpus", "tokenizer")  # the --out never is, holds or lies inside one


def _run(args: argparse.Namespace) -> dict:
    config = schema.from_arguments(TasksConfig, args)
    info = write_tasks(SUITES[args.suite], args.corpus, args.out, config, args.tokenizer)
    counts = ", ".join(f"{t} {n}" for t, n in info["tasks"].items())
    print(f"wrote group {info['group']!r} to {args.out}: {counts}")
    return {"items": info["tasks"]}
