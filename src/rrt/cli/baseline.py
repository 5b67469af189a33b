"""``rrt baseline``: the command line of :mod:`rrt.stories.baseline`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rrt.io import write_json
from rrt.stories import baseline as library
from rrt.stories.baseline import run_baselines

INPUTS = ("corpus", "tasks")  # the --out never is, holds or lies inside one


def OWNED(path: Path) -> bool:  # noqa: N802  (the module attribute rrt.cli reads)
    """An --out file rrt may replace: an earlier baseline report."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(report, dict) and {"chance", "unigram", "bigram"} <= set(report)


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__
    p.add_argument("--corpus", required=True, type=Path, help="folder written by `rrt corpus`")
    p.add_argument("--tasks", required=True, type=Path, help="folder written by `rrt tasks`")
    p.add_argument("--out", required=True, type=Path, help="JSON report")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    report = run_baselines(args.corpus, args.tasks)
    write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("chance", "unigram", "bigram")}, indent=2))
    return {k: report[k] for k in ("unigram", "bigram")}
