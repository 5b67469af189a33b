"""Missing results: each result the experiment's record lists that is not there, with why (the
failed job's last log line, or the missing result it waits for). A gap, never an error."""

import re
from pathlib import Path
from typing import NamedTuple

import polars as pl

from rrt.report.document import TEXT, Section, table
from rrt.report.results import Results, parse_name

LOG_RULES = {"reduced": "reduced", "recursive": "convert", "relaxed": "relax"}


class Gap(NamedTuple):
    path: str
    reason: str


def find_gaps(results: Results) -> list[Gap]:
    """The record's expected results that are not there (without a record: the evaluations of
    the models present)."""
    kinds = ("evaluations", "models", "benchmarks")
    paths = {p for kind in kinds for p in results.expected(kind) or []}
    if results.record is None:
        for n in map(parse_name, results.models_present):
            if (n.kind in ("full-size", "reduced") or n.uptrained) and n.sweep is None:
                paths.add(f"eval/{n.name}.json")
    missing = sorted(p for p in paths if not (results.root / p).exists())
    return [Gap(p, missing_reason(results.root, p)) for p in missing]


def job(relative: str) -> tuple[str | None, str | None]:
    """The log of the job that makes ``relative`` (as the workflow names logs), and its model."""
    parts = relative.split("/")
    folder, stem = parts[0], parts[-1].removesuffix(".json")
    if folder == "benchmarks":
        return f"logs/benchmark/{stem}.log", None
    if folder == "eval":  # an exit's evaluation (eval/exits/) is made from the model
        model = re.sub(r"-exit\d+$", "", stem) if len(parts) == 3 else stem
        return f"logs/evaluate/{stem}.log", f"models/{model}"
    if folder != "models":
        return None, None
    model, name = parts[1], parse_name(parts[1])
    base = model.split(".", 1)[0]
    if name.early_exit:
        return f"logs/early_exit/{base}.log", "models/" + model.removesuffix(".ee")
    if name.uptrained:
        before, variant = model.split(".up", 1)
        return f"logs/uptrain/{base}{variant}.log", f"models/{before}"
    if name.kind == "full-size":
        return "logs/pretrain/source.log", None
    rule = LOG_RULES.get(name.kind)
    log = f"logs/{rule}/{base.split('-', 1)[1]}.log" if rule else None
    return log, f"models/recursive-B{name.loops}-{name.init}" if name.kind == "relaxed" else None


def missing_reason(root: Path, relative: str) -> str:
    """Why ``relative`` is missing: the failed job's last log line, or what it waits for."""
    if (root / (relative + ".work")).is_dir():
        return f"training interrupted or still running ({relative}.work holds its checkpoints)"
    log, source = job(relative)
    if log is not None and (root / log).is_file():
        return f"its job failed: {log} ends with: {_last_line(root / log)}"
    if source is not None and not (root / source).exists():
        return f"not run: {source} is missing ({missing_reason(root, source)})"
    return "not run yet (no result and no job log)"


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("rrt ") and ": error:" in line]
    line = (errors or lines or ["(an empty log)"])[-1]
    return line if len(line) <= 200 else line[:197] + "..."


def add(section: Section, gaps: list[Gap], recorded: bool) -> None:
    """The list of gaps (each also shows in its table), or why there is none."""
    text, rows = TEXT["gaps"], [{"missing result": g.path, "reason": g.reason} for g in gaps]
    if not gaps:
        section.blocks.append(text["none" if recorded else "no_record"])
        return
    section.data["gaps"] = pl.DataFrame(rows)
    section.blocks += [text["some"].format(count=len(gaps)), table("gaps", text["caption"], rows)]
