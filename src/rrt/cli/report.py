"""``rrt report``: the command line of :mod:`rrt.report`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rrt import config as schema
from rrt import report as library
from rrt.report import ReportConfig, build

INPUTS = ("results",)  # the --out never is, holds or lies inside one


def _run(args: argparse.Namespace) -> dict[str, Any]:
    settings = schema.from_arguments(ReportConfig, args)
    metrics = build(args.results, args.out, settings)
    print(
        f"wrote {args.out}/report.html, report.md, tables/ and plots/: {metrics['models']} "
        f"models, {metrics['missing_results']} missing results, "
        f"{metrics['claims_reproduced']} of {metrics['claims_tested']} tested claims reproduced"
    )
    return metrics


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = library.__doc__.split("\n\n")[0] if library.__doc__ else None
    p.add_argument("--results", required=True, type=Path, help="the experiment's results folder")
    p.add_argument(
        "--out", required=True, type=Path, help="report folder (report.html, report.md, ...)"
    )
    schema.add_arguments(p, ReportConfig)
    p.set_defaults(func=_run)
